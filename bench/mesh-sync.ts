/**
 * Cluster mesh benchmark: what remote endpoints cost one agent's remote side.
 *
 * For each case (endpoints × peers) it starts one real TLS etcd per peer (client-certificate
 * auth, on the loopback of a bench network namespace), fills each with a synthetic peer's mesh/v1
 * keys (cluster config, 10–100 nodes, 100 identities, its share of the pod addresses, sync
 * markers) and then, in rounds that alternate with a baseline, runs a worker process inside the
 * namespace with the agent's code path: RemoteClient per peer → PeerApplier → Datapath on real
 * pinned maps (a fresh pin dir per round), flushing after every batch:
 *
 *   sync        start → the kernel ipcache holds every remote endpoint (per the datapath's shadow of
 *               its own writes), and RSS / heap growth per endpoint after GC
 *   baseline    a plain paged list of the same keys from the same etcds (no validation, no maps)
 *   change      with everything held: one pod address put in a peer's etcd → its entry in the
 *               kernel map (looked up after every flush), against a bare watch of the same puts
 *
 * Run as root: node dist/bench/mesh-sync.js [--cases 1000x1,50000x1,50000x20,200000x1,200000x20]
 * [--rounds 5] [--changes 30]. Table on stderr, JSON on stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import forge from 'node-forge';
import { Etcd3 } from 'etcd3';

import { PeerApplier } from '../src/agent/controllers/remote.js';
import { rangePrefix } from '../src/cluster/etcd-client.js';
import { Datapath } from '../src/datapath/datapath.js';
import { MapNames, ipcacheKeyCodec } from '../src/datapath/codecs.js';
import { BPF_PIN_ROOT } from '../src/defaults.js';
import type { MeshPeerSpec } from '../src/mesh/peers.js';
import { RemoteClient } from '../src/mesh/remote-client.js';
import { meshKeys } from '../src/mesh/schema.js';
import { parseCidr } from '../src/util/cidr.js';
import { fmt, hostInfo, markdownTable, median, note, requireRoot, revision, round, runBounded } from './common.js';

const NETNS = `meshbench${process.pid.toString(16)}m`;
const NODE_IP = '172.29.0.1';
const PIN_BASE = join(BPF_PIN_ROOT, `benchm${process.pid.toString(16)}`);
/** The orchestrator's etcd ports; its workers (other pids) get them through the environment. */
const BASE_PORT = Number(process.env.MESH_BENCH_PORT ?? 24000 + (process.pid % 50) * 60);
process.env.MESH_BENCH_PORT = String(BASE_PORT);

interface Creds {
  ca: string;
  server: { cert: string; key: string };
  client: { cert: string; key: string };
}

function keyPair(): { pem: string; pub: forge.pki.PublicKey; priv: forge.pki.PrivateKey } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  return { pem, priv: forge.pki.privateKeyFromPem(pem), pub: forge.pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }).toString()) };
}

function makeCreds(): Creds {
  const caKeys = keyPair();
  const name = [{ name: 'commonName', value: 'bench ca' }];
  const ca = forge.pki.createCertificate();
  ca.publicKey = caKeys.pub;
  ca.serialNumber = '01';
  ca.validity.notBefore = new Date(Date.now() - 60_000);
  ca.validity.notAfter = new Date(Date.now() + 86_400_000);
  ca.setSubject(name);
  ca.setIssuer(name);
  ca.setExtensions([{ name: 'basicConstraints', cA: true, critical: true }, { name: 'keyUsage', keyCertSign: true, critical: true }]);
  ca.sign(caKeys.priv, forge.md.sha256.create());
  const issue = (cn: string, serial: string, server: boolean): { cert: string; key: string } => {
    const k = keyPair();
    const c = forge.pki.createCertificate();
    c.publicKey = k.pub;
    c.serialNumber = serial;
    c.validity.notBefore = new Date(Date.now() - 60_000);
    c.validity.notAfter = new Date(Date.now() + 86_400_000);
    c.setSubject([{ name: 'commonName', value: cn }]);
    c.setIssuer(name);
    const ext: any[] = [{ name: 'extKeyUsage', serverAuth: server, clientAuth: true }];
    if (server) ext.push({ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] });
    c.setExtensions(ext);
    c.sign(caKeys.priv, forge.md.sha256.create());
    return { cert: forge.pki.certificateToPem(c), key: k.pem };
  };
  return { ca: forge.pki.certificateToPem(ca), server: issue('apiserver', '02', true), client: issue('remote-bench', '03', false) };
}

