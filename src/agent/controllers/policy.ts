/**
 * Policy controller (keys: `policy/<kind>/<ns>/<name>`, `namespace/<name>`, `identity/<id>`): feeds
 * policies, namespaces and identities into the incremental policy engine. The engine's selector cache
 * says which local endpoints a change can affect; only those are re-queued on the endpoints
 * controller, which writes their rules. CIDR identities the engine wants go into the ipcache here.
 */
import type { KubeObject } from '../../cluster/types.js';
import { WorkQueue } from '../workqueue.js';
import type { ControllerDeps, Controller } from './shared.js';

const KINDS = { networkPolicies: 'NetworkPolicy', meshNetworkPolicies: 'MeshNetworkPolicy' } as const;

export class PolicyController implements Controller {
  readonly name = 'policy';
  readonly queue: WorkQueue;
  private readonly cidrs = new Set<string>();

  constructor(
    private readonly d: ControllerDeps,
    /** Re-queue a local endpoint whose policy may have changed. */
    private readonly requeueEndpoint: (key: string) => void,
  ) {
    this.queue = new WorkQueue({ name: this.name, reconcile: (k) => this.reconcile(k), afterBatch: () => this.drain() });
    for (const [field, kind] of Object.entries(KINDS) as Array<[keyof typeof KINDS, string]>) {
      const key = (o: KubeObject): string => `policy/${kind}/${o.metadata.namespace ?? 'default'}/${o.metadata.name}`;
      d.informers[field].addEventHandler({ onAdd: (o) => this.queue.add(key(o)), onUpdate: (_a, b) => this.queue.add(key(b)), onDelete: (o) => this.queue.add(key(o)) });
    }
    const nsKey = (o: KubeObject): string => `namespace/${o.metadata.name}`;
    d.informers.namespaces.addEventHandler({ onAdd: (o) => this.queue.add(nsKey(o)), onUpdate: (_a, b) => this.queue.add(nsKey(b)), onDelete: (o) => this.queue.add(nsKey(o)) });
    const idKey = (o: KubeObject): string => `identity/${o.metadata.name}`;
    // A touch (status.lastUsed) changes nothing policy reads.
    const labelsOf = (o: KubeObject): string => JSON.stringify((o.spec as { labels?: unknown } | undefined)?.labels ?? null);
    d.informers.identities.addEventHandler({
      onAdd: (o) => this.queue.add(idKey(o)),
      onUpdate: (a, b) => {
        if (labelsOf(a) !== labelsOf(b)) this.queue.add(idKey(b));
      },
      onDelete: (o) => this.queue.add(idKey(o)),
    });
  }

  initialKeys(): Iterable<string> {
    const { informers } = this.d;
    return [
      ...informers.namespaces.list().map((o) => `namespace/${o.metadata.name}`),
      ...informers.identities.list().map((o) => `identity/${o.metadata.name}`),
      ...informers.networkPolicies.list().map((o) => `policy/NetworkPolicy/${o.metadata.namespace ?? 'default'}/${o.metadata.name}`),
      ...informers.meshNetworkPolicies.list().map((o) => `policy/MeshNetworkPolicy/${o.metadata.namespace ?? 'default'}/${o.metadata.name}`),
    ];
  }

  private reconcile(key: string): void {
    const { informers, policy } = this.d;
    const [what, ...rest] = key.split('/');
    if (what === 'namespace') {
      const ns = informers.namespaces.get(rest[0]);
      if (ns) policy.upsertNamespace(ns);
      else policy.deleteNamespace(rest[0]);
    } else if (what === 'identity') {
      const obj = informers.identities.get(rest[0]);
      const spec = obj?.spec as { id?: number; labels?: Record<string, string> } | undefined;
      if (obj && typeof spec?.id === 'number' && spec.labels) policy.upsertIdentity(spec.id, spec.labels);
      else policy.deleteIdentity(Number(rest[0]));
    } else if (what === 'policy') {
      const [kind, ns, name] = rest;
      const inf = kind === 'NetworkPolicy' ? informers.networkPolicies : informers.meshNetworkPolicies;
      const obj = inf.get(`${ns}/${name}`);
      if (obj) policy.upsertPolicy(obj);
      else policy.deletePolicy(kind, ns, name);
    }
  }

  /**
   * Hand the engine's consequences on: dirty endpoints to the endpoints controller, CIDR identities
   * to the ipcache. Called after every batch of any controller that feeds the engine.
   */
  drain(): void {
    const { policy, dp } = this.d;
    for (const k of policy.takeDirty()) this.requeueEndpoint(k);
    const c = policy.takeCidrChanges();
    for (const [prefix, identity] of c.upsert) {
      dp.upsertIpcache(prefix, { identity, tunnelIp: '0.0.0.0', nodeId: 0, flags: 0 }, 'cidr');
      this.cidrs.add(prefix);
    }
    for (const prefix of c.remove) {
      if (this.cidrs.delete(prefix)) dp.deleteIpcache(prefix, 'cidr');
    }
    this.d.requestFlush();
  }
}
