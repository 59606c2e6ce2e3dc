/**
 * Remote clusters controller (key: peer name): one RemoteClient per MeshPeer object in this
 * cluster's store, started, restarted and stopped as those objects come, change and go, with no
 * agent restart. Each peer feeds its own datapath layer `remote:<peer>` through a PeerApplier;
 * a peer that fails keeps its last known state, and its removal drains exactly that layer.
 *
 * Restart: adopted remote entries stay in the maps until their peer's first sync (pruneAdopted's
 * hold), and so do the kernel routes to its nodes' pod slices.
 */
import type { Informer } from '../../cluster/informer.js';
import type { KubeObject } from '../../cluster/types.js';
import { IDENTITY_CLUSTER_MASK, IDENTITY_CLUSTER_SHIFT, IDENTITY_RESERVED_MAX, IpcacheFlags, MapNames, NodeFlags, ReservedIdentity } from '../../datapath/codecs.js';
import type { AdoptedEntry, Datapath, Owner } from '../../datapath/datapath.js';
import { AGENT_ROUTE_PROTO } from '../../defaults.js';
import { parseMeshPeer, type MeshPeerSpec, type PeerStatus } from '../../mesh/peers.js';
import { RemoteClient, type PeerSink, type RemoteNodeView } from '../../mesh/remote-client.js';
import type { LocalView } from '../../mesh/remote-validate.js';
import { cidrContains, parseCidr, parseIp, type Cidr } from '../../util/cidr.js';
import { errorMessage } from '../../util/errors.js';
import { ip } from '../../util/exec.js';
import { WorkQueue } from '../workqueue.js';
import type { NodeIdentity, RoutingMode } from './shared.js';

/** Direct iff (same VPC and neither side tunnels) or both clusters route natively; else tunnel. */
export function remoteRoute(self: Pick<NodeIdentity, 'routing' | 'vpc'>, peerRouting: RoutingMode, nodeVpc: string): { direct: boolean; sameVpc: boolean } {
  const sameVpc = nodeVpc === self.vpc;
  const direct = (sameVpc && self.routing !== 'tunnel' && peerRouting !== 'tunnel') || (self.routing === 'native' && peerRouting === 'native');
  return { direct, sameVpc };
}

export interface RemoteControllerDeps {
  readonly self: NodeIdentity;
  readonly dp: Datapath;
  readonly meshPeers: Informer;
  /** This cluster's MeshClusterConfig objects (its pod CIDRs) and Nodes (its addresses). */
  readonly clusterConfigs: Informer;
  readonly nodes: Informer;
  readonly log: (msg: string) => void;
  readonly requestFlush: () => void;
  /** A peer's status changed (publish the node status soon). */
  readonly onStatus: () => void;
  /** Program kernel routes to direct peers' pod slices; default true. */
  readonly routes?: boolean;
  readonly heartbeatTimeoutMs?: number;
}

interface RouteState {
  dsts: string[];
  via: string;
}

/** Writes one peer's deltas into its datapath layer; keeps only what it needs to undo them. */
export class PeerApplier implements PeerSink {
  readonly owner: Owner;
  /** Node name → the address and routes programmed for it. */
  readonly nodes = new Map<string, { ip: string; view: RemoteNodeView; direct: boolean; sameVpc: boolean }>();
  client: RemoteClient | null = null;

  constructor(
    readonly peer: string,
    readonly clusterId: number,
    private readonly self: Pick<NodeIdentity, 'routing' | 'vpc'>,
    private readonly dp: Datapath,
    private readonly hooks: { requestFlush: () => void; onStatus: () => void; onRoutes?: (node: string) => void; onSynced?: (first: boolean) => void },
  ) {
    this.owner = `remote:${peer}`;
  }

  node(name: string, view: RemoteNodeView | null): void {
    const had = this.nodes.get(name);
    if (had && (!view || had.ip !== view.ip)) {
      this.dp.deleteNode(had.ip, this.owner);
      this.dp.deleteIpcache(`${had.ip}/32`, this.owner);
    }
    if (!view) {
      this.nodes.delete(name);
      this.hooks.onRoutes?.(name);
      return;
    }
    const routing = (this.client?.clusterConfig()?.routing ?? 'tunnel') as RoutingMode;
    const { direct, sameVpc } = remoteRoute(this.self, routing, view.vpc);
    this.dp.upsertNode(view.ip, { nodeId: view.nodeId, clusterId: this.clusterId, flags: direct ? NodeFlags.direct : 0 }, this.owner);
    this.dp.upsertIpcache(`${view.ip}/32`, { identity: ReservedIdentity.remoteNode, tunnelIp: '0.0.0.0', nodeId: view.nodeId, flags: IpcacheFlags.node }, this.owner);
    this.nodes.set(name, { ip: view.ip, view, direct, sameVpc });
    this.hooks.onRoutes?.(name);
  }

