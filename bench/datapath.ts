/**
 * Datapath benchmark: cross-node pod-to-pod TCP throughput (iperf3, 1 and 4 streams) and
 * request/response latency (sockperf TCP ping-pong, full round trip) through the eBPF datapath
 * in native, tunnel and hybrid routing, each against a baseline measured on the same namespaces
 * in the same run: every tc hook removed (no clsact qdisc, no BPF) and the pod slices routed by
 * the plain kernel.
 *
 * For each mode it builds one 2-node lab cluster (own MESHCTL_HOME, deleted before and after)
 * with a client pod on node 1 and a server pod on node 2, loads its own copies of the four
 * programs from the compile cache onto the node's pinned maps, and then alternates variants:
 *
 *   baseline     no BPF anywhere on the path; routes `peer slice via peer node` in the nodes
 *                (same VPC) or in the underlay router (across VPCs); tunnel/hybrid get these
 *                routes from the bench, native has them from its agents
 *   bpf           the four programs attached as the agent attaches them, mesh_config as the
 *                 agent keeps it (no flow events while nobody subscribes)
 *   bpf-observed  the same while the bench subscribes to both agents' flow sockets, as
 *                 `meshctl observe` would: an event per packet, decoded and streamed by the agent
 *
 * Order within a round reverses every round (A B C, C B A, …) so linear drift cancels; ratios
 * are per-round pairs (variant / baseline of the same round), reported as medians.
 * Hybrid puts its nodes in two VPCs, so the pair measured is the cross-VPC one (tunnel path).
 *
 * Run as root: node dist/bench/datapath.js [--rounds 3] [--seconds 2] [--modes native,tunnel,hybrid]
 * Table on stderr, JSON on stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';

import { BpfMap, BpfObject, attachTc, destroyTcHook, queryTc, type TcDirection } from '../src/datapath/addon.js';
import { ConfigFlags, DropReason, MapNames, ProgramNames, configCodec, metricsKeyCodec, sumPerCpuMetrics } from '../src/datapath/codecs.js';
import { compilePrograms, nodePinDir, VXLAN_DEVICE } from '../src/datapath/datapath.js';
import { MESHCTL_BIN } from '../src/util/self.js';
import { fmt, hostInfo, markdownTable, median, note, requireRoot, revision, round, runBounded } from './common.js';

type ModeName = 'native' | 'tunnel' | 'hybrid';
type Variant = 'baseline' | 'bpf' | 'bpf-observed';
type Source = keyof typeof ProgramNames;

interface ModeSpec {
  readonly cluster: string;
  readonly id: number;
  readonly podCidr: string;
  readonly vpcs: readonly string[];
  /** What the bpf variants' traffic between the pair should look like. */
  readonly bpfPath: 'native' | 'tunnel';
  readonly throughputTarget: number;
  /** Max p50 latency ratio, where there is a target. */
  readonly latencyTarget: number | null;
}

const MODES: Record<ModeName, ModeSpec> = {
  native: { cluster: 'native', id: 211, podCidr: '10.211.0.0/16', vpcs: ['native'], bpfPath: 'native', throughputTarget: 0.95, latencyTarget: 1.1 },
  tunnel: { cluster: 'tunnel', id: 212, podCidr: '10.212.0.0/16', vpcs: ['tunnel'], bpfPath: 'tunnel', throughputTarget: 0.8, latencyTarget: null },
  hybrid: { cluster: 'hybrid', id: 213, podCidr: '10.213.0.0/16', vpcs: ['hybrid-a', 'hybrid-b'], bpfPath: 'tunnel', throughputTarget: 0.8, latencyTarget: null },
};
const VARIANTS: readonly Variant[] = ['baseline', 'bpf', 'bpf-observed'];
const POD_NAMESPACE = 'bench';
const IPERF_PORT = 5201;
const SOCKPERF_PORT = 11111;
const SOCKPERF_MSG_BYTES = 64;
/** Wall-clock per phase beyond the measured seconds: tool start-up, variant switch, checks. */
const PHASE_OVERHEAD_S = 2;
const MODE_SETUP_S = 12;
const BUDGET_S = 290;

