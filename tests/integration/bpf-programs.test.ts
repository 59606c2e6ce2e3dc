// The eBPF entry programs against the real kernel: each object must pass the
// verifier, then real packets go through real namespaces.
//
//   ns a 10.200.1.2 ─ lxca ┐                      ┌ lxcc ─ ns c 10.200.2.2
//   ns b 10.200.1.3 ─ lxcb ┤ node n1 ── eth0 ══ eth0 ── node n2
//                          └ meshvx (vxlan)    (vxlan) meshvx
//                   10.99.0.1/24             10.99.0.2/24
//
// Each node loads the three objects with its own pin root (bpftool cannot set
// libbpf's pin root, so it runs in a private mount namespace where the node's
// pin dir is bind-mounted on /sys/fs/bpf: pin-by-name then lands there, as it
// will with the agent's loader). Maps are programmed with bpftool from the
// codecs' bytes, counters and conntrack are read back and decoded with them.
// Flow events are read from the ring buffer through the libbpf addon
// (src/datapath/addon.ts, imported lazily so the rest runs without it).
//
// Needs root. Everything is named meshtest-bpf-*, and leftovers of earlier
// runs are removed first.
import { mkdtempSync, rmSync, mkdirSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { execa, type ResultPromise } from 'execa';
import {
  MapNames,
  ProgramNames,
  CLUSTER_ANY,
  IDENTITY_ANY,
  Direction,
  DropReason,
  RoutingMode,
  EndpointFlags,
  IpcacheFlags,
  ReservedIdentity,
  NodeFlags,
  PolicyFlags,
  Proto,
  CtFlags,
  configCodec,
  u32Key,
  endpointKeyCodec,
  endpointInfoCodec,
  ipcacheKeyCodec,
  ipcacheInfoCodec,
  nodeKeyCodec,
  nodeInfoCodec,
  policyKeyCodec,
  policyEntryCodec,
  serviceKeyCodec,
  serviceInfoCodec,
  backendKeyCodec,
  backendInfoCodec,
  revNatKeyCodec,
  revNatInfoCodec,
  ctKeyCodec,
  ctEntryCodec,
  metricsKeyCodec,
  flowEventCodec,
  sumPerCpuMetrics,
  Verdict,
  Path,
  CtState,
  ConfigFlags,
  type FlowEvent,
  type PolicyKey,
  type CtKey,
  type CtEntry,
} from '../../src/datapath/codecs.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const PREFIX = 'meshtest-bpf-';
const BPFFS = '/sys/fs/bpf';
const PROGRAMS = Object.keys(ProgramNames) as (keyof typeof ProgramNames)[];

const run = `${PREFIX}${randomBytes(3).toString('hex')}`;
const pinBase = join(BPFFS, run);
let objDir = '';
const children: ResultPromise[] = [];

// ---------------------------------------------------------------------------
// helpers

async function sh(cmd: string, args: string[], opts: { reject?: boolean; timeout?: number } = {}) {
  return execa(cmd, args, { reject: opts.reject ?? true, timeout: opts.timeout ?? 30_000, all: true });
}

/** Runs in the namespace's network only (keeps our view of /sys/fs/bpf, unlike `ip netns exec`). */
async function inNet(ns: string, cmd: string, args: string[], opts: { reject?: boolean; timeout?: number } = {}) {
  return sh('nsenter', [`--net=/run/netns/${ns}`, '--', cmd, ...args], opts);
}

async function ip(ns: string, ...args: string[]) {
  return sh('ip', ['-n', ns, ...args]);
}

async function linkInfo(ns: string, dev: string): Promise<{ ifindex: number; mac: string }> {
  const { stdout } = await sh('ip', ['-n', ns, '-j', 'link', 'show', 'dev', dev]);
  const [link] = JSON.parse(stdout) as { ifindex: number; address: string }[];
  return { ifindex: link.ifindex, mac: link.address };
}

async function cleanupLeftovers(): Promise<void> {
  const { stdout } = await sh('ip', ['-j', 'netns', 'list'], { reject: false });
  const list = stdout.trim() ? (JSON.parse(stdout) as { name: string }[]) : [];
  for (const { name } of list) {
    if (name.startsWith(PREFIX)) await sh('ip', ['netns', 'del', name], { reject: false });
  }
  if (existsSync(BPFFS)) {
    for (const entry of readdirSync(BPFFS)) {
      if (entry.startsWith(PREFIX)) rmSync(join(BPFFS, entry), { recursive: true, force: true });
    }
  }
}

async function ensureBpffs(): Promise<void> {
  const { stdout } = await sh('findmnt', ['-n', '-t', 'bpf', BPFFS], { reject: false });
  if (!stdout.trim()) await sh('mount', ['-t', 'bpf', 'bpf', BPFFS]);
}

async function compileObjects(): Promise<void> {
  for (const prog of PROGRAMS) {
    await sh('clang', [
      '-O2', '-g', '-Wall', '-target', 'bpf', '-D__TARGET_ARCH_x86',
      `-I${join(repoRoot, 'bpf')}`,
      '-c', join(repoRoot, 'bpf', `${prog}.c`),
      '-o', join(objDir, `${prog}.o`),
    ]);
  }
}

/**
 * Loads one object with the kernel verifier into `pinRoot`: maps pin by name
 * at pinRoot/<map>, programs at pinRoot/progs/<object>/<program>.
 */
async function loadObject(pinRoot: string, prog: keyof typeof ProgramNames) {
  mkdirSync(join(pinRoot, 'progs'), { recursive: true });
  return sh(
    'unshare',
    [
      '-m', '--propagation', 'private', 'sh', '-c',
      `mount --bind "$0" ${BPFFS} && exec bpftool prog loadall "$1" "${BPFFS}/progs/$2" type classifier`,
      pinRoot, join(objDir, `${prog}.o`), prog,
    ],
    { reject: false, timeout: 60_000 },
  );
}

function progPin(pinRoot: string, prog: keyof typeof ProgramNames): string {
  return join(pinRoot, 'progs', prog, ProgramNames[prog]);
}

const hex = (b: Buffer) => Array.from(b, (x) => x.toString(16).padStart(2, '0'));

async function mapUpdate(pinRoot: string, map: string, key: Buffer, value: Buffer): Promise<void> {
  await sh('bpftool', ['map', 'update', 'pinned', join(pinRoot, map), 'key', 'hex', ...hex(key), 'value', 'hex', ...hex(value)]);
}

async function mapDelete(pinRoot: string, map: string, key: Buffer): Promise<void> {
  await sh('bpftool', ['map', 'delete', 'pinned', join(pinRoot, map), 'key', 'hex', ...hex(key)], { reject: false });
}

interface RawEntry {
  key: Buffer;
  value?: Buffer;
  values?: Buffer[];
}

async function mapDump(pinRoot: string, map: string): Promise<RawEntry[]> {
  const { stdout } = await sh('bpftool', ['-j', 'map', 'dump', 'pinned', join(pinRoot, map)]);
  const bytes = (a: string[]) => Buffer.from(a.map((x) => parseInt(x, 16)));
  const rows = JSON.parse(stdout) as { key: string[]; value?: string[]; values?: { value: string[] }[] }[];
  return rows.map((r) => ({
    key: bytes(r.key),
    value: r.value ? bytes(r.value) : undefined,
    values: r.values?.map((v) => bytes(v.value)),
  }));
}

/** Packets counted under (reason, direction), summed over CPUs. */
async function metric(pinRoot: string, reason: DropReason, direction: Direction): Promise<bigint> {
  const want = metricsKeyCodec.encode({ reason, direction });
  const row = (await mapDump(pinRoot, MapNames.metrics)).find((r) => r.key.equals(want));
  return row?.values ? sumPerCpuMetrics(Buffer.concat(row.values)).packets : 0n;
}

async function conntrack(pinRoot: string): Promise<{ key: CtKey; entry: CtEntry }[]> {
  return (await mapDump(pinRoot, MapNames.conntrack)).map((r) => ({
    key: ctKeyCodec.decode(r.key),
    entry: ctEntryCodec.decode(r.value!),
  }));
}

async function ping(fromNs: string, to: string, count = 2): Promise<boolean> {
  const r = await sh('ip', ['netns', 'exec', fromNs, 'ping', '-n', '-c', String(count), '-i', '0.2', '-W', '1', to], {
    reject: false,
    timeout: 15_000,
  });
  return r.exitCode === 0;
}

const BULK_BYTES = 8 * 1024 * 1024;

// A tiny TCP/UDP echo service and client in plain Node, run inside a pod.
const SERVER_JS = `
const net = require('node:net'); const dgram = require('node:dgram');
const [tcpPort, udpPort, name] = process.argv.slice(1);
// Port tcpPort+1 sends BULK_BYTES, for GSO/MTU paths.
net.createServer((s) => { s.end(Buffer.alloc(${BULK_BYTES}, 0x61)); }).listen(+tcpPort + 1, '0.0.0.0');
net.createServer((s) => { s.end('hello from ' + name + ' ' + s.remoteAddress + '\\n'); }).listen(+tcpPort, '0.0.0.0', () => {
  const u = dgram.createSocket('udp4');
  u.on('message', (m, r) => u.send('udp ' + name + ' ' + m, r.port, r.address));
  u.bind(+udpPort, '0.0.0.0', () => console.log('ready'));
});`;

const CLIENT_JS = `
const net = require('node:net'); const dgram = require('node:dgram');
const [proto, host, port] = process.argv.slice(1);
setTimeout(() => { console.error('timeout'); process.exit(1); }, 3000);
if (proto === 'bulk') {
  const s = net.connect(+port, host); let n = 0;
  s.on('data', (d) => (n += d.length)); s.on('end', () => { process.stdout.write(String(n)); process.exit(0); });
  s.on('error', (e) => { console.error(e.message); process.exit(1); });
} else if (proto === 'tcp') {
  const s = net.connect(+port, host); let data = '';
  s.on('data', (d) => (data += d)); s.on('end', () => { process.stdout.write(data); process.exit(0); });
  s.on('error', (e) => { console.error(e.message); process.exit(1); });
} else {
  // A connected UDP socket only takes datagrams from host:port, so this
  // also checks that replies come back from the VIP.
  const u = dgram.createSocket('udp4');
  u.connect(+port, host, () => u.send('ping'));
  u.on('message', (m) => { process.stdout.write(String(m)); process.exit(0); });
}`;

async function startServer(ns: string, name: string): Promise<void> {
  const child = execa('ip', ['netns', 'exec', ns, process.execPath, '-e', SERVER_JS, '8080', '5353', name], {
    reject: false,
    buffer: false,
  });
  children.push(child);
  await new Promise<void>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`server in ${ns} did not start`)), 10_000);
    child.stdout!.on('data', (d: Buffer) => {
      if (String(d).includes('ready')) {
        clearTimeout(timer);
        ok();
      }
    });
  });
}

