/**
 * Agent benchmark: what one change costs the node agent at 1k, 10k and 50k pods in its cluster.
 *
 * For each size it starts a real etcd on loopback (the cluster's store), fills it with synthetic
 * Nodes, Pods (spread over 100 other nodes), their MeshEndpoints and identities, and runs the real
 * agent code path — informers, controllers, the owner-scoped Datapath on real pinned maps — in a
 * worker process inside a network namespace of its own (a veth eth0 stands in for the underlay).
 * The worker then measures, in rounds that alternate with a baseline measured in the same run:
 *
 *   change      a new Pod (and its MeshEndpoint) put into the store → its entry in the kernel
 *               ipcache map (checked after every datapath flush): p50/p99 latency, agent CPU per
 *               change (the worker's CPU minus the baseline round's)
 *   baseline    the same puts seen by a bare etcd watch in the same process: the floor the store
 *               and the client set, with no agent work
 *   memory      agent RSS growth per endpoint (after GC), against the store's JSON bytes per pod
 *   no-op       a forced re-list of every informer that finds nothing changed (time, events,
 *               map writes), and one drift repair (a full compare with the kernel maps)
 *
 * The store is filled by a separate process first, so the worker's memory figures hold no fill garbage.
 *
 * Run as root: node dist/bench/agent.js [--sizes 1000,10000,50000] [--rounds 5] [--changes 40]
 *   [--heap-snapshot /tmp/agent-%n.heapsnapshot]  (a V8 heap snapshot after sync, %n = pods)
 * Table on stderr, JSON on stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeHeapSnapshot } from 'node:v8';
import { execa } from 'execa';

import { EtcdClusterClient } from '../src/cluster/etcd-client.js';
import type { KubeObject } from '../src/cluster/types.js';
import { ControllerManager } from '../src/agent/controller-manager.js';
import { identityObject, makeIdentity } from '../src/agent/identity.js';
import { podIdentityLabels } from '../src/agent/labels.js';
import { EtcdIdentityAllocator } from '../src/cluster/identity-etcd.js';
import { LabEndpointSource } from '../src/cluster/endpoint-source.js';
import { Datapath } from '../src/datapath/datapath.js';
import { MapNames, ipcacheKeyCodec } from '../src/datapath/codecs.js';
import { BPF_PIN_ROOT } from '../src/defaults.js';
import { fmt, hostInfo, markdownTable, median, note, requireRoot, revision, round, runBounded } from './common.js';

const CLUSTER = 'bench';
const CLUSTER_ID = 42;
const NODE = 'bench-n0';
const NODE_IP = '172.30.0.1';
const PEER_NODES = 100;
const LABEL_SETS = 100;
const NETNS = `meshbench${process.pid.toString(16)}`;
/** The orchestrator's pin dir; its worker gets it as --pin-dir (its own pid differs). */
const PIN_DIR = join(BPF_PIN_ROOT, `bench${process.pid.toString(16)}`);

// --- synthetic cluster objects -------------------------------------------------------------

/** Pod i's address: 10.42.0.0/16 holds 65,536; pods start at 10.42.1.0 so no address ends a slice. */
function podAddress(i: number): string {
  const n = i + 256;
  return `10.${42 + (n >> 16)}.${(n >> 8) & 0xff}.${n & 0xff}`;
}
const peerNode = (i: number): string => `bench-p${i % PEER_NODES}`;

function nodeObject(name: string, ip: string, nodeId: number): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name },
    spec: { podCIDR: `10.250.${nodeId}.0/24` },
    status: { addresses: [{ type: 'InternalIP', address: ip }], meshctl: { vpc: 'a', routing: 'tunnel', nodeId } },
  };
}

function podObject(i: number, tag = 'p'): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: `${tag}${i}`, namespace: 'bench', labels: { app: `app-${i % LABEL_SETS}` }, uid: `uid-${tag}-${i}` },
    spec: { nodeName: peerNode(i), containers: [{ name: 'echo', image: 'echo', ports: [{ containerPort: 8080, name: 'http' }] }] },
    status: { phase: 'Running', podIP: podAddress(i), podIPs: [{ ip: podAddress(i) }], hostIP: `172.30.1.${i % PEER_NODES}` },
  };
}