interface Options {
  readonly rounds: number;
  /** Seconds of each iperf3 and sockperf run. */
  readonly seconds: number;
  readonly modes: readonly ModeName[];
  readonly home: string;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      rounds: { type: 'string', default: '3' },
      seconds: { type: 'string', default: '2' },
      modes: { type: 'string', default: 'native,tunnel,hybrid' },
      home: { type: 'string', default: '/tmp/meshctl-bench-datapath' },
    },
  });
  const rounds = Number(values.rounds);
  const seconds = Number(values.seconds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds ${values.rounds}: must be a positive integer`);
  if (!Number.isInteger(seconds) || seconds < 1) throw new Error(`--seconds ${values.seconds}: must be a positive integer`);
  const modes = values.modes!.split(',').map((m) => m.trim());
  for (const m of modes) if (!(m in MODES)) throw new Error(`--modes: unknown mode "${m}" (native, tunnel, hybrid)`);
  return { rounds, seconds, modes: modes as ModeName[], home: values.home! };
}

function estimateSeconds(o: Options): number {
  return o.modes.length * (MODE_SETUP_S + o.rounds * VARIANTS.length * (3 * o.seconds + PHASE_OVERHEAD_S));
}

// ---------------------------------------------------------------------------------------------
// The lab, driven through the meshctl CLI with its own state dir.

interface LabNode {
  readonly name: string;
  readonly netns: string;
  readonly vpc: string;
  readonly ip: string;
  readonly podCidr: string;
}
interface LabFile {
  readonly prefix: string;
  readonly underlayNetns: string;
  readonly clusters: Record<string, { readonly nodes: readonly LabNode[] }>;
}
interface Pod {
  readonly name: string;
  readonly ip: string;
  readonly netns: string;
  readonly lxc: string;
  readonly node: LabNode;
}

/**
 * execa's `cleanup` registers signal-exit hooks that re-raise SIGINT/SIGTERM as soon as their count
 * matches the listeners, killing the bench before its own handler can delete the lab. Deleting
 * the lab kills what runs in its namespaces anyway.
 */
const NO_EXIT_HOOK = { cleanup: false } as const;

/** Fired when the run is cut short: commands in flight are killed and the next step throws. */
let cancel: AbortSignal = new AbortController().signal;

function execOptions(timeoutMs: number, cancellable = true): { reject: false; timeout: number; cleanup: false; cancelSignal?: AbortSignal } {
  if (!cancellable) return { reject: false, timeout: timeoutMs, ...NO_EXIT_HOOK };
  cancel.throwIfAborted();
  return { reject: false, timeout: timeoutMs, ...NO_EXIT_HOOK, cancelSignal: cancel };
}

/** Runs the meshctl CLI on the bench's lab; `cancellable` false for the cleanup, which must run after an abort. */
async function meshctl(home: string, args: readonly string[], timeoutMs = 60_000, cancellable = true): Promise<string> {
  const r = await execa(process.execPath, [MESHCTL_BIN, ...args], { env: { MESHCTL_HOME: home }, ...execOptions(timeoutMs, cancellable) });
  if (r.exitCode !== 0) {
    const lines = `${r.stderr}`.split('\n').filter((l) => l.trim() && !/^\s+at /.test(l));
    const why = lines.slice(-4).join('; ') || r.shortMessage;
    throw new Error(`meshctl ${args.join(' ')}: ${why}`);
  }
  return `${r.stdout}`;
}

async function sh(cmd: string, args: readonly string[], timeoutMs = 30_000): Promise<string> {
  const r = await execa(cmd, args, execOptions(timeoutMs));
  if (r.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${`${r.stderr || r.stdout}`.trim().split('\n').slice(-2).join('; ') || r.shortMessage}`);
  return `${r.stdout}`;
}

function podsManifest(cluster: string): string {
  const pod = (name: string, node: string): string =>
    `apiVersion: v1\nkind: Pod\nmetadata:\n  name: ${name}\n  namespace: ${POD_NAMESPACE}\nspec:\n  nodeName: ${node}\n  containers:\n    - name: ${name}\n      image: bench\n`;
  return [`apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ${POD_NAMESPACE}\n`, pod('client', `${cluster}-n1`), pod('server', `${cluster}-n2`)].join('---\n');
}

