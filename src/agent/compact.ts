/**
 * Compact forms of the objects the agent caches: only the fields its controllers read, held in one
 * small record per object, with the strings many objects repeat (namespaces, node names, phases)
 * and equal label sets and named-port sets shared. At 50k pods the informers' caches are most of
 * the agent's memory: a parsed Pod costs several KB in V8, a plain compact copy ~600 B, these ~80 B
 * plus their strings.
 *
 * The records read like KubeObjects (`metadata`, `spec`, `status` are getters that build a small
 * plain view on each read, and JSON.stringify gives the same text as the plain form), so code that
 * takes a KubeObject takes them unchanged. They are read-only.
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

const strings = new Map<string, string>();

/**
 * One shared copy of a string that many objects repeat (namespace, node name, node address,
 * phase). Only for values of bounded variety: the table keeps each value for the process's life.
 */
export function intern<S extends string | undefined>(s: S): S {
  if (s === undefined) return s;
  const have = strings.get(s);
  if (have !== undefined) return have as S;
  strings.set(s, s);
  return s;
}

/** A resourceVersion as a number when it is one (a small integer costs no string). */
function packVersion(rv: string | undefined): string | number | undefined {
  return rv !== undefined && /^[1-9]\d{0,14}$/.test(rv) ? Number(rv) : rv;
}

function unpackVersion(rv: string | number | undefined): string | undefined {
  return typeof rv === 'number' ? String(rv) : rv;
}

export interface NamedPort {
  readonly port: number;
  readonly protocol: number;
}

/** Container port name → ports (named ports in policy and targetPort). */
export type NamedPorts = Readonly<Record<string, readonly NamedPort[]>>;

const PROTO: Readonly<Record<string, number>> = { TCP: 6, UDP: 17, SCTP: 132 };
const portSets = new Map<string, NamedPorts>();
const NO_PORTS: NamedPorts = Object.freeze({});

/** One shared, frozen named-port set per distinct content (names sorted, ports in order). */
export function internNamedPorts(ports: NamedPorts): NamedPorts {
  const names = Object.keys(ports).sort();
  if (names.length === 0) return NO_PORTS;
  const key = names.map((n) => `${n}=${ports[n].map((p) => `${p.port}/${p.protocol}`).join(',')}`).join(';');
  let have = portSets.get(key);
  if (!have) {
    const out: Record<string, readonly NamedPort[]> = {};
    for (const n of names) out[n] = Object.freeze(ports[n].map((p) => Object.freeze({ port: p.port, protocol: p.protocol })));
    have = Object.freeze(out);
    portSets.set(key, have);
  }
  return have;
}

type Ports = Array<{ name?: string; containerPort: number; protocol?: string }>;
const containerSets = new Map<string, Ports>();

/** The named container ports of a pod, as one shared frozen list per distinct content. */
function internContainerPorts(ports: Ports): Ports | undefined {
  if (ports.length === 0) return undefined;
  const key = JSON.stringify(ports);
  let have = containerSets.get(key);
  if (!have) {
    have = Object.freeze(ports.map((p) => Object.freeze({ ...p }))) as unknown as Ports;
    containerSets.set(key, have);
  }
  return have;
}

/** What many pods share (one workload's pods in one namespace): one frozen object per distinct content. */
interface PodHead {
  readonly apiVersion: string;
  readonly kind: string;
  readonly namespace: string | undefined;
  readonly labels: Record<string, string> | undefined;
  readonly ports: Ports | undefined;
  readonly namedPorts: NamedPorts;
}

const podHeads = new Map<string, PodHead>();

function podHead(apiVersion: string, kind: string, namespace: string | undefined, labels: Record<string, string> | undefined, ports: Ports): PodHead {
  const key = JSON.stringify([apiVersion, kind, namespace ?? null, labels ?? null, ports]);
  let have = podHeads.get(key);
  if (!have) {
    const np: Record<string, NamedPort[]> = {};
    for (const p of ports) if (p.name) (np[p.name] ??= []).push({ port: p.containerPort, protocol: PROTO[p.protocol ?? 'TCP'] ?? 6 });
    have = Object.freeze({ apiVersion: intern(apiVersion), kind: intern(kind), namespace: intern(namespace), labels: internLabels(labels), ports: internContainerPorts(ports), namedPorts: internNamedPorts(np) });
    podHeads.set(key, have);
  }
  return have;
}

/** A Pod with its node, named container ports, phase, address and (for local pods) lab wiring. */
export class PodRecord {
  constructor(
    private readonly head: PodHead,
    private readonly name_: string,
    private readonly rv: string | number | undefined,
    private readonly nodeName_: string | undefined,
    private readonly phase_: string | undefined,
    private readonly podIP_: string | undefined,
    private readonly meshctl_: { readonly netns?: string; readonly lxc?: string } | undefined,
  ) {}

  get apiVersion(): string {
    return this.head.apiVersion;
  }

  get kind(): string {
    return this.head.kind;
  }

  get metadata(): KubeObject['metadata'] {
    return meta(this.name_, this.head.namespace, this.head.labels, this.rv);
  }

  get spec(): { nodeName?: string; containers?: Array<{ ports: Ports }> } {
    return { nodeName: this.nodeName_, ...(this.head.ports ? { containers: [{ ports: this.head.ports }] } : {}) };
  }

  get status(): { phase?: string; podIP?: string; meshctl?: { netns?: string; lxc?: string } } {
    return { phase: this.phase_, podIP: this.podIP_, ...(this.meshctl_ ? { meshctl: { netns: this.meshctl_.netns, lxc: this.meshctl_.lxc } } : {}) };
  }