// --- synthetic peers -------------------------------------------------------------------------

const peerName = (k: number): string => `p${k}`;
const peerId = (k: number): number => 10 + k;
/** One peer: 10.64.0.0/10 (4M addresses); twenty: 10.(64+k*4).0.0/14 each. */
function peerCidr(k: number, peers: number): string {
  return peers === 1 ? '10.64.0.0/10' : `10.${64 + k * 4}.0.0/14`;
}
function podAddress(k: number, peers: number, i: number): string {
  const base = parseCidr(peerCidr(k, peers))!.network + 256 + i;
  return [24, 16, 8, 0].map((s) => Math.floor(base / 2 ** s) % 256).join('.');
}
const nodesPerPeer = (peers: number): number => (peers === 1 ? 100 : 10);
const identityOf = (k: number, i: number): number => (peerId(k) << 16) | (1000 + (i % 100));

function spec(k: number, creds: Creds): MeshPeerSpec {
  return { cluster: peerName(k), clusterId: peerId(k), endpoints: [`https://127.0.0.1:${BASE_PORT + 2 * k}`], caBundle: creds.ca, cert: creds.client.cert, key: creds.client.key };
}

function etcdClient(k: number, creds: Creds): Etcd3 {
  return new Etcd3({ hosts: [`https://127.0.0.1:${BASE_PORT + 2 * k}`], credentials: { rootCertificate: Buffer.from(creds.ca), certChain: Buffer.from(creds.client.cert), privateKey: Buffer.from(creds.client.key) } });
}

async function fillPeer(k: number, peers: number, count: number, creds: Creds): Promise<void> {
  const c = etcdClient(k, creds);
  const p = peerName(k);
  try {
    const kv: Array<[string, string]> = [];
    kv.push([meshKeys.clusterConfig(p), JSON.stringify({ version: 1, name: p, id: peerId(k), podCidrs: [peerCidr(k, peers)], serviceCidr: '10.255.0.0/16', routing: 'tunnel', vpcs: ['x'], encryption: 'none', capabilities: { syncedMarkers: true, maxConnectedClusters: 255 } })]);
    for (let n = 0; n < nodesPerPeer(peers); n++) kv.push([meshKeys.node(p, `${p}-n${n}`), JSON.stringify({ version: 1, cluster: p, name: `${p}-n${n}`, ip: `172.28.${k}.${n + 1}`, podCidrs: [], vpc: 'x', nodeId: n + 1 })]);
    for (let i = 0; i < 100; i++) kv.push([meshKeys.identity(p, identityOf(k, i)), JSON.stringify({ version: 1, cluster: p, id: identityOf(k, i), labels: { app: `app-${i}`, 'io.cilium.k8s.policy.cluster': p } })]);
    for (let i = 0; i < count; i++) {
      const ip = podAddress(k, peers, i);
      kv.push([meshKeys.ip(p, ip), JSON.stringify({ version: 1, cluster: p, ip, identity: identityOf(k, i), node: `${p}-n${i % nodesPerPeer(peers)}` })]);
    }
    for (const kind of ['nodes', 'identities', 'ip']) kv.push([meshKeys.synced(p, kind as 'ip'), JSON.stringify({ version: 1, cluster: p, kind, at: new Date().toISOString() })]);
    for (let i = 0; i < kv.length; i += 128) {
      await c.if('bench-nothing', 'Version', '==', 0).then(...kv.slice(i, i + 128).map(([key, v]) => c.put(key).value(v))).commit();
    }
    await c.put(meshKeys.heartbeat(p)).value(JSON.stringify({ version: 1, cluster: p, at: new Date().toISOString(), seq: 0 }));
  } finally {
    c.close();
  }
}

// --- worker (inside the bench netns) ---------------------------------------------------------

interface RoundResult {
  readonly syncMs: number;
  readonly baselineMs: number;
  readonly rssPerEndpointB: number;
  readonly heapPerEndpointB: number;
  readonly change?: { p50: number; p99: number; baseP50: number; baseP99: number };
}