async function readPods(home: string, cluster: string, nodes: readonly LabNode[]): Promise<{ client: Pod; server: Pod }> {
  const list = JSON.parse(await meshctl(home, ['lab', 'get', 'pods', '-n', POD_NAMESPACE, '-o', 'json', '--context', cluster])) as {
    items: Array<{ metadata: { name: string }; spec: { nodeName: string }; status?: { podIP?: string; meshctl?: { netns?: string; lxc?: string } } }>;
  };
  const pick = (name: string): Pod => {
    const p = list.items.find((i) => i.metadata.name === name);
    const node = nodes.find((n) => n.name === p?.spec.nodeName);
    if (!p?.status?.podIP || !p.status.meshctl?.netns || !p.status.meshctl.lxc || !node) throw new Error(`pod ${POD_NAMESPACE}/${name} in ${cluster} is not plumbed`);
    return { name, ip: p.status.podIP, netns: p.status.meshctl.netns, lxc: p.status.meshctl.lxc, node };
  };
  return { client: pick('client'), server: pick('server') };
}

// ---------------------------------------------------------------------------------------------
// One mode: cluster, pair, BPF on/off switch, measurements.

interface Hook {
  readonly netns: string;
  readonly ifname: string;
  readonly direction: TcDirection;
  readonly source: Source;
}
interface Route {
  /** Namespace whose routing table gets it: a node, or the underlay router across VPCs. */
  readonly netns: string;
  readonly dst: string;
  readonly via: string;
}
interface Measurement {
  readonly throughput1Gbps: number;
  readonly throughput4Gbps: number;
  readonly retransmits: number;
  readonly rttAvgUs: number;
  readonly rttP50Us: number;
  readonly rttP99Us: number;
}
interface Phase extends Measurement {
  readonly round: number;
  readonly variant: Variant;
  /** Packets the programs forwarded / dropped during the phase (both nodes, mesh_metrics). */
  readonly bpfForwarded: number;
  readonly bpfDropped: number;
  /** Packets the client node sent through mesh_vxlan during the phase. */
  readonly vxlanTx: number;
  /** Packets the client node's eth0 sent and the server node's eth0 received (GSO frames count once). */
  readonly clientEth0Tx: number;
  readonly serverEth0Rx: number;
}
interface VariantSummary {
  readonly throughput1Gbps: number;
  readonly throughput4Gbps: number;
  readonly rttAvgUs: number;
  readonly rttP50Us: number;
  readonly rttP99Us: number;
  /** Medians of per-round ratios to that round's baseline (absent for the baseline). */
  readonly ratio?: { throughput1: number; throughput4: number; rttAvg: number; rttP50: number; rttP99: number };
}
interface ModeResult {
  readonly mode: ModeName;
  readonly cluster: string;
  readonly pair: string;
  readonly bpfPath: string;
  readonly sameVpc: boolean;
  readonly baseline: string;
  readonly routesAddedForBaseline: readonly Route[];
  readonly phases: readonly Phase[];
  readonly summary: Partial<Record<Variant, VariantSummary>>;
  readonly targets: { throughputRatioMin: number; latencyP50RatioMax: number | null; metByBpf: boolean; metByBpfObserved: boolean };
}

class ModeBench {
  private readonly objects = new Map<string, Map<Source, BpfObject>>();
  private readonly maps: BpfMap[] = [];
  private readonly configs: Array<{ map: BpfMap }> = [];
  private readonly metrics: BpfMap[] = [];
  private readonly servers: ChildProcess[] = [];
  private readonly subscribers: Socket[] = [];
  private flowSockets: string[] = [];
  private hooks: Hook[] = [];
  private routes: Route[] = [];
  private client!: Pod;
  private server!: Pod;

  constructor(
    private readonly mode: ModeName,
    private readonly spec: ModeSpec,
    private readonly opts: Options,
  ) {}

  async run(): Promise<ModeResult> {
    try {
      await this.setUp();
      const phases: Phase[] = [];
      for (let r = 1; r <= this.opts.rounds; r++) {
        const order = r % 2 === 1 ? VARIANTS : [...VARIANTS].reverse();
        for (const v of order) phases.push(await this.phase(r, v));
      }
      return this.result(phases);
    } finally {
      this.tearDown();
    }
  }

