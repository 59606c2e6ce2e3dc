/**
 * The agent-facing datapath of one node: compiles and loads the programs, pins their maps under
 * the node's pin dir, sets up the VXLAN device, attaches programs, and keeps the maps equal to the
 * state the agent wants.
 *
 * The agent states what it wants (upsertEndpoint, upsertIpcache, upsertNode, setPolicy,
 * upsertService, and the delete* calls) and then calls sync(), which diffs that against what the
 * pinned maps hold and writes only the difference. A restarted agent therefore rebuilds its wanted state and syncs:
 * entries still wanted are never flushed, so traffic keeps flowing across agent restarts.
 */
import { join } from 'node:path';
import { BPF_PIN_ROOT } from '../defaults.js';
import { ip } from '../util/exec.js';
import { ROOT } from '../util/self.js';
import { BpfMap, BpfObject, RingBuffer, attachTc, ensureBpffs, ifindexOf, type TcDirection } from './addon.js';
import {
  ConfigFlags,
  Direction,
  MapNames,
  ProgramNames,
  RoutingMode,
  backendInfoCodec,
  backendKeyCodec,
  configCodec,
  endpointInfoCodec,
  endpointKeyCodec,
  flowEventCodec,
  ipcacheInfoCodec,
  ipcacheKeyCodec,
  metricsKeyCodec,
  nodeInfoCodec,
  nodeKeyCodec,
  policyKeyCodec,
  revNatInfoCodec,
  revNatKeyCodec,
  serviceInfoCodec,
  serviceKeyCodec,
  sumPerCpuMetrics,
  type EndpointInfo,
  type FlowEvent,
  type IpcacheInfo,
  type MeshConfig,
  type NodeInfo,
  type ServiceKey,
} from './codecs.js';
import { compileBpf } from './compile.js';
import { policyEntries, type PolicyRule } from './policy-keys.js';

export const VXLAN_DEVICE = 'mesh_vxlan';
export const VXLAN_PORT = 8472;

/** Where a node's maps are pinned. */
export function nodePinDir(lab: string, cluster: string, node: string): string {
  return join(BPF_PIN_ROOT, lab, cluster, node);
}

export interface DatapathOptions {
  /** bpffs directory for this node's maps (see nodePinDir). */
  readonly pinDir: string;
  readonly nodeIp: string;
  readonly nodeId: number;
  readonly clusterId: number;
  readonly routing: 'tunnel' | 'native' | 'hybrid';
  /** Underlay device; default eth0. */
  readonly netdev?: string;
  /** Compiled-object cache; default <repo>/dist/bpf-cache. */
  readonly cacheDir?: string;
  /**
   * Config flags (ConfigFlags); default ConfigFlags.noFlows: no flow events until someone
   * subscribes (setFlowEvents), since a consumer of an event per packet costs real throughput.
   */
  readonly configFlags?: number;
}

type Entry = { key: Buffer; value: Buffer };

/** Desired contents of one map, keyed by hex of the key bytes. */
class Desired {
  readonly entries = new Map<string, Entry>();
  set(key: Buffer, value: Buffer): void {
    this.entries.set(key.toString('hex'), { key, value });
  }
  delete(key: Buffer): void {
    this.entries.delete(key.toString('hex'));
  }
}

export interface SyncResult {
  readonly updated: number;
  readonly deleted: number;
}

export interface ServiceBackend {
  readonly ip: string;
  readonly port: number;
  readonly clusterId?: number;
}

/** A policy rule as setPolicy takes it (ranges with `endPort`); see policy-keys.ts. */
export type { PolicyRule } from './policy-keys.js';

const SOURCES = ['from-container', 'to-container', 'from-overlay', 'from-netdev'] as const;

/** Compile every program (cached by content hash); returns object paths by source name. */
export async function compilePrograms(cacheDir = join(ROOT, 'dist', 'bpf-cache')): Promise<Record<(typeof SOURCES)[number], string>> {
  const out = {} as Record<(typeof SOURCES)[number], string>;
  for (const s of SOURCES) {
    out[s] = await compileBpf({ source: join(ROOT, 'bpf', `${s}.c`), cacheDir, includeDirs: [join(ROOT, 'bpf')] });
  }
  return out;
}