function meshEndpointObject(pod: KubeObject, identity: number): KubeObject {
  const ip = (pod.status as { podIP: string }).podIP;
  return { apiVersion: 'meshctl.io/v1', kind: 'MeshEndpoint', metadata: { name: pod.metadata.name, namespace: 'bench' }, spec: { ip, identity, node: (pod.spec as { nodeName: string }).nodeName } };
}

const identityOf = (i: number): number => makeIdentity(CLUSTER_ID, 1000 + (i % LABEL_SETS));

async function putAll(client: EtcdClusterClient, entries: Array<[string, string]>): Promise<void> {
  for (let i = 0; i < entries.length; i += 100) {
    await client.etcd
      .if('/bench-nothing', 'Version', '==', 0)
      .then(...entries.slice(i, i + 100).map(([k, v]) => client.etcd.put(k).value(v)))
      .commit();
  }
}

// --- worker: runs inside the bench netns ----------------------------------------------------

interface WorkerResult {
  readonly size: number;
  readonly syncMs: number;
  readonly initialWrites: { updates: number; deletes: number };
  readonly rssPerEndpointB: number;
  readonly heapPerEndpointB: number;
  readonly storeBytesPerPod: number;
  readonly change: { p50: number; p99: number; cpuUsPerChange: number; samples: number };
  readonly baseline: { p50: number; p99: number; cpuUsPerChange: number; samples: number };
  readonly noop: { relistMs: number; writes: number; repairMs: number; repairWrites: number };
}

