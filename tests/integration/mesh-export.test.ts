/**
 * The export process against two real etcds on loopback: one as the cluster's store, one as its
 * clustermesh-apiserver (plain, no TLS: the Etcd3 client is injected; the TLS path is covered end
 * to end). Exact keys and values, sync markers after the initial round, heartbeat, changes within a
 * second, skipped objects, a restarted exporter writing nothing, apiserver and store restarts, and
 * the time of a large initial export.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExponentialBackoff, noop, type IBackoff } from 'cockatiel';
import { Etcd3, type IKeyValue } from 'etcd3';
import { EtcdClusterClient, rangePrefix } from '../../src/cluster/etcd-client.js';
import { identityObject, makeIdentity } from '../../src/cluster/identity.js';
import type { KubeObject } from '../../src/cluster/types.js';
import { runExport, type Exporter, type ExportOptions } from '../../src/mesh/export.js';
import { meshKeys } from '../../src/mesh/schema.js';
import { TestEtcd, until } from '../helpers/etcd.js';

const C = 'c1';
let store: TestEtcd;
let api: TestEtcd;
let sc: EtcdClusterClient;
let ac: Etcd3;
const exporters: Exporter[] = [];
const logs: string[] = [];

function apiClient(endpoint: string): Etcd3 {
  return new Etcd3({
    hosts: [endpoint],
    faultHandling: { host: () => noop, global: noop, watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 1000 }) as unknown as IBackoff<unknown> },
    grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 500 },
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 3000 }),
  });
}

beforeAll(async () => {
  [store, api] = await Promise.all([TestEtcd.start('mx-store'), TestEtcd.start('mx-api')]);
  sc = store.client();
  ac = apiClient(api.endpoint);
});

afterAll(async () => {
  for (const e of exporters.splice(0)) await e.stop();
  await sc?.close().catch(() => undefined);
  ac?.close();
  await Promise.all([store?.remove(), api?.remove()]);
});

beforeEach(async () => {
  await sc.etcd.delete().prefix('/registry/').exec();
  await ac.delete().prefix('mesh/v1/').exec();
  logs.length = 0;
});

afterEach(async () => {
  for (const e of exporters.splice(0)) await e.stop();
});

async function start(opts: Partial<ExportOptions> = {}): Promise<Exporter> {
  const e = await runExport({ cluster: C, store: sc, apiserver: ac, heartbeatMs: 100, log: (m) => logs.push(m), ...opts });
  exporters.push(e);
  return e;
}

async function stopAll(): Promise<void> {
  for (const e of exporters.splice(0)) await e.stop();
}

async function synced(e: Exporter, ms = 15_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not synced after ${ms} ms: ${JSON.stringify({ ...e.stats, problems: undefined })} ${logs.slice(-5).join(' | ')}`)), ms);
  });
  try {
    await Promise.race([e.synced(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const config = (id = 1): KubeObject => ({
  apiVersion: 'meshctl.io/v1',
  kind: 'MeshClusterConfig',
  metadata: { name: C },
  spec: { name: C, id, podCIDRs: ['10.1.0.0/16'], serviceCIDR: '10.96.0.0/16', routing: 'tunnel', vpcs: ['vpc-a'] },
});

const node = (name: string, ip: string, podCidr: string, nodeId: number): KubeObject => ({
  apiVersion: 'v1',
  kind: 'Node',
  metadata: { name, labels: { 'kubernetes.io/hostname': name, 'meshctl.io/vpc': 'vpc-a', 'meshctl.io/cluster': C } },
  spec: { podCIDR: podCidr, podCIDRs: [podCidr] },
  status: { addresses: [{ type: 'InternalIP', address: ip }, { type: 'Hostname', address: name }], nodeInfo: { bootID: 'b' }, meshctl: { vpc: 'vpc-a', routerIP: '172.31.0.1', routing: 'tunnel', nodeId } },
});

const endpoint = (name: string, ip: string, identity: number, nodeName: string): KubeObject => ({
  apiVersion: 'meshctl.io/v1',
  kind: 'MeshEndpoint',
  metadata: { name, namespace: 'demo' },
  spec: { ip, identity, node: nodeName, nodeIP: '172.31.0.2', endpointID: 1 },
});

const ID_A = makeIdentity(1, 10);
const ID_B = makeIdentity(1, 11);
const ID_OTHER = makeIdentity(2, 10);
const labels = (app: string, cluster = C): Record<string, string> => ({ app, 'io.cilium.k8s.policy.cluster': cluster, 'io.kubernetes.pod.namespace': 'demo' });

async function seed(): Promise<void> {
  const now = new Date();
  await sc.put('meshclusterconfigs', config());
  await sc.put('nodes', node('c1-n1', '172.31.0.2', '10.1.1.0/24', 1));
  await sc.put('nodes', node('c1-n2', '172.31.0.3', '10.1.2.0/24', 2));
  await sc.put('meshidentities', identityObject(ID_A, labels('a'), now));
  await sc.put('meshidentities', identityObject(ID_B, labels('b'), now));
  await sc.put('meshidentities', identityObject(ID_OTHER, labels('a', 'c2'), now));
  await sc.put('meshendpoints', endpoint('a-1', '10.1.1.5', ID_A, 'c1-n1'));
  await sc.put('meshendpoints', endpoint('a-2', '10.1.2.5', ID_A, 'c1-n2'));
  await sc.put('meshendpoints', endpoint('b-1', '10.1.1.6', ID_B, 'c1-n1'));
  // Invalid: identity 0.
  await sc.put('meshendpoints', endpoint('bad-1', '10.1.1.7', 0, 'c1-n1'));
}

async function dump(): Promise<Map<string, IKeyValue>> {
  const { kvs } = await rangePrefix(ac, 'mesh/v1/');
  return new Map(kvs.map((kv) => [kv.key.toString(), kv]));
}

async function values(): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const [k, kv] of await dump()) out[k] = JSON.parse(kv.value.toString());
  return out;
}

/** The data keys only (no heartbeat, no markers), values parsed. */
async function data(): Promise<Record<string, unknown>> {
  const v = await values();
  for (const k of Object.keys(v)) if (k.startsWith('mesh/v1/heartbeat/') || k.startsWith('mesh/v1/synced/')) delete v[k];
  return v;
}