export class Datapath {
  private readonly maps = new Map<string, BpfMap>();
  private readonly desired = new Map<string, Desired>();
  private readonly revNatIds = new Map<string, number>();
  private readonly objects: BpfObject[] = [];
  private readonly rings: RingBuffer[] = [];
  private readonly attachedLxc = new Map<string, number>();

  private constructor(readonly opts: DatapathOptions) {
    for (const m of [MapNames.endpoints, MapNames.ipcache, MapNames.nodes, MapNames.policy, MapNames.services, MapNames.backends, MapNames.revnat]) {
      this.desired.set(m, new Desired());
    }
  }

  /** Compile, load (reusing pinned maps), set up the VXLAN device and attach the node-level programs. */
  static async open(opts: DatapathOptions): Promise<Datapath> {
    await ensureBpffs();
    const dp = new Datapath(opts);
    const objs = await compilePrograms(opts.cacheDir);
    for (const s of SOURCES) dp.objects.push(await BpfObject.load(objs[s], { pinRoot: opts.pinDir }));
    for (const name of Object.values(MapNames)) {
      if (name === MapNames.flows) continue;
      dp.maps.set(name, BpfMap.openPinned(join(opts.pinDir, name)));
    }
    dp.maps.set(MapNames.flows, BpfMap.openPinned(join(opts.pinDir, MapNames.flows)));
    dp.adoptServiceIds();
    await dp.setupDevices();
    return dp;
  }

  private object(source: (typeof SOURCES)[number]): BpfObject {
    return this.objects[SOURCES.indexOf(source)];
  }

  private async setupDevices(): Promise<void> {
    const netdev = this.opts.netdev ?? 'eth0';
    const have = await ip(['link', 'show', 'dev', VXLAN_DEVICE], undefined, false);
    if (have.exitCode !== 0) {
      await ip(['link', 'add', VXLAN_DEVICE, 'type', 'vxlan', 'external', 'dstport', String(VXLAN_PORT)]);
    }
    await ip(['link', 'set', VXLAN_DEVICE, 'up']);
    const vxlanIfindex = ifindexOf(VXLAN_DEVICE);
    const netdevIfindex = ifindexOf(netdev);
    const cfg: MeshConfig = {
      nodeIp: this.opts.nodeIp,
      nodeId: this.opts.nodeId,
      vxlanIfindex,
      clusterId: this.opts.clusterId,
      routingMode: this.opts.routing === 'native' ? RoutingMode.Native : this.opts.routing === 'hybrid' ? RoutingMode.Hybrid : RoutingMode.Tunnel,
      flags: this.opts.configFlags ?? ConfigFlags.noFlows,
      netdevIfindex,
    };
    this.config = cfg;
    this.map(MapNames.config).update(Buffer.alloc(4), configCodec.encode(cfg));
    attachTc({ ifindex: vxlanIfindex, direction: 'ingress', program: { object: this.object('from-overlay'), name: ProgramNames['from-overlay'] } });
    attachTc({ ifindex: netdevIfindex, direction: 'ingress', program: { object: this.object('from-netdev'), name: ProgramNames['from-netdev'] } });
  }

  private map(name: string): BpfMap {
    const m = this.maps.get(name);
    if (!m) throw new Error(`map ${name} is not open`);
    return m;
  }

  /** Attach from-container (ingress) and to-container (egress) to a pod's lxc device (atomic replace). */
  attachEndpoint(lxc: string): number {
    const ifindex = ifindexOf(lxc);
    const progs: Array<[TcDirection, (typeof SOURCES)[number]]> = [
      ['ingress', 'from-container'],
      ['egress', 'to-container'],
    ];
    for (const [direction, src] of progs) {
      attachTc({ ifindex, direction, program: { object: this.object(src), name: ProgramNames[src] } });
    }
    this.attachedLxc.set(lxc, ifindex);
    return ifindex;
  }

  upsertEndpoint(ipAddr: string, info: EndpointInfo): void {
    this.desired.get(MapNames.endpoints)!.set(endpointKeyCodec.encode({ ip: ipAddr, clusterId: 0 }), endpointInfoCodec.encode(info));
  }