function pct(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function worker(store: string, pinDir: string, size: number, rounds: number, changes: number, storeBytesPerPod: number, heapSnapshot?: string): Promise<WorkerResult> {
  const gc = (globalThis as { gc?: () => void }).gc ?? ((): void => undefined);
  await waitForStore(store);
  const client = new EtcdClusterClient({ endpoints: [store] });
  const dp = await Datapath.open({ pinDir, nodeIp: NODE_IP, nodeId: 1, clusterId: CLUSTER_ID, routing: 'tunnel' });
  const ipcache = dp.rawMap(MapNames.ipcache);
  const identities = new EtcdIdentityAllocator(client, { clusterId: CLUSTER_ID, holder: NODE });
  const manager = new ControllerManager({
    self: { cluster: CLUSTER, clusterId: CLUSTER_ID, node: NODE, nodeIp: NODE_IP, podCidr: '10.42.0.0/24', vpc: 'a', routing: 'tunnel' },
    client,
    dp,
    identities,
    endpointSource: new LabEndpointSource(),
    log: process.env.BENCH_VERBOSE ? note : () => undefined,
    conntrackGcMs: 3_600_000,
    repairMs: 3_600_000,
  });

  // Every flush: which awaited addresses reached the kernel map.
  const waiting = new Map<string, { t0: number; resolve: (ms: number) => void }>();
  const flush = dp.flush.bind(dp);
  dp.flush = () => {
    const r = flush();
    for (const [ip, w] of waiting) {
      if (ipcache.lookup(ipcacheKeyCodec.encode({ prefixLen: 32, clusterId: 0, ip }))) {
        waiting.delete(ip);
        w.resolve(performance.now() - w.t0);
      }
    }
    return r;
  };

  note('   datapath open');
  gc();
  const memBefore = process.memoryUsage();
  const rssBefore = memBefore.rss;
  const heapBefore = memBefore.heapUsed;
  let peak = memBefore;
  const peakTimer = setInterval(() => {
    const m = process.memoryUsage();
    if (m.rss > peak.rss) peak = m;
  }, 50);
  const t0 = performance.now();
  await identities.start();
  note('   identities started');
  await manager.start();
  const syncMs = performance.now() - t0;
  note(`   synced in ${Math.round(syncMs)} ms (ready: ${manager.stats.ready}, errors: ${manager.stats.errors.length}${manager.stats.errors[0] ? `, first: ${manager.stats.errors[0].key}: ${manager.stats.errors[0].message}` : ''})`);
  await manager.idle();
  gc();
  await new Promise((r) => setTimeout(r, 200));
  gc();
  const rssPerEndpointB = (process.memoryUsage().rss - rssBefore) / size;
  const heapPerEndpointB = (process.memoryUsage().heapUsed - heapBefore) / size;
  clearInterval(peakTimer);
  {
    // Where RSS growth sits: the V8 heap's committed pages, buffers outside it, and the rest (malloc, code).
    const m = process.memoryUsage();
    const per = (a: number, b: number): number => Math.round((a - b) / size);
    note(`   per endpoint: rss ${per(m.rss, memBefore.rss)} B, heap committed ${per(m.heapTotal, memBefore.heapTotal)} B, heap used ${per(m.heapUsed, memBefore.heapUsed)} B, external ${per(m.external, memBefore.external)} B, other ${per(m.rss - m.heapTotal - m.external, memBefore.rss - memBefore.heapTotal - memBefore.external)} B; at the peak (sync): rss ${per(peak.rss, memBefore.rss)} B, heap used ${per(peak.heapUsed, memBefore.heapUsed)} B`);
  }
  if (heapSnapshot) note(`   heap snapshot: ${writeHeapSnapshot(heapSnapshot.replace('%n', String(size)))}`);

  // A bare watch for the baseline rounds.
  let watchWaiting = new Map<string, { t0: number; resolve: (ms: number) => void }>();
  const watcher = await client.etcd.watch().prefix('/registry/pods/bench/').create();
  watcher.on('put', (kv) => {
    const name = kv.key.toString().split('/').pop()!;
    const w = watchWaiting.get(name);
    if (w) {
      watchWaiting.delete(name);
      w.resolve(performance.now() - w.t0);
    }
  });

  let next = size;
  const change = async (): Promise<number> => {
    const i = next++;
    const pod = podObject(i, 'n');
    const ip = (pod.status as { podIP: string }).podIP;
    const done = new Promise<number>((resolve) => waiting.set(ip, { t0: performance.now(), resolve }));
    await client.put('pods', pod);
    return done;
  };
  const baselineChange = async (): Promise<number> => {
    const i = next++;
    const pod = { ...podObject(i, 'w'), spec: { nodeName: 'nowhere', containers: [] } };
    pod.status = { phase: 'Pending' };
    const done = new Promise<number>((resolve) => watchWaiting.set(pod.metadata.name, { t0: performance.now(), resolve }));
    await client.put('pods', pod);
    return done;
  };
  const runRound = async (fn: () => Promise<number>): Promise<{ ms: number[]; cpuUs: number }> => {
    const cpu0 = process.cpuUsage();
    const ms: number[] = [];
    for (let k = 0; k < changes; k++) {
      ms.push(await fn());
      await new Promise((r) => setTimeout(r, 5));
    }
    const cpu = process.cpuUsage(cpu0);
    return { ms, cpuUs: (cpu.user + cpu.system) / changes };
  };
  note('   warm-up');
  await runRound(change); // warm-up
  await runRound(baselineChange);
  const agentMs: number[] = [];
  const baseMs: number[] = [];
  const agentCpu: number[] = [];
  const baseCpu: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? [true, false] : [false, true];
    for (const agentRound of order) {
      const res = await runRound(agentRound ? change : baselineChange);
      (agentRound ? agentMs : baseMs).push(...res.ms);
      (agentRound ? agentCpu : baseCpu).push(res.cpuUs);
    }
  }
  await watcher.cancel();
  watchWaiting = new Map();

  // No-op resync: every informer re-lists and finds nothing new; then one drift repair.
  const w0 = dp.writes.updates + dp.writes.deletes;
  const tr = performance.now();
  await Promise.all(Object.values(manager.informers).map((inf) => inf.resync()));
  await manager.idle();
  const relistMs = performance.now() - tr;
  const writes = dp.writes.updates + dp.writes.deletes - w0;
  const tp = performance.now();
  const rep = dp.repair();
  const repairMs = performance.now() - tp;

  manager.stop();
  await identities.stop();
  dp.close();
  await client.close();
  const cpuBase = median(baseCpu);
  return {
    size,
    syncMs: round(syncMs, 0),
    initialWrites: manager.stats.initialWrites ?? { updates: 0, deletes: 0 },
    rssPerEndpointB: round(rssPerEndpointB, 0),
    heapPerEndpointB: round(heapPerEndpointB, 0),
    storeBytesPerPod,
    change: { p50: round(pct(agentMs, 50)), p99: round(pct(agentMs, 99)), cpuUsPerChange: round(median(agentCpu) - cpuBase, 0), samples: agentMs.length },
    baseline: { p50: round(pct(baseMs, 50)), p99: round(pct(baseMs, 99)), cpuUsPerChange: round(cpuBase, 0), samples: baseMs.length },
    noop: { relistMs: round(relistMs, 0), writes, repairMs: round(repairMs, 0), repairWrites: rep.updated + rep.deleted },
  };
}

