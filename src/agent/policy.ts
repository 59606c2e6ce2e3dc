/**
 * Policy compilation: Kubernetes NetworkPolicy and MeshNetworkPolicy (CiliumNetworkPolicy-shaped)
 * → per local endpoint, the (identity, port, protocol) triples allowed in each direction.
 *
 * Pure: no store, no clock. The agent feeds it the cluster's policies and namespaces, every known
 * identity (local and remote clusters') and its local endpoints, then programs only the endpoints
 * whose result changed (diffPolicies).
 *
 * Semantics (DESIGN §1):
 * - An endpoint no policy selects in a direction is allowed there (`enforced: false`). Once a policy
 *   selects it in a direction it is default-deny there; rules add allowed triples.
 * - Peers are selectors matched against identity labels, so results name concrete identities.
 * - A selector that does not name `io.cilium.k8s.policy.cluster` matches the local cluster only.
 *
 * NetworkPolicy:
 * - `podSelector` selects endpoints of the policy's namespace. `policyTypes` defaults to Ingress,
 *   plus Egress when `egress` has rules.
 * - Peers: `podSelector` alone = that namespace; `namespaceSelector` = namespaces whose labels match
 *   (Namespace objects of this cluster plus `kubernetes.io/metadata.name`; `{}` = all); both = AND.
 *   A cluster-label requirement may sit in either selector and applies to the peer's cluster.
 *   Namespaces are the same across clusters by name (namespace sameness). `ipBlock` → world (2);
 *   its `except` is not modelled. Missing or empty `from`/`to` = any identity (0).
 * - Ports: numeric `port` with `protocol` (default TCP); `endPort` ranges of up to
 *   MAX_PORT_RANGE ports are expanded (longer ones are dropped with a warning). Named ports are
 *   resolved on ingress from the selected endpoint's own `namedPorts`; on egress (the port belongs
 *   to the peer, known here only by identity) and when unresolvable they allow nothing and are
 *   reported as warnings.
 *
 * MeshNetworkPolicy:
 * - `endpointSelector` selects endpoints of the policy's namespace. A direction is enforced when
 *   its rule list is non-empty (Cilium), unless `enableDefaultDeny.<direction>` is false, in which
 *   case its rules only add to what other policies enforce.
 * - `fromEndpoints`/`toEndpoints`: restricted to the policy's namespace unless the selector names
 *   `io.kubernetes.pod.namespace`; `[{}]` = every endpoint of that namespace in this cluster.
 *   `fromEntities`/`toEntities`: all, world, host, remote-node, health, init, unmanaged,
 *   kube-apiserver, cluster (every identity of this cluster plus host, remote-node, health, init and
 *   kube-apiserver). `fromCIDR(Set)`/`toCIDR(Set)` → world. Peer kinds not implemented here
 *   (`toFQDNs`, `toServices`, `fromNodes`, `toNodes`, `fromGroups`, `toGroups`) allow nothing and
 *   are warned about. A rule with no peer field allows any identity when it has `toPorts`, nothing
 *   otherwise (`ingress: [{}]` is Cilium's deny-all).
 * - `toPorts[].ports[]`: `port` number or numeric string (0/absent = all), `protocol`
 *   TCP/UDP/SCTP/ANY (default ANY), `endPort` as above. L7 `rules` are not enforced (warning).
 *
 * Anything that would narrow what a policy allows but is not implemented (`ingressDeny`,
 * `egressDeny`, `fromRequires`, `toRequires`, `nodeSelector`, `specs`) and any unknown field makes
 * the whole policy skipped and reported, as does malformed input.
 *
 * Protocol numbers follow the datapath's policy key: 0 = any (only with port 0), 6 TCP, 17 UDP,
 * 132 SCTP. A port with protocol ANY is expanded to TCP, UDP and SCTP entries.
 */
import { LABEL_CLUSTER, LABEL_NAMESPACE } from '../defaults.js';
import type { KubeObject } from '../cluster/types.js';
import {
  IDENTITY_HEALTH,
  IDENTITY_HOST,
  IDENTITY_INIT,
  IDENTITY_KUBE_APISERVER,
  IDENTITY_REMOTE_NODE,
  IDENTITY_RESERVED_MAX,
  IDENTITY_UNMANAGED,
  IDENTITY_WORLD,
} from './identity.js';
import {
  compareStrings,
  isLabels,
  parseSelector,
  SelectorError,
  selectorAnd,
  selectorMatches,
  selectorNames,
  splitSelector,
  type Labels,
  type Selector,
} from './labels.js';

