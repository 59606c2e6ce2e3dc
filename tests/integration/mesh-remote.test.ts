/**
 * Remote clusters in every agent, on a real lab cluster c1 (2 nodes) and a synthetic peer c2: a
 * real TLS etcd with client-certificate auth that this test runs in c1's control-plane namespace
 * (on c1's VPC, so c1's nodes reach it) and fills with c2's mesh/v1 keys as an export would. The
 * MeshPeer c2 goes into c1's store; the agents' work is checked in their pinned maps, their
 * published status and their metrics.
 *
 * Own state dir (and so own name prefix); cleaned up before and after. Needs root.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';
import { Etcd3 } from 'etcd3';
import { TestLab, eventually, requireRoot, sh, sleep } from '../helpers/lab.js';
import { labPrefix } from '../../src/lab/state.js';
import { pidAlive } from '../../src/util/exec.js';
import { BpfMap } from '../../src/datapath/addon.js';
import { ipcacheInfoCodec, ipcacheKeyCodec, nodeInfoCodec, nodeKeyCodec } from '../../src/datapath/codecs.js';
import { EtcdClusterClient } from '../../src/cluster/etcd-client.js';
import { meshPeerObject } from '../../src/mesh/peers.js';
import { meshKeys } from '../../src/mesh/schema.js';

const home = mkdtempSync(join(tmpdir(), 'meshctl-test-remote-'));
const lab = new TestLab(home);
const prefix = labPrefix(home);
const C1 = 'c1';
const NODES = ['c1-n1', 'c1-n2'];
const PORT = 32379;
const work = join(home, 'c2-etcd');

interface Lab {
  cpNetns: string;
  vpcIp: string;
  mgmtIp: string;
  store: string;
  nodes: Array<{ name: string; netns: string; ip: string }>;
}
let L: Lab;
let etcd: ChildProcess | null = null;
let writer: Etcd3 | null = null;
let beat: NodeJS.Timeout | null = null;
let seq = 0;
let creds: { ca: string; server: { cert: string; key: string }; root: { cert: string; key: string }; peer: { cert: string; key: string } };

// --- certificates (node-forge, keys from node:crypto) ---------------------------------------

function keyPair(): { pem: string; pub: forge.pki.PublicKey; priv: forge.pki.PrivateKey } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  return { pem, priv: forge.pki.privateKeyFromPem(pem), pub: forge.pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }).toString()) };
}

function makeCerts(ips: string[]): typeof creds {
  const caKeys = keyPair();
  const ca = forge.pki.createCertificate();
  ca.publicKey = caKeys.pub;
  ca.serialNumber = '01';
  ca.validity.notBefore = new Date(Date.now() - 60_000);
  ca.validity.notAfter = new Date(Date.now() + 86_400_000);
  const caName = [{ name: 'commonName', value: 'test mesh ca' }];
  ca.setSubject(caName);
  ca.setIssuer(caName);
  ca.setExtensions([{ name: 'basicConstraints', cA: true, critical: true }, { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true }]);
  ca.sign(caKeys.priv, forge.md.sha256.create());
  let serial = 2;
  const issue = (cn: string, server: boolean): { cert: string; key: string } => {
    const k = keyPair();
    const c = forge.pki.createCertificate();
    c.publicKey = k.pub;
    c.serialNumber = (serial++).toString(16).padStart(2, '0');
    c.validity.notBefore = new Date(Date.now() - 60_000);
    c.validity.notAfter = new Date(Date.now() + 86_400_000);
    c.setSubject([{ name: 'commonName', value: cn }]);
    c.setIssuer(caName);
    const ext: any[] = [{ name: 'keyUsage', digitalSignature: true, keyEncipherment: true }, { name: 'extKeyUsage', serverAuth: server, clientAuth: true }];
    if (server) ext.push({ name: 'subjectAltName', altNames: ips.map((ip) => ({ type: 7, ip })) });
    c.setExtensions(ext);
    c.sign(caKeys.priv, forge.md.sha256.create());
    return { cert: forge.pki.certificateToPem(c), key: k.pem };
  };
  return { ca: forge.pki.certificateToPem(ca), server: issue('c2-apiserver', true), root: issue('root', false), peer: issue('remote-c1', false) };
}

// --- the synthetic peer c2 -------------------------------------------------------------------

const config = { version: 1, name: 'c2', id: 2, podCidrs: ['10.2.0.0/16'], serviceCidr: '10.97.0.0/16', routing: 'tunnel', vpcs: ['b'], encryption: 'none', capabilities: { syncedMarkers: true, maxConnectedClusters: 255 } };
const node = (i: number): [string, unknown] => [meshKeys.node('c2', `c2-n${i}`), { version: 1, cluster: 'c2', name: `c2-n${i}`, ip: `172.31.200.${10 + i}`, podCidrs: [`10.2.${i}.0/24`], vpc: 'b', nodeId: i }];
const ID_A = (2 << 16) | 300;
const ID_B = (2 << 16) | 301;
const identity = (id: number, app: string): [string, unknown] => [meshKeys.identity('c2', id), { version: 1, cluster: 'c2', id, labels: { app, 'io.cilium.k8s.policy.cluster': 'c2', 'io.kubernetes.pod.namespace': 'default' } }];
const ipe = (ip: string, id: number, n: string): [string, unknown] => [meshKeys.ip('c2', ip), { version: 1, cluster: 'c2', ip, identity: id, node: n }];
const marker = (kind: string): [string, unknown] => [meshKeys.synced('c2', kind as 'ip'), { version: 1, cluster: 'c2', kind, at: new Date().toISOString() }];

/** Valid pod addresses of c2 at start: 10.2.1.1-20 on c2-n1, 10.2.2.1-20 on c2-n2. */
const VALID = [...Array.from({ length: 20 }, (_, i) => `10.2.1.${i + 1}`), ...Array.from({ length: 20 }, (_, i) => `10.2.2.${i + 1}`)];
/** Values each validation must reject, by key address. */
const BAD: Array<{ ip: string; value: unknown; reason: string }> = [
  { ip: '10.3.0.1', value: ipe('10.3.0.1', ID_A, 'c2-n1')[1], reason: 'ip-outside-pod-cidr' },
  { ip: '10.2.1.200', value: ipe('10.2.1.200', (3 << 16) | 5, 'c2-n1')[1], reason: 'identity-cluster' },
  { ip: '10.2.1.201', value: ipe('10.2.1.201', 2, 'c2-n1')[1], reason: 'reserved-identity' },
  { ip: '10.1.1.50', value: ipe('10.1.1.50', ID_A, 'c2-n1')[1], reason: 'local-address' },
  { ip: '10.2.1.202', value: 'not json {', reason: 'not-json' },
];

