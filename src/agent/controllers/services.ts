/**
 * Services controller (key: namespace/name of a Service): one datapath frontend per service port,
 * with the Running pods its selector matches as backends. A pod change re-queues only the services of
 * its namespace whose selector matches the pod before or after the change.
 */
import type { KubeObject } from '../../cluster/types.js';
import type { ServiceBackend } from '../../datapath/datapath.js';
import type { ServiceKey } from '../../datapath/codecs.js';
import { WorkQueue } from '../workqueue.js';
import { Index, PROTO, namedPorts, objKey, podIp, podRunning, type Controller, type ControllerDeps } from './shared.js';

interface ServiceSpec {
  readonly clusterIP?: string;
  readonly selector?: Record<string, string>;
  readonly ports?: ReadonlyArray<{ port: number; targetPort?: number | string; protocol?: string }>;
}

export function selects(selector: Record<string, string> | undefined, pod: KubeObject): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => pod.metadata.labels?.[k] === v);
}

export function resolveTargetPort(pod: KubeObject, target: number | string): number | null {
  if (typeof target === 'number') return target;
  if (/^\d+$/.test(target)) return Number(target);
  return namedPorts(pod)[target]?.[0]?.port ?? null;
}

/**
 * The frontends (and their backends) a Service wants, given the pods of its namespace. A pod is a
 * backend once it runs and its node has programmed it (`programmed`: its agent published the
 * MeshEndpoint), so a new backend never receives traffic before its node can deliver it.
 */
export function serviceFrontends(svc: KubeObject, pods: readonly KubeObject[], programmed: (pod: KubeObject) => boolean = () => true): Array<{ key: ServiceKey; backends: ServiceBackend[] }> {
  const spec = svc.spec as ServiceSpec | undefined;
  if (!spec?.clusterIP || !spec.selector) return [];
  const ready = pods.filter((p) => podIp(p) && podRunning(p) && selects(spec.selector, p) && programmed(p));
  return (spec.ports ?? []).map((port) => {
    const proto = PROTO[port.protocol ?? 'TCP'] ?? 6;
    return {
      key: { vip: spec.clusterIP!, dport: port.port, proto },
      backends: ready.flatMap((b) => {
        const target = resolveTargetPort(b, port.targetPort ?? port.port);
        return target ? [{ ip: podIp(b)!, port: target }] : [];
      }),
    };
  });
}

const frontendId = (k: ServiceKey): string => `${k.vip}:${k.dport}/${k.proto}`;

export class ServicesController implements Controller {
  readonly name = 'services';
  readonly queue: WorkQueue;
  private readonly programmed = new Map<string, ServiceKey[]>();

  constructor(private readonly d: ControllerDeps) {
    this.queue = new WorkQueue({ name: this.name, reconcile: (k) => this.reconcile(k), afterBatch: () => d.requestFlush() });
    const { services, pods } = d.informers;
    services.addEventHandler({
      onAdd: (s) => this.queue.add(objKey(s)),
      onUpdate: (_a, b) => this.queue.add(objKey(b)),
      onDelete: (s) => this.queue.add(objKey(s)),
    });
    const affected = (p: KubeObject): void => {
      for (const s of services.byIndex(Index.servicesByNamespace, p.metadata.namespace ?? 'default')) {
        if (selects((s.spec as ServiceSpec | undefined)?.selector, p)) this.queue.add(objKey(s));
      }
    };
    pods.addEventHandler({
      onAdd: affected,
      onUpdate: (a, b) => {
        affected(a);
        affected(b);
      },
      onDelete: affected,
    });
    // A pod's node publishing (or withdrawing) its endpoint makes it a backend (or not).
    const byEndpoint = (e: KubeObject): void => {
      const p = pods.get(objKey(e));
      if (p) affected(p);
    };
    d.informers.meshEndpoints.addEventHandler({ onAdd: byEndpoint, onUpdate: (_a, b) => byEndpoint(b), onDelete: byEndpoint });
  }

  /** Has the pod's node programmed it (its MeshEndpoint names the pod's address and node)? */
  private programmedPod = (p: KubeObject): boolean => {
    const ep = this.d.informers.meshEndpoints.get(objKey(p));
    const s = ep?.spec as { ip?: string; node?: string } | undefined;
    return !!s && s.ip === podIp(p) && s.node === (p.spec as { nodeName?: string } | undefined)?.nodeName;
  };

  initialKeys(): Iterable<string> {
    return this.d.informers.services.list().map(objKey);
  }

  private reconcile(key: string): void {
    const { dp, informers } = this.d;
    const svc = informers.services.get(key);
    const want = svc ? serviceFrontends(svc, informers.pods.byIndex(Index.podsByNamespace, svc.metadata.namespace ?? 'default'), this.programmedPod) : [];
    const keep = new Set(want.map((f) => frontendId(f.key)));
    for (const k of this.programmed.get(key) ?? []) if (!keep.has(frontendId(k))) dp.deleteService(k);
    for (const f of want) dp.upsertService(f.key, f.backends);
    if (want.length) this.programmed.set(key, want.map((f) => f.key));
    else this.programmed.delete(key);
  }
}