/** Identity 0 in a rule: any peer identity. */
export const IDENTITY_ANY = 0;
export const PROTO_ANY = 0;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_SCTP = 132;
/** Longest `port..endPort` range expanded into single-port rules. */
export const MAX_PORT_RANGE = 256;
/** Namespace label Kubernetes sets on every namespace. */
export const LABEL_NAMESPACE_NAME = 'kubernetes.io/metadata.name';

export interface PolicyRule {
  /** Peer identity; 0 = any. */
  readonly identity: number;
  /** Destination port; 0 = any. */
  readonly port: number;
  /** IP protocol number; 0 = any (then port is 0). */
  readonly protocol: number;
}

export interface DirectionPolicy {
  /** Selected by some policy in this direction: default-deny, only `rules` pass. */
  readonly enforced: boolean;
  /** Allowed triples, deduplicated, without rules another one covers, sorted by identity, protocol, port. */
  readonly rules: readonly PolicyRule[];
}

export interface EndpointPolicy {
  readonly ingress: DirectionPolicy;
  readonly egress: DirectionPolicy;
}

export interface NamedPort {
  readonly port: number;
  /** 6, 17 or 132. */
  readonly protocol: number;
}

export interface PolicyEndpoint {
  readonly id: string;
  readonly identity: number;
  /** Identity labels (with namespace and cluster labels). */
  readonly labels: Labels;
  readonly namespace: string;
  /** Container port name → ports, for named ports in ingress rules; default none. */
  readonly namedPorts?: Readonly<Record<string, readonly NamedPort[]>>;
}

export interface CompilePoliciesInput {
  /** This cluster's name: selectors without the cluster label match it only. */
  readonly clusterName: string;
  /** NetworkPolicy and MeshNetworkPolicy objects of this cluster; other kinds are ignored. */
  readonly policies: readonly KubeObject[];
  /** Namespace objects of this cluster (for namespaceSelector). */
  readonly namespaces: readonly KubeObject[];
  /** Every known identity → identity labels, local and remote. */
  readonly identities: ReadonlyMap<number, Labels>;
  /** Local endpoints to compile for. */
  readonly endpoints: readonly PolicyEndpoint[];
}

export interface PolicyProblem {
  /** `NetworkPolicy <ns>/<name>` or `MeshNetworkPolicy <ns>/<name>`. */
  readonly policy: string;
  /** skipped: the policy was not applied at all; warning: applied, but a part allows nothing or less. */
  readonly severity: 'skipped' | 'warning';
  readonly message: string;
}

export interface PolicyCompilation {
  /** Every input endpoint id → its policy. */
  readonly endpoints: Map<string, EndpointPolicy>;
  /** Sorted by policy, then message. */
  readonly problems: PolicyProblem[];
  /** Policies applied (parsed without error), sorted. */
  readonly applied: string[];
}

// ---------------------------------------------------------------------------------------------
// Parsed form

type PortSpec = { readonly kind: 'number'; readonly port: number; readonly endPort: number; readonly protocol: number } | { readonly kind: 'named'; readonly name: string; readonly protocol: number };

type Peer = { readonly kind: 'selector'; readonly match: (labels: Labels) => boolean } | { readonly kind: 'identity'; readonly id: number } | { readonly kind: 'local-cluster' };

interface ParsedRule {
  /** 'any' = identity 0. */
  readonly peers: readonly Peer[] | 'any';
  /** 'all' = port 0, protocol any. */
  readonly ports: readonly PortSpec[] | 'all';
}

interface ParsedDirection {
  /** Sets default-deny for selected endpoints. */
  readonly enforce: boolean;
  readonly rules: readonly ParsedRule[];
}

interface ParsedPolicy {
  readonly name: string;
  readonly namespace: string;
  readonly endpointSelector: Selector;
  readonly ingress?: ParsedDirection;
  readonly egress?: ParsedDirection;
}