  private async setUp(): Promise<void> {
    const { cluster, id, podCidr, vpcs } = this.spec;
    const home = this.opts.home;
    note(`⌛ ${this.mode}: creating cluster ${cluster} (${vpcs.length > 1 ? `VPCs ${vpcs.join(', ')}` : `VPC ${vpcs[0]}`})`);
    await meshctl(home, ['lab', 'create', cluster, '--id', String(id), '--pod-cidr', podCidr, '--nodes', '2', '--vpc', vpcs.join(','), '--routing', this.mode]);
    const manifest = join(home, `${cluster}-pods.yaml`);
    writeFileSync(manifest, podsManifest(cluster));
    await meshctl(home, ['lab', 'apply', '-f', manifest, '--context', cluster]);
    const lab = JSON.parse(readFileSync(join(home, 'lab.json'), 'utf8')) as LabFile;
    const nodes = lab.clusters[cluster].nodes;
    ({ client: this.client, server: this.server } = await readPods(home, cluster, nodes));
    const [a, b] = [this.client.node, this.server.node];
    if ((a.vpc !== b.vpc) !== (this.mode === 'hybrid')) throw new Error(`${this.mode}: nodes ${a.name} (${a.vpc}) and ${b.name} (${b.vpc}) are not laid out as expected`);

    this.servers.push(
      this.spawnServer(this.server, ['iperf3', '-s', '-B', this.server.ip, '-p', String(IPERF_PORT)]),
      this.spawnServer(this.server, ['sockperf', 'server', '--tcp', '-i', this.server.ip, '-p', String(SOCKPERF_PORT)]),
    );
    // The agents' datapath first: it must carry traffic before we take it over.
    await this.waitReachable(30_000);

    // Our own copies of the agent's programs, on the node's pinned maps (no .data/.bss: same behaviour).
    const objs = await compilePrograms();
    for (const node of [a, b]) {
      const pinDir = nodePinDir(lab.prefix, cluster, node.name);
      const byName = new Map<Source, BpfObject>();
      for (const s of Object.keys(ProgramNames) as Source[]) byName.set(s, await BpfObject.load(objs[s], { pinRoot: pinDir }));
      this.objects.set(node.netns, byName);
      const config = BpfMap.openPinned(join(pinDir, MapNames.config));
      this.maps.push(config);
      this.configs.push({ map: config });
      this.flowSockets.push(join(home, 'clusters', cluster, 'run', `flows-${node.name}.sock`));
      const metrics = BpfMap.openPinned(join(pinDir, MapNames.metrics));
      this.maps.push(metrics);
      this.metrics.push(metrics);
    }
    this.hooks = [
      ...[this.client, this.server].flatMap((p): Hook[] => [
        { netns: p.node.netns, ifname: p.lxc, direction: 'ingress', source: 'from-container' },
        { netns: p.node.netns, ifname: p.lxc, direction: 'egress', source: 'to-container' },
      ]),
      ...[a, b].flatMap((n): Hook[] => [
        { netns: n.netns, ifname: 'eth0', direction: 'ingress', source: 'from-netdev' },
        { netns: n.netns, ifname: VXLAN_DEVICE, direction: 'ingress', source: 'from-overlay' },
      ]),
    ];
    // Routes the plain kernel needs between the two pod slices, and which of them the bench adds.
    const want: Route[] =
      a.vpc === b.vpc
        ? [
            { netns: a.netns, dst: b.podCidr, via: b.ip },
            { netns: b.netns, dst: a.podCidr, via: a.ip },
          ]
        : [
            { netns: lab.underlayNetns, dst: a.podCidr, via: a.ip },
            { netns: lab.underlayNetns, dst: b.podCidr, via: b.ip },
          ];
    this.routes = [];
    for (const r of want) {
      const have = await sh('ip', ['-n', r.netns, 'route', 'show', 'exact', r.dst]);
      if (!have.includes(`via ${r.via}`)) this.routes.push(r);
    }
    note(`   client ${this.client.ip} on ${a.name} (${a.vpc}), server ${this.server.ip} on ${b.name} (${b.vpc}); baseline routes added by the bench: ${this.routes.length}`);
  }

