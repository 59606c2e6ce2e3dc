// Port ranges in mesh_policy (an LPM trie) against the real kernel: a 10,000-port range written
// as the few aligned prefixes policyEntries() makes allows its ends and middle and denies the ports
// just outside; a deny rule keeps winning over allows. Then the PolicyEngine's output for an
// ipBlock (rules + CIDR identities for the ipcache) goes through the same datapath.
//
//   ns a 10.210.1.2 ─ lxcpa ┐
//   ns b 10.210.1.3 ─ lxcpb ┤ node (from-container on a and b; the node's stack routes the rest)
//   ns o1 10.210.2.5 ─ lxcpo1 ┤   o1, o2: hosts outside the mesh (no endpoint, not in the ipcache
//   ns o2 10.210.2.200 ─ lxcpo2 ┘  except through CIDR identities)
//
// No agent: the test loads the objects through the addon into its own pin root and writes the
// maps directly. Needs root. Every name starts with meshtest-bpfpol-; leftovers of earlier runs
// are removed first and everything is removed after.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa, type ResultPromise } from 'execa';
import { requireRoot } from '../helpers/lab.js';
import { BpfObject, attachTc, ensureBpffs, type BpfMap } from '../../src/datapath/addon.js';
import { compilePrograms } from '../../src/datapath/datapath.js';
import {
  CLUSTER_ANY,
  ConfigFlags,
  Direction,
  DropReason,
  EndpointFlags,
  MapNames,
  ProgramNames,
  Proto,
  RoutingMode,
  configCodec,
  endpointInfoCodec,
  endpointKeyCodec,
  metricsKeyCodec,
  policyEntryCodec,
  sumPerCpuMetrics,
  u32Key,
} from '../../src/datapath/codecs.js';
import { policyEntries, type PolicyRule } from '../../src/datapath/policy-keys.js';
import { PolicyEngine } from '../../src/agent/policy-engine.js';
import { datapathRules } from '../../src/agent/policy.js';
import { LABEL_CLUSTER, LABEL_NAMESPACE } from '../../src/defaults.js';
import { ipcacheInfoCodec, ipcacheKeyCodec } from '../../src/datapath/codecs.js';

const PREFIX = 'meshtest-bpfpol-';
const BPFFS = '/sys/fs/bpf';
const run = `${PREFIX}${randomBytes(3).toString('hex')}`;
const pinRoot = join(BPFFS, run);
const nodeNs = `${run}-node`;
const GATEWAY = '169.254.1.1';
const NODE_IP = '10.99.9.1';
const ID = { a: 0x010101, b: 0x010102 };
const FIRST = 20000;
const LAST = 29999;
const PORTS = [FIRST - 1, FIRST, 24999, 25000, LAST, LAST + 1];

interface Pod {
  ns: string;
  ip: string;
  lxc: string;
  epId: number;
  identity: number;
  ifindex: number;
  lxcMac: string;
  podMac: string;
}

const objects: BpfObject[] = [];
const children: ResultPromise[] = [];
let a: Pod;
let b: Pod;
let o1: Pod;
let o2: Pod;
let objDir = '';

async function sh(cmd: string, args: string[], reject = true) {
  return execa(cmd, args, { reject, timeout: 30_000, all: true });
}

async function cleanup(): Promise<void> {
  const { stdout } = await sh('ip', ['-j', 'netns', 'list'], false);
  const list = stdout.trim() ? (JSON.parse(stdout) as { name: string }[]) : [];
  for (const { name } of list) if (name.startsWith(PREFIX)) await sh('ip', ['netns', 'del', name], false);
  if (existsSync(BPFFS)) for (const e of readdirSync(BPFFS)) if (e.startsWith(PREFIX)) rmSync(join(BPFFS, e), { recursive: true, force: true });
}

async function link(ns: string, dev: string): Promise<{ ifindex: number; mac: string }> {
  const { stdout } = await sh('ip', ['-n', ns, '-j', 'link', 'show', 'dev', dev]);
  const [l] = JSON.parse(stdout) as { ifindex: number; address: string }[];
  return { ifindex: l.ifindex, mac: l.address };
}