async function get(key: string): Promise<unknown> {
  const s = await ac.get(key).string();
  return s === null ? undefined : JSON.parse(s);
}

const ipValue = (ip: string, identity: number, nodeName: string) => ({ version: 1, cluster: C, ip, identity, node: nodeName });
const nodeValue = (name: string, ip: string, podCidr: string, nodeId: number) => ({ version: 1, cluster: C, name, ip, podCidrs: [podCidr], vpc: 'vpc-a', nodeId });

function expectedData(): Record<string, unknown> {
  return {
    [meshKeys.clusterConfig(C)]: { version: 1, name: C, id: 1, podCidrs: ['10.1.0.0/16'], serviceCidr: '10.96.0.0/16', routing: 'tunnel', vpcs: ['vpc-a'], encryption: 'none', capabilities: { syncedMarkers: true, maxConnectedClusters: 255 } },
    [meshKeys.node(C, 'c1-n1')]: nodeValue('c1-n1', '172.31.0.2', '10.1.1.0/24', 1),
    [meshKeys.node(C, 'c1-n2')]: nodeValue('c1-n2', '172.31.0.3', '10.1.2.0/24', 2),
    [meshKeys.identity(C, ID_A)]: { version: 1, cluster: C, id: ID_A, labels: labels('a') },
    [meshKeys.identity(C, ID_B)]: { version: 1, cluster: C, id: ID_B, labels: labels('b') },
    [meshKeys.ip(C, '10.1.1.5')]: ipValue('10.1.1.5', ID_A, 'c1-n1'),
    [meshKeys.ip(C, '10.1.2.5')]: ipValue('10.1.2.5', ID_A, 'c1-n2'),
    [meshKeys.ip(C, '10.1.1.6')]: ipValue('10.1.1.6', ID_B, 'c1-n1'),
  };
}