class PolicyError extends Error {}

interface ParseContext {
  readonly cluster: string;
  readonly namespace: string;
  readonly namespaceLabels: (ns: string) => Labels;
  readonly warn: (msg: string) => void;
}

// ---------------------------------------------------------------------------------------------
// Helpers for reading untyped JSON

function obj(v: unknown, path: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new PolicyError(`${path}: must be an object`);
  return v as Record<string, unknown>;
}

function list(v: unknown, path: string): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new PolicyError(`${path}: must be a list`);
  return v;
}

function onlyKeys(o: Record<string, unknown>, path: string, allowed: readonly string[], unsupported: readonly string[] = []): void {
  for (const k of Object.keys(o).sort(compareStrings)) {
    if (unsupported.includes(k)) throw new PolicyError(`${path}.${k}: not supported`);
    if (!allowed.includes(k)) throw new PolicyError(`${path}.${k}: unknown field`);
  }
}

function selector(v: unknown, path: string): Selector {
  try {
    return parseSelector(v, path);
  } catch (err) {
    if (err instanceof SelectorError) throw new PolicyError(err.message);
    throw err;
  }
}

const inReq = (key: string, value: string) => ({ key, operator: 'In' as const, values: [value] });

// ---------------------------------------------------------------------------------------------
// Ports

function protocolNumber(v: unknown, path: string, dflt: number): number {
  if (v === undefined || v === null) return dflt;
  switch (v) {
    case 'TCP':
      return PROTO_TCP;
    case 'UDP':
      return PROTO_UDP;
    case 'SCTP':
      return PROTO_SCTP;
    case 'ANY':
      return PROTO_ANY;
    default:
      throw new PolicyError(`${path}: protocol must be TCP, UDP, SCTP or ANY`);
  }
}

/** A port field: number, numeric string (Cilium writes "80") or, when allowed, a port name. */
function portValue(v: unknown, path: string, allowZero: boolean): number | string {
  if (typeof v === 'string' && /^[0-9]+$/.test(v)) v = Number(v);
  if (typeof v === 'number') {
    if (!Number.isInteger(v) || v < (allowZero ? 0 : 1) || v > 65535) throw new PolicyError(`${path}: port must be ${allowZero ? 0 : 1}..65535`);
    return v;
  }
  if (typeof v === 'string' && /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(v) && v.length <= 15) return v;
  throw new PolicyError(`${path}: port must be a number or a port name`);
}

function portSpec(portRaw: unknown, endPortRaw: unknown, protocol: number, path: string, allowZero: boolean): PortSpec {
  const port = portRaw === undefined || portRaw === null ? 0 : portValue(portRaw, `${path}.port`, allowZero);
  if (typeof port === 'string') {
    if (endPortRaw !== undefined) throw new PolicyError(`${path}.endPort: not allowed with a named port`);
    return { kind: 'named', name: port, protocol };
  }
  let endPort = port;
  if (endPortRaw !== undefined) {
    const e = portValue(endPortRaw, `${path}.endPort`, false);
    if (typeof e === 'string' || port === 0 || e < port) throw new PolicyError(`${path}.endPort: must be a number not below port`);
    endPort = e;
  }
  return { kind: 'number', port, endPort, protocol };
}

// ---------------------------------------------------------------------------------------------
// NetworkPolicy