async function put(entries: Array<[string, unknown]>): Promise<void> {
  for (const [k, v] of entries) await writer!.put(k).value(typeof v === 'string' ? v : JSON.stringify(v));
}

async function startEtcd(listen: 'all' | 'mgmt-only'): Promise<void> {
  const urls = listen === 'all' ? `https://${L.vpcIp}:${PORT},https://${L.mgmtIp}:${PORT}` : `https://${L.mgmtIp}:${PORT}`;
  const d = work;
  etcd = spawn(
    'ip',
    ['netns', 'exec', L.cpNetns, 'etcd', '--name', 'c2', '--data-dir', join(d, 'data'), '--listen-client-urls', urls, '--advertise-client-urls', urls, '--listen-peer-urls', 'http://127.0.0.1:32390', '--initial-advertise-peer-urls', 'http://127.0.0.1:32390', '--initial-cluster', 'c2=http://127.0.0.1:32390', '--cert-file', join(d, 'server.crt'), '--key-file', join(d, 'server.key'), '--trusted-ca-file', join(d, 'ca.crt'), '--client-cert-auth', '--log-level', 'warn', '--logger', 'zap'],
    { stdio: ['ignore', 'ignore', 'ignore'] },
  );
  writer ??= new Etcd3({ hosts: [`https://${L.mgmtIp}:${PORT}`], credentials: { rootCertificate: Buffer.from(creds.ca), certChain: Buffer.from(creds.root.cert), privateKey: Buffer.from(creds.root.key) } });
  await eventually(async () => (await writer!.maintenance.status(), true), 15_000, 'c2 etcd answers', 200);
}

async function killEtcd(): Promise<void> {
  const p = etcd;
  etcd = null;
  if (!p || p.exitCode !== null) return;
  const exited = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await exited;
}

