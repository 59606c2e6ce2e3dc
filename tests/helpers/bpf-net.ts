// A small two-node BPF test bed for the tests/integration/bpf-*.test.ts files: nodes and pods
// are network namespaces, the four entry objects are loaded through the libbpf addon with one
// pin root per node, and maps are written and read directly with the codecs (no agent).
//
//   pod ns ─ lxc<name> ┐                          ┌ lxc<name> ─ pod ns
//                      │ node n1 ── eth0 ══ eth0 ── node n2 │
//                      └ meshvx (vxlan)      (vxlan) meshvx ┘
//
// Every namespace and pin dir is named meshtest-bpf<tag>-<random>, and leftovers of earlier
// runs with the same tag are removed first (and again at the end).
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { execa, type ResultPromise } from 'execa';
import { BpfMap, BpfObject, RingBuffer, attachTc, ensureBpffs } from '../../src/datapath/addon.js';
import {
  CLUSTER_ANY,
  MapNames,
  ProgramNames,
  RoutingMode,
  backendInfoCodec,
  backendKeyCodec,
  configCodec,
  ctEntryCodec,
  ctKeyCodec,
  endpointInfoCodec,
  endpointKeyCodec,
  flowEventCodec,
  ipcacheInfoCodec,
  ipcacheKeyCodec,
  metricsKeyCodec,
  nodeInfoCodec,
  nodeKeyCodec,
  policyEntryCodec,
  policyKeyCodec,
  revNatInfoCodec,
  revNatKeyCodec,
  serviceInfoCodec,
  serviceKeyCodec,
  sumPerCpuMetrics,
  u32Key,
  type CtEntry,
  type CtKey,
  type Direction,
  type DropReason,
  type FlowEvent,
  type MeshConfig,
  type PolicyKey,
} from '../../src/datapath/codecs.js';

// dist/tests/helpers/ → repository root
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const BPFFS = '/sys/fs/bpf';
const PROGRAMS = Object.keys(ProgramNames) as (keyof typeof ProgramNames)[];
export const GATEWAY = '169.254.1.1';

export async function sh(cmd: string, args: string[], opts: { reject?: boolean; timeout?: number } = {}) {
  return execa(cmd, args, { reject: opts.reject ?? true, timeout: opts.timeout ?? 30_000, all: true });
}

/** `ip -n <ns> …` */
export async function ip(ns: string, ...args: string[]) {
  return sh('ip', ['-n', ns, ...args]);
}

/** Runs a command inside a namespace. */
export async function inNs(ns: string, cmd: string, args: string[], opts: { reject?: boolean; timeout?: number } = {}) {
  return sh('ip', ['netns', 'exec', ns, cmd, ...args], opts);
}