function pct(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function worker(o: { endpoints: number; peers: number; pinDir: string; changes: number; round: number; credsFile: string }): Promise<RoundResult> {
  const gc = (globalThis as { gc?: () => void }).gc ?? ((): void => undefined);
  const creds = JSON.parse((await import('node:fs')).readFileSync(o.credsFile, 'utf8')) as Creds;
  gc();
  const dp = await Datapath.open({ pinDir: o.pinDir, nodeIp: NODE_IP, nodeId: 1, clusterId: 1, routing: 'tunnel', sizes: { ipcache: 524_288 } });
  const ipcache = dp.rawMap(MapNames.ipcache);
  const waiting = new Map<string, { t0: number; resolve: (ms: number) => void }>();
  let flushQueued = false;
  const flush = (): void => {
    flushQueued = false;
    dp.flush();
    for (const [ip, w] of waiting) {
      if (ipcache.lookup(ipcacheKeyCodec.encode({ prefixLen: 32, clusterId: 0, ip }))) {
        waiting.delete(ip);
        w.resolve(performance.now() - w.t0);
      }
    }
  };
  const requestFlush = (): void => {
    if (flushQueued) return;
    flushQueued = true;
    setImmediate(flush);
  };
  await new Promise((r) => setTimeout(r, 200));
  gc();
  const rss0 = process.memoryUsage().rss;
  const heap0 = process.memoryUsage().heapUsed;
  const local = { podCidrs: [parseCidr('10.1.0.0/16')!], isLocalNodeIp: () => false };
  const clients: RemoteClient[] = [];
  const t0 = performance.now();
  for (let k = 0; k < o.peers; k++) {
    const applier = new PeerApplier(peerName(k), peerId(k), { routing: 'tunnel', vpc: 'bench' }, dp, { requestFlush, onStatus: () => undefined });
    const client = new RemoteClient({ peer: spec(k, creds), local, sink: applier });
    applier.client = client;
    clients.push(client);
    client.start();
  }
  const want = o.endpoints + o.peers * nodesPerPeer(o.peers);
  while ((dp.mapFill()[MapNames.ipcache] ?? 0) < want) await new Promise((r) => setTimeout(r, 5));
  const syncMs = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 300));
  gc();
  await new Promise((r) => setTimeout(r, 100));
  gc();
  const rssPerEndpointB = (process.memoryUsage().rss - rss0) / o.endpoints;
  const heapPerEndpointB = (process.memoryUsage().heapUsed - heap0) / o.endpoints;

  let change: RoundResult['change'];
  if (o.changes > 0) {
    const w = etcdClient(0, creds);
    const p = peerName(0);
    const agentMs: number[] = [];
    const baseMs: number[] = [];
    const watcher = await w.watch().prefix(`mesh/v1/ip/${p}/`).create();
    const seen = new Map<string, (ms: number) => void>();
    watcher.on('put', (kv) => seen.get(kv.key.toString())?.(0));
    for (let i = 0; i < o.changes; i++) {
      const ip = podAddress(0, o.peers, o.endpoints / o.peers + 1000 + o.round * o.changes + i);
      const key = meshKeys.ip(p, ip);
      const value = JSON.stringify({ version: 1, cluster: p, ip, identity: identityOf(0, i), node: `${p}-n0` });
      const tb = performance.now();
      // Baseline and agent see the same put: the bare watch's delay, and the map's.
      const base = new Promise<number>((resolve) => seen.set(key, () => resolve(performance.now() - tb)));
      const agent = new Promise<number>((resolve) => waiting.set(ip, { t0: tb, resolve }));
      await w.put(key).value(value);
      baseMs.push(await base);
      agentMs.push(await agent);
      seen.delete(key);
      await new Promise((r) => setTimeout(r, 20));
    }
    await watcher.cancel();
    w.close();
    change = { p50: round(pct(agentMs, 50)), p99: round(pct(agentMs, 99)), baseP50: round(pct(baseMs, 50)), baseP99: round(pct(baseMs, 99)) };
  }
  for (const c of clients) c.stop();
  dp.close();
  // Baseline after the agent's path (so its garbage is not in the RSS figures): a plain paged list of the same keys.
  const t0b = performance.now();
  for (let k = 0; k < o.peers; k++) {
    const c = etcdClient(k, creds);
    const r = await rangePrefix(c, `mesh/v1/ip/${peerName(k)}/`);
    if (r.kvs.length < o.endpoints / o.peers) throw new Error(`baseline: ${r.kvs.length} keys`);
    c.close();
  }
  const baselineMs = performance.now() - t0b;
  return { syncMs: round(syncMs, 0), baselineMs: round(baselineMs, 0), rssPerEndpointB: round(rssPerEndpointB, 0), heapPerEndpointB: round(heapPerEndpointB, 0), change };
}