  // Accessors for the controllers' hot paths (shared.ts), which build no view.
  /** Named ports, shared between the pods of one spec (what shared.ts namedPorts() returns). */
  get namedPorts(): NamedPorts {
    return this.head.namedPorts;
  }

  get nodeName(): string | undefined {
    return this.nodeName_;
  }

  get podIP(): string | undefined {
    return this.podIP_;
  }

  get phase(): string | undefined {
    return this.phase_;
  }

  get labels(): Record<string, string> | undefined {
    return this.head.labels;
  }

  get namespace(): string | undefined {
    return this.head.namespace;
  }

  get name(): string {
    return this.name_;
  }

  toJSON(): KubeObject {
    return { apiVersion: this.apiVersion, kind: this.kind, metadata: this.metadata, spec: this.spec, status: this.status };
  }
}

function meta(name: string, namespace: string | undefined, labels: Record<string, string> | undefined, rv: string | number | undefined): KubeObject['metadata'] {
  const out: KubeObject['metadata'] = { name };
  if (namespace !== undefined) out.namespace = namespace;
  if (labels) out.labels = labels;
  if (rv !== undefined) out.resourceVersion = unpackVersion(rv);
  return out;
}

/**
 * compactPod for an agent on `localNode`: the lab wiring (status.meshctl) is kept only for the
 * pods of that node, the only ones whose devices the agent programs. Without a node, for all pods.
 */
export function podCompactor(localNode?: string): (obj: KubeObject) => KubeObject {
  return (obj) => compactPod(obj, localNode);
}

/** A Pod with its node, named container ports, phase, address and lab wiring. */
export function compactPod(obj: KubeObject, localNode?: string): KubeObject {
  const spec = (obj.spec ?? {}) as { nodeName?: string; containers?: Array<{ ports?: Ports }> };
  const st = (obj.status ?? {}) as { phase?: string; podIP?: string; meshctl?: { netns?: string; lxc?: string } };
  const ports: Ports = [];
  for (const c of spec.containers ?? []) for (const p of c.ports ?? []) if (p.name) ports.push({ name: p.name, containerPort: p.containerPort, ...(p.protocol ? { protocol: p.protocol } : {}) });
  const m = obj.metadata;
  const wiring = st.meshctl && (localNode === undefined || spec.nodeName === localNode) ? { netns: st.meshctl.netns, lxc: st.meshctl.lxc } : undefined;
  return new PodRecord(podHead(obj.apiVersion, obj.kind, m.namespace, m.labels, ports), m.name, packVersion(m.resourceVersion), intern(spec.nodeName), intern(st.phase), st.podIP, wiring) as unknown as KubeObject;
}

/** What the MeshEndpoints of one node and namespace share. */
interface EndpointHead {
  readonly apiVersion: string;
  readonly kind: string;
  readonly namespace: string | undefined;
  readonly labels: Record<string, string> | undefined;
  readonly node: string | undefined;
  readonly nodeIP: string | undefined;
}

const endpointHeads = new Map<string, EndpointHead>();

function endpointHead(apiVersion: string, kind: string, namespace: string | undefined, labels: Record<string, string> | undefined, node: string | undefined, nodeIP: string | undefined): EndpointHead {
  const key = JSON.stringify([apiVersion, kind, namespace ?? null, labels ?? null, node ?? null, nodeIP ?? null]);
  let have = endpointHeads.get(key);
  if (!have) {
    have = Object.freeze({ apiVersion: intern(apiVersion), kind: intern(kind), namespace: intern(namespace), labels: internLabels(labels), node: intern(node), nodeIP: intern(nodeIP) });
    endpointHeads.set(key, have);
  }
  return have;
}

/** A MeshEndpoint with its address, identity, node and endpoint id. */
export class MeshEndpointRecord {
  constructor(
    private readonly head: EndpointHead,
    private readonly name_: string,
    private readonly rv: string | number | undefined,
    readonly ip: string | undefined,
    readonly identity: number | undefined,
    readonly endpointID: number | undefined,
  ) {}

  get apiVersion(): string {
    return this.head.apiVersion;
  }

  get kind(): string {
    return this.head.kind;
  }

  get node(): string | undefined {
    return this.head.node;
  }

  get nodeIP(): string | undefined {
    return this.head.nodeIP;
  }

  get metadata(): KubeObject['metadata'] {
    return meta(this.name_, this.head.namespace, this.head.labels, this.rv);
  }

  get spec(): { ip?: string; identity?: number; node?: string; nodeIP?: string; endpointID?: number } {
    return { ip: this.ip, identity: this.identity, node: this.node, nodeIP: this.nodeIP, endpointID: this.endpointID };
  }

  get name(): string {
    return this.name_;
  }

  get namespace(): string | undefined {
    return this.head.namespace;
  }

  toJSON(): KubeObject {
    return { apiVersion: this.apiVersion, kind: this.kind, metadata: this.metadata, spec: this.spec };
  }
}

/** A MeshEndpoint with its address, identity and node. */
export function compactMeshEndpoint(obj: KubeObject): KubeObject {
  const s = (obj.spec ?? {}) as { ip?: string; identity?: number; node?: string; nodeIP?: string; endpointID?: number };
  const m = obj.metadata;
  return new MeshEndpointRecord(endpointHead(obj.apiVersion, obj.kind, m.namespace, m.labels, s.node, s.nodeIP), m.name, packVersion(m.resourceVersion), s.ip, s.identity, s.endpointID) as unknown as KubeObject;
}
