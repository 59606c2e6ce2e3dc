/**
 * Nodes controller (key: node name): the node map, each node's ipcache entry, and the kernel routes
 * to directly routed peers' pod slices. Routes carry the agent's own protocol number, so a restarted
 * agent finds the ones it made before and removes those it no longer wants.
 */
import type { KubeObject } from '../../cluster/types.js';
import { IpcacheFlags, NodeFlags, ReservedIdentity } from '../../datapath/codecs.js';
import { AGENT_ROUTE_PROTO } from '../../defaults.js';
import { ip } from '../../util/exec.js';
import { WorkQueue } from '../workqueue.js';
import { type Controller, type ControllerDeps, type NodeIdentity } from './shared.js';

export interface NodeView {
  readonly name: string;
  readonly ip: string;
  readonly nodeId: number;
  readonly vpc: string;
  readonly podCidr: string;
}

/** The parts of a Node object the datapath needs; an Error names what is missing. */
export function nodeView(n: KubeObject): NodeView | Error {
  const st = n.status as { addresses?: Array<{ type: string; address: string }>; meshctl?: { vpc?: string; nodeId?: number } } | undefined;
  const addr = st?.addresses?.find((a) => a.type === 'InternalIP')?.address;
  if (!addr) return new Error(`node ${n.metadata.name} has no InternalIP address`);
  const nodeId = st?.meshctl?.nodeId;
  if (typeof nodeId !== 'number' || !Number.isInteger(nodeId) || nodeId < 1 || nodeId > 0xffff) return new Error(`node ${n.metadata.name} has no node id (status.meshctl.nodeId)`);
  return { name: n.metadata.name, ip: addr, nodeId, vpc: st?.meshctl?.vpc ?? '', podCidr: (n.spec as { podCIDR?: string } | undefined)?.podCIDR ?? '' };
}

/** How this node reaches a peer: directly (native, or hybrid in the same VPC) or through the tunnel. */
export function routeToPeer(self: NodeIdentity, peer: Pick<NodeView, 'vpc'>): { direct: boolean; sameVpc: boolean } {
  const sameVpc = peer.vpc === self.vpc;
  return { direct: self.routing === 'native' || (self.routing === 'hybrid' && sameVpc), sameVpc };
}

export class NodesController implements Controller {
  readonly name = 'nodes';
  readonly queue: WorkQueue;
  /** What this controller programmed per node, to remove it when the node goes or changes. */
  private readonly programmed = new Map<string, { ip: string; route?: string; routeVia?: string }>();
  /** Routes with our protocol found at start, removed once the initial round no longer wants them. */
  private leftoverRoutes: Set<string> | null = null;
  private gw = '';

  constructor(private readonly d: ControllerDeps) {
    this.queue = new WorkQueue({ name: this.name, reconcile: (k) => this.reconcile(k), afterBatch: () => d.requestFlush() });
    d.informers.nodes.addEventHandler({
      onAdd: (n) => this.queue.add(n.metadata.name),
      onUpdate: (a, b) => {
        this.queue.add(b.metadata.name);
        // Pods of a node whose address moved need new tunnel endpoints.
        if (JSON.stringify(a.status) !== JSON.stringify(b.status)) this.onNodeMoved?.(b.metadata.name);
      },
      onDelete: (n) => this.queue.add(n.metadata.name),
    });
  }

  /** Set by the agent: called when a node's addresses change (the ipcache controller re-queues its pods). */
  onNodeMoved?: (node: string) => void;

  initialKeys(): Iterable<string> {
    return this.d.informers.nodes.list().map((n) => n.metadata.name);
  }

  /** The programmed view of a node (tunnel endpoint and id), for the ipcache controller. */
  node(name: string): NodeView | undefined {
    const n = this.d.informers.nodes.get(name);
    if (!n) return undefined;
    const v = nodeView(n);
    return v instanceof Error ? undefined : v;
  }