// --- orchestrator ------------------------------------------------------------------------------

function startEtcd(dir: string, k: number): ChildProcess {
  const port = BASE_PORT + 2 * k;
  const url = `https://127.0.0.1:${port}`;
  const peer = `http://127.0.0.1:${port + 1}`;
  return spawn('nsenter', [`--net=/run/netns/${NETNS}`, 'etcd', '--name', `p${k}`, '--data-dir', join(dir, `etcd${k}`), '--listen-client-urls', url, '--advertise-client-urls', url, '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `p${k}=${peer}`, '--cert-file', join(dir, 'server.crt'), '--key-file', join(dir, 'server.key'), '--trusted-ca-file', join(dir, 'ca.crt'), '--client-cert-auth', '--quota-backend-bytes', String(4 * 1024 ** 3), '--log-level', 'error'], { stdio: 'ignore' });
}

async function inNetns<T>(args: string[], signal: AbortSignal): Promise<T> {
  const w = await execa('nsenter', [`--net=/run/netns/${NETNS}`, process.execPath, '--expose-gc', process.argv[1], '--worker', ...args], { reject: false, cancelSignal: signal, stderr: 'inherit' });
  if (w.exitCode !== 0) throw new Error(`worker ${args.join(' ')} exited ${w.exitCode}`);
  return JSON.parse(String(w.stdout).trim().split('\n').pop()!) as T;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      worker: { type: 'boolean', default: false },
      fill: { type: 'boolean', default: false },
      endpoints: { type: 'string' },
      peers: { type: 'string' },
      peer: { type: 'string' },
      'pin-dir': { type: 'string' },
      creds: { type: 'string' },
      cases: { type: 'string', default: '1000x1,50000x1,50000x20,200000x1,200000x20' },
      rounds: { type: 'string', default: '5' },
      round: { type: 'string', default: '0' },
      changes: { type: 'string', default: '30' },
    },
  });
  if (values.worker) {
    const creds = values.creds!;
    if (values.fill) {
      const c = JSON.parse((await import('node:fs')).readFileSync(creds, 'utf8')) as Creds;
      const peers = Number(values.peers);
      await Promise.all(Array.from({ length: peers }, (_, k) => fillPeer(k, peers, Number(values.endpoints) / peers, c)));
      process.stdout.write('{}\n');
      process.exit(0);
    }
    const r = await worker({ endpoints: Number(values.endpoints), peers: Number(values.peers), pinDir: values['pin-dir']!, changes: Number(values.changes), round: Number(values.round), credsFile: creds });
    process.stdout.write(`${JSON.stringify(r)}\n`);
    process.exit(0);
  }
  requireRoot('bench/mesh-sync', 'it makes a network namespace and loads BPF programs');
  const cases = values.cases!.split(',').map((c) => c.split('x').map(Number) as [number, number]);
  const rounds = Number(values.rounds);
  const changes = Number(values.changes);
  const dir = mkdtempSync(join(tmpdir(), 'meshctl-bench-mesh-'));
  let etcds: ChildProcess[] = [];
  const results: Array<{ endpoints: number; peers: number; rounds: RoundResult[] }> = [];
  const cleanup = async (): Promise<void> => {
    for (const e of etcds) e.kill('SIGKILL');
    etcds = [];
    await execa('ip', ['netns', 'del', NETNS], { reject: false });
    rmSync(PIN_BASE, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  };
  await runBounded(
    'bench/mesh-sync',
    45 * 60_000,
    async (signal) => {
      const creds = makeCreds();
      writeFileSync(join(dir, 'ca.crt'), creds.ca);
      writeFileSync(join(dir, 'server.crt'), creds.server.cert);
      writeFileSync(join(dir, 'server.key'), creds.server.key, { mode: 0o600 });
      writeFileSync(join(dir, 'creds.json'), JSON.stringify(creds), { mode: 0o600 });
      await execa('ip', ['netns', 'add', NETNS]);
      await execa('ip', ['-n', NETNS, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
      await execa('ip', ['-n', NETNS, 'link', 'set', 'eth0p', 'up']);
      await execa('ip', ['-n', NETNS, 'addr', 'add', `${NODE_IP}/16`, 'dev', 'eth0']);
      await execa('ip', ['-n', NETNS, 'link', 'set', 'eth0', 'up']);
      await execa('ip', ['-n', NETNS, 'link', 'set', 'lo', 'up']);
      for (const [endpoints, peers] of cases) {
        if (signal.aborted) return false;
        await Promise.all(etcds.map((e) => (e.exitCode !== null ? undefined : new Promise((r) => { e.once('exit', r); e.kill('SIGKILL'); }))));
        etcds = [];
        for (let k = 0; k < 20; k++) rmSync(join(dir, `etcd${k}`), { recursive: true, force: true });
        for (let k = 0; k < peers; k++) etcds.push(startEtcd(dir, k));
        await new Promise((r) => setTimeout(r, 1500));
        note(`⌛ ${endpoints} endpoints from ${peers} peer(s): filling`);
        const common = ['--endpoints', String(endpoints), '--peers', String(peers), '--creds', join(dir, 'creds.json')];
        for (let a = 0; ; a++) {
          try {
            await inNetns(['--fill', ...common], signal);
            break;
          } catch (err) {
            if (a > 5) throw err;
            await new Promise((r) => setTimeout(r, 1000));
          }
        }
        const rs: RoundResult[] = [];
        // Round 0 warms up (compiled objects, etcd caches) and is not reported.
        for (let r = 0; r <= rounds; r++) {
          const pinDir = join(PIN_BASE, `r${endpoints}x${peers}-${r}`);
          const res = await inNetns<RoundResult>([...common, '--pin-dir', pinDir, '--changes', String(r === 0 ? 0 : changes), '--round', String(r)], signal);
          rmSync(pinDir, { recursive: true, force: true });
          note(`   round ${r}: sync ${res.syncMs} ms (baseline list ${res.baselineMs} ms), RSS ${res.rssPerEndpointB} B/endpoint${res.change ? `, change p50 ${res.change.p50} ms` : ''}`);
          if (r > 0) rs.push(res);
        }
        results.push({ endpoints, peers, rounds: rs });
      }
      const rows = results.map((x) => {
        const m = (f: (r: RoundResult) => number): number => median(x.rounds.map(f));
        const ch = x.rounds.filter((r) => r.change);
        return [
          String(x.endpoints),
          String(x.peers),
          fmt(m((r) => r.syncMs), 0),
          fmt(m((r) => r.baselineMs), 0),
          `${fmt(m((r) => r.rssPerEndpointB), 0)} (heap ${fmt(m((r) => r.heapPerEndpointB), 0)})`,
          ch.length ? `${fmt(median(ch.map((r) => r.change!.p50)))} / ${fmt(median(ch.map((r) => r.change!.p99)))}` : '-',
          ch.length ? `${fmt(median(ch.map((r) => r.change!.baseP50)))} / ${fmt(median(ch.map((r) => r.change!.baseP99)))}` : '-',
        ];
      });
      note('');
      note(markdownTable(['endpoints', 'peers', 'sync→map ms', 'baseline list ms', 'RSS B/endpoint', 'change→map p50/p99 ms', 'baseline watch p50/p99 ms'], rows));
      note('targets: 50k synced ≤ 5 s; ≤ 1024 B per endpoint; near-linear 50k→200k; change latency flat from 1k to 200k');
      process.stdout.write(`${JSON.stringify({ bench: 'mesh-sync', revision: revision(), host: hostInfo(), rounds, changes, results }, null, 2)}\n`);
      return true;
    },
    cleanup,
  );
  await cleanup();
}

await main();