function startHeartbeat(): void {
  stopHeartbeat();
  beat = setInterval(() => void writer?.put(meshKeys.heartbeat('c2')).value(JSON.stringify({ version: 1, cluster: 'c2', at: new Date().toISOString(), seq: seq++ })).catch(() => undefined), 1000);
}
function stopHeartbeat(): void {
  if (beat) clearInterval(beat);
  beat = null;
}

// --- c1's side ---------------------------------------------------------------------------------

const pinDir = (n: string): string => `/sys/fs/bpf/meshctl/${prefix}/${C1}/${n}`;

/** The pinned ipcache entry of an address on a node, or null. */
function ipcacheOf(n: string, ip: string): { identity: number; tunnelIp: string; nodeId: number; flags: number } | null {
  const m = BpfMap.openPinned(join(pinDir(n), 'mesh_ipcache'));
  try {
    const v = m.lookup(ipcacheKeyCodec.encode({ prefixLen: 32, clusterId: 0, ip }));
    return v ? ipcacheInfoCodec.decode(v) : null;
  } finally {
    m.close();
  }
}

function nodeEntryOf(n: string, ip: string): { nodeId: number; clusterId: number; flags: number } | null {
  const m = BpfMap.openPinned(join(pinDir(n), 'mesh_nodes'));
  try {
    const v = m.lookup(nodeKeyCodec.encode({ ip }));
    return v ? nodeInfoCodec.decode(v) : null;
  } finally {
    m.close();
  }
}

/** Every ipcache address inside 10.2.0.0/16 a node's map holds. */
function c2Addresses(n: string): string[] {
  const m = BpfMap.openPinned(join(pinDir(n), 'mesh_ipcache'));
  try {
    return m
      .entries()
      .map(([k]) => ipcacheKeyCodec.decode(k))
      .filter((k) => k.ip.startsWith('10.2.') || k.ip.startsWith('172.31.200.'))
      .map((k) => k.ip)
      .sort();
  } finally {
    m.close();
  }
}

async function peerStatus(n: string): Promise<any> {
  const c = new EtcdClusterClient({ endpoints: [L.store] });
  try {
    const s = await c.get('meshnodestatuses', undefined, n);
    return (s?.status as any)?.clustermesh?.peers?.find((p: any) => p.cluster === 'c2') ?? null;
  } finally {
    await c.close();
  }
}

async function metrics(n: string): Promise<string> {
  const netns = L.nodes.find((x) => x.name === n)!.netns;
  return (await sh('ip', ['netns', 'exec', netns, 'curl', '-s', '-m', '3', 'http://127.0.0.1:9962/metrics'])).stdout;
}

const agentPid = (n: string): number => Number(readFileSync(join(home, 'clusters', C1, 'run', `agent-${n}.pid`), 'utf8'));

async function putMeshPeer(): Promise<void> {
  const c = new EtcdClusterClient({ endpoints: [L.store] });
  try {
    await c.put('meshpeers', meshPeerObject({ cluster: 'c2', clusterId: 2, endpoints: [`https://${L.vpcIp}:${PORT}`], caBundle: creds.ca, cert: creds.peer.cert, key: creds.peer.key }));
  } finally {
    await c.close();
  }
}

const allApplied = (n: string, ips: readonly string[]) => async (): Promise<boolean> => ips.every((ip) => ipcacheOf(n, ip) !== null);

beforeAll(async () => {
  requireRoot();
  await lab.cleanup();
  await lab.ok(['lab', 'create', C1, '--id', '1', '--pod-cidr', '10.1.0.0/16', '--nodes', '2']);
  const st = JSON.parse(readFileSync(join(home, 'lab.json'), 'utf8'));
  const c = st.clusters[C1];
  L = { cpNetns: c.controlPlane.netns, vpcIp: c.controlPlane.vpcIp, mgmtIp: c.controlPlane.mgmtIp, store: c.store.endpoint, nodes: c.nodes.map((x: any) => ({ name: x.name, netns: x.netns, ip: x.ip })) };
  creds = makeCerts([L.vpcIp, L.mgmtIp, '127.0.0.1']);
  mkdirSync(work, { recursive: true });
  writeFileSync(join(work, 'ca.crt'), creds.ca);
  writeFileSync(join(work, 'server.crt'), creds.server.cert);
  writeFileSync(join(work, 'server.key'), creds.server.key, { mode: 0o600 });
  await startEtcd('all');
  await put([[meshKeys.clusterConfig('c2'), config], node(1), node(2), identity(ID_A, 'a'), identity(ID_B, 'b')]);
  await put(VALID.map((ip, i) => ipe(ip, i % 2 ? ID_B : ID_A, ip.startsWith('10.2.1.') ? 'c2-n1' : 'c2-n2')));
  await put(BAD.map((b) => [meshKeys.ip('c2', b.ip), b.value] as [string, unknown]));
  await put([marker('nodes'), marker('identities'), marker('ip')]);
  startHeartbeat();
  await putMeshPeer();
}, 180_000);