async function client(ns: string, proto: 'tcp' | 'udp' | 'bulk', host: string, port: number) {
  return sh('ip', ['netns', 'exec', ns, process.execPath, '-e', CLIENT_JS, proto, host, String(port)], {
    reject: false,
    timeout: 10_000,
  });
}

// ---------------------------------------------------------------------------
// topology

interface Pod {
  ns: string;
  ip: string;
  lxc: string;
  identity: number;
  epId: number;
  ifindex: number;
  lxcMac: string;
  podMac: string;
}

interface Node {
  ns: string;
  ip: string;
  pin: string;
  podCidr: string;
  pods: Pod[];
}

// Identities carry their cluster (1) in bits 16-23: the overlay only takes a VNI of the
// sending node's cluster.
const ID = { a: 0x010101, b: 0x010102, c: 0x010103, other: 0x010199 };
const n1: Node = { ns: `${run}-n1`, ip: '10.99.0.1', pin: join(pinBase, 'n1'), podCidr: '10.200.1.0', pods: [] };
const n2: Node = { ns: `${run}-n2`, ip: '10.99.0.2', pin: join(pinBase, 'n2'), podCidr: '10.200.2.0', pods: [] };
const GATEWAY = '169.254.1.1';
const VIP = '10.96.0.10';

async function addPod(node: Node, name: string, podIp: string, identity: number, epId: number): Promise<Pod> {
  const ns = `${run}-${name}`;
  const lxc = `lxc${name}`;
  await sh('ip', ['netns', 'add', ns]);
  await ip(node.ns, 'link', 'add', lxc, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
  await ip(node.ns, 'link', 'set', lxc, 'up');
  // The node itself reaches the pod through its stack, as in the lab.
  await ip(node.ns, 'route', 'add', `${podIp}/32`, 'dev', lxc, 'scope', 'link', 'src', node.ip);
  await ip(ns, 'link', 'set', 'lo', 'up');
  await ip(ns, 'link', 'set', 'eth0', 'mtu', '1450', 'up');
  await ip(ns, 'addr', 'add', `${podIp}/32`, 'dev', 'eth0');
  const lxcLink = await linkInfo(node.ns, lxc);
  const podLink = await linkInfo(ns, 'eth0');
  // The pod's gateway is a link-local address answered statically by the lxc MAC.
  await ip(ns, 'neigh', 'add', GATEWAY, 'lladdr', lxcLink.mac, 'dev', 'eth0', 'nud', 'permanent');
  await ip(ns, 'route', 'add', GATEWAY, 'dev', 'eth0', 'scope', 'link');
  await ip(ns, 'route', 'add', 'default', 'via', GATEWAY, 'dev', 'eth0');
  const pod: Pod = { ns, ip: podIp, lxc, identity, epId, ifindex: lxcLink.ifindex, lxcMac: lxcLink.mac, podMac: podLink.mac };
  node.pods.push(pod);
  return pod;
}

async function attach(node: Node, dev: string, prog: keyof typeof ProgramNames, hook: 'ingress' | 'egress' = 'ingress') {
  await inNet(node.ns, 'tc', ['qdisc', 'replace', 'dev', dev, 'clsact']);
  await inNet(node.ns, 'tc', ['filter', 'add', 'dev', dev, hook, 'bpf', 'direct-action', 'pinned', progPin(node.pin, prog)]);
}

async function writeEndpoint(node: Node, pod: Pod, flags = 0): Promise<void> {
  await mapUpdate(
    node.pin,
    MapNames.endpoints,
    endpointKeyCodec.encode({ ip: pod.ip, clusterId: CLUSTER_ANY }),
    endpointInfoCodec.encode({
      ifindex: pod.ifindex,
      lxcMac: pod.lxcMac,
      podMac: pod.podMac,
      endpointId: pod.epId,
      flags,
      identity: pod.identity,
    }),
  );
}

async function writeIpcache(node: Node, prefix: string, prefixLen: number, identity: number, tunnelIp: string) {
  await mapUpdate(
    node.pin,
    MapNames.ipcache,
    ipcacheKeyCodec.encode({ prefixLen, clusterId: CLUSTER_ANY, ip: prefix }),
    ipcacheInfoCodec.encode({ identity, tunnelIp, nodeId: 0, flags: 0 }),
  );
}

async function writePeerNode(node: Node, peer: Node, flags: number): Promise<void> {
  await mapUpdate(
    node.pin,
    MapNames.nodes,
    nodeKeyCodec.encode({ ip: peer.ip }),
    nodeInfoCodec.encode({ nodeId: peer === n1 ? 1 : 2, clusterId: 1, flags }),
  );
}

async function writeConfig(node: Node, flags = 0): Promise<void> {
  const eth0 = await linkInfo(node.ns, 'eth0');
  const vx = await linkInfo(node.ns, 'meshvx');
  await mapUpdate(
    node.pin,
    MapNames.config,
    u32Key.encode({ value: 0 }),
    configCodec.encode({
      nodeIp: node.ip,
      nodeId: node === n1 ? 1 : 2,
      vxlanIfindex: vx.ifindex,
      clusterId: 1,
      routingMode: RoutingMode.Tunnel,
      flags,
      netdevIfindex: eth0.ifindex,
    }),
  );
}

function policyKey(pod: Pod, direction: Direction.Ingress | Direction.Egress, identity: number, proto = 0, dport = 0): PolicyKey {
  return { endpointId: pod.epId, direction, proto, identity, dport };
}

async function setRule(node: Node, key: PolicyKey, deny = false): Promise<void> {
  await mapUpdate(
    node.pin,
    MapNames.policy,
    policyKeyCodec.encode(key),
    policyEntryCodec.encode({ flags: deny ? PolicyFlags.deny : 0, packets: 0n, bytes: 0n }),
  );
}

async function clearRules(node: Node): Promise<void> {
  for (const r of await mapDump(node.pin, MapNames.policy)) await mapDelete(node.pin, MapNames.policy, r.key);
}

async function buildNode(node: Node): Promise<void> {
  await sh('ip', ['netns', 'add', node.ns]);
  await ip(node.ns, 'link', 'set', 'lo', 'up');
  // bpf_fib_lookup answers FWD_DISABLED unless the node forwards (native routing).
  await inNet(node.ns, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  for (const prog of PROGRAMS) {
    const r = await loadObject(node.pin, prog);
    if (r.exitCode !== 0) throw new Error(`load ${prog} for ${node.ns}: ${r.all?.split('\n').slice(-30).join('\n')}`);
  }
  await ip(node.ns, 'link', 'add', 'meshvx', 'type', 'vxlan', 'external', 'dstport', '8472');
  await ip(node.ns, 'link', 'set', 'meshvx', 'up');
}

// ---------------------------------------------------------------------------

beforeAll(async () => {
  if (process.getuid?.() !== 0) {
    throw new Error('bpf-programs integration test needs root (CAP_BPF, CAP_NET_ADMIN, netns): run it as root');
  }
  await cleanupLeftovers();
  await ensureBpffs();
  objDir = mkdtempSync(join(tmpdir(), `${run}-`));
  await compileObjects();
}, 120_000);

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await Promise.allSettled(children);
  // MESHTEST_KEEP=1 leaves namespaces and pins for a post-mortem; the next run removes them.
  if (process.getuid?.() === 0 && !process.env.MESHTEST_KEEP) await cleanupLeftovers();
  if (objDir) rmSync(objDir, { recursive: true, force: true });
}, 60_000);

