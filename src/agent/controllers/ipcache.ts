/**
 * Ipcache controller (key: a pod IP of this cluster): which identity an address has and which node
 * it lives on. Local pods get their identity from the endpoints controller; other nodes' pods from
 * their published MeshEndpoint, or else from the identity allocated for their labels. It also feeds
 * every pod address to the policy engine (ipBlock and egress named ports need them).
 */
import type { KubeObject } from '../../cluster/types.js';
import { labelsHash, podIdentityLabels } from '../labels.js';
import { WorkQueue } from '../workqueue.js';
import type { NodesController } from './nodes.js';
import { Index, namedPorts, podIp, podNode, type Controller, type ControllerDeps } from './shared.js';

export class IpcacheController implements Controller {
  readonly name = 'ipcache';
  readonly queue: WorkQueue;
  private readonly programmed = new Set<string>();

  constructor(
    private readonly d: ControllerDeps,
    private readonly nodes: NodesController,
    /** Identity of a local endpoint by IP, from the endpoints controller. */
    private readonly localIdentity: (ip: string) => number | undefined,
  ) {
    this.queue = new WorkQueue({ name: this.name, reconcile: (k) => this.reconcile(k), afterBatch: () => d.requestFlush() });
    const { pods, meshEndpoints, identities } = d.informers;
    const ipOf = (p: KubeObject): string[] => {
      const a = podIp(p);
      return a ? [a] : [];
    };
    pods.addEventHandler({
      onAdd: (p) => ipOf(p).forEach((k) => this.queue.add(k)),
      onUpdate: (a, b) => [...ipOf(a), ...ipOf(b)].forEach((k) => this.queue.add(k)),
      onDelete: (p) => ipOf(p).forEach((k) => this.queue.add(k)),
    });
    const epIp = (e: KubeObject): string[] => {
      const a = (e.spec as { ip?: string } | undefined)?.ip;
      return a ? [a] : [];
    };
    meshEndpoints.addEventHandler({
      onAdd: (e) => epIp(e).forEach((k) => this.queue.add(k)),
      onUpdate: (a, b) => [...epIp(a), ...epIp(b)].forEach((k) => this.queue.add(k)),
      onDelete: (e) => epIp(e).forEach((k) => this.queue.add(k)),
    });
    // A new identity resolves the pods whose labels it was allocated for.
    const byHash = (i: KubeObject): void => {
      const h = (i.spec as { labelsHash?: string } | undefined)?.labelsHash;
      if (!h) return;
      for (const p of pods.byIndex(Index.podsByIdentityLabels, h)) ipOf(p).forEach((k) => this.queue.add(k));
    };
    // An identity's record changes on every touch (status.lastUsed); only a new labels hash matters.
    const hashOf = (i: KubeObject): string | undefined => (i.spec as { labelsHash?: string } | undefined)?.labelsHash;
    identities.addEventHandler({
      onAdd: byHash,
      onUpdate: (a, b) => {
        if (hashOf(a) === hashOf(b)) return;
        byHash(a);
        byHash(b);
      },
      onDelete: byHash,
    });
  }

  initialKeys(): Iterable<string> {
    return this.d.informers.pods.list().flatMap((p) => (podIp(p) ? [podIp(p)!] : []));
  }

  /** Re-resolve every pod of a node (its address changed). */
  requeueNode(node: string): void {
    for (const p of this.d.informers.pods.byIndex(Index.podsByNode, node)) {
      const a = podIp(p);
      if (a) this.queue.add(a);
    }
  }

  /** Re-resolve one address (a local endpoint's identity changed). */
  requeue(ipAddr: string): void {
    this.queue.add(ipAddr);
  }

  private reconcile(ipAddr: string): void {
    const { dp, self, informers, policy } = this.d;
    const pod = informers.pods.byIndex(Index.podsByIp, ipAddr).find((p) => podNode(p));
    const node = podNode(pod);
    let identity: number | undefined;
    let tunnelIp = '0.0.0.0';
    let nodeId = 0;
    if (pod && node === self.node) {
      // The endpoints controller programs local addresses; the engine still needs them as peers.
      const local = this.localIdentity(ipAddr);
      if (local === undefined) policy.deletePeer(ipAddr);
      else policy.upsertPeer(ipAddr, { identity: local, namedPorts: namedPorts(pod) });
      // An address that moved here from another node: the endpoints controller's entry replaces ours.
      this.programmed.delete(ipAddr);
      return;
    }
    if (pod && node) {
      const n = this.nodes.node(node);
      if (n) {
        tunnelIp = n.ip;
        nodeId = n.nodeId;
        identity = this.remoteIdentity(pod, ipAddr);
      }
    }
    if (!pod || identity === undefined) {
      // Gone, or not resolvable yet (its agent has not allocated the identity): a later event will.
      if (this.programmed.delete(ipAddr)) dp.deleteIpcache(`${ipAddr}/32`);
      policy.deletePeer(ipAddr);
      return;
    }
    dp.upsertIpcache(`${ipAddr}/32`, { identity, tunnelIp, nodeId, flags: 0 });
    this.programmed.add(ipAddr);
    policy.upsertPeer(ipAddr, { identity, namedPorts: namedPorts(pod) });
  }

  private remoteIdentity(pod: KubeObject, ipAddr: string): number | undefined {
    const { informers, self } = this.d;
    for (const ep of informers.meshEndpoints.byIndex(Index.meshEndpointsByIp, ipAddr)) {
      const s = ep.spec as { identity?: number; node?: string };
      if (typeof s.identity === 'number' && s.node === podNode(pod) && ep.metadata.name === pod.metadata.name && ep.metadata.namespace === pod.metadata.namespace) return s.identity;
    }
    const h = labelsHash(podIdentityLabels(pod, self.cluster));
    const rec = informers.identities.byIndex(Index.identitiesByLabels, h)[0];
    const id = (rec?.spec as { id?: number } | undefined)?.id;
    return typeof id === 'number' ? id : undefined;
  }
}