  /** Read the routes a previous run left (call before the initial round). */
  async adoptRoutes(): Promise<void> {
    const r = await ip(['-j', 'route', 'show', 'proto', String(AGENT_ROUTE_PROTO)], undefined, false);
    const routes = r.exitCode === 0 && r.stdout.trim() ? (JSON.parse(r.stdout) as Array<{ dst: string }>) : [];
    this.leftoverRoutes = new Set(routes.map((x) => x.dst));
  }

  /** After the initial round: remove routes of ours that nothing wants any more. */
  async removeLeftoverRoutes(keep?: (dst: string) => boolean): Promise<number> {
    const left = this.leftoverRoutes;
    this.leftoverRoutes = null;
    if (!left) return 0;
    for (const p of this.programmed.values()) if (p.route) left.delete(p.route);
    // Routes another controller takes over (remote peers' slices, until those peers resync).
    if (keep) for (const dst of [...left]) if (keep(dst)) left.delete(dst);
    let n = 0;
    for (const dst of left) {
      const r = await ip(['route', 'del', dst, 'proto', String(AGENT_ROUTE_PROTO)], undefined, false);
      if (r.exitCode === 0) {
        n++;
        this.d.log(`removed stale route ${dst}`);
      }
    }
    return n;
  }

  private async reconcile(name: string): Promise<void> {
    const { dp, self } = this.d;
    const obj = this.d.informers.nodes.get(name);
    const had = this.programmed.get(name);
    const view = obj ? nodeView(obj) : undefined;
    if (view instanceof Error) {
      await this.remove(name);
      throw view;
    }
    if (!view) {
      await this.remove(name);
      return;
    }
    if (had && had.ip !== view.ip) await this.remove(name);
    if (name === self.node) {
      dp.upsertIpcache(`${view.ip}/32`, { identity: ReservedIdentity.host, tunnelIp: '0.0.0.0', nodeId: view.nodeId, flags: IpcacheFlags.node | IpcacheFlags.localNode });
      this.programmed.set(name, { ip: view.ip });
      return;
    }
    const { direct, sameVpc } = routeToPeer(self, view);
    dp.upsertNode(view.ip, { nodeId: view.nodeId, clusterId: self.clusterId, flags: direct ? NodeFlags.direct : 0 });
    dp.upsertIpcache(`${view.ip}/32`, { identity: ReservedIdentity.remoteNode, tunnelIp: '0.0.0.0', nodeId: view.nodeId, flags: IpcacheFlags.node });
    const entry: { ip: string; route?: string; routeVia?: string } = { ip: view.ip };
    if (direct && view.podCidr) {
      const via = sameVpc ? view.ip : await this.gateway();
      if (had?.route !== view.podCidr || had.routeVia !== via) {
        if (had?.route && had.route !== view.podCidr) await this.delRoute(had.route);
        const r = await ip(['route', 'replace', view.podCidr, 'via', via, 'proto', String(AGENT_ROUTE_PROTO)], undefined, false);
        if (r.exitCode !== 0) throw new Error(`route ${view.podCidr} via ${via}: ${r.stderr.trim()}`);
      }
      entry.route = view.podCidr;
      entry.routeVia = via;
    } else if (had?.route) {
      await this.delRoute(had.route);
    }
    this.programmed.set(name, entry);
  }

  private async remove(name: string): Promise<void> {
    const had = this.programmed.get(name);
    if (!had) return;
    this.d.dp.deleteNode(had.ip);
    this.d.dp.deleteIpcache(`${had.ip}/32`);
    if (had.route) await this.delRoute(had.route);
    this.programmed.delete(name);
  }

  private async delRoute(dst: string): Promise<void> {
    await ip(['route', 'del', dst, 'proto', String(AGENT_ROUTE_PROTO)], undefined, false);
  }

  private async gateway(): Promise<string> {
    if (!this.gw) {
      const r = await ip(['-j', 'route', 'show', 'default']);
      this.gw = (JSON.parse(r.stdout) as Array<{ gateway?: string }>)[0]?.gateway ?? '';
    }
    return this.gw;
  }
}