function parseNetworkPolicyPeer(raw: unknown, path: string, ctx: ParseContext): Peer {
  const o = obj(raw, path);
  onlyKeys(o, path, ['podSelector', 'namespaceSelector', 'ipBlock']);
  if (o.ipBlock !== undefined) {
    if (o.podSelector !== undefined || o.namespaceSelector !== undefined) throw new PolicyError(`${path}.ipBlock: cannot be combined with podSelector or namespaceSelector`);
    const b = obj(o.ipBlock, `${path}.ipBlock`);
    if (typeof b.cidr !== 'string' || b.cidr === '') throw new PolicyError(`${path}.ipBlock.cidr: required`);
    if (b.except !== undefined) ctx.warn(`${path}.ipBlock.except: not modelled, the peer is the world identity`);
    return { kind: 'identity', id: IDENTITY_WORLD };
  }
  if (o.podSelector === undefined && o.namespaceSelector === undefined) throw new PolicyError(`${path}: needs podSelector, namespaceSelector or ipBlock`);
  const pods = selector(o.podSelector, `${path}.podSelector`);
  const { cluster } = ctx;
  if (o.namespaceSelector === undefined) {
    let sel = selectorAnd(pods, inReq(LABEL_NAMESPACE, ctx.namespace));
    if (!selectorNames(sel, LABEL_CLUSTER)) sel = selectorAnd(sel, inReq(LABEL_CLUSTER, cluster));
    return { kind: 'selector', match: (l) => selectorMatches(sel, l) };
  }
  const nsSel = selector(o.namespaceSelector, `${path}.namespaceSelector`);
  const { on: clusterPart, rest: nsPart } = splitSelector(nsSel, LABEL_CLUSTER);
  let sel = selectorAnd(pods, ...clusterPart.requirements);
  if (!selectorNames(sel, LABEL_CLUSTER)) sel = selectorAnd(sel, inReq(LABEL_CLUSTER, cluster));
  const nsLabels = ctx.namespaceLabels;
  return {
    kind: 'selector',
    match: (l) => {
      const ns = l[LABEL_NAMESPACE];
      return ns !== undefined && selectorMatches(sel, l) && selectorMatches(nsPart, nsLabels(ns));
    },
  };
}

function parseNetworkPolicyPorts(raw: unknown, path: string): PortSpec[] | 'all' {
  const ports = list(raw, path);
  if (ports.length === 0) return 'all';
  return ports.map((p, i) => {
    const o = obj(p, `${path}[${i}]`);
    onlyKeys(o, `${path}[${i}]`, ['port', 'endPort', 'protocol']);
    if (o.protocol === 'ANY') throw new PolicyError(`${path}[${i}].protocol: must be TCP, UDP or SCTP`);
    return portSpec(o.port, o.endPort, protocolNumber(o.protocol, `${path}[${i}].protocol`, PROTO_TCP), `${path}[${i}]`, false);
  });
}

function parseNetworkPolicy(spec: Record<string, unknown>, ctx: ParseContext): Omit<ParsedPolicy, 'name' | 'namespace'> {
  onlyKeys(spec, 'spec', ['podSelector', 'policyTypes', 'ingress', 'egress']);
  if (spec.podSelector === undefined) throw new PolicyError('spec.podSelector: required');
  const endpointSelector = selector(spec.podSelector, 'spec.podSelector');
  const ingressRaw = list(spec.ingress, 'spec.ingress');
  const egressRaw = list(spec.egress, 'spec.egress');
  let types: string[];
  if (spec.policyTypes === undefined) {
    types = egressRaw.length > 0 ? ['Ingress', 'Egress'] : ['Ingress'];
  } else {
    types = list(spec.policyTypes, 'spec.policyTypes').map((t, i) => {
      if (t !== 'Ingress' && t !== 'Egress') throw new PolicyError(`spec.policyTypes[${i}]: must be Ingress or Egress`);
      return t;
    });
  }
  const direction = (rules: unknown[], dir: 'ingress' | 'egress'): ParsedDirection => {
    const peersKey = dir === 'ingress' ? 'from' : 'to';
    return {
      enforce: true,
      rules: rules.map((r, i) => {
        const path = `spec.${dir}[${i}]`;
        const o = obj(r, path);
        onlyKeys(o, path, [peersKey, 'ports']);
        const peersRaw = list(o[peersKey], `${path}.${peersKey}`);
        const peers = peersRaw.length === 0 ? 'any' : peersRaw.map((p, j) => parseNetworkPolicyPeer(p, `${path}.${peersKey}[${j}]`, ctx));
        return { peers, ports: parseNetworkPolicyPorts(o.ports, `${path}.ports`) };
      }),
    };
  };
  const ingress = types.includes('Ingress') ? direction(ingressRaw, 'ingress') : undefined;
  const egress = types.includes('Egress') ? direction(egressRaw, 'egress') : undefined;
  if (!types.includes('Ingress') && ingressRaw.length > 0) ctx.warn('spec.ingress: ignored, policyTypes does not include Ingress');
  if (!types.includes('Egress') && egressRaw.length > 0) ctx.warn('spec.egress: ignored, policyTypes does not include Egress');
  return { endpointSelector, ingress, egress };
}

