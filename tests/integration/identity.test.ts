/**
 * Identity allocation against a real etcd on loopback (no root needed): concurrent allocators in
 * separate clients, release with a grace period and against a concurrent re-use, corrupt values.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EtcdClusterClient } from '../../src/cluster/etcd-client.js';
import { LABEL_CLUSTER, LABEL_NAMESPACE } from '../../src/defaults.js';
import {
  allocateIdentity,
  identitiesInUse,
  identityClusterId,
  IDENTITY_RESOURCE,
  listIdentities,
  lookupIdentity,
  lookupIdentityByLabels,
  releaseUnusedIdentities,
  type IdentityStore,
} from '../../src/agent/identity.js';
import { labelsHash, podIdentityLabels, type Labels } from '../../src/agent/labels.js';
import { ValidationError } from '../../src/util/errors.js';

const ETCD = '/usr/bin/etcd';
const CLUSTER = 'c3';
const CLUSTER_ID = 3;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function podLabels(app: string, ns = 'demo'): Labels {
  return { app, [LABEL_NAMESPACE]: ns, [LABEL_CLUSTER]: CLUSTER };
}

let dir = '';
let etcd: ChildProcess | undefined;
let etcdLog = '';
let clients: EtcdClusterClient[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'meshctl-identity-'));
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const client = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  etcd = spawn(
    ETCD,
    ['--name', 'identity-test', '--data-dir', join(dir, 'data'), '--listen-client-urls', client, '--advertise-client-urls', client, '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `identity-test=${peer}`, '--log-level', 'warn', '--logger', 'zap'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  etcd.stderr?.on('data', (b: Buffer) => {
    etcdLog = (etcdLog + b.toString()).slice(-4000);
  });
  clients = [0, 1, 2].map(() => new EtcdClusterClient({ endpoints: [client] }));
  try {
    await clients[0].waitReady(15_000);
  } catch (err) {
    throw new Error(`etcd did not start: ${(err as Error).message}\n${etcdLog}`);
  }
});

afterAll(async () => {
  for (const c of clients) await c.close().catch(() => undefined);
  if (etcd && etcd.exitCode === null) {
    const exited = new Promise((r) => etcd!.once('exit', r));
    etcd.kill('SIGTERM');
    const timer = setTimeout(() => etcd?.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

beforeEach(async () => {
  await clients[0].etcd.delete().prefix(`/registry/${IDENTITY_RESOURCE}/`).exec();
  await clients[0].etcd.delete().prefix('/registry/meshctl/identities/').exec();
});

describe('identity allocation (real etcd)', () => {
  test('20 concurrent allocations over 5 label sets from 3 clients: equal labels share, different never do', async () => {
    const sets = ['a', 'b', 'c', 'd', 'e'].map((app) => podLabels(app));
    const calls = Array.from({ length: 20 }, (_, i) => ({ labels: sets[i % 5], client: clients[i % 3] }));
    const ids = await Promise.all(calls.map((c) => allocateIdentity(c.client, CLUSTER_ID, c.labels)));
    const byLabels = new Map<string, Set<number>>();
    calls.forEach((c, i) => {
      const k = labelsHash(c.labels);
      byLabels.set(k, (byLabels.get(k) ?? new Set()).add(ids[i]));
    });
    expect([...byLabels.values()].map((s) => s.size)).toEqual([1, 1, 1, 1, 1]);
    const distinct = new Set(ids);
    expect(distinct.size).toBe(5);
    for (const id of distinct) {
      expect(identityClusterId(id)).toBe(CLUSTER_ID);
      expect(id & 0xffff).toBeGreaterThanOrEqual(1);
    }

    const list = await listIdentities(clients[1]);
    expect(list.invalid).toBe(0);
    expect([...list.identities.keys()]).toEqual([...distinct].sort((a, b) => a - b));
    for (const [i, c] of calls.entries()) expect(list.identities.get(ids[i])).toEqual(c.labels);

    // The record is a Kubernetes-shaped object other loops read through the ClusterClient.
    const obj = await clients[2].get(IDENTITY_RESOURCE, undefined, String(ids[0]));
    expect(obj).toMatchObject({ kind: 'MeshIdentity', metadata: { name: String(ids[0]) }, spec: { id: ids[0], clusterId: CLUSTER_ID, labels: sets[0] } });
    expect((await clients[2].list(IDENTITY_RESOURCE)).items).toHaveLength(5);
    expect(await lookupIdentity(clients[0], ids[1])).toEqual(sets[1]);
    expect(await lookupIdentityByLabels(clients[0], sets[2])).toBe(ids[2]);
    expect(await lookupIdentityByLabels(clients[0], podLabels('nobody'))).toBeNull();
  });

  test('60 concurrent allocations of distinct label sets get 60 distinct numbers', async () => {
    const sets = Array.from({ length: 60 }, (_, i) => podLabels(`app-${i}`));
    const ids = await Promise.all(sets.map((l, i) => allocateIdentity(clients[i % 3], CLUSTER_ID, l)));
    expect(new Set(ids).size).toBe(60);
    const list = await listIdentities(clients[0]);
    sets.forEach((l, i) => expect(list.identities.get(ids[i])).toEqual(l));
  });

  test('pod labels map to identity labels; label order and pod-template-hash do not matter', async () => {
    const pod = (labels: Labels) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', namespace: 'demo', labels } });
    const a = await allocateIdentity(clients[0], CLUSTER_ID, podIdentityLabels(pod({ app: 'x', tier: 'web', 'pod-template-hash': '111' }), CLUSTER));
    const b = await allocateIdentity(clients[1], CLUSTER_ID, podIdentityLabels(pod({ 'pod-template-hash': '222', tier: 'web', app: 'x' }), CLUSTER));
    expect(b).toBe(a);
    expect(await lookupIdentity(clients[2], a)).toEqual({ app: 'x', [LABEL_CLUSTER]: CLUSTER, [LABEL_NAMESPACE]: 'demo', tier: 'web' });
  });

  test('bad input is refused', async () => {
    await expect(allocateIdentity(clients[0], 0, podLabels('a'))).rejects.toThrow(new ValidationError('clusterId', 'range', 'cluster id 0 out of range 1..255'));
    await expect(allocateIdentity(clients[0], 256, podLabels('a'))).rejects.toBeInstanceOf(ValidationError);
    await expect(allocateIdentity(clients[0], CLUSTER_ID, {})).rejects.toThrow('identity labels must be a non-empty set of string values');
  });

  test('release: unused identities go after the grace period, used ones stay', async () => {
    const used = await allocateIdentity(clients[0], CLUSTER_ID, podLabels('used'));
    const unused = await allocateIdentity(clients[1], CLUSTER_ID, podLabels('unused'));
    const pods = [{ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p1', namespace: 'demo', labels: { app: 'used', 'pod-template-hash': 'x' } } }];
    const inUse = identitiesInUse(pods, CLUSTER, (await listIdentities(clients[0])).records);
    expect([...inUse]).toEqual([used]);

    expect(await releaseUnusedIdentities(clients[2], inUse, 60_000)).toEqual({ released: [], kept: 1, orphans: 0, invalid: 0 });
    const later = () => Date.now() + 120_000;
    expect(await releaseUnusedIdentities(clients[2], inUse, 60_000, { now: later })).toEqual({ released: [unused], kept: 0, orphans: 0, invalid: 0 });
    expect(await lookupIdentity(clients[0], unused)).toBeNull();
    expect(await lookupIdentityByLabels(clients[0], podLabels('unused'))).toBeNull();
    expect(await lookupIdentity(clients[0], used)).toEqual(podLabels('used'));

    // The labels can be allocated again afterwards.
    const again = await allocateIdentity(clients[0], CLUSTER_ID, podLabels('unused'));
    expect(await lookupIdentity(clients[1], again)).toEqual(podLabels('unused'));
  });

  test('release loses to an agent that re-uses the identity between read and delete', async () => {
    const labels = podLabels('racy');
    const id = await allocateIdentity(clients[0], CLUSTER_ID, labels);
    const before = (await listIdentities(clients[0])).records.find((r) => r.id === id)!;
    await new Promise((r) => setTimeout(r, 20));
    // The collector's store: right before it reads the by-labels entry (after it has judged the
    // record unused and old), another agent re-uses the identity.
    let raced = false;
    const real = clients[1].etcd;
    const racing: IdentityStore = {
      etcd: new Proxy(real, {
        get(target, prop) {
          if (prop === 'get') {
            return (key: string) => {
              const builder = target.get(key);
              if (raced || !key.includes('/by-labels/')) return builder;
              raced = true;
              return { exec: async () => (await allocateIdentity(clients[2], CLUSTER_ID, labels, { touchIntervalMs: 0 }), builder.exec()) };
            };
          }
          const v = Reflect.get(target, prop, target) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      }),
    };
    const r = await releaseUnusedIdentities(racing, new Set(), 0, { now: () => Date.now() + 60_000 });
    expect(raced).toBe(true);
    expect(r).toEqual({ released: [], kept: 1, orphans: 0, invalid: 0 });
    const after = (await listIdentities(clients[0])).records.find((x) => x.id === id);
    expect(after?.lastUsed).toBeGreaterThan(before.lastUsed);
    expect(await lookupIdentityByLabels(clients[0], labels)).toBe(id);
  });

  test('corrupt store values are skipped and counted, repaired where safe, never fatal', async () => {
    const good = await allocateIdentity(clients[0], CLUSTER_ID, podLabels('good'));
    const base = CLUSTER_ID << 16;
    const etcd = clients[0].etcd;
    await etcd.put(`/registry/${IDENTITY_RESOURCE}/${base | 100}`).value('{not json');
    await etcd.put(`/registry/${IDENTITY_RESOURCE}/${base | 101}`).value(
      JSON.stringify({ apiVersion: 'meshctl.io/v1', kind: 'MeshIdentity', metadata: { name: String(base | 101) }, spec: { id: base | 101, labels: { app: 'x' }, labelsHash: 'wrong' }, status: { lastUsed: new Date().toISOString() } }),
    );
    await etcd.put(`/registry/${IDENTITY_RESOURCE}/not-a-number`).value('{}');
    // by-labels entries: one garbage, one pointing at a record that does not exist.
    const garbled = podLabels('garbled');
    await etcd.put(`/registry/meshctl/identities/by-labels/${labelsHash(garbled)}`).value('banana');
    await etcd.put(`/registry/meshctl/identities/by-labels/${labelsHash(podLabels('orphan'))}`).value(String(base | 200));

    const list = await listIdentities(clients[1]);
    expect(list.invalid).toBe(3);
    expect(list.problems).toHaveLength(3);
    expect([...list.identities.keys()]).toEqual([good]);
    expect(await lookupIdentity(clients[1], base | 101)).toBeNull();

    // Allocation repairs the garbage entry and never hands out a number a corrupt record holds.
    const fixed = await allocateIdentity(clients[2], CLUSTER_ID, garbled);
    expect([good, base | 100, base | 101]).not.toContain(fixed);
    expect(await lookupIdentityByLabels(clients[0], garbled)).toBe(fixed);

    const r = await releaseUnusedIdentities(clients[0], new Set([good, fixed]), 0);
    expect(r).toEqual({ released: [], kept: 0, orphans: 1, invalid: 3 });
    expect((await etcd.get(`/registry/${IDENTITY_RESOURCE}/${base | 100}`).exec()).kvs).toHaveLength(1);
    expect(await lookupIdentity(clients[0], good)).toEqual(podLabels('good'));
  });
});