  ip(addr: string, entry: { identity: number; node: RemoteNodeView } | null): void {
    if (entry) this.dp.upsertIpcache(`${addr}/32`, { identity: entry.identity, tunnelIp: entry.node.ip, nodeId: entry.node.nodeId, flags: 0 }, this.owner);
    else this.dp.deleteIpcache(`${addr}/32`, this.owner);
  }

  identity(): void {
    // Remote identities stay in the client's cache (RemoteController.remoteIdentity) for policy.
  }

  batch(): void {
    this.hooks.requestFlush();
  }

  synced(first: boolean): void {
    this.hooks.onSynced?.(first);
  }

  status(): void {
    this.hooks.onStatus();
  }

  /** After a restarted client's first sync: what the layer holds that the new client does not. */
  dropUnheld(): number {
    const c = this.client;
    if (!c) return 0;
    let n = 0;
    for (const prefix of this.dp.ipcachePrefixes(this.owner)) {
      const addr = prefix.slice(0, prefix.indexOf('/'));
      if (c.holdsIp(addr) || c.holdsNodeIp(addr)) continue;
      this.dp.deleteIpcache(prefix, this.owner);
      n++;
    }
    for (const nodeIp of this.dp.nodeIps(this.owner)) {
      if (!c.holdsNodeIp(nodeIp)) {
        this.dp.deleteNode(nodeIp, this.owner);
        n++;
      }
    }
    return n;
  }
}

interface PeerRuntime {
  spec: MeshPeerSpec;
  specJson: string;
  client: RemoteClient;
  applier: PeerApplier;
  /** The client replaced an earlier one whose entries are still in the layer. */
  replaced: boolean;
  everSynced: boolean;
}

export class RemoteController {
  readonly name = 'remote';
  readonly queue: WorkQueue;
  private readonly routeQueue: WorkQueue;
  private readonly peers = new Map<string, PeerRuntime>();
  /** Peer names whose adopted entries pruneAdopted() held; released at their first sync. */
  private readonly heldPeers = new Set<string>();
  /** Routes of ours found at start that are not local ones, removed once no peer wants them. */
  private leftoverRoutes = new Set<string>();
  /** Routes programmed per `peer\nnode`. */
  private readonly routes = new Map<string, RouteState>();
  private readonly localNodeIps = new Set<number>();
  private gw = '';
  private started = false;
  readonly local: LocalView;

  constructor(private readonly d: RemoteControllerDeps) {
    this.queue = new WorkQueue({ name: this.name, reconcile: (k) => this.reconcile(k), afterBatch: () => d.requestFlush(), paused: true });
    this.routeQueue = new WorkQueue({ name: 'remote-routes', reconcile: (k) => this.reconcileRoute(k) });
    const self = this;
    this.local = {
      get podCidrs(): readonly Cidr[] {
        return self.localPodCidrs();
      },
      isLocalNodeIp: (n: number) => this.localNodeIps.has(n) || n === parseIp(d.self.nodeIp),
    };
    d.meshPeers.addEventHandler({ onAdd: (o) => this.queue.add(o.metadata.name), onUpdate: (_a, b) => this.queue.add(b.metadata.name), onDelete: (o) => this.queue.add(o.metadata.name) });
    const nodeIp = (n: KubeObject): number | null => {
      const a = (n.status as { addresses?: Array<{ type: string; address: string }> } | undefined)?.addresses?.find((x) => x.type === 'InternalIP')?.address;
      return a ? parseIp(a) : null;
    };
    d.nodes.addEventHandler({
      onAdd: (n) => {
        const v = nodeIp(n);
        if (v !== null) this.localNodeIps.add(v);
      },
      onUpdate: (a, b) => {
        const x = nodeIp(a);
        if (x !== null) this.localNodeIps.delete(x);
        const y = nodeIp(b);
        if (y !== null) this.localNodeIps.add(y);
      },
      onDelete: (n) => {
        const v = nodeIp(n);
        if (v !== null) this.localNodeIps.delete(v);
      },
    });
  }

  private cachedCidrs: { src: unknown; cidrs: Cidr[] } | null = null;