  private spawnServer(pod: Pod, argv: readonly string[]): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', pod.netns, ...argv], { stdio: 'ignore' });
    child.on('error', () => undefined);
    return child;
  }

  /** TCP to the server pod's echo workload until it answers (or the deadline passes). */
  private async waitReachable(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        await sh('ip', ['netns', 'exec', this.client.netns, 'curl', '-sf', '--max-time', '1', `http://${this.server.ip}:8080/`], 5000);
        return;
      } catch (err) {
        if (cancel.aborted) throw err;
        last = (err as Error).message;
      }
      if (Date.now() > deadline) throw new Error(`${this.mode}: server pod ${this.server.ip} not reachable from client after ${timeoutMs / 1000}s: ${last}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  private async apply(variant: Variant): Promise<void> {
    if (variant === 'baseline') {
      for (const h of this.hooks) destroyTcHook({ netns: h.netns, ifname: h.ifname, direction: 'both' });
      for (const r of this.routes) await sh('ip', ['-n', r.netns, 'route', 'replace', r.dst, 'via', r.via]);
    } else {
      for (const r of this.routes) await sh('ip', ['-n', r.netns, 'route', 'del', r.dst, 'via', r.via]).catch(() => undefined);
      for (const h of this.hooks) attachTc({ netns: h.netns, ifname: h.ifname, direction: h.direction, program: this.program(h) });
    }
    await this.setObserved(variant === 'bpf-observed');
    this.check(variant, 'before');
  }

  /**
   * Subscribe to (or leave) both agents' flow sockets, draining what they stream, and wait until
   * both agents have switched the datapath's flow events accordingly (mesh_config NO_FLOWS).
   */
  private async setObserved(on: boolean): Promise<void> {
    if (on && this.subscribers.length === 0) {
      for (const path of this.flowSockets) {
        const sock = createConnection(path);
        sock.on('error', () => undefined);
        sock.resume();
        this.subscribers.push(sock);
      }
    }
    if (!on) for (const sock of this.subscribers.splice(0)) sock.destroy();
    const deadline = Date.now() + 10_000;
    for (;;) {
      const flowsOn = this.configs.map(({ map }) => (configCodec.decode(map.lookup(Buffer.alloc(4))!).flags & ConfigFlags.noFlows) === 0);
      if (flowsOn.every((f) => f === on)) return;
      if (Date.now() > deadline) throw new Error(`${this.mode}: agents did not turn flow events ${on ? 'on' : 'off'} within 10s (${this.flowSockets.join(', ')})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  private program(h: Hook): { object: BpfObject; name: string } {
    return { object: this.objects.get(h.netns)!.get(h.source)!, name: ProgramNames[h.source] };
  }

  private programId(h: Hook): number {
    const { object, name } = this.program(h);
    return object.program(name).id ?? -1;
  }

  /** Every hook holds exactly what the variant wants (an agent restart would re-attach its own). */
  private check(variant: Variant, when: string): void {
    for (const h of this.hooks) {
      let id: number | null = null;
      try {
        id = queryTc({ netns: h.netns, ifname: h.ifname, direction: h.direction })?.programId ?? null;
      } catch {
        id = null; // no clsact hook at all
      }
      const want = variant === 'baseline' ? null : this.programId(h);
      if (id !== want) throw new Error(`${this.mode} ${variant} (${when} measuring): ${h.ifname} ${h.direction} holds program ${id ?? 'none'}, expected ${want ?? 'none'}`);
    }
  }

  private bpfCounters(): { forwarded: number; dropped: number } {
    let forwarded = 0n;
    let dropped = 0n;
    for (const m of this.metrics) {
      for (const [k, v] of m.entries()) {
        const { packets } = sumPerCpuMetrics(v);
        if (metricsKeyCodec.decode(k).reason === DropReason.None) forwarded += packets;
        else dropped += packets;
      }
    }
    return { forwarded: Number(forwarded), dropped: Number(dropped) };
  }

  /** Packet counters of the underlay devices along the pair's path. */
  private async linkCounters(): Promise<{ vxlanTx: number; clientEth0Tx: number; serverEth0Rx: number }> {
    const packets = async (netns: string, dev: string, dir: 'rx' | 'tx'): Promise<number> => {
      const out = JSON.parse(await sh('ip', ['-n', netns, '-s', '-j', 'link', 'show', 'dev', dev])) as Array<{ stats64?: Record<string, { packets?: number }> }>;
      return out[0]?.stats64?.[dir]?.packets ?? 0;
    };
    return {
      vxlanTx: await packets(this.client.node.netns, VXLAN_DEVICE, 'tx'),
      clientEth0Tx: await packets(this.client.node.netns, 'eth0', 'tx'),
      serverEth0Rx: await packets(this.server.node.netns, 'eth0', 'rx'),
    };
  }

  private async phase(roundNo: number, variant: Variant): Promise<Phase> {
    await this.apply(variant);
    await this.waitReachable(10_000);
    const c0 = this.bpfCounters();
    const l0 = await this.linkCounters();
    const m = await this.measure();
    const c1 = this.bpfCounters();
    const l1 = await this.linkCounters();
    this.check(variant, 'after');
    const p: Phase = {
      round: roundNo,
      variant,
      ...m,
      bpfForwarded: c1.forwarded - c0.forwarded,
      bpfDropped: c1.dropped - c0.dropped,
      vxlanTx: l1.vxlanTx - l0.vxlanTx,
      clientEth0Tx: l1.clientEth0Tx - l0.clientEth0Tx,
      serverEth0Rx: l1.serverEth0Rx - l0.serverEth0Rx,
    };
    this.checkPath(p);
    note(
      `   ${this.mode} round ${roundNo} ${variant.padEnd(11)} 1×${fmt(p.throughput1Gbps)} 4×${fmt(p.throughput4Gbps)} Gbit/s, RTT p50 ${fmt(p.rttP50Us, 1)} µs p99 ${fmt(p.rttP99Us, 1)} µs` +
        ` (bpf fwd ${p.bpfForwarded}, drop ${p.bpfDropped}; packets: vxlan tx ${p.vxlanTx}, eth0 tx ${p.clientEth0Tx} → rx ${p.serverEth0Rx})`,
    );
    return p;
  }

  /** The traffic took the path the variant claims: no BPF in the baseline, the tunnel only where expected. */
  private checkPath(p: Phase): void {
    const fail = (why: string): never => {
      throw new Error(`${this.mode} round ${p.round} ${p.variant}: ${why}`);
    };
    const bulk = 1000; // far below the packets of one measurement, far above stray ARP/ND
    if (p.variant === 'baseline') {
      if (p.bpfForwarded !== 0 || p.bpfDropped !== 0) fail(`BPF counted ${p.bpfForwarded + p.bpfDropped} packets while detached`);
      if (p.vxlanTx > bulk) fail(`${p.vxlanTx} packets went through ${VXLAN_DEVICE} without BPF`);
      return;
    }
    if (p.bpfForwarded < bulk) fail(`BPF forwarded only ${p.bpfForwarded} packets`);
    if (this.spec.bpfPath === 'tunnel' && p.vxlanTx < bulk) fail(`only ${p.vxlanTx} packets went through ${VXLAN_DEVICE}: not the tunnel path`);
    if (this.spec.bpfPath === 'native' && p.vxlanTx > bulk) fail(`${p.vxlanTx} packets went through ${VXLAN_DEVICE}: not the native path`);
  }

  private async measure(): Promise<Measurement> {
    const t1 = await this.iperf(1);
    const t4 = await this.iperf(4);
    const lat = await this.sockperf();
    return { throughput1Gbps: t1.gbps, throughput4Gbps: t4.gbps, retransmits: t1.retransmits + t4.retransmits, ...lat };
  }

  private async iperf(streams: number): Promise<{ gbps: number; retransmits: number }> {
    const s = this.opts.seconds;
    const args = ['netns', 'exec', this.client.netns, 'iperf3', '-c', this.server.ip, '-p', String(IPERF_PORT), '-t', String(s), '-P', String(streams), '-J'];
    const r = await execa('ip', args, execOptions((s + 20) * 1000));
    let out: { error?: string; end?: { sum_received?: { bits_per_second?: number }; sum_sent?: { retransmits?: number } } };
    try {
      out = JSON.parse(`${r.stdout}`);
    } catch {
      throw new Error(`iperf3 -P ${streams} to ${this.server.ip}: ${`${r.stderr}`.trim() || r.shortMessage}`);
    }
    const bps = out.end?.sum_received?.bits_per_second;
    if (out.error || bps === undefined) throw new Error(`iperf3 -P ${streams} to ${this.server.ip}: ${out.error ?? 'no result'}`);
    return { gbps: bps / 1e9, retransmits: out.end?.sum_sent?.retransmits ?? 0 };
  }

  private async sockperf(): Promise<Pick<Measurement, 'rttAvgUs' | 'rttP50Us' | 'rttP99Us'>> {
    const s = this.opts.seconds;
    const args = ['netns', 'exec', this.client.netns, 'sockperf', 'ping-pong', '--tcp', '-i', this.server.ip, '-p', String(SOCKPERF_PORT), '-t', String(s), '-m', String(SOCKPERF_MSG_BYTES), '--full-rtt'];
    const r = await execa('ip', args, { ...execOptions((s + 20) * 1000), all: true });
    // sockperf colours some lines; strip the escapes before matching.
    const text = `${r.all}`.replace(/\x1b\[[0-9;]*m/g, '');
    const num = (re: RegExp): number => {
      const m = re.exec(text);
      if (!m) throw new Error(`sockperf ping-pong to ${this.server.ip}: no ${re.source} in its output: ${text.trim().split('\n').slice(-2).join('; ')}`);
      return Number(m[1]);
    };
    return { rttAvgUs: num(/avg-rtt=([\d.]+)/), rttP50Us: num(/percentile 50\.000 =\s*([\d.]+)/), rttP99Us: num(/percentile 99\.000 =\s*([\d.]+)/) };
  }

  private result(phases: Phase[]): ModeResult {
    const of = (v: Variant): Phase[] => phases.filter((p) => p.variant === v);
    const summary: Partial<Record<Variant, VariantSummary>> = {};
    for (const v of VARIANTS) {
      const ps = of(v);
      const med = (f: (p: Phase) => number): number => round(median(ps.map(f)), 2);
      const ratio = (f: (p: Phase) => number): number =>
        round(median(ps.map((p) => f(p) / f(phases.find((b) => b.variant === 'baseline' && b.round === p.round)!))), 3);
      summary[v] = {
        throughput1Gbps: med((p) => p.throughput1Gbps),
        throughput4Gbps: med((p) => p.throughput4Gbps),
        rttAvgUs: med((p) => p.rttAvgUs),
        rttP50Us: med((p) => p.rttP50Us),
        rttP99Us: med((p) => p.rttP99Us),
        ...(v === 'baseline'
          ? {}
          : {
              ratio: {
                throughput1: ratio((p) => p.throughput1Gbps),
                throughput4: ratio((p) => p.throughput4Gbps),
                rttAvg: ratio((p) => p.rttAvgUs),
                rttP50: ratio((p) => p.rttP50Us),
                rttP99: ratio((p) => p.rttP99Us),
              },
            }),
      };
    }
    const met = (v: Variant): boolean => {
      const r = summary[v]?.ratio;
      if (!r) return false;
      const tput = Math.min(r.throughput1, r.throughput4) >= this.spec.throughputTarget;
      return tput && (this.spec.latencyTarget === null || r.rttP50 <= this.spec.latencyTarget);
    };
    const [a, b] = [this.client.node, this.server.node];
    return {
      mode: this.mode,
      cluster: this.spec.cluster,
      pair: `${a.name} (${a.vpc}) → ${b.name} (${b.vpc})`,
      sameVpc: a.vpc === b.vpc,
      bpfPath: this.spec.bpfPath === 'tunnel' ? `VXLAN tunnel (${a.vpc === b.vpc ? 'same VPC' : 'cross-VPC'})` : 'native (FIB lookup + redirect)',
      baseline:
        a.vpc === b.vpc
          ? 'no BPF; node routes `peer slice via peer node`, no encapsulation'
          : 'no BPF; pod slices routed by the underlay router between the VPCs, no encapsulation',
      routesAddedForBaseline: this.routes,
      phases: phases.map((p) => ({
        ...p,
        throughput1Gbps: round(p.throughput1Gbps, 3),
        throughput4Gbps: round(p.throughput4Gbps, 3),
      })),
      summary,
      targets: { throughputRatioMin: this.spec.throughputTarget, latencyP50RatioMax: this.spec.latencyTarget, metByBpf: met('bpf'), metByBpfObserved: met('bpf-observed') },
    };
  }

  /** Stop the servers and release our handles; the lab delete takes the rest. */
  private tearDown(): void {
    for (const c of this.servers.splice(0)) if (c.pid && c.exitCode === null) c.kill('SIGKILL');
    for (const sock of this.subscribers.splice(0)) sock.destroy();
    for (const m of this.maps.splice(0)) m.close();
    for (const objs of this.objects.values()) for (const o of objs.values()) o.close();
    this.objects.clear();
  }
}

// ---------------------------------------------------------------------------------------------

function table(results: readonly ModeResult[]): string {
  const rows: string[][] = [];
  for (const r of results) {
    for (const v of VARIANTS) {
      const s = r.summary[v];
      if (!s) continue;
      const x = (n: number | undefined): string => (n === undefined ? '1' : fmt(n));
      const target =
        v === 'baseline'
          ? r.sameVpc ? 'plain routing, same VPC' : 'plain routing via VPC router'
          : `${(v === 'bpf' ? r.targets.metByBpf : r.targets.metByBpfObserved) ? '✅' : '❌'} ≥${r.targets.throughputRatioMin}×${r.targets.latencyP50RatioMax ? `, p50 ≤${r.targets.latencyP50RatioMax}×` : ''}`;
      rows.push([
        r.mode,
        v === 'baseline' ? 'kernel (no BPF, no encap)' : r.bpfPath,
        v,
        `${fmt(s.throughput1Gbps)} (${x(s.ratio?.throughput1)}×)`,
        `${fmt(s.throughput4Gbps)} (${x(s.ratio?.throughput4)}×)`,
        `${fmt(s.rttAvgUs, 1)} (${x(s.ratio?.rttAvg)}×)`,
        `${fmt(s.rttP50Us, 1)} (${x(s.ratio?.rttP50)}×)`,
        `${fmt(s.rttP99Us, 1)} (${x(s.ratio?.rttP99)}×)`,
        target,
      ]);
    }
  }
  return markdownTable(['mode', 'path', 'variant', '1 stream Gbit/s', '4 streams Gbit/s', 'RTT avg µs', 'RTT p50 µs', 'RTT p99 µs', 'target'], rows);
}

async function main(): Promise<void> {
  requireRoot('bench/datapath', 'network namespaces, tc and BPF');
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    note(`❌ ${(err as Error).message}`);
    process.exitCode = 2;
    return;
  }
  const estimate = estimateSeconds(opts);
  if (estimate > BUDGET_S - 20) {
    note(`❌ this run would take about ${estimate}s; the budget is ${BUDGET_S}s: lower --rounds, --seconds or --modes`);
    process.exitCode = 2;
    return;
  }
  const deleteLab = async (): Promise<void> => {
    await meshctl(opts.home, ['lab', 'delete', '--all'], 120_000, false);
  };
  const startedAt = new Date().toISOString();
  const hostBefore = hostInfo();
  const results: ModeResult[] = [];
  const errors: string[] = [];
  let reported = false;
  // Table and JSON of the modes measured so far: at the end, or when the run is cut short.
  const report = (): void => {
    if (reported) return;
    reported = true;
    const hostAfter = hostInfo();
    if (results.length) note(`\n${table(results)}\n`);
    note(
      `Ratios are medians of per-round variant/baseline pairs; RTT is sockperf TCP ping-pong (${SOCKPERF_MSG_BYTES}-byte messages, full round trip).` +
        ` Load average ${hostBefore.loadavg1m} before, ${hostAfter.loadavg1m} after (${hostAfter.cpus} CPUs).`,
    );
    process.stdout.write(
      `${JSON.stringify(
        {
          benchmark: 'datapath',
          revision: revision(),
          startedAt,
          finishedAt: new Date().toISOString(),
          host: { ...hostAfter, loadavg1mBefore: hostBefore.loadavg1m },
          options: { rounds: opts.rounds, secondsPerRun: opts.seconds, modes: opts.modes, variants: VARIANTS, sockperfMessageBytes: SOCKPERF_MSG_BYTES },
          results,
          errors,
        },
        null,
        2,
      )}\n`,
    );
  };
  await runBounded(
    'bench/datapath',
    BUDGET_S * 1000,
    async (signal) => {
      cancel = signal;
      note(`⌛ datapath benchmark: modes ${opts.modes.join(', ')}, ${opts.rounds} round(s) × ${VARIANTS.join('/')}, ${opts.seconds}s per run (about ${estimate}s); load ${hostBefore.loadavg1m}`);
      await deleteLab();
      for (const m of opts.modes) {
        try {
          results.push(await new ModeBench(m, MODES[m], opts).run());
        } catch (err) {
          if (signal.aborted) throw err;
          errors.push((err as Error).message);
          note(`❌ ${m}: ${(err as Error).message}`);
        }
        await meshctl(opts.home, ['lab', 'delete', MODES[m].cluster], 120_000).catch((err: Error) => note(`⚠️  ${err.message}`));
      }
      report();
      return errors.length === 0;
    },
    async () => {
      await deleteLab();
      rmSync(opts.home, { recursive: true, force: true });
    },
    (why) => {
      errors.push(why);
      report();
    },
  );
}

await main();