async function addPod(name: string, ip: string, identity: number, epId: number): Promise<Pod> {
  const ns = `${run}-${name}`;
  const lxc = `lxcp${name}`;
  await sh('ip', ['netns', 'add', ns]);
  await sh('ip', ['-n', nodeNs, 'link', 'add', lxc, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  await sh('ip', ['-n', nodeNs, 'link', 'set', lxc, 'up']);
  await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  await sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  await sh('ip', ['-n', ns, 'addr', 'add', `${ip}/32`, 'dev', 'eth0']);
  const l = await link(nodeNs, lxc);
  const p = await link(ns, 'eth0');
  await sh('ip', ['-n', ns, 'neigh', 'add', GATEWAY, 'lladdr', l.mac, 'dev', 'eth0', 'nud', 'permanent']);
  await sh('ip', ['-n', ns, 'route', 'add', GATEWAY, 'dev', 'eth0', 'scope', 'link']);
  await sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', GATEWAY, 'dev', 'eth0']);
  // The node's stack reaches every pod and outside host through its lxc (world traffic goes there).
  await sh('ip', ['-n', nodeNs, 'route', 'add', `${ip}/32`, 'dev', lxc, 'scope', 'link', 'src', NODE_IP]);
  return { ns, ip, lxc, epId, identity, ifindex: l.ifindex, lxcMac: l.mac, podMac: p.mac };
}

function map(name: string): BpfMap {
  return objects[0].map(name);
}

function writeEndpoint(pod: Pod, flags: number): void {
  map(MapNames.endpoints).update(
    endpointKeyCodec.encode({ ip: pod.ip, clusterId: CLUSTER_ANY }),
    endpointInfoCodec.encode({ ifindex: pod.ifindex, lxcMac: pod.lxcMac, podMac: pod.podMac, endpointId: pod.epId, flags, identity: pod.identity }),
  );
}

/** Replace every rule in mesh_policy with the entries of `rules` for b's ingress; returns their count. */
function setIngressRules(rules: PolicyRule[]): number {
  const m = map(MapNames.policy);
  for (const k of m.keys()) m.delete(k);
  const entries = policyEntries(b.epId, Direction.Ingress, rules);
  for (const e of entries) m.update(e.key, e.value);
  return entries.length;
}

function dropped(reason: DropReason): bigint {
  const raw = map(MapNames.metrics).lookup(metricsKeyCodec.encode({ reason, direction: Direction.Ingress }));
  return raw ? sumPerCpuMetrics(raw).packets : 0n;
}

// Listens on every port of PORTS (TCP) and on 9999/UDP; prints "ready".
const SERVER_JS = `
const net = require('node:net'); const dgram = require('node:dgram');
const ports = process.argv.slice(1).map(Number); let n = 0;
for (const p of ports) net.createServer((s) => s.end('port ' + p + '\\n')).listen(p, '0.0.0.0', () => { if (++n === ports.length) console.log('ready'); });`;

const CLIENT_JS = `
const net = require('node:net');
const s = net.connect(+process.argv[2], process.argv[1]); let d = '';
setTimeout(() => { process.stdout.write('timeout'); process.exit(0); }, 1500);
s.on('data', (x) => (d += x)); s.on('end', () => { process.stdout.write(d.trim()); process.exit(0); });
s.on('error', (e) => { process.stdout.write('error ' + e.code); process.exit(0); });`;

async function startServer(pod: Pod, ports: number[]): Promise<void> {
  const server = execa('ip', ['netns', 'exec', pod.ns, process.execPath, '-e', SERVER_JS, ...ports.map(String)], { reject: false, buffer: false });
  children.push(server);
  await new Promise<void>((ok, fail) => {
    const t = setTimeout(() => fail(new Error(`server in ${pod.ns} did not start`)), 10_000);
    server.stdout!.on('data', (d: Buffer) => {
      if (String(d).includes('ready')) {
        clearTimeout(t);
        ok();
      }
    });
  });
}

/** 'open' when `to` (default b) answered on port, else what the client saw ('timeout' for a dropped SYN). */
async function reach(port: number, to: Pod = b): Promise<string> {
  const r = await sh('ip', ['netns', 'exec', a.ns, process.execPath, '-e', CLIENT_JS, to.ip, String(port)], false);
  return r.stdout === `port ${port}` ? 'open' : r.stdout;
}

async function reachAll(): Promise<Record<number, string>> {
  const out: Record<number, string> = {};
  for (const p of PORTS) out[p] = await reach(p);
  return out;
}

beforeAll(async () => {
  requireRoot();
  await cleanup();
  await ensureBpffs();
  objDir = mkdtempSync(join(tmpdir(), `${run}-obj-`));
  const objs = await compilePrograms(objDir);
  objects.push(await BpfObject.load(objs['from-container'], { pinRoot }));
  await sh('ip', ['netns', 'add', nodeNs]);
  await sh('ip', ['-n', nodeNs, 'link', 'set', 'lo', 'up']);
  await sh('ip', ['-n', nodeNs, 'addr', 'add', `${NODE_IP}/32`, 'dev', 'lo']);
  await sh('ip', ['netns', 'exec', nodeNs, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  a = await addPod('a', '10.210.1.2', ID.a, 11);
  b = await addPod('b', '10.210.1.3', ID.b, 12);
  o1 = await addPod('o1', '10.210.2.5', 0, 0);
  o2 = await addPod('o2', '10.210.2.200', 0, 0);
  for (const o of [o1, o2]) await startServer(o, [80]);
  map(MapNames.config).update(
    u32Key.encode({ value: 0 }),
    configCodec.encode({ nodeIp: NODE_IP, nodeId: 1, vxlanIfindex: 0, clusterId: 1, routingMode: RoutingMode.Tunnel, flags: ConfigFlags.noFlows, netdevIfindex: 0 }),
  );
  for (const pod of [a, b]) attachTc({ ifindex: pod.ifindex, netns: nodeNs, direction: 'ingress', program: { object: objects[0], name: ProgramNames['from-container'] } });
  writeEndpoint(a, 0);
  writeEndpoint(b, EndpointFlags.policyIngress);
  await startServer(b, [...PORTS, 80]);
}, 120_000);

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await Promise.allSettled(children);
  for (const o of objects) o.close();
  if (process.getuid?.() === 0) await cleanup();
  if (objDir) rmSync(objDir, { recursive: true, force: true });
}, 60_000);

describe('mesh_policy port ranges with real packets', () => {
  test('a 10,000-port TCP range from identity a: ends and middle open, neighbours closed', async () => {
    const n = setIngressRules([{ identity: ID.a, port: FIRST, endPort: LAST, proto: Proto.tcp }]);
    // 20000..29999 tiles into a handful of aligned prefixes, not 10,000 entries.
    expect(n).toBeLessThanOrEqual(12);
    const before = dropped(DropReason.PolicyDenied);
    expect(await reachAll()).toEqual({ 19999: 'timeout', 20000: 'open', 24999: 'open', 25000: 'open', 29999: 'open', 30000: 'timeout' });
    expect(dropped(DropReason.PolicyDenied)).toBeGreaterThanOrEqual(before + 2n);
    // The allowed connections were counted on the prefixes that matched.
    const hits = map(MapNames.policy)
      .entries()
      .reduce((sum, [, v]) => sum + policyEntryCodec.decode(v).packets, 0n);
    expect(hits).toBeGreaterThanOrEqual(4n);
  });

  test('the range admits only its identity; another identity needs its own rule', async () => {
    setIngressRules([{ identity: ID.b, port: FIRST, endPort: LAST, proto: Proto.tcp }]);
    expect(await reach(25000)).toBe('timeout');
    setIngressRules([{ identity: 0, port: FIRST, endPort: LAST, proto: Proto.tcp }]);
    expect(await reach(25000)).toBe('open');
  });

  test('a deny inside an allowed range wins; an any-identity deny beats an identity allow', async () => {
    setIngressRules([
      { identity: ID.a, port: FIRST, endPort: LAST, proto: Proto.tcp },
      { identity: ID.a, port: 24999, proto: Proto.tcp, deny: true },
      { identity: 0, port: 29999, proto: Proto.tcp, deny: true },
    ]);
    const before = dropped(DropReason.PolicyDenyRule);
    expect(await reachAll()).toEqual({ 19999: 'timeout', 20000: 'open', 24999: 'timeout', 25000: 'open', 29999: 'timeout', 30000: 'timeout' });
    expect(dropped(DropReason.PolicyDenyRule)).toBeGreaterThanOrEqual(before + 2n);
  });

  test('a deny on the whole protocol covers a narrower allow of the same identity', async () => {
    setIngressRules([
      { identity: ID.a, port: FIRST, endPort: LAST, proto: Proto.tcp },
      { identity: ID.a, port: 0, proto: Proto.tcp, deny: true },
    ]);
    expect(await reach(FIRST)).toBe('timeout');
    // L3-only allow for a: everything open again.
    setIngressRules([{ identity: ID.a, port: 0, proto: 0 }]);
    expect(await reachAll()).toEqual(Object.fromEntries(PORTS.map((p) => [p, 'open'])));
  });
});

describe('PolicyEngine output through the datapath: ipBlock with except', () => {
  const labels = (pod: string) => ({ pod, [LABEL_NAMESPACE]: 'x', [LABEL_CLUSTER]: 'c1' });
  const ipcache = () => map(MapNames.ipcache);

  /** Program a's egress and the ipcache from a fresh engine holding `egress` as a's NetworkPolicy. */
  function program(egress: unknown[]): void {
    const engine = new PolicyEngine({ clusterName: 'c1' });
    for (const [pod, p] of [['a', a], ['b', b]] as const) {
      engine.upsertIdentity(p.identity, labels(pod));
      engine.upsertPeer(p.ip, { identity: p.identity, namedPorts: {} });
    }
    engine.upsertEndpoint({ id: 'x/a', identity: a.identity, labels: labels('a'), namespace: 'x' });
    engine.upsertPolicy({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'p', namespace: 'x' }, spec: { podSelector: { matchLabels: { pod: 'a' } }, policyTypes: ['Egress'], egress } });
    const pol = engine.endpointPolicy('x/a');
    const m = map(MapNames.policy);
    for (const k of m.keys()) m.delete(k);
    for (const e of policyEntries(a.epId, Direction.Egress, datapathRules(pol.egress.rules))) m.update(e.key, e.value);
    for (const k of ipcache().keys()) ipcache().delete(k);
    const put = (prefix: string, identity: number) => {
      const [ip, len] = prefix.split('/');
      ipcache().update(ipcacheKeyCodec.encode({ prefixLen: Number(len), clusterId: CLUSTER_ANY, ip }), ipcacheInfoCodec.encode({ identity, tunnelIp: '0.0.0.0', nodeId: 0, flags: 0 }));
    };
    // CIDR identities first, then the pods' own /32 entries (which win over a CIDR of the same prefix).
    for (const [prefix, id] of engine.takeCidrChanges().upsert) put(prefix, id);
    for (const p of [a, b]) put(`${p.ip}/32`, p.identity);
    writeEndpoint(a, pol.egress.enforced ? EndpointFlags.policyEgress : 0);
  }

  afterAll(() => {
    writeEndpoint(a, 0);
  });

  test('10.210.2.0/24 except 10.210.2.128/25: o1 inside yes, o2 in the except no, pod b outside no', async () => {
    writeEndpoint(b, 0);
    program([{ to: [{ ipBlock: { cidr: '10.210.2.0/24', except: ['10.210.2.128/25'] } }] }]);
    expect({ o1: await reach(80, o1), o2: await reach(80, o2), b: await reach(80, b) }).toEqual({ o1: 'open', o2: 'timeout', b: 'timeout' });
  });

  test('10.210.1.0/24 (the pods): pod b is admitted by its own identity, the outside hosts are not', async () => {
    program([{ to: [{ ipBlock: { cidr: '10.210.1.0/24' } }] }]);
    expect({ o1: await reach(80, o1), o2: await reach(80, o2), b: await reach(80, b) }).toEqual({ o1: 'timeout', o2: 'timeout', b: 'open' });
  });
});