/** Poll until the apiserver's data keys are exactly `want`. */
async function converges(what: string, want: () => Record<string, unknown>, ms = 10_000): Promise<void> {
  let last: Record<string, unknown> = {};
  try {
    await until(what, async () => {
      last = await data().catch(() => last);
      return JSON.stringify(sortKeys(last)) === JSON.stringify(sortKeys(want()));
    }, ms);
  } catch (err) {
    expect(sortKeys(last)).toEqual(sortKeys(want()));
    throw err;
  }
}

function sortKeys(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));
}

/** ms until cond() holds (throws after ms). */
async function latency(what: string, cond: () => Promise<boolean>, ms = 1500): Promise<number> {
  const t0 = performance.now();
  await until(what, cond, ms);
  return performance.now() - t0;
}

test('initial export: exact keys and values, markers after the data, heartbeat, invalid and foreign objects left out', async () => {
  await seed();
  // A stale key of this cluster and a key of another cluster, from an earlier life of the apiserver.
  await ac.put(meshKeys.ip(C, '10.1.9.9')).value(JSON.stringify(ipValue('10.1.9.9', ID_A, 'c1-n1')));
  await ac.put(meshKeys.ip('c2', '10.2.0.1')).value('{"other":"cluster"}');
  // A store value that is not even an object.
  await sc.etcd.put('/registry/meshendpoints/demo/garbage').value('{not json');
  const e = await start();
  await synced(e);
  const all = await dump();
  await expect(data()).resolves.toEqual({ ...expectedData(), [meshKeys.ip('c2', '10.2.0.1')]: { other: 'cluster' } });
  expect(all.has(meshKeys.ip(C, '10.1.9.9'))).toBe(false);
  expect(all.has(meshKeys.identity(C, ID_OTHER))).toBe(false);
  expect(all.has(meshKeys.identity('c2', ID_OTHER))).toBe(false);

  const s = e.stats;
  expect(s.synced).toEqual(['nodes', 'identities', 'ip']);
  expect(s.written).toBe(8 + 3);
  expect(s.deleted).toBe(1);
  expect(s.skipped).toBe(2);
  expect(s.problems).toEqual([
    { key: meshKeys.ip(C, '10.1.1.7'), reason: 'meshendpoint demo/bad-1: identity: Number must be greater than or equal to 1' },
    { key: 'meshendpoints/demo/garbage', reason: 'not JSON' },
  ]);
  expect(logs).toContain(`skip ${meshKeys.ip(C, '10.1.1.7')}: meshendpoint demo/bad-1: identity: Number must be greater than or equal to 1`);

  // Markers: exact, and created after every data key of the round was written.
  let lastData = 0n;
  for (const [k, kv] of all) if (!k.startsWith('mesh/v1/synced/') && !k.startsWith('mesh/v1/heartbeat/') && k.includes(`/${C}`)) lastData = BigInt(kv.mod_revision) > lastData ? BigInt(kv.mod_revision) : lastData;
  for (const kind of ['nodes', 'identities', 'ip']) {
    const kv = all.get(meshKeys.synced(C, kind as 'nodes'))!;
    expect(JSON.parse(kv.value.toString())).toEqual({ version: 1, cluster: C, kind, at: expect.any(String) });
    expect(BigInt(kv.create_revision)).toBeGreaterThan(lastData);
  }

  // Heartbeat: valid and its seq increasing.
  const hb1 = (await get(meshKeys.heartbeat(C))) as { seq: number };
  expect(hb1).toEqual({ version: 1, cluster: C, at: expect.any(String), seq: expect.any(Number) });
  await sleep(350);
  const hb2 = (await get(meshKeys.heartbeat(C))) as { seq: number };
  expect(hb2.seq).toBeGreaterThanOrEqual(hb1.seq + 2);
});