// --- orchestrator ----------------------------------------------------------------------------

/** etcd runs inside the bench namespace, where the worker (and so the agent) reaches it on its loopback. */
function startEtcd(dir: string, port: number): ChildProcess {
  return spawn('nsenter', [`--net=/run/netns/${NETNS}`, 'etcd',
    '--name', 'bench', '--data-dir', join(dir, 'etcd'),
    '--listen-client-urls', `http://127.0.0.1:${port}`, '--advertise-client-urls', `http://127.0.0.1:${port}`,
    '--listen-peer-urls', `http://127.0.0.1:${port + 1}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${port + 1}`,
    '--initial-cluster', `bench=http://127.0.0.1:${port + 1}`, '--quota-backend-bytes', String(4 * 1024 ** 3),
    '--log-level', 'error',
  ], { stdio: 'ignore' });
}

async function waitForStore(store: string): Promise<void> {
  const client = new EtcdClusterClient({ endpoints: [store], timeoutMs: 1000 });
  try {
    for (let i = 0; i < 100; i++) {
      try {
        await client.etcd.get('/x').exec();
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    throw new Error('etcd did not start');
  } finally {
    await client.close();
  }
}

async function fillStore(store: string, size: number): Promise<number> {
  const client = new EtcdClusterClient({ endpoints: [store], timeoutMs: 60_000 });
  try {
    const entries: Array<[string, string]> = [];
    entries.push(['/registry/namespaces/bench', JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'bench' } })]);
    entries.push([`/registry/nodes/${NODE}`, JSON.stringify(nodeObject(NODE, NODE_IP, 1))]);
    for (let n = 0; n < PEER_NODES; n++) entries.push([`/registry/nodes/bench-p${n}`, JSON.stringify(nodeObject(`bench-p${n}`, `172.30.1.${n + 2}`, n + 2))]);
    for (let l = 0; l < LABEL_SETS; l++) {
      const labels = podIdentityLabels(podObject(l), CLUSTER);
      const id = identityOf(l);
      entries.push([`/registry/meshidentities/${id}`, JSON.stringify(identityObject(id, labels, new Date()))]);
    }
    let podBytes = 0;
    for (let i = 0; i < size; i++) {
      const pod = podObject(i);
      const text = JSON.stringify(pod);
      podBytes += text.length;
      entries.push([`/registry/pods/bench/${pod.metadata.name}`, text]);
      entries.push([`/registry/meshendpoints/bench/${pod.metadata.name}`, JSON.stringify(meshEndpointObject(pod, identityOf(i)))]);
    }
    await putAll(client, entries);
    return Math.round(podBytes / size);
  } finally {
    await client.close();
  }
}