describe('verifier', () => {
  test.each(PROGRAMS)('%s loads and its maps pin by name', async (prog) => {
    const pinRoot = join(pinBase, `verify-${prog}`);
    const r = await loadObject(pinRoot, prog);
    if (r.exitCode !== 0) throw new Error(`verifier rejected ${prog}:\n${r.all?.split('\n').slice(-40).join('\n')}`);
    expect(existsSync(progPin(pinRoot, prog))).toBe(true);
    for (const map of [MapNames.config, MapNames.endpoints, MapNames.flows, MapNames.metrics]) {
      expect(existsSync(join(pinRoot, map))).toBe(true);
    }
    rmSync(pinRoot, { recursive: true, force: true });
  });

  test('all objects load through the addon into one pin root and share its maps', async () => {
    const { BpfObject } = await import('../../src/datapath/addon.js');
    const pinRoot = join(pinBase, 'verify-addon');
    const objects = [];
    try {
      for (const prog of PROGRAMS) {
        const obj = await BpfObject.load(join(objDir, `${prog}.o`), { pinRoot });
        objects.push(obj);
        expect(obj.programs().map((p) => p.name)).toEqual([ProgramNames[prog]]);
        const pinned = obj.maps().filter((m) => !m.internal);
        expect(pinned.map((m) => m.pinPath).sort()).toEqual(
          Object.values(MapNames).map((name) => join(pinRoot, name)).sort(),
        );
      }
    } finally {
      for (const obj of objects) obj.close();
      rmSync(pinRoot, { recursive: true, force: true });
    }
  });
});