export async function linkInfo(ns: string, dev: string): Promise<{ ifindex: number; mac: string; mtu: number }> {
  const { stdout } = await sh('ip', ['-n', ns, '-j', 'link', 'show', 'dev', dev]);
  const [link] = JSON.parse(stdout) as { ifindex: number; address: string; mtu: number }[];
  return { ifindex: link.ifindex, mac: link.address, mtu: link.mtu };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface Pod {
  readonly name: string;
  readonly ns: string;
  readonly ip: string;
  readonly lxc: string;
  readonly identity: number;
  readonly epId: number;
  readonly ifindex: number;
  readonly lxcMac: string;
  readonly podMac: string;
}

export interface TestNode {
  readonly name: string;
  readonly ns: string;
  readonly ip: string;
  readonly nodeId: number;
  readonly clusterId: number;
  readonly pin: string;
  readonly podCidr: string;
  readonly pods: Pod[];
}

export class BpfNet {
  readonly prefix: string;
  readonly run: string;
  private readonly pinBase: string;
  private objDir = '';
  private readonly maps = new Map<string, BpfMap>();
  private readonly objects: BpfObject[] = [];
  private readonly children: ResultPromise[] = [];
  readonly nodes: TestNode[] = [];

  /** `tag`: a few lowercase letters of the test file's own, so parallel files never collide. */
  constructor(tag: string) {
    this.prefix = `meshtest-bpf${tag}-`;
    this.run = `${this.prefix}${randomBytes(3).toString('hex')}`;
    this.pinBase = join(BPFFS, this.run);
  }

  /** Fails without root; removes leftovers, mounts bpffs if needed, compiles the objects. */
  async setup(): Promise<void> {
    if (process.getuid?.() !== 0) {
      throw new Error('needs root: BPF integration tests build network namespaces, links and BPF; run them as root');
    }
    await this.cleanupLeftovers();
    await ensureBpffs();
    this.objDir = mkdtempSync(join(tmpdir(), `${this.run}-`));
    for (const prog of PROGRAMS) {
      await sh('clang', [
        '-O2', '-g', '-Wall', '-target', 'bpf', '-D__TARGET_ARCH_x86',
        `-I${join(repoRoot, 'bpf')}`,
        '-c', join(repoRoot, 'bpf', `${prog}.c`),
        '-o', join(this.objDir, `${prog}.o`),
      ], { timeout: 120_000 });
    }
  }

  async teardown(): Promise<void> {
    for (const c of this.children) c.kill('SIGKILL');
    await Promise.allSettled(this.children);
    for (const m of this.maps.values()) m.close();
    this.maps.clear();
    for (const o of this.objects) o.close();
    this.objects.length = 0;
    // MESHTEST_KEEP=1 leaves namespaces and pins for a post-mortem; the next run removes them.
    if (process.getuid?.() === 0 && !process.env.MESHTEST_KEEP) await this.cleanupLeftovers();
    if (this.objDir) rmSync(this.objDir, { recursive: true, force: true });
  }

  private async cleanupLeftovers(): Promise<void> {
    const { stdout } = await sh('ip', ['-j', 'netns', 'list'], { reject: false });
    const list = stdout.trim() ? (JSON.parse(stdout) as { name: string }[]) : [];
    for (const { name } of list) {
      if (name.startsWith(this.prefix)) await sh('ip', ['netns', 'del', name], { reject: false });
    }
    if (existsSync(BPFFS)) {
      for (const entry of readdirSync(BPFFS)) {
        if (entry.startsWith(this.prefix)) rmSync(join(BPFFS, entry), { recursive: true, force: true });
      }
    }
  }

  /** A namespace of this run (a node, a pod, a router). */
  async addNetns(name: string): Promise<string> {
    const ns = `${this.run}-${name}`;
    await sh('ip', ['netns', 'add', ns]);
    await ip(ns, 'link', 'set', 'lo', 'up');
    return ns;
  }

  /** A node netns with the four objects loaded into its own pin root and a VXLAN device. */
  async addNode(name: string, nodeIp: string, podCidr: string, nodeId: number, clusterId = 1): Promise<TestNode> {
    const ns = await this.addNetns(name);
    await inNs(ns, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    const pin = join(this.pinBase, name);
    for (const prog of PROGRAMS) {
      this.objects.push(await BpfObject.load(join(this.objDir, `${prog}.o`), { pinRoot: pin }));
    }
    await ip(ns, 'link', 'add', 'meshvx', 'type', 'vxlan', 'external', 'dstport', '8472');
    await ip(ns, 'link', 'set', 'meshvx', 'up');
    const node: TestNode = { name, ns, ip: nodeIp, nodeId, clusterId, pin, podCidr, pods: [] };
    this.nodes.push(node);
    return node;
  }

  private object(node: TestNode, prog: keyof typeof ProgramNames): BpfObject {
    const i = this.nodes.indexOf(node) * PROGRAMS.length + PROGRAMS.indexOf(prog);
    return this.objects[i];
  }

  /** One veth between two nodes (their eth0), addresses /24, as two nodes on one VPC. */
  async linkNodes(a: TestNode, b: TestNode): Promise<void> {
    await ip(a.ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', b.ns);
    for (const n of [a, b]) {
      await ip(n.ns, 'addr', 'add', `${n.ip}/24`, 'dev', 'eth0');
      await ip(n.ns, 'link', 'set', 'eth0', 'up');
    }
  }

  async addPod(node: TestNode, name: string, podIp: string, identity: number, epId: number): Promise<Pod> {
    const ns = await this.addNetns(name);
    const lxc = `lxc${name}`;
    await ip(node.ns, 'link', 'add', lxc, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    await ip(node.ns, 'link', 'set', lxc, 'up');
    await ip(node.ns, 'route', 'add', `${podIp}/32`, 'dev', lxc, 'scope', 'link', 'src', node.ip);
    await ip(ns, 'link', 'set', 'eth0', 'mtu', '1450', 'up');
    await ip(ns, 'addr', 'add', `${podIp}/32`, 'dev', 'eth0');
    const lxcLink = await linkInfo(node.ns, lxc);
    const podLink = await linkInfo(ns, 'eth0');
    await ip(ns, 'neigh', 'add', GATEWAY, 'lladdr', lxcLink.mac, 'dev', 'eth0', 'nud', 'permanent');
    await ip(ns, 'route', 'add', GATEWAY, 'dev', 'eth0', 'scope', 'link');
    await ip(ns, 'route', 'add', 'default', 'via', GATEWAY, 'dev', 'eth0');
    const pod: Pod = { name, ns, ip: podIp, lxc, identity, epId, ifindex: lxcLink.ifindex, lxcMac: lxcLink.mac, podMac: podLink.mac };
    node.pods.push(pod);
    return pod;
  }

  /** Config, endpoints and every program attached (lxc both ways, VXLAN and eth0 ingress). */
  async wire(node: TestNode, config: Partial<MeshConfig> = {}): Promise<void> {
    await this.writeConfig(node, config);
    for (const pod of node.pods) {
      attachTc({ ifname: pod.lxc, netns: node.ns, direction: 'ingress', program: { object: this.object(node, 'from-container'), name: ProgramNames['from-container'] } });
      attachTc({ ifname: pod.lxc, netns: node.ns, direction: 'egress', program: { object: this.object(node, 'to-container'), name: ProgramNames['to-container'] } });
      this.writeEndpoint(node, pod);
    }
    attachTc({ ifname: 'meshvx', netns: node.ns, direction: 'ingress', program: { object: this.object(node, 'from-overlay'), name: ProgramNames['from-overlay'] } });
    attachTc({ ifname: 'eth0', netns: node.ns, direction: 'ingress', program: { object: this.object(node, 'from-netdev'), name: ProgramNames['from-netdev'] } });
  }

  map(node: TestNode, name: string): BpfMap {
    const path = join(node.pin, name);
    let m = this.maps.get(path);
    if (!m) {
      m = BpfMap.openPinned(path);
      this.maps.set(path, m);
    }
    return m;
  }

  async writeConfig(node: TestNode, config: Partial<MeshConfig> = {}): Promise<void> {
    const eth0 = await linkInfo(node.ns, 'eth0').catch(() => ({ ifindex: 0 }));
    const vx = await linkInfo(node.ns, 'meshvx');
    this.map(node, MapNames.config).update(
      u32Key.encode({ value: 0 }),
      configCodec.encode({
        nodeIp: node.ip,
        nodeId: node.nodeId,
        vxlanIfindex: vx.ifindex,
        clusterId: node.clusterId,
        routingMode: RoutingMode.Tunnel,
        flags: 0,
        netdevIfindex: eth0.ifindex,
        ...config,
      }),
    );
  }

  writeEndpoint(node: TestNode, pod: Pod, flags = 0): void {
    this.map(node, MapNames.endpoints).update(
      endpointKeyCodec.encode({ ip: pod.ip, clusterId: CLUSTER_ANY }),
      endpointInfoCodec.encode({ ifindex: pod.ifindex, lxcMac: pod.lxcMac, podMac: pod.podMac, endpointId: pod.epId, flags, identity: pod.identity }),
    );
  }

  writeIpcache(node: TestNode, prefix: string, prefixLen: number, identity: number, tunnelIp: string, flags = 0): void {
    this.map(node, MapNames.ipcache).update(
      ipcacheKeyCodec.encode({ prefixLen, clusterId: CLUSTER_ANY, ip: prefix }),
      ipcacheInfoCodec.encode({ identity, tunnelIp, nodeId: 0, flags }),
    );
  }

  /** `node`'s mesh_nodes entry for `peer` (its cluster id unless given). */
  writePeerNode(node: TestNode, peer: TestNode, flags: number, clusterId = peer.clusterId): void {
    this.map(node, MapNames.nodes).update(nodeKeyCodec.encode({ ip: peer.ip }), nodeInfoCodec.encode({ nodeId: peer.nodeId, clusterId, flags }));
  }

  setRule(node: TestNode, key: PolicyKey, deny = false): void {
    this.map(node, MapNames.policy).update(policyKeyCodec.encode(key), policyEntryCodec.encode({ flags: deny ? 1 : 0, packets: 0n, bytes: 0n }));
  }

  clearRules(node: TestNode): void {
    const m = this.map(node, MapNames.policy);
    for (const k of m.keys()) m.delete(k);
  }

  /** Backends first, then the service: no packet sees a slot that is not there yet. */
  setService(node: TestNode, svc: { vip: string; port: number; proto: number; revNatId: number }, backends: { ip: string; port: number }[]): void {
    this.map(node, MapNames.revnat).update(revNatKeyCodec.encode({ revNatId: svc.revNatId }), revNatInfoCodec.encode({ vip: svc.vip, port: svc.port }));
    const bm = this.map(node, MapNames.backends);
    if (backends.length > 0) {
      const keys = Buffer.concat(backends.map((_, i) => backendKeyCodec.encode({ revNatId: svc.revNatId, slot: i + 1 })));
      const values = Buffer.concat(backends.map((be) => backendInfoCodec.encode({ ip: be.ip, port: be.port, proto: svc.proto, flags: 0, clusterId: node.clusterId })));
      bm.updateBatch(keys, values, backends.length);
    }
    this.map(node, MapNames.services).update(
      serviceKeyCodec.encode({ vip: svc.vip, dport: svc.port, proto: svc.proto }),
      serviceInfoCodec.encode({ count: backends.length, revNatId: svc.revNatId, flags: 0 }),
    );
  }

  /** Packets counted under (reason, direction), summed over CPUs. */
  metric(node: TestNode, reason: DropReason, direction: Direction): bigint {
    const raw = this.map(node, MapNames.metrics).lookup(metricsKeyCodec.encode({ reason, direction }));
    return raw ? sumPerCpuMetrics(raw).packets : 0n;
  }

  conntrack(node: TestNode): { key: CtKey; entry: CtEntry }[] {
    const m = this.map(node, MapNames.conntrack);
    const out: { key: CtKey; entry: CtEntry }[] = [];
    for (const k of m.keys()) {
      const v = m.lookup(k);
      if (v) out.push({ key: ctKeyCodec.decode(k), entry: ctEntryCodec.decode(v) });
    }
    return out;
  }

  /** Flow events `node` emits while `fn` runs (earlier ones are drained and dropped first). */
  async flows(node: TestNode, fn: () => Promise<void>): Promise<FlowEvent[]> {
    const events: FlowEvent[] = [];
    const ring = RingBuffer.open(this.map(node, MapNames.flows), (rec) => events.push(flowEventCodec.decode(rec)));
    try {
      await sleep(300);
      events.length = 0;
      await fn();
      await sleep(300);
    } finally {
      ring.close();
    }
    return events;
  }

  /**
   * A long-running process in a namespace, killed at teardown. Resolves once it printed `ready`,
   * with the lines it prints (filled as they come).
   */
  async spawn(ns: string, cmd: string, args: string[]): Promise<{ readonly lines: string[] }> {
    const child = execa('ip', ['netns', 'exec', ns, cmd, ...args], { reject: false, buffer: false });
    this.children.push(child);
    const lines: string[] = [];
    await new Promise<void>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`${cmd} in ${ns} did not start`)), 10_000);
      child.stdout!.on('data', (d: Buffer) => {
        const got = String(d).split('\n').filter(Boolean);
        lines.push(...got);
        if (got.includes('ready')) {
          clearTimeout(timer);
          ok();
        }
      });
      void child.then((r) => {
        clearTimeout(timer);
        fail(new Error(`${cmd} in ${ns} exited: ${String(r.stderr ?? '')}`));
      });
    });
    // Not the child itself: it is a thenable, and resolving with it would wait for its exit.
    return { lines };
  }
}

export async function ping(fromNs: string, to: string, count = 2, extra: string[] = []): Promise<boolean> {
  const r = await inNs(fromNs, 'ping', ['-n', '-c', String(count), '-i', '0.2', '-W', '1', ...extra, to], { reject: false, timeout: 15_000 });
  return r.exitCode === 0;
}