  deleteEndpoint(ipAddr: string): void {
    this.desired.get(MapNames.endpoints)!.delete(endpointKeyCodec.encode({ ip: ipAddr, clusterId: 0 }));
  }

  /** `prefix` as a.b.c.d/n (or a bare address for /32). */
  upsertIpcache(prefix: string, info: IpcacheInfo): void {
    this.desired.get(MapNames.ipcache)!.set(ipcacheKey(prefix), ipcacheInfoCodec.encode(info));
  }

  deleteIpcache(prefix: string): void {
    this.desired.get(MapNames.ipcache)!.delete(ipcacheKey(prefix));
  }

  /** Forget every wanted ipcache entry (before the agent re-states the whole view). */
  clearIpcache(): void {
    this.desired.get(MapNames.ipcache)!.entries.clear();
  }

  upsertNode(nodeIp: string, info: NodeInfo): void {
    this.desired.get(MapNames.nodes)!.set(nodeKeyCodec.encode({ ip: nodeIp }), nodeInfoCodec.encode(info));
  }

  clearNodes(): void {
    this.desired.get(MapNames.nodes)!.entries.clear();
  }

  /** Replace an endpoint's rules in one direction. */
  setPolicy(endpointId: number, direction: Direction.Ingress | Direction.Egress, rules: readonly PolicyRule[]): void {
    const d = this.desired.get(MapNames.policy)!;
    for (const [k, e] of [...d.entries]) {
      const key = policyKeyCodec.decode(e.key);
      if (key.endpointId === endpointId && key.direction === direction) d.entries.delete(k);
    }
    for (const e of policyEntries(endpointId, direction, rules)) d.set(e.key, e.value);
  }

  /** Drop every rule of an endpoint (both directions). */
  deletePolicy(endpointId: number): void {
    const d = this.desired.get(MapNames.policy)!;
    for (const [k, e] of [...d.entries]) if (policyKeyCodec.decode(e.key).endpointId === endpointId) d.entries.delete(k);
  }

  /** A ClusterIP frontend and its backends (replaces any earlier backends). */
  upsertService(key: ServiceKey, backends: readonly ServiceBackend[], flags = 0): void {
    const sk = `${key.vip}:${key.dport}/${key.proto}`;
    let id = this.revNatIds.get(sk);
    if (!id) {
      const used = new Set(this.revNatIds.values());
      id = 1;
      while (used.has(id)) id++;
      this.revNatIds.set(sk, id);
    }
    this.removeServiceEntries(id);
    const sorted = [...backends].sort((a, b) => a.ip.localeCompare(b.ip) || a.port - b.port);
    this.desired.get(MapNames.services)!.set(serviceKeyCodec.encode(key), serviceInfoCodec.encode({ count: sorted.length, revNatId: id, flags }));
    sorted.forEach((b, i) => {
      this.desired
        .get(MapNames.backends)!
        .set(backendKeyCodec.encode({ revNatId: id!, slot: i + 1 }), backendInfoCodec.encode({ ip: b.ip, port: b.port, proto: key.proto, flags: 0, clusterId: b.clusterId ?? this.opts.clusterId }));
    });
    this.desired.get(MapNames.revnat)!.set(revNatKeyCodec.encode({ revNatId: id }), revNatInfoCodec.encode({ vip: key.vip, port: key.dport }));
  }

  deleteService(key: ServiceKey): void {
    const sk = `${key.vip}:${key.dport}/${key.proto}`;
    const id = this.revNatIds.get(sk);
    this.desired.get(MapNames.services)!.delete(serviceKeyCodec.encode(key));
    if (id) {
      this.removeServiceEntries(id);
      this.desired.get(MapNames.revnat)!.delete(revNatKeyCodec.encode({ revNatId: id }));
      this.revNatIds.delete(sk);
    }
  }

  /** Endpoint addresses currently wanted. */
  endpointIps(): string[] {
    return [...this.desired.get(MapNames.endpoints)!.entries.values()].map((e) => endpointKeyCodec.decode(e.key).ip);
  }