async function setupNetns(): Promise<void> {
  await execa('ip', ['netns', 'add', NETNS]);
  await execa('ip', ['-n', NETNS, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
  await execa('ip', ['-n', NETNS, 'link', 'set', 'eth0p', 'up']);
  await execa('ip', ['-n', NETNS, 'addr', 'add', `${NODE_IP}/16`, 'dev', 'eth0']);
  await execa('ip', ['-n', NETNS, 'link', 'set', 'eth0', 'up']);
  await execa('ip', ['-n', NETNS, 'link', 'set', 'lo', 'up']);
}

async function cleanup(dirs: string[]): Promise<void> {
  await execa('ip', ['netns', 'del', NETNS], { reject: false });
  rmSync(PIN_DIR, { recursive: true, force: true });
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      worker: { type: 'boolean', default: false },
      fill: { type: 'boolean', default: false },
      'store-bytes': { type: 'string', default: '0' },
      store: { type: 'string' },
      'pin-dir': { type: 'string' },
      size: { type: 'string' },
      sizes: { type: 'string', default: '1000,10000,50000' },
      rounds: { type: 'string', default: '5' },
      changes: { type: 'string', default: '40' },
      'heap-snapshot': { type: 'string' },
    },
  });
  const rounds = Number(values.rounds);
  const changes = Number(values.changes);
  if (values.fill) {
    await waitForStore(values.store!);
    process.stdout.write(`${await fillStore(values.store!, Number(values.size))}\n`);
    process.exit(0);
  }
  if (values.worker) {
    const r = await worker(values.store!, values['pin-dir']!, Number(values.size), rounds, changes, Number(values['store-bytes']), values['heap-snapshot']);
    process.stdout.write(`${JSON.stringify(r)}\n`);
    process.exit(0);
  }
  requireRoot('bench/agent', 'it makes a network namespace and loads BPF programs');
  const sizes = values.sizes!.split(',').map(Number);
  const dirs: string[] = [];
  let etcd: ChildProcess | null = null;
  const results: WorkerResult[] = [];
  await runBounded(
    'bench/agent',
    40 * 60_000,
    async (signal) => {
      await cleanup([]);
      for (const size of sizes) {
        if (signal.aborted) return false;
        const dir = mkdtempSync(join(tmpdir(), 'meshctl-bench-agent-'));
        dirs.push(dir);
        const port = 23790 + (process.pid % 100) * 2;
        await setupNetns();
        etcd = startEtcd(dir, port);
        const store = `http://127.0.0.1:${port}`;
        note(`⌛ ${size} pods: store, agent sync and ${rounds} rounds of ${changes} changes`);
        // The store is filled by a process of its own, so the worker's RSS before the agent starts
        // holds none of the fill's garbage (which the agent's growth would otherwise reuse unseen).
        note(`   filling the store`);
        const fill = await execa('nsenter', [`--net=/run/netns/${NETNS}`, process.execPath, process.argv[1], '--fill', '--store', store, '--size', String(size)], { reject: false, cancelSignal: signal, stderr: 'inherit' });
        if (fill.exitCode !== 0) throw new Error(`filling the store for ${size} pods exited ${fill.exitCode}`);
        const storeBytes = String(fill.stdout).trim().split('\n').pop()!;
        const w = await execa('nsenter', [`--net=/run/netns/${NETNS}`, process.execPath, '--expose-gc', process.argv[1], '--worker', '--store', store, '--pin-dir', PIN_DIR, '--size', String(size), '--store-bytes', storeBytes, '--rounds', String(rounds), '--changes', String(changes), ...(values['heap-snapshot'] ? ['--heap-snapshot', values['heap-snapshot']] : [])], { reject: false, cancelSignal: signal, stderr: 'inherit' });
        if (w.exitCode !== 0) throw new Error(`worker for ${size} pods exited ${w.exitCode}`);
        results.push(JSON.parse(String(w.stdout).trim().split('\n').pop()!) as WorkerResult);
        etcd.kill('SIGKILL');
        etcd = null;
        await cleanup([dir]);
      }
      const rows = results.map((r) => [
        String(r.size),
        `${fmt(r.change.p50)} / ${fmt(r.change.p99)}`,
        `${fmt(r.baseline.p50)} / ${fmt(r.baseline.p99)}`,
        fmt(r.change.cpuUsPerChange, 0),
        `${fmt(r.rssPerEndpointB, 0)} (heap ${fmt(r.heapPerEndpointB, 0)})`,
        fmt(r.storeBytesPerPod, 0),
        fmt(r.syncMs, 0),
        `${r.noop.relistMs} ms, ${r.noop.writes} writes`,
        `${r.noop.repairMs} ms, ${r.noop.repairWrites} writes`,
      ]);
      note('');
      note(markdownTable(['pods', 'change→map p50/p99 ms', 'baseline watch p50/p99 ms', 'agent CPU µs/change', 'RSS B/endpoint', 'store B/pod', 'initial sync ms', 'no-op re-list', 'drift repair'], rows));
      note(`targets: change p99 ≤ 20 ms and flat across sizes; RSS ≤ 1024 B per endpoint`);
      process.stdout.write(`${JSON.stringify({ bench: 'agent', revision: revision(), host: hostInfo(), rounds, changes, results }, null, 2)}\n`);
      return true;
    },
    async () => {
      const e = etcd as ChildProcess | null;
      e?.kill('SIGKILL');
      await cleanup(dirs);
    },
  );
}

await main();
