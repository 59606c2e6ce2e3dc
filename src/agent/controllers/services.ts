/**
 * Services controller (key: namespace/name of a Service): one datapath frontend per service port,
 * with the Running pods its selector matches as backends. A pod change re-queues only the services of
 * its namespace whose selector matches the pod before or after the change, and a service's reconcile
 * reads only the pods it selects.
 */
import type { KubeObject } from '../../cluster/types.js';
import type { ServiceBackend } from '../../datapath/datapath.js';
import type { ServiceKey } from '../../datapath/codecs.js';
import { WorkQueue } from '../workqueue.js';
import { MeshEndpointRecord } from '../compact.js';
import { Index, PROTO, namedPorts, objKey, podIp, podLabels, podNode, podRunning, type Controller, type ControllerDeps } from './shared.js';

interface ServiceSpec {
  readonly clusterIP?: string;
  readonly selector?: Record<string, string>;
  readonly ports?: ReadonlyArray<{ port: number; targetPort?: number | string; protocol?: string }>;
}

export function selects(selector: Record<string, string> | undefined, pod: KubeObject): boolean {
  if (!selector) return false;
  const labels = podLabels(pod);
  let any = false;
  for (const k in selector) {
    if (labels?.[k] !== selector[k]) return false;
    any = true;
  }
  return any;
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

/**
 * The services controller keeps, per service, the keys of the pods its selector matches (whatever
 * their phase), updated by pod events: a pod change checks the selectors of its namespace's
 * services (not the other pods) and re-queues only the services it belongs to before or after, and
 * a service's reconcile reads only its own members. Only a new or changed selector scans the
 * namespace's pods.
 */
export class ServicesController implements Controller {
  readonly name = 'services';
  readonly queue: WorkQueue;
  private readonly programmed = new Map<string, ServiceKey[]>();
  /** Service key → pod keys its selector matches; built with the selector in `builtWith`. */
  private readonly members = new Map<string, Set<string>>();
  private readonly builtWith = new Map<string, string>();
  /** Pods read to decide services' membership and backends, in total (a test's and metrics' view of the cost). */
  podsExamined = 0;

  constructor(private readonly d: ControllerDeps) {
    this.queue = new WorkQueue({ name: this.name, reconcile: (k) => this.reconcile(k), afterBatch: () => d.requestFlush() });
    const { services, pods } = d.informers;
    // Pod events do not reach the member set of a service that is not cached: a new one is built afresh.
    const drop = (s: KubeObject): void => {
      this.members.delete(objKey(s));
      this.builtWith.delete(objKey(s));
      this.queue.add(objKey(s));
    };
    services.addEventHandler({ onAdd: drop, onUpdate: (_a, b) => this.queue.add(objKey(b)), onDelete: drop });
    pods.addEventHandler({
      onAdd: (p) => this.podChanged(undefined, p),
      onUpdate: (a, b) => this.podChanged(a, b),
      onDelete: (p) => this.podChanged(p, undefined),
    });
    // A pod's node publishing (or withdrawing) its endpoint makes it a backend (or not).
    const byEndpoint = (e: KubeObject): void => {
      const p = pods.get(objKey(e));
      if (p) this.podChanged(p, p);
    };
    d.informers.meshEndpoints.addEventHandler({ onAdd: byEndpoint, onUpdate: (_a, b) => byEndpoint(b), onDelete: byEndpoint });
  }

  /** Move a pod in or out of its namespace's services' member sets; queue the services it was or is in. */
  private podChanged(before: KubeObject | undefined, after: KubeObject | undefined): void {
    const p = (after ?? before)!;
    const key = objKey(p);
    const namespaces = new Set([before?.metadata.namespace ?? 'default', after?.metadata.namespace ?? 'default']);
    this.podsExamined++;
    for (const ns of namespaces) {
      for (const s of this.d.informers.services.byIndex(Index.servicesByNamespace, ns)) {
        const sk = objKey(s);
        const sel = (s.spec as ServiceSpec | undefined)?.selector;
        const was = before !== undefined && (before.metadata.namespace ?? 'default') === ns && selects(sel, before);
        const is = after !== undefined && (after.metadata.namespace ?? 'default') === ns && selects(sel, after);
        const set = this.members.get(sk);
        if (set) {
          if (is) set.add(key);
          else set.delete(key);
        }
        if (was || is) this.queue.add(sk);
      }
    }
  }

  /** Has the pod's node programmed it (its MeshEndpoint names the pod's address and node)? */
  private programmedPod = (p: KubeObject): boolean => {
    const ep = this.d.informers.meshEndpoints.get(objKey(p));
    if (ep instanceof MeshEndpointRecord) return ep.ip === podIp(p) && ep.node === podNode(p);
    const s = ep?.spec as { ip?: string; node?: string } | undefined;
    return !!s && s.ip === podIp(p) && s.node === podNode(p);
  };

  initialKeys(): Iterable<string> {
    return this.d.informers.services.list().map(objKey);
  }

  /** The pods a service's selector matches: its member set, (re)built when the selector is new. */
  private membersOf(key: string, svc: KubeObject): KubeObject[] {
    const { pods } = this.d.informers;
    const sel = (svc.spec as ServiceSpec | undefined)?.selector;
    const selText = JSON.stringify(sel ?? null);
    let set = this.members.get(key);
    if (!set || this.builtWith.get(key) !== selText) {
      set = new Set();
      for (const p of pods.byIndex(Index.podsByNamespace, svc.metadata.namespace ?? 'default')) {
        this.podsExamined++;
        if (selects(sel, p)) set.add(objKey(p));
      }
      this.members.set(key, set);
      this.builtWith.set(key, selText);
    }
    const out: KubeObject[] = [];
    for (const k of set) {
      const p = pods.get(k);
      this.podsExamined++;
      if (p) out.push(p);
    }
    return out;
  }

  private reconcile(key: string): void {
    const { dp, informers } = this.d;
    const svc = informers.services.get(key);
    const want = svc ? serviceFrontends(svc, this.membersOf(key, svc), this.programmedPod) : [];
    if (!svc) {
      this.members.delete(key);
      this.builtWith.delete(key);
    }
    const keep = new Set(want.map((f) => frontendId(f.key)));
    for (const k of this.programmed.get(key) ?? []) if (!keep.has(frontendId(k))) dp.deleteService(k);
    for (const f of want) dp.upsertService(f.key, f.backends);
    if (want.length) this.programmed.set(key, want.map((f) => f.key));
    else this.programmed.delete(key);
  }
}