  /** This cluster's pod CIDRs (its MeshClusterConfig), and this node's slice. */
  private localPodCidrs(): Cidr[] {
    const obj = this.d.clusterConfigs.get(this.d.self.cluster);
    const src = obj?.spec;
    if (this.cachedCidrs && this.cachedCidrs.src === src) return this.cachedCidrs.cidrs;
    const texts = ((src as { podCIDRs?: unknown } | undefined)?.podCIDRs as string[] | undefined) ?? [];
    const cidrs = [...texts, this.d.self.podCidr].map((t) => (typeof t === 'string' ? parseCidr(t) : null)).filter((c): c is Cidr => c !== null);
    this.cachedCidrs = { src, cidrs };
    return cidrs;
  }

  /** Queue every MeshPeer (call after the informers synced). */
  start(): void {
    this.started = true;
    for (const k of this.d.meshPeers.keys()) this.queue.add(k);
    this.queue.resume();
  }

  stop(): void {
    this.queue.stop();
    this.routeQueue.stop();
    for (const p of this.peers.values()) p.client.stop();
    this.peers.clear();
  }

  /** Per-peer status, sorted by peer. */
  statuses(): PeerStatus[] {
    return [...this.peers.values()].map((p) => p.client.status()).sort((a, b) => (a.cluster < b.cluster ? -1 : 1));
  }

  /** Labels of a remote identity, from the peer whose cluster id it carries. */
  remoteIdentity(id: number): { cluster: string; labels: Readonly<Record<string, string>> } | undefined {
    const cid = (id >>> IDENTITY_CLUSTER_SHIFT) & IDENTITY_CLUSTER_MASK;
    for (const p of this.peers.values()) {
      if (p.spec.clusterId !== cid) continue;
      const labels = p.client.identityLabels(id);
      if (labels) return { cluster: p.spec.cluster, labels };
    }
    return undefined;
  }

  /** The client of a peer (tests, benchmarks). */
  client(peer: string): RemoteClient | undefined {
    return this.peers.get(peer)?.client;
  }

  /**
   * pruneAdopted's hold: an adopted node entry carrying a configured peer's cluster id, an
   * identity with its cluster bits, or the /32 of such a node stays until that peer's first sync.
   */
  holdAdopted(): (e: AdoptedEntry) => string | undefined {
    const byId = new Map<number, string>();
    for (const o of this.d.meshPeers.list()) {
      const spec = parseMeshPeer(o);
      if (spec instanceof Error || spec.clusterId === this.d.self.clusterId) continue;
      if (this.peers.get(spec.cluster)?.everSynced) continue;
      byId.set(spec.clusterId, spec.cluster);
    }
    const nodeIps = new Map<string, string>();
    return (e) => {
      let peer: string | undefined;
      if (e.map === MapNames.nodes) {
        peer = byId.get(e.info.clusterId);
        if (peer) nodeIps.set(e.ip, peer);
      } else if (e.info.identity >= IDENTITY_RESERVED_MAX) {
        peer = byId.get((e.info.identity >>> IDENTITY_CLUSTER_SHIFT) & IDENTITY_CLUSTER_MASK);
      } else if (e.info.identity === ReservedIdentity.remoteNode && e.prefix.endsWith('/32')) {
        peer = nodeIps.get(e.prefix.slice(0, -3));
      }
      if (peer) this.heldPeers.add(peer);
      return peer;
    };
  }

  /** removeLeftoverRoutes' keep: a route of ours outside this cluster's pod CIDRs is a peer's; we take it over. */
  adoptLeftoverRoute(dst: string): boolean {
    const c = parseCidr(dst);
    if (!c) return false;
    if (this.localPodCidrs().some((l) => cidrContains(l, c.network))) return false;
    if (this.wantsRoute(dst)) return true;
    if (this.d.meshPeers.size === 0) return false;
    this.leftoverRoutes.add(dst);
    this.maybeRemoveLeftoverRoutes();
    return true;
  }

  private wantsRoute(dst: string): boolean {
    for (const r of this.routes.values()) if (r.dsts.includes(dst)) return true;
    return false;
  }

  /** Once every configured peer has synced, leftover routes nobody wants go. */
  private maybeRemoveLeftoverRoutes(): void {
    if (this.leftoverRoutes.size === 0) return;
    for (const o of this.d.meshPeers.list()) if (!this.peers.get(o.metadata.name)?.everSynced) return;
    const left = [...this.leftoverRoutes].filter((d) => !this.wantsRoute(d));
    this.leftoverRoutes.clear();
    for (const dst of left) void ip(['route', 'del', dst, 'proto', String(AGENT_ROUTE_PROTO)], undefined, false);
  }