afterAll(async () => {
  stopHeartbeat();
  writer?.close();
  await killEtcd();
  await lab.cleanup();
  rmSync(home, { recursive: true, force: true });
}, 120_000);

test('every agent applies c2: pod addresses with identity and tunnel endpoint, nodes with cluster id 2; bad values are skipped, counted and shown', async () => {
  for (const n of NODES) await eventually(allApplied(n, VALID), 20_000, `${n} holds c2's addresses`, 200);
  for (const n of NODES) {
    expect(ipcacheOf(n, '10.2.1.1')).toEqual({ identity: ID_A, tunnelIp: '172.31.200.11', nodeId: 1, flags: 0 });
    expect(ipcacheOf(n, '10.2.2.2')).toEqual({ identity: ID_B, tunnelIp: '172.31.200.12', nodeId: 2, flags: 0 });
    expect(nodeEntryOf(n, '172.31.200.11')).toEqual({ nodeId: 1, clusterId: 2, flags: 0 });
    expect(ipcacheOf(n, '172.31.200.12')).toMatchObject({ identity: 6, nodeId: 2 });
    for (const b of BAD) expect(ipcacheOf(n, b.ip)).toBeNull();
    const s = await eventually(async () => {
      const p = await peerStatus(n);
      return p?.ready && p.entries.ips === VALID.length ? p : null;
    }, 15_000, `${n} publishes c2 ready`, 200);
    expect(s).toMatchObject({ configured: true, connected: true, synced: { nodes: true, identities: true, ip: true }, entries: { nodes: 2, identities: 2, ips: VALID.length } });
    for (const b of BAD) expect(s.invalid[b.reason]).toBe(1);
    expect(s.invalidSamples.map((x: any) => x.key).sort()).toEqual(BAD.map((b) => meshKeys.ip('c2', b.ip)).sort());
    const m = await metrics(n);
    for (const b of BAD) expect(m).toContain(`meshctl_remote_invalid_objects{peer="c2",reason="${b.reason}"} 1`);
  }
  // A local address stays local: c1's own node keeps its host entry.
  const self = L.nodes[0];
  expect(ipcacheOf(self.name, self.ip)).toMatchObject({ identity: 1 });
}, 60_000);

test('a pod added in c2 appears and a deleted one disappears; an address on an unknown node waits for its node', async () => {
  await put([ipe('10.2.1.100', ID_A, 'c2-n1')]);
  await writer!.delete().key(meshKeys.ip('c2', '10.2.1.20')).exec();
  await put([ipe('10.2.3.7', ID_B, 'c2-n3')]);
  for (const n of NODES) {
    await eventually(async () => ipcacheOf(n, '10.2.1.100') !== null && ipcacheOf(n, '10.2.1.20') === null, 10_000, `${n}: add and delete applied`, 100);
    expect(ipcacheOf(n, '10.2.3.7')).toBeNull();
  }
  await put([node(3)]);
  for (const n of NODES) await eventually(async () => ipcacheOf(n, '10.2.3.7')?.tunnelIp === '172.31.200.13', 10_000, `${n}: pending address applied with its node`, 100);
}, 60_000);

test('a stopped heartbeat shows c2 disconnected within 10 s while its entries stay; a new beat reconnects it', async () => {
  stopHeartbeat();
  const t0 = Date.now();
  await eventually(async () => (await peerStatus(NODES[0]))?.connected === false, 12_000, 'disconnected in status', 200);
  expect(Date.now() - t0).toBeLessThan(10_000 + 1_000);
  const s = await peerStatus(NODES[0]);
  expect(s.lastErrorKind).toBe('heartbeat');
  for (const n of NODES) expect(ipcacheOf(n, '10.2.1.1')).not.toBeNull();
  startHeartbeat();
  await eventually(async () => (await peerStatus(NODES[0]))?.connected === true, 10_000, 'connected again', 200);
}, 60_000);