describe('packets through two nodes', () => {
  let a: Pod, b: Pod, c: Pod;

  beforeAll(async () => {
    await buildNode(n1);
    await buildNode(n2);
    // Underlay: one veth between the nodes, like two nodes on one VPC bridge.
    await ip(n1.ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', n2.ns);
    for (const node of [n1, n2]) {
      await ip(node.ns, 'addr', 'add', `${node.ip}/24`, 'dev', 'eth0');
      await ip(node.ns, 'link', 'set', 'eth0', 'up');
    }

    a = await addPod(n1, 'a', '10.200.1.2', ID.a, 101);
    b = await addPod(n1, 'b', '10.200.1.3', ID.b, 102);
    c = await addPod(n2, 'c', '10.200.2.2', ID.c, 201);

    for (const node of [n1, n2]) {
      await writeConfig(node);
      for (const pod of node.pods) {
        await attach(node, pod.lxc, 'from-container');
        await attach(node, pod.lxc, 'to-container', 'egress');
        await writeEndpoint(node, pod);
      }
      await attach(node, 'meshvx', 'from-overlay');
      await attach(node, 'eth0', 'from-netdev');
    }
    // Each node knows the other's pods by prefix (identity of the one pod
    // there is enough for this test) and its own pods exactly.
    await writeIpcache(n1, n2.podCidr, 24, ID.c, n2.ip);
    await writeIpcache(n2, n1.podCidr, 24, ID.a, n1.ip);
    await writeIpcache(n2, b.ip, 32, ID.b, n1.ip);
    // Native routing needs the node's own routes to the peer's pod CIDR.
    await ip(n1.ns, 'route', 'add', `${n2.podCidr}/24`, 'via', n2.ip, 'dev', 'eth0');
    await ip(n2.ns, 'route', 'add', `${n1.podCidr}/24`, 'via', n1.ip, 'dev', 'eth0');
  }, 120_000);

  afterEach(async () => {
    for (const node of [n1, n2]) {
      await clearRules(node);
      for (const pod of node.pods) await writeEndpoint(node, pod);
    }
  });

  test('pod to pod on one node without policy', async () => {
    const before = await metric(n1.pin, DropReason.None, Direction.Ingress);
    expect(await ping(a.ns, b.ip)).toBe(true);
    expect(await metric(n1.pin, DropReason.None, Direction.Ingress)).toBeGreaterThanOrEqual(before + 4n);
    const ct = await conntrack(n1.pin);
    // a opened (egress at a), b accepted (ingress at b); both saw replies.
    const opened = ct.find((e) => e.key.saddr === a.ip && e.key.daddr === b.ip && e.key.direction === Direction.Egress);
    const accepted = ct.find((e) => e.key.saddr === a.ip && e.key.daddr === b.ip && e.key.direction === Direction.Ingress);
    expect(opened?.key.proto).toBe(Proto.icmp);
    expect(accepted?.entry.srcIdentity).toBe(ID.a);
    expect(opened!.entry.flags & CtFlags.seenReply).toBe(CtFlags.seenReply);
  });

  test('ingress policy that allows the source identity', async () => {
    await setRule(n1, policyKey(b, Direction.Ingress, ID.a));
    await writeEndpoint(n1, b, EndpointFlags.policyIngress);
    expect(await ping(a.ns, b.ip)).toBe(true);
    const [rule] = await mapDump(n1.pin, MapNames.policy);
    expect(policyEntryCodec.decode(rule.value!).packets).toBeGreaterThan(0n);
  });

  test('selected endpoint without a matching rule drops (POLICY_DENIED)', async () => {
    await setRule(n1, policyKey(b, Direction.Ingress, ID.other));
    await writeEndpoint(n1, b, EndpointFlags.policyIngress);
    const before = await metric(n1.pin, DropReason.PolicyDenied, Direction.Ingress);
    expect(await ping(a.ns, b.ip, 1)).toBe(false);
    expect(await metric(n1.pin, DropReason.PolicyDenied, Direction.Ingress)).toBeGreaterThan(before);
    // b may still open connections to a: b's egress is not selected.
    expect(await ping(b.ns, a.ip)).toBe(true);
  });

  test('an explicit deny wins over an allow-all (POLICY_DENY_RULE)', async () => {
    await setRule(n1, policyKey(b, Direction.Ingress, IDENTITY_ANY));
    await setRule(n1, policyKey(b, Direction.Ingress, ID.a, Proto.icmp), true);
    await writeEndpoint(n1, b, EndpointFlags.policyIngress);
    const before = await metric(n1.pin, DropReason.PolicyDenyRule, Direction.Ingress);
    expect(await ping(a.ns, b.ip, 1)).toBe(false);
    expect(await metric(n1.pin, DropReason.PolicyDenyRule, Direction.Ingress)).toBeGreaterThan(before);
  });

  test('egress policy: default deny once selected, replies of allowed connections pass', async () => {
    await writeEndpoint(n1, a, EndpointFlags.policyEgress);
    const before = await metric(n1.pin, DropReason.PolicyDenied, Direction.Egress);
    expect(await ping(a.ns, b.ip, 1)).toBe(false);
    expect(await metric(n1.pin, DropReason.PolicyDenied, Direction.Egress)).toBeGreaterThan(before);
    // b → a is a connection b opens; a's echo replies are replies, not new egress.
    expect(await ping(b.ns, a.ip)).toBe(true);
    await setRule(n1, policyKey(a, Direction.Egress, ID.b, Proto.icmp));
    expect(await ping(a.ns, b.ip)).toBe(true);
  });

  test('spoofed source address is dropped (SOURCE_SPOOFED)', async () => {
    // b's address, sent from a's lxc.
    await ip(a.ns, 'addr', 'add', '10.200.1.3/32', 'dev', 'eth0');
    try {
      const before = await metric(n1.pin, DropReason.SourceSpoofed, Direction.Egress);
      await sh('ip', ['netns', 'exec', a.ns, 'ping', '-n', '-c', '1', '-W', '1', '-I', '10.200.1.3', c.ip], { reject: false });
      expect(await metric(n1.pin, DropReason.SourceSpoofed, Direction.Egress)).toBeGreaterThan(before);
    } finally {
      await ip(a.ns, 'addr', 'del', '10.200.1.3/32', 'dev', 'eth0');
    }
  });

  test('pod to pod across nodes through the VXLAN tunnel, VNI = source identity', async () => {
    await writePeerNode(n1, n2, 0);
    await writePeerNode(n2, n1, 0);
    const before = await metric(n2.pin, DropReason.None, Direction.Ingress);
    expect(await ping(a.ns, c.ip)).toBe(true);
    expect(await metric(n2.pin, DropReason.None, Direction.Ingress)).toBeGreaterThan(before);
    // c's node learnt a's identity from the VNI: its ingress entry says so
    // even though its ipcache maps a's prefix to the same identity anyway;
    // check with a policy that only admits ID.a.
    await setRule(n2, policyKey(c, Direction.Ingress, ID.a));
    await writeEndpoint(n2, c, EndpointFlags.policyIngress);
    expect(await ping(a.ns, c.ip)).toBe(true);
    // b's identity (ID.b) travels in the VNI and is not admitted.
    const denied = await metric(n2.pin, DropReason.PolicyDenied, Direction.Ingress);
    expect(await ping(b.ns, c.ip, 1)).toBe(false);
    expect(await metric(n2.pin, DropReason.PolicyDenied, Direction.Ingress)).toBeGreaterThan(denied);
  });

  test('pod to pod across nodes with native routing (FIB + neighbour redirect)', async () => {
    await writePeerNode(n1, n2, NodeFlags.direct);
    await writePeerNode(n2, n1, NodeFlags.direct);
    const before = await metric(n2.pin, DropReason.None, Direction.Ingress);
    expect(await ping(a.ns, c.ip)).toBe(true);
    expect(await metric(n2.pin, DropReason.None, Direction.Ingress)).toBeGreaterThan(before);
    // The source identity now comes from n2's ipcache (b's /32 entry).
    await setRule(n2, policyKey(c, Direction.Ingress, ID.b));
    await writeEndpoint(n2, c, EndpointFlags.policyIngress);
    expect(await ping(b.ns, c.ip)).toBe(true);
    expect(await ping(a.ns, c.ip, 1)).toBe(false);
  });

  test('to-container: the node reaches a pod whose policy selects it, and its replies pass', async () => {
    await mapUpdate(
      n1.pin,
      MapNames.ipcache,
      ipcacheKeyCodec.encode({ prefixLen: 32, clusterId: CLUSTER_ANY, ip: n1.ip }),
      ipcacheInfoCodec.encode({ identity: ReservedIdentity.host, tunnelIp: '0.0.0.0', nodeId: 1, flags: IpcacheFlags.localNode }),
    );
    await writeEndpoint(n1, b, EndpointFlags.policyIngress | EndpointFlags.policyEgress);
    try {
      expect(await ping(n1.ns, b.ip)).toBe(true);
      expect(await ping(a.ns, b.ip, 1)).toBe(false);
      // Unknown to the ipcache, the node is just world: b's ingress policy applies.
      await mapDelete(n1.pin, MapNames.ipcache, ipcacheKeyCodec.encode({ prefixLen: 32, clusterId: CLUSTER_ANY, ip: n1.ip }));
      const before = await metric(n1.pin, DropReason.PolicyDenied, Direction.Ingress);
      expect(await ping(n1.ns, b.ip, 1)).toBe(false);
      expect(await metric(n1.pin, DropReason.PolicyDenied, Direction.Ingress)).toBeGreaterThan(before);
    } finally {
      await mapDelete(n1.pin, MapNames.ipcache, ipcacheKeyCodec.encode({ prefixLen: 32, clusterId: CLUSTER_ANY, ip: n1.ip }));
    }
  });

  test('every verdict emits a flow event into mesh_flows', async () => {
    const { BpfMap, RingBuffer } = await import('../../src/datapath/addon.js');
    const events: FlowEvent[] = [];
    const map = BpfMap.openPinned(join(n1.pin, MapNames.flows));
    const ring = RingBuffer.open(map, (rec) => events.push(flowEventCodec.decode(rec)));
    try {
      // Earlier tests left their events in the ring: drain them first.
      await new Promise((r) => setTimeout(r, 300));
      events.length = 0;
      await writePeerNode(n1, n2, 0);
      await writePeerNode(n2, n1, 0);
      await writeEndpoint(n1, b, EndpointFlags.policyIngress);
      expect(await ping(a.ns, b.ip, 1)).toBe(false);
      expect(await ping(a.ns, c.ip, 1)).toBe(true);
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      ring.close();
      map.close();
    }
    const icmp = (e: FlowEvent) => e.proto === Proto.icmp;
    expect(events.find((e) => icmp(e) && e.verdict === Verdict.Dropped && e.daddr === b.ip)).toMatchObject({
      saddr: a.ip,
      dropReason: DropReason.PolicyDenied,
      direction: Direction.Ingress,
      srcIdentity: ID.a,
      dstIdentity: ID.b,
      path: Path.Local,
      endpointId: b.epId,
      ifindex: a.ifindex,
    });
    expect(events.find((e) => icmp(e) && e.direction === Direction.Egress && e.daddr === b.ip)).toMatchObject({
      verdict: Verdict.Forwarded,
      dropReason: DropReason.None,
      path: Path.Local,
      endpointId: a.epId,
    });
    const tunnelled = events.find((e) => icmp(e) && e.daddr === c.ip && e.direction === Direction.Egress);
    expect(tunnelled).toMatchObject({ verdict: Verdict.Forwarded, path: Path.Tunnel, nodeIp: n2.ip, dstIdentity: ID.c });
    // c's reply enters n1 through the overlay, identity from the VNI.
    expect(events.find((e) => icmp(e) && e.saddr === c.ip && e.daddr === a.ip)).toMatchObject({
      verdict: Verdict.Forwarded,
      direction: Direction.Ingress,
      path: Path.Tunnel,
      srcIdentity: ID.c,
      nodeIp: n2.ip,
    });
    expect(tunnelled!.tsNs).toBeGreaterThan(0n);
  });

  test('flowsNewOnly reports new connections and drops, not every packet', async () => {
    const { BpfMap, RingBuffer } = await import('../../src/datapath/addon.js');
    const events: FlowEvent[] = [];
    const map = BpfMap.openPinned(join(n1.pin, MapNames.flows));
    const ring = RingBuffer.open(map, (rec) => events.push(flowEventCodec.decode(rec)));
    let forwardedBefore = 0n;
    try {
      await new Promise((r) => setTimeout(r, 300));
      events.length = 0;
      forwardedBefore = await metric(n1.pin, DropReason.None, Direction.Ingress);
      await writeConfig(n1, ConfigFlags.flowsNewOnly);
      expect(await ping(a.ns, b.ip, 3)).toBe(true);
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      await writeConfig(n1);
      ring.close();
      map.close();
    }
    const ab = events.filter((e) => e.proto === Proto.icmp && e.saddr === a.ip && e.daddr === b.ip);
    // One echo id: the first request is new at a's egress and at b's ingress.
    expect(ab.map((e) => [e.direction, e.ctState])).toEqual([
      [Direction.Egress, CtState.New],
      [Direction.Ingress, CtState.New],
    ]);
    expect(events.filter((e) => e.saddr === b.ip && e.daddr === a.ip)).toEqual([]);
    // Counters still see every packet: 3 requests and 3 replies delivered.
    expect(await metric(n1.pin, DropReason.None, Direction.Ingress)).toBe(forwardedBefore + 6n);
  });

  describe('ClusterIP services', () => {
    const REV_NAT = 7;

    beforeAll(async () => {
      await startServer(b.ns, 'b');
      await startServer(c.ns, 'c');
    }, 30_000);

    async function setService(proto: number, port: number, backends: { ip: string; port: number }[]) {
      await mapUpdate(n1.pin, MapNames.revnat, revNatKeyCodec.encode({ revNatId: REV_NAT + proto }), revNatInfoCodec.encode({ vip: VIP, port }));
      for (const [i, be] of backends.entries()) {
        await mapUpdate(
          n1.pin,
          MapNames.backends,
          backendKeyCodec.encode({ revNatId: REV_NAT + proto, slot: i + 1 }),
          backendInfoCodec.encode({ ip: be.ip, port: be.port, proto, flags: 0, clusterId: 1 }),
        );
      }
      await mapUpdate(
        n1.pin,
        MapNames.services,
        serviceKeyCodec.encode({ vip: VIP, dport: port, proto }),
        serviceInfoCodec.encode({ count: backends.length, revNatId: REV_NAT + proto, flags: 0 }),
      );
    }

    test('TCP to a local backend, replies come from the VIP', async () => {
      await setService(Proto.tcp, 80, [{ ip: b.ip, port: 8080 }]);
      const r = await client(a.ns, 'tcp', VIP, 80);
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe(`hello from b ${a.ip}`);
      const svc = (await conntrack(n1.pin)).find((e) => e.key.direction === Direction.Service && e.key.daddr === VIP);
      expect(svc?.entry.natIp).toBe(b.ip);
      expect(svc?.entry.natPort).toBe(8080);
      // The translated connection's egress entry records the VIP it replies from.
      const opened = (await conntrack(n1.pin)).find(
        (e) => e.key.direction === Direction.Egress && e.key.daddr === b.ip && e.key.dport === 8080,
      );
      expect(opened?.entry).toMatchObject({ natIp: VIP, natPort: 80, revNatId: REV_NAT + Proto.tcp });
    });

    test('UDP to a backend on the other node (tunnel), replies come from the VIP', async () => {
      await writePeerNode(n1, n2, 0);
      await writePeerNode(n2, n1, 0);
      await setService(Proto.udp, 53, [{ ip: c.ip, port: 5353 }]);
      const r = await client(a.ns, 'udp', VIP, 53);
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe('udp c ping');
      // Without its mesh_revnat entry, the VIP recorded in conntrack still
      // rewrites the replies.
      await mapDelete(n1.pin, MapNames.revnat, revNatKeyCodec.encode({ revNatId: REV_NAT + Proto.udp }));
      const again = await client(a.ns, 'udp', VIP, 53);
      expect(again.stderr).toBe('');
      expect(again.stdout.trim()).toBe('udp c ping');
    });

    test.each([
      ['tunnel', 0],
      ['native', NodeFlags.direct],
    ])('bulk TCP across nodes (%s) survives GSO and MTU', async (_path, flags) => {
      await writePeerNode(n1, n2, flags);
      await writePeerNode(n2, n1, flags);
      const r = await client(a.ns, 'bulk', c.ip, 8081);
      expect(r.stderr).toBe('');
      expect(Number(r.stdout)).toBe(BULK_BYTES);
    });

    test('a service without backends drops (NO_BACKEND)', async () => {
      await setService(Proto.tcp, 81, []);
      const before = await metric(n1.pin, DropReason.NoBackend, Direction.Egress);
      const r = await client(a.ns, 'tcp', VIP, 81);
      expect(r.exitCode).not.toBe(0);
      expect(await metric(n1.pin, DropReason.NoBackend, Direction.Egress)).toBeGreaterThan(before);
    });
  });
});