test('no sync marker before the initial export is complete', async () => {
  await seed();
  const watcher = await ac.watch().prefix('mesh/v1/').create();
  const seen: string[] = [];
  watcher.on('put', (kv) => {
    const k = kv.key.toString();
    if (!k.startsWith('mesh/v1/heartbeat/')) seen.push(k);
  });
  // Without a cluster config the identities cannot be judged: no identities marker yet.
  await sc.delete('meshclusterconfigs', undefined, C);
  const e = await start();
  await until('nodes and ip markers', async () => e.stats.synced.length === 2);
  expect(e.stats.synced).toEqual(['nodes', 'ip']);
  expect(await get(meshKeys.synced(C, 'identities'))).toBeUndefined();
  expect(await get(meshKeys.identity(C, ID_A))).toBeUndefined();
  await sc.put('meshclusterconfigs', config());
  await synced(e, 5000);
  await expect(data()).resolves.toEqual(expectedData());
  // Each marker after the last put of its kind.
  for (const [kind, prefix] of [['nodes', meshKeys.nodes(C)], ['identities', meshKeys.identities(C)], ['ip', meshKeys.ips(C)]] as const) {
    const lastData = Math.max(...seen.map((k, i) => (k.startsWith(prefix) ? i : -1)));
    expect(lastData).toBeGreaterThan(-1);
    expect(seen.indexOf(meshKeys.synced(C, kind))).toBeGreaterThan(lastData);
  }
  await watcher.cancel();
});

test('changes of endpoints, nodes and identities show within a second, and only the changed key is written', async () => {
  await seed();
  const e = await start();
  await synced(e);
  const w0 = e.stats.written;
  const times: Record<string, number> = {};

  await sc.put('meshendpoints', endpoint('c-1', '10.1.1.20', ID_B, 'c1-n1'));
  times['endpoint created'] = await latency('new ip', async () => JSON.stringify(await get(meshKeys.ip(C, '10.1.1.20'))) === JSON.stringify(ipValue('10.1.1.20', ID_B, 'c1-n1')));
  expect(e.stats.written).toBe(w0 + 1);

  await sc.put('meshendpoints', endpoint('c-1', '10.1.1.20', ID_A, 'c1-n1'));
  times['endpoint identity changed'] = await latency('ip identity', async () => ((await get(meshKeys.ip(C, '10.1.1.20'))) as { identity?: number })?.identity === ID_A);

  await sc.put('meshendpoints', endpoint('c-1', '10.1.1.21', ID_A, 'c1-n1'));
  times['endpoint ip changed'] = await latency('ip moved', async () => (await get(meshKeys.ip(C, '10.1.1.20'))) === undefined && (await get(meshKeys.ip(C, '10.1.1.21'))) !== undefined);

  await sc.delete('meshendpoints', 'demo', 'c-1');
  times['endpoint deleted'] = await latency('ip gone', async () => (await get(meshKeys.ip(C, '10.1.1.21'))) === undefined);

  await sc.put('nodes', node('c1-n3', '172.31.0.4', '10.1.3.0/24', 3));
  times['node created'] = await latency('node', async () => JSON.stringify(await get(meshKeys.node(C, 'c1-n3'))) === JSON.stringify(nodeValue('c1-n3', '172.31.0.4', '10.1.3.0/24', 3)));
  await sc.put('nodes', node('c1-n3', '172.31.0.9', '10.1.3.0/24', 3));
  times['node changed'] = await latency('node ip', async () => ((await get(meshKeys.node(C, 'c1-n3'))) as { ip?: string })?.ip === '172.31.0.9');
  await sc.delete('nodes', undefined, 'c1-n3');
  times['node deleted'] = await latency('node gone', async () => (await get(meshKeys.node(C, 'c1-n3'))) === undefined);

  const ID_C = makeIdentity(1, 12);
  await sc.put('meshidentities', identityObject(ID_C, labels('c'), new Date()));
  times['identity created'] = await latency('identity', async () => JSON.stringify(await get(meshKeys.identity(C, ID_C))) === JSON.stringify({ version: 1, cluster: C, id: ID_C, labels: labels('c') }));
  await sc.delete('meshidentities', undefined, String(ID_C));
  times['identity deleted'] = await latency('identity gone', async () => (await get(meshKeys.identity(C, ID_C))) === undefined);
  // An identity of another cluster id never shows.
  await sc.put('meshidentities', identityObject(makeIdentity(3, 1), labels('x', 'c3'), new Date()));
  await sleep(300);
  await expect(data()).resolves.toEqual(expectedData());

  // A valid endpoint becoming invalid: its key goes (never a stale or half value), and it is counted.
  await sc.put('meshendpoints', endpoint('b-1', '10.1.1.6', ID_B, ''));
  times['endpoint became invalid'] = await latency('invalid ip gone', async () => (await get(meshKeys.ip(C, '10.1.1.6'))) === undefined);
  expect(e.stats.skipped).toBe(2);
  // A touched identity (lastUsed only) writes nothing.
  const before = e.stats.written;
  await sc.put('meshidentities', identityObject(ID_A, labels('a'), new Date(Date.now() + 1000)));
  await sleep(300);
  expect(e.stats.written).toBe(before);
  process.stderr.write(`mesh-export change latency (ms): ${Object.entries(times).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ')}\n`);
});

