/**
 * What the agent's controllers share: the informers they read, the datapath they write, and small
 * pure accessors over the objects. Each controller owns one concern and one work queue; handlers only
 * enqueue keys, and `reconcile(key)` reads caches and states the wanted datapath entries for that key.
 */
import type { ClusterClient } from '../../cluster/client.js';
import type { EndpointSource } from '../../cluster/endpoint-source.js';
import type { IdentityAllocator } from '../../cluster/identity.js';
import type { Informer } from '../../cluster/informer.js';
import type { KubeObject } from '../../cluster/types.js';
import type { Datapath } from '../../datapath/datapath.js';
import { MeshEndpointRecord, PodRecord, internNamedPorts, type NamedPorts } from '../compact.js';
import type { PolicyEngine } from '../policy-engine.js';
import type { WorkQueue } from '../workqueue.js';

export type RoutingMode = 'tunnel' | 'native' | 'hybrid';

export interface NodeIdentity {
  readonly cluster: string;
  readonly clusterId: number;
  readonly node: string;
  readonly nodeIp: string;
  readonly podCidr: string;
  readonly vpc: string;
  readonly routing: RoutingMode;
}

export interface Informers {
  readonly pods: Informer;
  readonly nodes: Informer;
  readonly services: Informer;
  readonly namespaces: Informer;
  readonly networkPolicies: Informer;
  readonly meshNetworkPolicies: Informer;
  readonly identities: Informer;
  readonly meshEndpoints: Informer;
}

/** Index names the controllers rely on (registered by the agent on its informers). */
export const Index = {
  podsByNode: 'byNode',
  podsByIp: 'byPodIP',
  podsByNamespace: 'byNamespace',
  podsByIdentityLabels: 'byIdentityLabels',
  servicesByNamespace: 'byNamespace',
  identitiesByLabels: 'byLabelsHash',
  meshEndpointsByIp: 'byIp',
} as const;

export interface ControllerDeps {
  readonly self: NodeIdentity;
  readonly informers: Informers;
  readonly dp: Datapath;
  readonly client: ClusterClient;
  readonly identities: IdentityAllocator;
  readonly endpointSource: EndpointSource;
  readonly policy: PolicyEngine;
  readonly log: (msg: string) => void;
  /** Ask for the pending datapath deltas to be written soon. */
  readonly requestFlush: () => void;
  /** Write the pending datapath deltas now; false when nothing may be written yet (initial round). */
  readonly flushNow: () => Promise<boolean>;
}

/** A controller: a name, a queue, the handlers it registers, and the keys of its initial round. */
export interface Controller {
  readonly name: string;
  readonly queue: WorkQueue;
  /** Every key that exists now (queued once the informers have synced). */
  initialKeys(): Iterable<string>;
}

export const PROTO: Readonly<Record<string, number>> = { TCP: 6, UDP: 17, SCTP: 132 };

export function podNode(pod: KubeObject | undefined): string | undefined {
  if (pod instanceof PodRecord) return pod.nodeName;
  return (pod?.spec as { nodeName?: string } | undefined)?.nodeName;
}

export function podIp(pod: KubeObject | undefined): string | undefined {
  if (pod instanceof PodRecord) return pod.podIP;
  return (pod?.status as { podIP?: string } | undefined)?.podIP;
}

export function podRunning(pod: KubeObject | undefined): boolean {
  if (pod instanceof PodRecord) return pod.phase === 'Running';
  return (pod?.status as { phase?: string } | undefined)?.phase === 'Running';
}

/** A pod's labels (without building its metadata view). */
export function podLabels(pod: KubeObject): Readonly<Record<string, string>> | undefined {
  if (pod instanceof PodRecord) return pod.labels;
  return pod.metadata.labels;
}

export function objKey(obj: KubeObject): string {
  if (obj instanceof PodRecord || obj instanceof MeshEndpointRecord) return obj.namespace ? `${obj.namespace}/${obj.name}` : obj.name;
  return obj.metadata.namespace ? `${obj.metadata.namespace}/${obj.metadata.name}` : obj.metadata.name;
}

/** Container port name → ports of a pod (named ports in policy and targetPort); shared, read-only. */
export function namedPorts(pod: KubeObject): NamedPorts {
  if (pod instanceof PodRecord) return pod.namedPorts;
  const out: Record<string, Array<{ port: number; protocol: number }>> = {};
  const containers = (pod.spec as { containers?: Array<{ ports?: Array<{ name?: string; containerPort: number; protocol?: string }> }> })?.containers ?? [];
  for (const c of containers) {
    for (const p of c.ports ?? []) {
      if (p.name) (out[p.name] ??= []).push({ port: p.containerPort, protocol: PROTO[p.protocol ?? 'TCP'] ?? 6 });
    }
  }
  return internNamedPorts(out);
}