  private async reconcile(name: string): Promise<void> {
    const obj = this.d.meshPeers.get(name);
    const had = this.peers.get(name);
    const spec = obj ? parseMeshPeer(obj) : null;
    if (spec instanceof Error) {
      // A bad MeshPeer: keep a running client as it is, report the object.
      throw spec;
    }
    if (!spec || spec.clusterId === this.d.self.clusterId || spec.cluster === this.d.self.cluster) {
      if (had) this.drain(name);
      if (spec) throw new Error(`MeshPeer ${name}: names this cluster`);
      return;
    }
    const json = JSON.stringify(spec);
    if (had && had.specJson === json) return;
    if (had) had.client.stop();
    // A changed id means other entries: the old layer goes at once.
    if (had && had.spec.clusterId !== spec.clusterId) this.drain(name);
    const rt = this.peers.get(name);
    const applier: PeerApplier = new PeerApplier(name, spec.clusterId, this.d.self, this.d.dp, {
      requestFlush: this.d.requestFlush,
      onStatus: this.d.onStatus,
      onRoutes: (node) => this.routeQueue.add(`${name}\n${node}`),
      onSynced: (first) => this.onSynced(name, first),
    });
    if (rt) for (const [k, v] of rt.applier.nodes) applier.nodes.set(k, v);
    const client = new RemoteClient({ peer: spec, local: this.local, sink: applier, log: this.d.log, heartbeatTimeoutMs: this.d.heartbeatTimeoutMs });
    applier.client = client;
    this.peers.set(name, { spec, specJson: json, client, applier, replaced: rt !== undefined, everSynced: rt?.everSynced ?? false });
    this.d.log(`remote ${name}: ${rt ? 'restarting' : 'starting'} client for ${spec.endpoints.join(',')}`);
    client.start();
    this.d.onStatus();
  }

  private onSynced(name: string, first: boolean): void {
    const rt = this.peers.get(name);
    if (!rt) return;
    if (first && rt.replaced) {
      const n = rt.applier.dropUnheld();
      if (n) this.d.log(`remote ${name}: ${n} entries of the previous client removed`);
      rt.replaced = false;
    }
    rt.everSynced = true;
    if (this.heldPeers.delete(name)) {
      const n = this.d.dp.releaseAdopted(name);
      this.d.log(`remote ${name}: synced; ${n} stale adopted entries removed`);
    }
    this.maybeRemoveLeftoverRoutes();
    this.d.requestFlush();
    this.d.onStatus();
  }

  /** Stop a peer's client and remove everything learned from it. */
  private drain(name: string): void {
    const rt = this.peers.get(name);
    if (!rt) return;
    rt.client.stop();
    this.peers.delete(name);
    this.d.dp.clearOwner(rt.applier.owner);
    if (this.heldPeers.delete(name)) this.d.dp.releaseAdopted(name);
    for (const node of rt.applier.nodes.keys()) this.routeQueue.add(`${name}\n${node}`);
    rt.applier.nodes.clear();
    this.d.log(`remote ${name}: drained`);
    this.d.requestFlush();
    this.d.onStatus();
  }

  private async reconcileRoute(key: string): Promise<void> {
    if (this.d.routes === false) return;
    const [peer, node] = key.split('\n');
    const n = this.peers.get(peer)?.applier.nodes.get(node);
    const want: RouteState = n && n.direct ? { dsts: [...n.view.podCidrs], via: n.sameVpc ? n.ip : await this.gateway() } : { dsts: [], via: '' };
    const had = this.routes.get(key) ?? { dsts: [], via: '' };
    for (const dst of want.dsts) {
      if (had.dsts.includes(dst) && had.via === want.via) continue;
      const r = await ip(['route', 'replace', dst, 'via', want.via, 'proto', String(AGENT_ROUTE_PROTO)], undefined, false);
      if (r.exitCode !== 0) throw new Error(`route ${dst} via ${want.via}: ${r.stderr.trim()}`);
      this.leftoverRoutes.delete(dst);
    }
    for (const dst of had.dsts) if (!want.dsts.includes(dst)) await ip(['route', 'del', dst, 'proto', String(AGENT_ROUTE_PROTO)], undefined, false);
    if (want.dsts.length) this.routes.set(key, want);
    else this.routes.delete(key);
  }

  private async gateway(): Promise<string> {
    if (!this.gw) {
      const r = await ip(['-j', 'route', 'show', 'default']);
      this.gw = (JSON.parse(r.stdout) as Array<{ gateway?: string }>)[0]?.gateway ?? '';
    }
    return this.gw;
  }

  /** Errors of peers' MeshPeer objects and routes. */
  errors(): Array<{ key: string; message: string }> {
    return [...this.queue.errors(), ...this.routeQueue.errors()].map((e) => ({ key: e.key, message: errorMessage(e.message) }));
  }

  get isStarted(): boolean {
    return this.started;
  }
}