// ---------------------------------------------------------------------------------------------
// MeshNetworkPolicy

const ENTITIES: Record<string, number[] | 'any' | 'cluster'> = {
  all: 'any',
  world: [IDENTITY_WORLD],
  host: [IDENTITY_HOST],
  'remote-node': [IDENTITY_REMOTE_NODE],
  health: [IDENTITY_HEALTH],
  init: [IDENTITY_INIT],
  unmanaged: [IDENTITY_UNMANAGED],
  'kube-apiserver': [IDENTITY_KUBE_APISERVER],
  cluster: 'cluster',
};

function parseMeshPorts(raw: unknown, path: string, ctx: ParseContext): PortSpec[] | 'all' {
  const entries = list(raw, path);
  if (entries.length === 0) return 'all';
  const out: PortSpec[] = [];
  entries.forEach((e, i) => {
    const p = `${path}[${i}]`;
    const o = obj(e, p);
    onlyKeys(o, p, ['ports', 'rules', 'listener', 'originatingTLS', 'terminatingTLS', 'serverNames']);
    for (const k of ['rules', 'listener', 'originatingTLS', 'terminatingTLS', 'serverNames']) {
      if (o[k] !== undefined) ctx.warn(`${p}.${k}: L7 is not enforced, the ports are allowed at L4`);
    }
    const ports = list(o.ports, `${p}.ports`);
    if (ports.length === 0) out.push({ kind: 'number', port: 0, endPort: 0, protocol: PROTO_ANY });
    ports.forEach((x, j) => {
      const q = `${p}.ports[${j}]`;
      const po = obj(x, q);
      onlyKeys(po, q, ['port', 'endPort', 'protocol']);
      out.push(portSpec(po.port, po.endPort, protocolNumber(po.protocol, `${q}.protocol`, PROTO_ANY), q, true));
    });
  });
  return out;
}

const UNSUPPORTED_PEERS = { ingress: ['fromNodes', 'fromGroups'], egress: ['toFQDNs', 'toServices', 'toNodes', 'toGroups'] };

function parseMeshRule(raw: unknown, path: string, dir: 'ingress' | 'egress', ctx: ParseContext): ParsedRule {
  const o = obj(raw, path);
  const f = dir === 'ingress' ? 'from' : 'to';
  const peerKeys = [`${f}Endpoints`, `${f}Entities`, `${f}CIDR`, `${f}CIDRSet`, ...UNSUPPORTED_PEERS[dir]];
  onlyKeys(o, path, [...peerKeys, 'toPorts', 'icmps', 'authentication'], [`${f}Requires`]);
  if (o.icmps !== undefined) ctx.warn(`${path}.icmps: ICMP rules are not supported, they allow nothing`);
  if (o.authentication !== undefined) ctx.warn(`${path}.authentication: not supported, ignored`);
  const ports = parseMeshPorts(o.toPorts, `${path}.toPorts`, ctx);
  // An empty list names no peers, as if the field were absent.
  const hasPeerField = peerKeys.some((k) => o[k] !== undefined && o[k] !== null && !(Array.isArray(o[k]) && (o[k] as unknown[]).length === 0));
  if (!hasPeerField) return { peers: o.toPorts !== undefined ? 'any' : [], ports };
  const peers: Peer[] = [];
  list(o[`${f}Endpoints`], `${path}.${f}Endpoints`).forEach((s, i) => {
    let sel = selector(s, `${path}.${f}Endpoints[${i}]`);
    if (!selectorNames(sel, LABEL_NAMESPACE)) sel = selectorAnd(sel, inReq(LABEL_NAMESPACE, ctx.namespace));
    if (!selectorNames(sel, LABEL_CLUSTER)) sel = selectorAnd(sel, inReq(LABEL_CLUSTER, ctx.cluster));
    peers.push({ kind: 'selector', match: (l) => selectorMatches(sel, l) });
  });
  let any = false;
  list(o[`${f}Entities`], `${path}.${f}Entities`).forEach((e, i) => {
    const what = typeof e === 'string' ? ENTITIES[e] : undefined;
    if (what === undefined) throw new PolicyError(`${path}.${f}Entities[${i}]: unknown entity ${JSON.stringify(e)}`);
    if (what === 'any') any = true;
    else if (what === 'cluster') {
      peers.push({ kind: 'local-cluster' });
      for (const id of [IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_HEALTH, IDENTITY_INIT, IDENTITY_KUBE_APISERVER]) peers.push({ kind: 'identity', id });
    } else for (const id of what) peers.push({ kind: 'identity', id });
  });
  for (const k of [`${f}CIDR`, `${f}CIDRSet`]) {
    if (list(o[k], `${path}.${k}`).length > 0) peers.push({ kind: 'identity', id: IDENTITY_WORLD });
  }
  for (const k of UNSUPPORTED_PEERS[dir]) if (o[k] !== undefined) ctx.warn(`${path}.${k}: not supported, allows nothing`);
  return { peers: any ? 'any' : peers, ports };
}