  /** Endpoint ids that have wanted policy entries. */
  policyEndpointIds(): number[] {
    return [...new Set([...this.desired.get(MapNames.policy)!.entries.values()].map((e) => policyKeyCodec.decode(e.key).endpointId))];
  }

  /** Service keys currently wanted. */
  services(): ServiceKey[] {
    return [...this.desired.get(MapNames.services)!.entries.values()].map((e) => serviceKeyCodec.decode(e.key));
  }

  private removeServiceEntries(id: number): void {
    const d = this.desired.get(MapNames.backends)!;
    for (const [k, e] of [...d.entries]) if (backendKeyCodec.decode(e.key).revNatId === id) d.entries.delete(k);
  }

  /** Keep the rev-NAT ids services already have in the pinned maps (conntrack refers to them). */
  private adoptServiceIds(): void {
    for (const [k, v] of this.map(MapNames.services).entries()) {
      const key = serviceKeyCodec.decode(k);
      this.revNatIds.set(`${key.vip}:${key.dport}/${key.proto}`, serviceInfoCodec.decode(v).revNatId);
    }
  }

  /** Write the difference between wanted state and the pinned maps. */
  sync(): SyncResult {
    let updated = 0;
    let deleted = 0;
    for (const [name, want] of this.desired) {
      const map = this.map(name);
      const have = new Map<string, Buffer>();
      for (const [k, v] of map.entries()) have.set(k.toString('hex'), v);
      for (const [hex, e] of want.entries) {
        const cur = have.get(hex);
        // Keep a rule's counters unless its flags (allow/deny) changed.
        if (name === MapNames.policy && cur && cur.readUInt32LE(0) === e.value.readUInt32LE(0)) continue;
        if (!cur || !cur.equals(e.value)) {
          map.update(e.key, e.value);
          updated++;
        }
      }
      for (const [hex] of have) {
        if (!want.entries.has(hex) && map.delete(Buffer.from(hex, 'hex'))) deleted++;
      }
    }
    return { updated, deleted };
  }

  private config: MeshConfig | null = null;

  /** Turn the datapath's flow events on or off (counters are always kept). */
  setFlowEvents(on: boolean): void {
    if (!this.config) return;
    const flags = on ? this.config.flags & ~ConfigFlags.noFlows : this.config.flags | ConfigFlags.noFlows;
    if (flags === this.config.flags) return;
    this.config = { ...this.config, flags };
    this.map(MapNames.config).update(Buffer.alloc(4), configCodec.encode(this.config));
  }

  /** Consume flow events; close the returned ring buffer to stop. */
  flows(onEvent: (ev: FlowEvent) => void): RingBuffer {
    const ring = RingBuffer.open(this.map(MapNames.flows), (rec) => onEvent(flowEventCodec.decode(rec)));
    this.rings.push(ring);
    return ring;
  }

  /** Forward/drop counters summed over CPUs. */
  metrics(): Array<{ reason: number; direction: number; packets: bigint; bytes: bigint }> {
    return this.map(MapNames.metrics)
      .entries()
      .map(([k, v]) => ({ ...metricsKeyCodec.decode(k), ...sumPerCpuMetrics(v) }))
      .sort((a, b) => a.direction - b.direction || a.reason - b.reason);
  }

  /** Entry counts of the maps the agent programs. */
  mapFill(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const name of this.desired.keys()) out[name] = this.map(name).keys().length;
    return out;
  }

  /** Direct access for benchmarks and tests. */
  rawMap(name: string): BpfMap {
    return this.map(name);
  }

  /** Close fds and consumers. Attached programs and pinned maps stay: traffic keeps flowing. */
  close(): void {
    for (const r of this.rings.splice(0)) if (!r.closed) r.close();
    for (const m of this.maps.values()) m.close();
    this.maps.clear();
    for (const o of this.objects.splice(0)) o.close();
  }
}

function ipcacheKey(prefix: string): Buffer {
  const [addr, len] = prefix.includes('/') ? prefix.split('/') : [prefix, '32'];
  return ipcacheKeyCodec.encode({ prefixLen: Number(len), clusterId: 0, ip: addr });
}
