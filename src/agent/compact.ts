/**
 * Compact forms of the objects the agent caches: only the fields its controllers read, with equal
 * label sets shared. At 50k pods the informers' caches are most of the agent's memory, and a full
 * Pod object costs several KB in V8 where these cost a few hundred bytes.
 */
import type { KubeObject } from '../cluster/types.js';

const labelSets = new Map<string, Record<string, string>>();

/** One shared, frozen object per distinct label set. */
export function internLabels(labels: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!labels) return undefined;
  const key = JSON.stringify(labels);
  let have = labelSets.get(key);
  if (!have) {
    have = Object.freeze({ ...labels });
    labelSets.set(key, have);
  }
  return have;
}

function meta(obj: KubeObject): KubeObject['metadata'] {
  const m = obj.metadata;
  const out: KubeObject['metadata'] = { name: m.name };
  if (m.namespace !== undefined) out.namespace = m.namespace;
  if (m.labels) out.labels = internLabels(m.labels);
  if (m.resourceVersion !== undefined) out.resourceVersion = m.resourceVersion;
  return out;
}

type Ports = Array<{ name?: string; containerPort: number; protocol?: string }>;

/** A Pod with its node, named container ports, phase, addresses and lab wiring. */
export function compactPod(obj: KubeObject): KubeObject {
  const spec = (obj.spec ?? {}) as { nodeName?: string; containers?: Array<{ ports?: Ports }> };
  const st = (obj.status ?? {}) as { phase?: string; podIP?: string; meshctl?: { netns?: string; lxc?: string } };
  const ports: Ports = [];
  for (const c of spec.containers ?? []) for (const p of c.ports ?? []) if (p.name) ports.push({ name: p.name, containerPort: p.containerPort, ...(p.protocol ? { protocol: p.protocol } : {}) });
  return {
    apiVersion: obj.apiVersion,
    kind: obj.kind,
    metadata: meta(obj),
    spec: { nodeName: spec.nodeName, ...(ports.length ? { containers: [{ ports }] } : {}) },
    status: { phase: st.phase, podIP: st.podIP, ...(st.meshctl ? { meshctl: { netns: st.meshctl.netns, lxc: st.meshctl.lxc } } : {}) },
  };
}

/** A MeshEndpoint with its address, identity and node. */
export function compactMeshEndpoint(obj: KubeObject): KubeObject {
  const s = (obj.spec ?? {}) as { ip?: string; identity?: number; node?: string; nodeIP?: string; endpointID?: number };
  return { apiVersion: obj.apiVersion, kind: obj.kind, metadata: meta(obj), spec: { ip: s.ip, identity: s.identity, node: s.node, nodeIP: s.nodeIP, endpointID: s.endpointID } };
}