function parseMeshNetworkPolicy(spec: Record<string, unknown>, ctx: ParseContext): Omit<ParsedPolicy, 'name' | 'namespace'> {
  onlyKeys(spec, 'spec', ['endpointSelector', 'ingress', 'egress', 'description', 'labels', 'enableDefaultDeny'], ['ingressDeny', 'egressDeny', 'nodeSelector']);
  if (spec.endpointSelector === undefined) throw new PolicyError('spec.endpointSelector: required');
  const endpointSelector = selector(spec.endpointSelector, 'spec.endpointSelector');
  const dd = spec.enableDefaultDeny === undefined ? {} : obj(spec.enableDefaultDeny, 'spec.enableDefaultDeny');
  onlyKeys(dd, 'spec.enableDefaultDeny', ['ingress', 'egress']);
  for (const k of ['ingress', 'egress']) {
    if (dd[k] !== undefined && typeof dd[k] !== 'boolean') throw new PolicyError(`spec.enableDefaultDeny.${k}: must be true or false`);
  }
  const direction = (dir: 'ingress' | 'egress'): ParsedDirection | undefined => {
    const rules = list(spec[dir], `spec.${dir}`);
    if (rules.length === 0) return undefined;
    return { enforce: dd[dir] !== false, rules: rules.map((r, i) => parseMeshRule(r, `spec.${dir}[${i}]`, dir, ctx)) };
  };
  return { endpointSelector, ingress: direction('ingress'), egress: direction('egress') };
}

// ---------------------------------------------------------------------------------------------
// Compilation

const POLICY_KINDS = ['NetworkPolicy', 'MeshNetworkPolicy'];

function ruleKey(identity: number, port: number, protocol: number): string {
  return `${identity}/${protocol}/${port}`;
}