test('etcd killed and restarted with changes meanwhile: the resync applies exactly the differences and never drops a present entry', async () => {
  const n = NODES[0];
  const before = c2Addresses(n);
  await killEtcd();
  await eventually(async () => {
    const p = await peerStatus(n);
    return p && !p.connected && p.lastErrorKind === 'unreachable' ? p : null;
  }, 15_000, 'unreachable in status', 200);
  // Changes while the agents cannot reach it: the etcd answers the test only.
  await startEtcd('mgmt-only');
  await writer!.delete().key(meshKeys.ip('c2', '10.2.2.20')).exec();
  await put([ipe('10.2.2.100', ID_B, 'c2-n2'), ipe('10.2.2.1', ID_B, 'c2-n2')]);
  for (const x of NODES) expect(ipcacheOf(x, '10.2.2.20')).not.toBeNull();
  await killEtcd();
  await startEtcd('all');
  const present = before.filter((ip) => ip !== '10.2.2.20');
  let samples = 0;
  const deadline = Date.now() + 20_000;
  for (;;) {
    const now = new Set(c2Addresses(n));
    for (const ip of present) if (!now.has(ip)) throw new Error(`${ip} vanished during the resync`);
    samples++;
    if (now.has('10.2.2.100') && !now.has('10.2.2.20') && ipcacheOf(n, '10.2.2.1')?.identity === ID_B) break;
    if (Date.now() > deadline) throw new Error('resync did not apply the differences');
    await sleep(20);
  }
  expect(samples).toBeGreaterThan(1);
  expect(c2Addresses(n)).toEqual([...present, '10.2.2.100'].sort());
  const s = await eventually(async () => {
    const p = await peerStatus(n);
    return p?.connected && p.resyncs >= 1 ? p : null;
  }, 10_000, 'connected after the resync', 200);
  expect(s.ready).toBe(true);
}, 90_000);

test('agent kill -9 while c2 is down: the restarted agent keeps every c2 entry, and after c2 returns only what changed goes', async () => {
  const n = NODES[1];
  const before = c2Addresses(n);
  expect(before.length).toBeGreaterThan(40);
  await killEtcd();
  const pid = agentPid(n);
  process.kill(pid, 'SIGKILL');
  await eventually(async () => {
    try {
      const p = agentPid(n);
      return p !== pid && pidAlive(p);
    } catch {
      return false;
    }
  }, 15_000, 'agent restarted');
  // The new agent finished its local initial round (pruneAdopted ran) and still has c2's entries.
  const c = new EtcdClusterClient({ endpoints: [L.store] });
  try {
    await eventually(async () => {
      const s = (await c.get('meshnodestatuses', undefined, n))?.status as any;
      return s?.pid === agentPid(n) && s.datapath?.ready === true;
    }, 30_000, 'restarted agent ready', 200);
  } finally {
    await c.close();
  }
  await sleep(1500);
  expect(c2Addresses(n)).toEqual(before);
  await startEtcd('mgmt-only');
  await writer!.delete().key(meshKeys.ip('c2', '10.2.2.19')).exec();
  await killEtcd();
  await startEtcd('all');
  await eventually(async () => ipcacheOf(n, '10.2.2.19') === null, 20_000, 'the address deleted meanwhile is gone after the resync', 100);
  expect(c2Addresses(n)).toEqual(before.filter((ip) => ip !== '10.2.2.19'));
}, 120_000);

test('MeshPeer deleted: no c2 entry within 10 s on any node; c1 is untouched', async () => {
  const c = new EtcdClusterClient({ endpoints: [L.store] });
  try {
    await c.delete('meshpeers', undefined, 'c2');
  } finally {
    await c.close();
  }
  const t0 = Date.now();
  for (const n of NODES) await eventually(async () => c2Addresses(n).length === 0 && nodeEntryOf(n, '172.31.200.11') === null, 10_000, `${n} drained c2`, 100);
  expect(Date.now() - t0).toBeLessThan(10_000);
  expect(ipcacheOf(L.nodes[0].name, L.nodes[0].ip)).toMatchObject({ identity: 1 });
  expect(nodeEntryOf(L.nodes[0].name, L.nodes[1].ip)).toMatchObject({ clusterId: 1 });
}, 60_000);