test('a restarted exporter writes nothing when nothing changed, and deletes what went while it was down', async () => {
  await seed();
  const e1 = await start();
  await synced(e1);
  await stopAll();
  const rev0 = BigInt((await ac.get('x').exec()).header.revision);

  const e2 = await start({ heartbeatMs: 60_000 });
  await synced(e2);
  await sleep(200);
  expect({ written: e2.stats.written, deleted: e2.stats.deleted, synced: e2.stats.synced }).toEqual({ written: 0, deleted: 0, synced: ['nodes', 'identities', 'ip'] });
  // Only the heartbeat changed the apiserver.
  const rev1 = BigInt((await ac.get('x').exec()).header.revision);
  expect(rev1 - rev0).toBe(1n);
  const markerRevs = [...(await dump())].filter(([k]) => k.startsWith('mesh/v1/synced/')).map(([, kv]) => BigInt(kv.mod_revision));
  expect(markerRevs.every((r) => r <= rev0)).toBe(true);
  await stopAll();

  await sc.delete('meshendpoints', 'demo', 'a-2');
  await sc.delete('nodes', undefined, 'c1-n2');
  await sc.delete('meshidentities', undefined, String(ID_B));
  await sc.put('meshendpoints', endpoint('d-1', '10.1.1.30', ID_A, 'c1-n1'));
  const e3 = await start();
  await synced(e3);
  await until('e3 round done', async () => e3.stats.deleted === 3);
  const want = expectedData();
  delete want[meshKeys.ip(C, '10.1.2.5')];
  delete want[meshKeys.node(C, 'c1-n2')];
  delete want[meshKeys.identity(C, ID_B)];
  want[meshKeys.ip(C, '10.1.1.30')] = ipValue('10.1.1.30', ID_A, 'c1-n1');
  await expect(data()).resolves.toEqual(want);
  expect({ written: e3.stats.written, deleted: e3.stats.deleted }).toEqual({ written: 1, deleted: 3 });
  // The heartbeat sequence goes on from the last one written.
  expect(((await get(meshKeys.heartbeat(C))) as { seq: number }).seq).toBeGreaterThan(1);
});

test('after the apiserver is killed and restarted (same data, then lost data) the exporter converges', async () => {
  await seed();
  const e = await start();
  await synced(e);
  const verifications = e.stats.verifications;

  await api.stop();
  await sc.put('meshendpoints', endpoint('e-1', '10.1.1.40', ID_A, 'c1-n1'));
  await sc.delete('meshendpoints', 'demo', 'a-1');
  await sleep(1500);
  expect(e.stats.lastError).toMatch(/^apiserver: /);
  await api.restart();
  const want = (): Record<string, unknown> => {
    const w = expectedData();
    delete w[meshKeys.ip(C, '10.1.1.5')];
    w[meshKeys.ip(C, '10.1.1.40')] = ipValue('10.1.1.40', ID_A, 'c1-n1');
    return w;
  };
  await converges('export after apiserver restart', want, 15_000);
  expect(e.stats.verifications).toBeGreaterThan(verifications);
  // Every apiserver error was one line.
  expect(logs.filter((l) => l.startsWith('apiserver: ')).every((l) => !l.includes('\n'))).toBe(true);

  // The apiserver comes back empty: everything is written again, markers included.
  const wipedAt = new Date().toISOString();
  await api.restart({ wipe: true });
  await converges('export after apiserver data loss', want, 15_000);
  const markerAt = async (kind: 'nodes' | 'identities' | 'ip'): Promise<string> => ((await get(meshKeys.synced(C, kind))) as { at?: string } | undefined)?.at ?? '';
  await until('markers written again', async () => (await markerAt('nodes')) > wipedAt && (await markerAt('identities')) > wipedAt && (await markerAt('ip')) > wipedAt);
  expect(e.stats.synced).toEqual(['nodes', 'identities', 'ip']);
  await until('heartbeat back', async () => (await get(meshKeys.heartbeat(C))) !== undefined);
});