/** Compile policies for local endpoints. Never throws on bad policies: they are skipped and reported. */
export function compilePolicies(input: CompilePoliciesInput): PolicyCompilation {
  const problems: PolicyProblem[] = [];
  const applied: string[] = [];
  const nsObjects = new Map<string, Labels>();
  for (const n of input.namespaces) nsObjects.set(n.metadata.name, isLabels(n.metadata.labels) ? n.metadata.labels : {});
  const namespaceLabels = (ns: string): Labels => ({ ...(nsObjects.get(ns) ?? {}), [LABEL_NAMESPACE_NAME]: ns });

  // Candidates for selector peers: every known non-reserved identity, local endpoints' included.
  const candidates = new Map<number, Labels>();
  for (const [id, l] of input.identities) if (id > IDENTITY_RESERVED_MAX) candidates.set(id, l);
  for (const ep of input.endpoints) if (ep.identity > IDENTITY_RESERVED_MAX && !candidates.has(ep.identity)) candidates.set(ep.identity, ep.labels);
  const candidateIds = [...candidates.keys()].sort((a, b) => a - b);

  const parsed: ParsedPolicy[] = [];
  const sortedPolicies = input.policies
    .filter((p) => POLICY_KINDS.includes(p.kind))
    .map((p) => ({ p, name: `${p.kind} ${p.metadata.namespace ?? 'default'}/${p.metadata.name}` }))
    .sort((a, b) => compareStrings(a.name, b.name));
  for (const { p, name } of sortedPolicies) {
    const namespace = p.metadata.namespace ?? 'default';
    const warnings: string[] = [];
    const ctx: ParseContext = { cluster: input.clusterName, namespace, namespaceLabels, warn: (m) => warnings.push(m) };
    try {
      const spec = obj(p.spec, 'spec');
      const body = p.kind === 'NetworkPolicy' ? parseNetworkPolicy(spec, ctx) : parseMeshNetworkPolicy(spec, ctx);
      parsed.push({ name, namespace, ...body });
      applied.push(name);
      for (const m of warnings) problems.push({ policy: name, severity: 'warning', message: m });
    } catch (err) {
      if (!(err instanceof PolicyError)) throw err;
      problems.push({ policy: name, severity: 'skipped', message: err.message });
    }
  }

  // Peer sets do not depend on the endpoint: resolve each rule once.
  const resolved = new Map<ParsedRule, number[]>();
  const resolve = (rule: ParsedRule): number[] => {
    let ids = resolved.get(rule);
    if (ids) return ids;
    if (rule.peers === 'any') ids = [IDENTITY_ANY];
    else {
      const set = new Set<number>();
      for (const peer of rule.peers) {
        if (peer.kind === 'identity') set.add(peer.id);
        else {
          for (const id of candidateIds) {
            const l = candidates.get(id)!;
            if (peer.kind === 'local-cluster' ? l[LABEL_CLUSTER] === input.clusterName : peer.match(l)) set.add(id);
          }
        }
      }
      ids = [...set];
    }
    resolved.set(rule, ids);
    return ids;
  };

  const endpoints = new Map<string, EndpointPolicy>();
  const sortedEndpoints = [...input.endpoints].sort((a, b) => compareStrings(a.id, b.id));
  for (const ep of sortedEndpoints) {
    const dirs = { ingress: { enforced: false, rules: new Map<string, PolicyRule>() }, egress: { enforced: false, rules: new Map<string, PolicyRule>() } };
    for (const pol of parsed) {
      if (pol.namespace !== ep.namespace || !selectorMatches(pol.endpointSelector, ep.labels)) continue;
      for (const dir of ['ingress', 'egress'] as const) {
        const d = pol[dir];
        if (!d) continue;
        const out = dirs[dir];
        if (d.enforce) out.enforced = true;
        for (const rule of d.rules) {
          const ids = resolve(rule);
          if (ids.length === 0) continue;
          for (const [port, protocol] of expandPorts(rule.ports, dir, ep, (m) => problems.push({ policy: pol.name, severity: 'warning', message: m }))) {
            for (const identity of ids) out.rules.set(ruleKey(identity, port, protocol), { identity, port, protocol });
          }
        }
      }
    }
    endpoints.set(ep.id, {
      ingress: { enforced: dirs.ingress.enforced, rules: dirs.ingress.enforced ? normalizeRules(dirs.ingress.rules) : [] },
      egress: { enforced: dirs.egress.enforced, rules: dirs.egress.enforced ? normalizeRules(dirs.egress.rules) : [] },
    });
  }
  return { endpoints, problems: dedupeProblems(problems), applied };
}

const ANY_PROTOCOLS = [PROTO_TCP, PROTO_UDP, PROTO_SCTP];

/** (port, protocol) pairs of a rule for one endpoint; protocol 0 only with port 0. */
function expandPorts(ports: readonly PortSpec[] | 'all', dir: 'ingress' | 'egress', ep: PolicyEndpoint, warn: (m: string) => void): Array<[number, number]> {
  if (ports === 'all') return [[0, PROTO_ANY]];
  const out: Array<[number, number]> = [];
  const add = (port: number, protocol: number) => {
    if (port === 0) out.push([0, protocol]);
    else if (protocol === PROTO_ANY) for (const p of ANY_PROTOCOLS) out.push([port, p]);
    else out.push([port, protocol]);
  };
  for (const p of ports) {
    if (p.kind === 'named') {
      if (dir === 'egress') {
        warn(`named port "${p.name}" in an egress rule is not supported, it allows nothing`);
        continue;
      }
      const found = (ep.namedPorts?.[p.name] ?? []).filter((np) => p.protocol === PROTO_ANY || np.protocol === p.protocol);
      if (found.length === 0) warn(`named port "${p.name}" is not a port of endpoint ${ep.id}, it allows nothing there`);
      for (const np of found) add(np.port, np.protocol);
      continue;
    }
    if (p.endPort - p.port + 1 > MAX_PORT_RANGE) {
      warn(`port range ${p.port}-${p.endPort} is longer than ${MAX_PORT_RANGE} ports, it allows nothing`);
      continue;
    }
    for (let port = p.port; port <= p.endPort; port++) add(port, p.protocol);
  }
  return out;
}

/** Drop rules another rule covers, then sort by identity, protocol, port. */
function normalizeRules(rules: Map<string, PolicyRule>): PolicyRule[] {
  const out: PolicyRule[] = [];
  for (const r of rules.values()) {
    let covered = false;
    for (const identity of r.identity === IDENTITY_ANY ? [IDENTITY_ANY] : [r.identity, IDENTITY_ANY]) {
      for (const [port, protocol] of [
        [r.port, r.protocol],
        [0, r.protocol],
        [0, PROTO_ANY],
      ]) {
        if ((identity !== r.identity || port !== r.port || protocol !== r.protocol) && rules.has(ruleKey(identity, port, protocol))) covered = true;
      }
    }
    if (!covered) out.push(r);
  }
  return out.sort(compareRules);
}

/** Order of rules in results: identity, protocol, port. */
export function compareRules(a: PolicyRule, b: PolicyRule): number {
  return a.identity - b.identity || a.protocol - b.protocol || a.port - b.port;
}

function dedupeProblems(problems: PolicyProblem[]): PolicyProblem[] {
  const seen = new Map<string, PolicyProblem>();
  for (const p of problems) seen.set(`${p.policy}\0${p.severity}\0${p.message}`, p);
  return [...seen.values()].sort((a, b) => compareStrings(a.policy, b.policy) || compareStrings(a.message, b.message));
}

// ---------------------------------------------------------------------------------------------
// Diffs

/** Are two endpoint policies the same (rules compared in order: results are sorted)? */
export function endpointPolicyEquals(a: EndpointPolicy, b: EndpointPolicy): boolean {
  const dirEq = (x: DirectionPolicy, y: DirectionPolicy) =>
    x.enforced === y.enforced && x.rules.length === y.rules.length && x.rules.every((r, i) => compareRules(r, y.rules[i]) === 0);
  return dirEq(a.ingress, b.ingress) && dirEq(a.egress, b.egress);
}

export interface PolicyDiff {
  /** Endpoints new in `next` or whose policy differs, sorted. */
  readonly changed: string[];
  /** Endpoints in `prev` only, sorted. */
  readonly removed: string[];
}

/** Which endpoints need reprogramming between two compilations. */
export function diffPolicies(prev: ReadonlyMap<string, EndpointPolicy>, next: ReadonlyMap<string, EndpointPolicy>): PolicyDiff {
  const changed: string[] = [];
  const removed: string[] = [];
  for (const [id, p] of next) {
    const old = prev.get(id);
    if (!old || !endpointPolicyEquals(old, p)) changed.push(id);
  }
  for (const id of prev.keys()) if (!next.has(id)) removed.push(id);
  return { changed: changed.sort(compareStrings), removed: removed.sort(compareStrings) };
}

/** Rules to add and to remove to turn one rule list into another (for incremental map updates). */
export function diffRules(prev: readonly PolicyRule[], next: readonly PolicyRule[]): { add: PolicyRule[]; remove: PolicyRule[] } {
  const key = (r: PolicyRule) => ruleKey(r.identity, r.port, r.protocol);
  const before = new Set(prev.map(key));
  const after = new Set(next.map(key));
  return { add: next.filter((r) => !before.has(key(r))), remove: prev.filter((r) => !after.has(key(r))) };
}

/** `identity/PROTO/port` text of a rule, e.g. `65537/TCP/80`, `0/ANY/0`. */
export function formatRule(r: PolicyRule): string {
  const proto = r.protocol === PROTO_TCP ? 'TCP' : r.protocol === PROTO_UDP ? 'UDP' : r.protocol === PROTO_SCTP ? 'SCTP' : r.protocol === PROTO_ANY ? 'ANY' : String(r.protocol);
  return `${r.identity}/${proto}/${r.port}`;
}