test('after a store restart and a compaction the exporter converges on what the store holds', async () => {
  await seed();
  const e = await start();
  await synced(e);
  await store.restart();
  await sc.waitReady(10_000);
  await sc.delete('nodes', undefined, 'c1-n2');
  await sc.put('meshendpoints', endpoint('f-1', '10.1.1.50', ID_B, 'c1-n1'));
  const want = (): Record<string, unknown> => {
    const w = expectedData();
    delete w[meshKeys.node(C, 'c1-n2')];
    w[meshKeys.ip(C, '10.1.1.50')] = ipValue('10.1.1.50', ID_B, 'c1-n1');
    return w;
  };
  await converges('export after store restart', want, 15_000);
  await sc.delete('meshendpoints', 'demo', 'f-1');
  await store.compact();
  await sc.put('nodes', node('c1-n2', '172.31.0.3', '10.1.2.0/24', 2));
  await converges('export after compaction', () => {
    const w = want();
    delete w[meshKeys.ip(C, '10.1.1.50')];
    w[meshKeys.node(C, 'c1-n2')] = nodeValue('c1-n2', '172.31.0.3', '10.1.2.0/24', 2);
    return w;
  });
});

/** Put n endpoints straight into the store (raw txns: the seeding is not what is measured). */
async function seedEndpoints(n: number): Promise<void> {
  const ops: Array<Promise<unknown>> = [];
  for (let i = 0; i < n; i += 128) {
    const t = sc.etcd.kv.txn({
      success: Array.from({ length: Math.min(128, n - i) }, (_, j) => {
        const k = i + j;
        const ip = `10.1.${(k >> 8) & 0xff}.${k & 0xff}`;
        const ep = endpoint(`p-${k}`, ip, ID_A, 'c1-n1');
        return { request_put: { key: Buffer.from(`/registry/meshendpoints/demo/p-${k}`), value: Buffer.from(JSON.stringify(ep)) } };
      }),
    });
    ops.push(t);
    if (ops.length >= 8) await Promise.all(ops.splice(0));
  }
  await Promise.all(ops);
}

test.each([10_000, 50_000])('initial export of %d ip entries takes seconds; a restart writes none', async (n) => {
  await sc.put('meshclusterconfigs', config());
  await sc.put('nodes', node('c1-n1', '172.31.0.2', '10.1.1.0/24', 1));
  await sc.put('meshidentities', identityObject(ID_A, labels('a'), new Date()));
  await seedEndpoints(n);
  const t0 = performance.now();
  const e = await start({ heartbeatMs: 60_000 });
  await synced(e, 120_000);
  const first = performance.now() - t0;
  expect(e.stats.written).toBe(n + 3 + 3);
  expect((await rangePrefix(ac, meshKeys.ips(C), { keysOnly: true })).kvs.length).toBe(n);
  const txns = e.stats.txns;
  await stopAll();
  const t1 = performance.now();
  const e2 = await start({ heartbeatMs: 60_000 });
  await synced(e2, 120_000);
  const again = performance.now() - t1;
  expect(e2.stats.written).toBe(0);
  // One changed entry after the big round: one transaction, one key.
  const w = e2.stats.written;
  const tx = e2.stats.txns;
  await sc.put('meshendpoints', endpoint('p-1', '10.1.0.1', ID_A, 'c1-n2'));
  await until('changed entry', async () => ((await get(meshKeys.ip(C, '10.1.0.1'))) as { node?: string })?.node === 'c1-n2', 3000);
  expect({ written: e2.stats.written - w, txns: e2.stats.txns - tx }).toEqual({ written: 1, txns: 1 });
  process.stderr.write(`mesh-export ${n} ip entries: initial export ${(first / 1000).toFixed(2)} s in ${txns} txns; restart with nothing changed ${(again / 1000).toFixed(2)} s, 0 writes\n`);
}, 300_000);
