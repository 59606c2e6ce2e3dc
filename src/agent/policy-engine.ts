/**
 * The policy engine: NetworkPolicy and MeshNetworkPolicy → per local endpoint, the (identity,
 * port range, protocol) rules allowed in each direction, kept up to date incrementally.
 *
 * Pure (no store, no clock, no I/O). The agent's policy controller feeds it informer events
 * (policies, namespaces, identities, every pod of the cluster as a peer, local endpoints), then
 * asks `takeDirty()` which local endpoints may have a new policy, reads `endpointPolicy(id)` for
 * each and writes the difference to the datapath, together with `takeCidrChanges()` for the ipcache.
 *
 * Cost: a change costs work proportional to what it can affect, never to the size of the cluster.
 * - A **selector cache** holds each distinct peer selector once (shared by every rule that names it)
 *   with the identities it matches. A new or relabelled identity is evaluated only against the
 *   selectors that can match its namespace (selectors pinned to other namespaces are skipped), and
 *   marks dirty only the endpoints selected by policies using a selector whose match set changed.
 * - A changed policy re-evaluates its endpoint selector against the endpoints of its namespace and
 *   marks dirty exactly the endpoints it selects before and after.
 * - A changed endpoint is matched against the policies of its namespace only.
 * `stats().selectorEvaluations` counts label-selector evaluations, for tests that prove the above.
 *
 * Semantics (DESIGN §1), as compilePolicies documents them, plus:
 * - **ipBlock / fromCIDR(Set) / toCIDR(Set)**: every CIDR and every `except` prefix gets a CIDR
 *   identity (node-local scope, CIDR_IDENTITY_BASE | n, so it can collide neither with cluster
 *   identities `clusterId << 16 | n` (24 bits, the VNI width) nor with reserved ones; it never
 *   travels in a VNI) that the agent puts in the ipcache (takeCidrChanges). A rule on CIDR C except
 *   E admits every CIDR identity whose prefix lies inside C and not inside any of E (the ipcache's
 *   longest match then gives exactly C minus E for addresses outside the mesh), and the identities
 *   of peers (pods) whose IP lies in C minus E, as Kubernetes requires. Not "all of world" any more.
 *   Identities are per label set: a pod outside C that shares its labels (so its identity) with a
 *   pod inside C is admitted too. Node addresses are not matched by CIDR rules.
 * - The `world` entity means IDENTITY_WORLD and every CIDR identity (both are outside the mesh).
 * - **Named ports on egress** resolve against the destination pods' named ports (from the peers'
 *   `namedPorts`, per identity); on ingress against the local endpoint's own, as before.
 * - **Port ranges** (`endPort`) of any width stay ranges (`PolicyRule.endPort`); the datapath tiles
 *   them into a few LPM prefixes.
 * - **Fail closed**: a policy with a field the datapath cannot enforce (unsupportedPolicyField) or
 *   a malformed part selects its endpoints in that direction (both when the field has none) with no
 *   rules from it, so they deny there, and is reported as a `denied` problem. A policy whose
 *   endpoint selector itself cannot be read (or whose spec is no object) cannot tell its endpoints:
 *   it selects every endpoint of its namespace, denying both directions.
 */
import { LABEL_CLUSTER, LABEL_NAMESPACE } from '../defaults.js';
import type { KubeObject } from '../cluster/types.js';
import { unsupportedPolicyField } from '../cluster/policy-schema.js';
import { cidrContains, formatCidr, parseCidr, parseIp, type Cidr } from '../util/cidr.js';
import { policyEntryCount } from '../datapath/policy-keys.js';
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
import { compareStrings, isLabels, labelsEqual, parseSelector, SelectorError, selectorAnd, selectorMatches, selectorNames, splitSelector, type Labels, type Selector, type SelectorRequirement } from './labels.js';
import { internNamedPorts } from './compact.js';
import type { DirectionPolicy, EndpointPolicy, NamedPort, PolicyEndpoint, PolicyProblem, PolicyRule } from './policy.js';

/** Identity 0 in a rule: any peer identity. */
export const IDENTITY_ANY = 0;
export const PROTO_ANY = 0;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_SCTP = 132;
/** Namespace label Kubernetes sets on every namespace. */
export const LABEL_NAMESPACE_NAME = 'kubernetes.io/metadata.name';
/**
 * CIDR identities are CIDR_IDENTITY_BASE | n, n in 1..CIDR_IDENTITY_MAX: bit 24 set, above every
 * 24-bit cluster identity and every reserved one. Node-local: each agent numbers its own.
 */
export const CIDR_IDENTITY_BASE = 0x01000000;
export const CIDR_IDENTITY_MAX = 0x00ffffff;

/** Is this a CIDR identity (node-local scope)? */
export function isCidrIdentity(id: number): boolean {
  return id > CIDR_IDENTITY_BASE && id <= CIDR_IDENTITY_BASE + CIDR_IDENTITY_MAX;
}

export interface PolicyEngineOptions {
  /** This cluster's name: selectors without the cluster label match it only. */
  readonly clusterName: string;
  /**
   * CIDR identities already programmed (prefix `a.b.c.d/n` → identity), e.g. read back from the
   * pinned ipcache after a restart: a prefix that is needed again keeps its number, so a restarted
   * agent rewrites nothing. They count as already handed out: the first takeCidrChanges() after
   * the initial sync lists those no policy needs any more under `remove`. Default none.
   */
  readonly cidrIdentities?: ReadonlyMap<string, number>;
  /**
   * Most mesh_policy entries one endpoint may take in one direction (policyEntryCount). A direction
   * that would need more denies everything instead and is reported. Default: no limit.
   */
  readonly maxEntriesPerDirection?: number;
}

/** A pod of the cluster as a policy peer (for ipBlock and egress named ports). */
export interface PolicyPeer {
  readonly identity: number;
  /** Container port name → ports. */
  readonly namedPorts: Readonly<Record<string, readonly NamedPort[]>>;
}

export interface PolicyEngineStats {
  /** Label-selector evaluations so far (peer selectors against identities, endpoint selectors against endpoints). */
  readonly selectorEvaluations: number;
  /** Distinct peer selectors in the cache. */
  readonly selectors: number;
  readonly policies: number;
  readonly cidrIdentities: number;
}

// ---------------------------------------------------------------------------------------------
// Parsed form: data only, so equal selectors share one cache entry.

type PortSpec = { readonly kind: 'number'; readonly port: number; readonly endPort: number; readonly protocol: number } | { readonly kind: 'named'; readonly name: string; readonly protocol: number };

/** A peer selector the cache evaluates. */
type PeerSelector =
  /** Identity labels. */
  | { readonly kind: 'labels'; readonly sel: Selector }
  /** Identity labels match `pod` and the labels of the identity's namespace match `ns`. */
  | { readonly kind: 'ns'; readonly pod: Selector; readonly ns: Selector }
  /** CIDR identities inside `cidr` and outside `except`, and peers with an address there. */
  | { readonly kind: 'cidr'; readonly cidr: Cidr; readonly except: readonly Cidr[] }
  /** IDENTITY_WORLD and every CIDR identity. */
  | { readonly kind: 'world' };

interface ParsedPeers {
  readonly fixed: readonly number[];
  /** Keys into the selector cache. */
  readonly selectors: readonly string[];
}

interface ParsedRule {
  readonly peers: ParsedPeers | 'any';
  /** 'all' = any protocol and port. */
  readonly ports: readonly PortSpec[] | 'all';
}

interface ParsedDirection {
  /** Sets default-deny for selected endpoints. */
  readonly enforce: boolean;
  readonly rules: readonly ParsedRule[];
}

interface ParsedPolicy {
  /** `<Kind> <ns>/<name>`. */
  readonly key: string;
  readonly namespace: string;
  readonly endpointSelector: Selector;
  readonly ingress?: ParsedDirection;
  readonly egress?: ParsedDirection;
  readonly selectors: ReadonlyMap<string, PeerSelector>;
  /** Has an egress rule with a named port (depends on peers' named ports). */
  readonly egressNamedPorts: boolean;
  readonly problems: readonly PolicyProblem[];
  /** Parsed without a denied problem. */
  readonly applied: boolean;
}

class PolicyError extends Error {}

// ---------------------------------------------------------------------------------------------
// Reading untyped JSON

function obj(v: unknown, path: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new PolicyError(`${path}: must be an object`);
  return v as Record<string, unknown>;
}

function list(v: unknown, path: string): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new PolicyError(`${path}: must be a list`);
  return v;
}

function selector(v: unknown, path: string): Selector {
  try {
    return parseSelector(v, path);
  } catch (err) {
    if (err instanceof SelectorError) throw new PolicyError(err.message);
    throw err;
  }
}

const inReq = (key: string, value: string): SelectorRequirement => ({ key, operator: 'In', values: [value] });

function canonicalSelector(sel: Selector): string {
  const reqs = sel.requirements.map((r) => ({ k: r.key, o: r.operator, v: [...r.values].sort(compareStrings) }));
  reqs.sort((a, b) => compareStrings(a.k, b.k) || compareStrings(a.o, b.o) || compareStrings(a.v.join('\0'), b.v.join('\0')));
  return JSON.stringify(reqs);
}

function selectorKey(s: PeerSelector): string {
  switch (s.kind) {
    case 'labels':
      return `labels:${canonicalSelector(s.sel)}`;
    case 'ns':
      return `ns:${canonicalSelector(s.pod)}|${canonicalSelector(s.ns)}`;
    case 'cidr':
      return `cidr:${formatCidr(s.cidr)}${s.except.map((e) => `!${formatCidr(e)}`).sort(compareStrings).join('')}`;
    case 'world':
      return 'world';
  }
}

function cidrInside(outer: Cidr, inner: Cidr): boolean {
  return inner.prefix >= outer.prefix && cidrContains(outer, inner.network);
}

function cidrValue(v: unknown, path: string): Cidr | 'ipv6' {
  if (typeof v !== 'string' || v === '') throw new PolicyError(`${path}: required`);
  if (v.includes(':')) return 'ipv6';
  const c = parseCidr(v);
  if (!c) throw new PolicyError(`${path}: ${JSON.stringify(v)} is not an IPv4 CIDR with zero host bits`);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Parsing

interface ParseContext {
  readonly cluster: string;
  readonly namespace: string;
  readonly warn: (msg: string) => void;
  readonly selectors: Map<string, PeerSelector>;
  egressNamedPorts: boolean;
}

function useSelector(ctx: ParseContext, s: PeerSelector): string {
  const k = selectorKey(s);
  ctx.selectors.set(k, s);
  return k;
}

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

function portSpec(portRaw: unknown, endPortRaw: unknown, protocol: number, path: string, allowZero: boolean, dir: 'ingress' | 'egress', ctx: ParseContext): PortSpec {
  const port = portRaw === undefined || portRaw === null ? 0 : portValue(portRaw, `${path}.port`, allowZero);
  if (typeof port === 'string') {
    if (endPortRaw !== undefined) throw new PolicyError(`${path}.endPort: not allowed with a named port`);
    if (dir === 'egress') ctx.egressNamedPorts = true;
    return { kind: 'named', name: port, protocol };
  }
  let endPort = port;
  if (endPortRaw !== undefined && endPortRaw !== null) {
    const e = portValue(endPortRaw, `${path}.endPort`, false);
    if (typeof e === 'string' || port === 0 || e < port) throw new PolicyError(`${path}.endPort: must be a number not below port`);
    endPort = e;
  }
  return { kind: 'number', port, endPort, protocol };
}

function cidrPeer(cidrRaw: unknown, exceptRaw: unknown, path: string, ctx: ParseContext): string | null {
  const cidr = cidrValue(cidrRaw, `${path}.cidr`);
  const except: Cidr[] = [];
  list(exceptRaw, `${path}.except`).forEach((e, i) => {
    const c = cidrValue(e, `${path}.except[${i}]`);
    if (c === 'ipv6') return;
    if (cidr !== 'ipv6' && !(cidrInside(cidr, c) && c.prefix > cidr.prefix)) throw new PolicyError(`${path}.except[${i}]: ${formatCidr(c)} is not inside ${formatCidr(cidr)}`);
    except.push(c);
  });
  if (cidr === 'ipv6') {
    ctx.warn(`${path}.cidr: IPv6 is not supported by the datapath, it allows nothing`);
    return null;
  }
  return useSelector(ctx, { kind: 'cidr', cidr, except });
}

function parseNetworkPolicyPeer(raw: unknown, path: string, ctx: ParseContext): { fixed: number[]; selectors: string[] } {
  const o = obj(raw, path);
  if (o.ipBlock !== undefined) {
    if (o.podSelector !== undefined || o.namespaceSelector !== undefined) throw new PolicyError(`${path}.ipBlock: cannot be combined with podSelector or namespaceSelector`);
    const b = obj(o.ipBlock, `${path}.ipBlock`);
    const k = cidrPeer(b.cidr, b.except, `${path}.ipBlock`, ctx);
    return { fixed: [], selectors: k ? [k] : [] };
  }
  if (o.podSelector === undefined && o.namespaceSelector === undefined) throw new PolicyError(`${path}: needs podSelector, namespaceSelector or ipBlock`);
  const pods = selector(o.podSelector, `${path}.podSelector`);
  if (o.namespaceSelector === undefined) {
    let sel = selectorAnd(pods, inReq(LABEL_NAMESPACE, ctx.namespace));
    if (!selectorNames(sel, LABEL_CLUSTER)) sel = selectorAnd(sel, inReq(LABEL_CLUSTER, ctx.cluster));
    return { fixed: [], selectors: [useSelector(ctx, { kind: 'labels', sel })] };
  }
  const nsSel = selector(o.namespaceSelector, `${path}.namespaceSelector`);
  // A cluster requirement in the namespaceSelector is about the peer's cluster (Cilium's examples).
  const { on: clusterPart, rest: nsPart } = splitSelector(nsSel, LABEL_CLUSTER);
  let sel = selectorAnd(pods, ...clusterPart.requirements);
  if (!selectorNames(sel, LABEL_CLUSTER)) sel = selectorAnd(sel, inReq(LABEL_CLUSTER, ctx.cluster));
  const key = nsPart.requirements.length === 0 ? useSelector(ctx, { kind: 'labels', sel }) : useSelector(ctx, { kind: 'ns', pod: sel, ns: nsPart });
  return { fixed: [], selectors: [key] };
}

function parseNetworkPolicyPorts(raw: unknown, path: string, dir: 'ingress' | 'egress', ctx: ParseContext): PortSpec[] | 'all' {
  const ports = list(raw, path);
  if (ports.length === 0) return 'all';
  return ports.map((p, i) => {
    const o = obj(p, `${path}[${i}]`);
    if (o.protocol === 'ANY') throw new PolicyError(`${path}[${i}].protocol: must be TCP, UDP or SCTP`);
    return portSpec(o.port, o.endPort, protocolNumber(o.protocol, `${path}[${i}].protocol`, PROTO_TCP), `${path}[${i}]`, false, dir, ctx);
  });
}

function mergePeers(parts: Array<{ fixed: number[]; selectors: string[] }>): ParsedPeers {
  return { fixed: [...new Set(parts.flatMap((p) => p.fixed))], selectors: [...new Set(parts.flatMap((p) => p.selectors))] };
}

type Dir = 'ingress' | 'egress';
const DIRS: readonly Dir[] = ['ingress', 'egress'];

/** Parse one direction; a malformed or unsupported part makes it deny-all and a `denied` problem. */
function guarded(dir: Dir, ctx: ParseContext, problems: PolicyProblem[], key: string, fn: () => ParsedDirection | undefined): ParsedDirection | undefined {
  const selectors = new Map(ctx.selectors);
  const named = ctx.egressNamedPorts;
  try {
    return fn();
  } catch (err) {
    if (!(err instanceof PolicyError)) throw err;
    // Selectors of the rules that were dropped are not used.
    ctx.selectors.clear();
    for (const [k, v] of selectors) ctx.selectors.set(k, v);
    ctx.egressNamedPorts = named;
    problems.push({ policy: key, severity: 'denied', message: `${err.message}; the endpoints it selects deny all ${dir}` });
    return { enforce: true, rules: [] };
  }
}

function parseNetworkPolicy(spec: Record<string, unknown>, ctx: ParseContext, key: string, problems: PolicyProblem[], failed: ReadonlySet<Dir>): Pick<ParsedPolicy, 'ingress' | 'egress'> {
  const types = ((): Dir[] | null => {
    if (spec.policyTypes === undefined) return list(spec.egress, 'spec.egress').length > 0 ? ['ingress', 'egress'] : ['ingress'];
    return list(spec.policyTypes, 'spec.policyTypes').map((t, i) => {
      if (t !== 'Ingress' && t !== 'Egress') throw new PolicyError(`spec.policyTypes[${i}]: must be Ingress or Egress`);
      return t === 'Ingress' ? 'ingress' : 'egress';
    });
  })();
  const out: { ingress?: ParsedDirection; egress?: ParsedDirection } = {};
  for (const dir of DIRS) {
    const peersKey = dir === 'ingress' ? 'from' : 'to';
    const selected = types!.includes(dir);
    if (failed.has(dir)) {
      out[dir] = { enforce: true, rules: [] };
      continue;
    }
    if (!selected) {
      if (list(spec[dir], `spec.${dir}`).length > 0) ctx.warn(`spec.${dir}: ignored, policyTypes does not include ${dir === 'ingress' ? 'Ingress' : 'Egress'}`);
      continue;
    }
    out[dir] = guarded(dir, ctx, problems, key, () => ({
      enforce: true,
      rules: list(spec[dir], `spec.${dir}`).map((r, i) => {
        const path = `spec.${dir}[${i}]`;
        const o = obj(r, path);
        const peersRaw = list(o[peersKey], `${path}.${peersKey}`);
        const peers = peersRaw.length === 0 ? 'any' : mergePeers(peersRaw.map((p, j) => parseNetworkPolicyPeer(p, `${path}.${peersKey}[${j}]`, ctx)));
        return { peers, ports: parseNetworkPolicyPorts(o.ports, `${path}.ports`, dir, ctx) };
      }),
    }));
  }
  return out;
}

const ENTITIES: Record<string, number[] | 'any' | 'cluster' | 'world'> = {
  all: 'any',
  world: 'world',
  host: [IDENTITY_HOST],
  'remote-node': [IDENTITY_REMOTE_NODE],
  health: [IDENTITY_HEALTH],
  init: [IDENTITY_INIT],
  unmanaged: [IDENTITY_UNMANAGED],
  'kube-apiserver': [IDENTITY_KUBE_APISERVER],
  cluster: 'cluster',
};

function parseMeshPorts(raw: unknown, path: string, dir: Dir, ctx: ParseContext): PortSpec[] | 'all' {
  const entries = list(raw, path);
  if (entries.length === 0) return 'all';
  const out: PortSpec[] = [];
  entries.forEach((e, i) => {
    const p = `${path}[${i}]`;
    const o = obj(e, p);
    const ports = list(o.ports, `${p}.ports`);
    if (ports.length === 0) out.push({ kind: 'number', port: 0, endPort: 0, protocol: PROTO_ANY });
    ports.forEach((x, j) => {
      const q = `${p}.ports[${j}]`;
      const po = obj(x, q);
      out.push(portSpec(po.port, po.endPort, protocolNumber(po.protocol, `${q}.protocol`, PROTO_ANY), q, true, dir, ctx));
    });
  });
  return out;
}

function parseMeshRule(raw: unknown, path: string, dir: Dir, ctx: ParseContext): ParsedRule {
  const o = obj(raw, path);
  const f = dir === 'ingress' ? 'from' : 'to';
  const peerKeys = [`${f}Endpoints`, `${f}Entities`, `${f}CIDR`, `${f}CIDRSet`];
  const ports = parseMeshPorts(o.toPorts, `${path}.toPorts`, dir, ctx);
  // An empty list names no peers, as if the field were absent.
  const hasPeerField = peerKeys.some((k) => o[k] !== undefined && o[k] !== null && !(Array.isArray(o[k]) && (o[k] as unknown[]).length === 0));
  if (!hasPeerField) return { peers: o.toPorts !== undefined ? 'any' : { fixed: [], selectors: [] }, ports };
  const fixed: number[] = [];
  const selectors: string[] = [];
  list(o[`${f}Endpoints`], `${path}.${f}Endpoints`).forEach((s, i) => {
    let sel = selector(s, `${path}.${f}Endpoints[${i}]`);
    if (!selectorNames(sel, LABEL_NAMESPACE)) sel = selectorAnd(sel, inReq(LABEL_NAMESPACE, ctx.namespace));
    if (!selectorNames(sel, LABEL_CLUSTER)) sel = selectorAnd(sel, inReq(LABEL_CLUSTER, ctx.cluster));
    selectors.push(useSelector(ctx, { kind: 'labels', sel }));
  });
  let any = false;
  list(o[`${f}Entities`], `${path}.${f}Entities`).forEach((e, i) => {
    const what = typeof e === 'string' ? ENTITIES[e] : undefined;
    if (what === undefined) throw new PolicyError(`${path}.${f}Entities[${i}]: unknown entity ${JSON.stringify(e)}`);
    if (what === 'any') any = true;
    else if (what === 'world') selectors.push(useSelector(ctx, { kind: 'world' }));
    else if (what === 'cluster') {
      selectors.push(useSelector(ctx, { kind: 'labels', sel: { requirements: [inReq(LABEL_CLUSTER, ctx.cluster)] } }));
      fixed.push(IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_HEALTH, IDENTITY_INIT, IDENTITY_KUBE_APISERVER);
    } else fixed.push(...what);
  });
  list(o[`${f}CIDR`], `${path}.${f}CIDR`).forEach((c, i) => {
    const k = cidrPeer(c, undefined, `${path}.${f}CIDR[${i}]`, ctx);
    if (k) selectors.push(k);
  });
  list(o[`${f}CIDRSet`], `${path}.${f}CIDRSet`).forEach((c, i) => {
    const s = obj(c, `${path}.${f}CIDRSet[${i}]`);
    const k = cidrPeer(s.cidr, s.except, `${path}.${f}CIDRSet[${i}]`, ctx);
    if (k) selectors.push(k);
  });
  return { peers: any ? 'any' : { fixed: [...new Set(fixed)], selectors: [...new Set(selectors)] }, ports };
}

function parseMeshNetworkPolicy(spec: Record<string, unknown>, ctx: ParseContext, key: string, problems: PolicyProblem[], failed: ReadonlySet<Dir>): Pick<ParsedPolicy, 'ingress' | 'egress'> {
  const dd = spec.enableDefaultDeny === undefined ? {} : obj(spec.enableDefaultDeny, 'spec.enableDefaultDeny');
  for (const k of DIRS) {
    if (dd[k] !== undefined && typeof dd[k] !== 'boolean') throw new PolicyError(`spec.enableDefaultDeny.${k}: must be true or false`);
  }
  const out: { ingress?: ParsedDirection; egress?: ParsedDirection } = {};
  for (const dir of DIRS) {
    if (failed.has(dir)) {
      out[dir] = { enforce: true, rules: [] };
      continue;
    }
    out[dir] = guarded(dir, ctx, problems, key, () => {
      const rules = list(spec[dir], `spec.${dir}`);
      if (rules.length === 0) return undefined;
      return { enforce: dd[dir] !== false, rules: rules.map((r, i) => parseMeshRule(r, `spec.${dir}[${i}]`, dir, ctx)) };
    });
  }
  return out;
}

/** Directions an unsupported field at `path` is about: its own, or both for a spec-wide field. */
function fieldDirections(path: string): Dir[] {
  if (/^spec\.ingress(Deny)?(\[|\.|$)/.test(path)) return ['ingress'];
  if (/^spec\.egress(Deny)?(\[|\.|$)/.test(path)) return ['egress'];
  return ['ingress', 'egress'];
}

const POLICY_KINDS = ['NetworkPolicy', 'MeshNetworkPolicy'];

function policyKeyOf(kind: string, namespace: string, name: string): string {
  return `${kind} ${namespace}/${name}`;
}

/** Parse one policy object. Never throws on bad input: it fails closed and reports. */
function parsePolicy(p: KubeObject, cluster: string): ParsedPolicy {
  const namespace = p.metadata.namespace ?? 'default';
  const key = policyKeyOf(p.kind, namespace, p.metadata.name);
  const problems: PolicyProblem[] = [];
  const ctx: ParseContext = { cluster, namespace, warn: (m) => problems.push({ policy: key, severity: 'warning', message: m }), selectors: new Map(), egressNamedPorts: false };
  const isNp = p.kind === 'NetworkPolicy';
  const none = (message: string): ParsedPolicy => ({
    key,
    namespace,
    endpointSelector: { requirements: [] },
    ingress: { enforce: true, rules: [] },
    egress: { enforce: true, rules: [] },
    selectors: new Map(),
    egressNamedPorts: false,
    problems: [{ policy: key, severity: 'denied', message: `${message}; its endpoints cannot be told, so every endpoint of namespace ${namespace} denies all ingress and egress` }],
    applied: false,
  });
  if (typeof p.spec !== 'object' || p.spec === null || Array.isArray(p.spec)) return none('spec: must be an object');
  const spec = p.spec as Record<string, unknown>;
  const selField = isNp ? 'podSelector' : 'endpointSelector';
  if (spec[selField] === undefined) return none(`spec.${selField}: required`);
  let endpointSelector: Selector;
  try {
    endpointSelector = selector(spec[selField], `spec.${selField}`);
  } catch (err) {
    if (err instanceof PolicyError) return none(err.message);
    throw err;
  }
  const failed = new Set<Dir>();
  const field = unsupportedPolicyField(isNp ? 'NetworkPolicy' : 'MeshNetworkPolicy', spec);
  if (field) {
    const dirs = fieldDirections(field);
    for (const d of dirs) failed.add(d);
    problems.push({ policy: key, severity: 'denied', message: `${field}: not supported; the endpoints it selects deny all ${dirs.join(' and ')}` });
  }
  let body: Pick<ParsedPolicy, 'ingress' | 'egress'>;
  try {
    body = isNp ? parseNetworkPolicy(spec, ctx, key, problems, failed) : parseMeshNetworkPolicy(spec, ctx, key, problems, failed);
  } catch (err) {
    if (!(err instanceof PolicyError)) throw err;
    problems.push({ policy: key, severity: 'denied', message: `${err.message}; the endpoints it selects deny all ingress and egress` });
    body = { ingress: { enforce: true, rules: [] }, egress: { enforce: true, rules: [] } };
  }
  return {
    key,
    namespace,
    endpointSelector,
    ...body,
    selectors: ctx.selectors,
    egressNamedPorts: ctx.egressNamedPorts,
    problems,
    applied: !problems.some((x) => x.severity !== 'warning'),
  };
}

// ---------------------------------------------------------------------------------------------
// The engine

interface CachedSelector {
  readonly key: string;
  readonly sel: PeerSelector;
  /** Identities it matches now. */
  readonly ids: Set<number>;
  /** Policies using it. */
  readonly users: Set<string>;
  /** Namespaces its identities can be in; null = any. */
  readonly namespaces: readonly string[] | null;
  /** cidr: peers inside, per identity. */
  readonly podRefs: Map<number, number>;
}

interface PrefixEntry {
  readonly cidr: Cidr;
  readonly id: number;
  refs: number;
}

/** What a peer contributes, shared by all peers of one identity and named-port set (refs: how many). */
interface PeerRecord {
  refs: number;
  readonly identity: number;
  readonly namedPorts: Readonly<Record<string, readonly NamedPort[]>>;
}

interface Computed {
  readonly policy: EndpointPolicy;
  readonly warnings: readonly PolicyProblem[];
}

interface RawRule {
  identity: number;
  protocol: number;
  port: number;
  endPort: number;
}

const ANY_PROTOCOLS = [PROTO_TCP, PROTO_UDP, PROTO_SCTP];
const UNENFORCED: DirectionPolicy = { enforced: false, rules: [] };

function addTo<K, V>(m: Map<K, Set<V>>, k: K, v: V): void {
  let s = m.get(k);
  if (!s) m.set(k, (s = new Set()));
  s.add(v);
}

function removeFrom<K, V>(m: Map<K, Set<V>>, k: K, v: V): void {
  const s = m.get(k);
  if (!s) return;
  s.delete(v);
  if (s.size === 0) m.delete(k);
}

function namespacesOf(sel: PeerSelector): string[] | null {
  const pick = (s: Selector, key: string): string[] | null => {
    const r = s.requirements.find((x) => x.key === key && x.operator === 'In');
    return r ? [...r.values] : null;
  };
  if (sel.kind === 'labels') return pick(sel.sel, LABEL_NAMESPACE);
  if (sel.kind === 'ns') return pick(sel.pod, LABEL_NAMESPACE) ?? pick(sel.ns, LABEL_NAMESPACE_NAME);
  return null;
}

function namedPortsEqual(a: PolicyPeer['namedPorts'], b: PolicyPeer['namedPorts']): boolean {
  const norm = (x: PolicyPeer['namedPorts']) =>
    JSON.stringify(
      Object.keys(x)
        .sort(compareStrings)
        .map((k) => [k, x[k].map((p) => `${p.port}/${p.protocol}`).sort(compareStrings)]),
    );
  return norm(a) === norm(b);
}

/**
 * Incremental policy computation for one node's local endpoints; see the module comment for the
 * contract. Not thread-safe, no I/O. All `upsert*` calls are idempotent: re-stating what the
 * engine already holds marks nothing dirty.
 */
export class PolicyEngine {
  private readonly cluster: string;
  private readonly maxEntries: number;
  private evaluations = 0;

  private readonly policies = new Map<string, ParsedPolicy>();
  private readonly policySpecs = new Map<string, string>();
  private readonly policiesByNs = new Map<string, Set<string>>();
  private readonly selected = new Map<string, Set<string>>();
  private readonly egressNamedPortPolicies = new Set<string>();

  private readonly namespaces = new Map<string, Labels>();

  private readonly identities = new Map<number, Labels>();
  private readonly identitiesByNs = new Map<string, Set<number>>();

  private readonly selectors = new Map<string, CachedSelector>();
  private readonly selectorsByNs = new Map<string, Set<CachedSelector>>();
  private readonly selectorsAnyNs = new Set<CachedSelector>();
  private readonly cidrSelectors = new Set<CachedSelector>();
  private readonly worldSelectors = new Set<CachedSelector>();
  private readonly selectorsOfId = new Map<number, Set<CachedSelector>>();

  private readonly peers = new Map<string, PeerRecord>();
  /** identity → shared port set → the one PeerRecord of both (a peer costs a map entry). */
  private readonly peerRecords = new Map<number, Map<PolicyPeer['namedPorts'], PeerRecord>>();
  /** identity → port name → `port/proto` → how many peers of that identity have it. */
  private readonly namedPortsById = new Map<number, Map<string, Map<string, number>>>();
  /** port name → identities that have a peer with that name. */
  private readonly idsByPortName = new Map<string, Set<number>>();

  private readonly endpoints = new Map<string, PolicyEndpoint>();
  private readonly endpointsByNs = new Map<string, Set<string>>();
  private readonly policiesOf = new Map<string, Set<string>>();
  private readonly computed = new Map<string, Computed>();
  private readonly dirty = new Set<string>();

  private readonly prefixes = new Map<string, PrefixEntry>();
  private readonly usedCidrIds = new Set<number>();
  private nextCidr = 1;
  /** What takeCidrChanges has handed out: prefix → identity. */
  private readonly emitted = new Map<string, number>();
  private readonly touchedPrefixes = new Set<string>();

  constructor(opts: PolicyEngineOptions) {
    this.cluster = opts.clusterName;
    this.maxEntries = opts.maxEntriesPerDirection ?? Infinity;
    for (const [prefix, id] of opts.cidrIdentities ?? []) {
      if (!isCidrIdentity(id) || !parseCidr(prefix) || this.usedCidrIds.has(id)) continue;
      this.emitted.set(prefix, id);
      this.touchedPrefixes.add(prefix);
      this.usedCidrIds.add(id);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Policies

  /** Add or replace a NetworkPolicy or MeshNetworkPolicy (other kinds are ignored). */
  upsertPolicy(obj: KubeObject): void {
    if (!POLICY_KINDS.includes(obj.kind)) return;
    const namespace = obj.metadata.namespace ?? 'default';
    const key = policyKeyOf(obj.kind, namespace, obj.metadata.name);
    const fingerprint = JSON.stringify(obj.spec ?? null);
    if (this.policySpecs.get(key) === fingerprint) return;
    const parsed = parsePolicy({ ...obj, metadata: { ...obj.metadata, namespace } }, this.cluster);
    const old = this.policies.get(key);
    // Acquire the new selectors before releasing the old ones: shared ones stay evaluated. The user
    // is this policy in both, so a selector the new version still has is not released.
    for (const [k, s] of parsed.selectors) this.acquireSelector(k, s, key);
    if (old) for (const k of old.selectors.keys()) if (!parsed.selectors.has(k)) this.releaseSelector(k, key);
    this.policies.set(key, parsed);
    this.policySpecs.set(key, fingerprint);
    addTo(this.policiesByNs, namespace, key);
    if (parsed.egressNamedPorts) this.egressNamedPortPolicies.add(key);
    else this.egressNamedPortPolicies.delete(key);

    const before = this.selected.get(key) ?? new Set<string>();
    const after = new Set<string>();
    for (const id of this.endpointsByNs.get(namespace) ?? []) if (this.policySelects(parsed, this.endpoints.get(id)!)) after.add(id);
    for (const id of before) if (!after.has(id)) removeFrom(this.policiesOf, id, key);
    for (const id of after) addTo(this.policiesOf, id, key);
    this.selected.set(key, after);
    for (const id of before) this.markDirty(id);
    for (const id of after) this.markDirty(id);
  }

  deletePolicy(kind: string, namespace: string, name: string): void {
    const key = policyKeyOf(kind, namespace, name);
    const old = this.policies.get(key);
    if (!old) return;
    for (const k of old.selectors.keys()) this.releaseSelector(k, key);
    this.policies.delete(key);
    this.policySpecs.delete(key);
    removeFrom(this.policiesByNs, namespace, key);
    this.egressNamedPortPolicies.delete(key);
    for (const id of this.selected.get(key) ?? []) {
      removeFrom(this.policiesOf, id, key);
      this.markDirty(id);
    }
    this.selected.delete(key);
  }

  // -------------------------------------------------------------------------------------------
  // Namespaces (labels for namespaceSelector)

  upsertNamespace(obj: KubeObject): void {
    const labels = isLabels(obj.metadata.labels) ? { ...obj.metadata.labels } : {};
    const old = this.namespaces.get(obj.metadata.name);
    if (old && labelsEqual(old, labels)) return;
    this.namespaces.set(obj.metadata.name, labels);
    this.namespaceChanged(obj.metadata.name);
  }

  deleteNamespace(name: string): void {
    if (!this.namespaces.delete(name)) return;
    this.namespaceChanged(name);
  }

  private namespaceLabels(ns: string): Labels {
    return { ...(this.namespaces.get(ns) ?? {}), [LABEL_NAMESPACE_NAME]: ns };
  }

  private namespaceChanged(ns: string): void {
    const sels = [...(this.selectorsByNs.get(ns) ?? []), ...this.selectorsAnyNs].filter((s) => s.sel.kind === 'ns');
    const changed = new Set<CachedSelector>();
    for (const id of this.identitiesByNs.get(ns) ?? []) {
      const labels = this.identities.get(id)!;
      for (const s of sels) if (this.setMatch(s, id, this.matches(s.sel, labels))) changed.add(s);
    }
    this.selectorsChanged(changed);
  }

  // -------------------------------------------------------------------------------------------
  // Identities (every known one, local and remote clusters')

  upsertIdentity(id: number, labels: Labels): void {
    const old = this.identities.get(id);
    if (old && labelsEqual(old, labels)) return;
    if (old) removeFrom(this.identitiesByNs, old[LABEL_NAMESPACE] ?? '', id);
    this.identities.set(id, { ...labels });
    const ns = labels[LABEL_NAMESPACE] ?? '';
    addTo(this.identitiesByNs, ns, id);
    const now = new Set<CachedSelector>();
    if (id > IDENTITY_RESERVED_MAX) for (const s of [...(this.selectorsByNs.get(ns) ?? []), ...this.selectorsAnyNs]) if (this.matches(s.sel, labels)) now.add(s);
    const changed = new Set<CachedSelector>();
    for (const s of [...(this.selectorsOfId.get(id) ?? [])]) if ((s.sel.kind === 'labels' || s.sel.kind === 'ns') && !now.has(s) && this.setMatch(s, id, false)) changed.add(s);
    for (const s of now) if (this.setMatch(s, id, true)) changed.add(s);
    this.selectorsChanged(changed);
  }

  deleteIdentity(id: number): void {
    const old = this.identities.get(id);
    if (!old) return;
    this.identities.delete(id);
    removeFrom(this.identitiesByNs, old[LABEL_NAMESPACE] ?? '', id);
    const changed = new Set<CachedSelector>();
    for (const s of [...(this.selectorsOfId.get(id) ?? [])]) if ((s.sel.kind === 'labels' || s.sel.kind === 'ns') && this.setMatch(s, id, false)) changed.add(s);
    this.selectorsChanged(changed);
  }

  // -------------------------------------------------------------------------------------------
  // Peers: every pod of the cluster (ipBlock matching, egress named ports)

  upsertPeer(ip: string, peer: PolicyPeer): void {
    const old = this.peers.get(ip);
    // Equal port sets are one shared object, so a re-stated peer compares by reference.
    const ports = internNamedPorts(peer.namedPorts);
    if (old && old.identity === peer.identity && (old.namedPorts === ports || namedPortsEqual(old.namedPorts, ports))) return;
    const n = parseIp(ip);
    if (n === null) return;
    if (old) this.removePeer(ip, old);
    let byPorts = this.peerRecords.get(peer.identity);
    if (!byPorts) this.peerRecords.set(peer.identity, (byPorts = new Map()));
    let rec = byPorts.get(ports);
    if (!rec) byPorts.set(ports, (rec = { refs: 0, identity: peer.identity, namedPorts: ports }));
    rec.refs++;
    this.peers.set(ip, rec);
    const changed = new Set<CachedSelector>();
    for (const s of this.cidrSelectors) if (this.peerRef(s, n, rec, 1)) changed.add(s);
    this.selectorsChanged(changed);
    this.namedPortsRef(rec, 1);
  }

  deletePeer(ip: string): void {
    const old = this.peers.get(ip);
    if (old) this.removePeer(ip, old);
  }

  private removePeer(ip: string, rec: PeerRecord): void {
    this.peers.delete(ip);
    if (--rec.refs === 0) {
      const byPorts = this.peerRecords.get(rec.identity)!;
      byPorts.delete(rec.namedPorts);
      if (byPorts.size === 0) this.peerRecords.delete(rec.identity);
    }
    const n = parseIp(ip)!;
    const changed = new Set<CachedSelector>();
    for (const s of this.cidrSelectors) if (this.peerRef(s, n, rec, -1)) changed.add(s);
    this.selectorsChanged(changed);
    this.namedPortsRef(rec, -1);
  }

  /** Count a peer in or out of a cidr selector; true when its match set changed. */
  private peerRef(s: CachedSelector, ip: number, rec: PeerRecord, delta: 1 | -1): boolean {
    const sel = s.sel as Extract<PeerSelector, { kind: 'cidr' }>;
    if (!cidrContains(sel.cidr, ip) || sel.except.some((e) => cidrContains(e, ip))) return false;
    const n = (s.podRefs.get(rec.identity) ?? 0) + delta;
    if (n > 0) s.podRefs.set(rec.identity, n);
    else s.podRefs.delete(rec.identity);
    return this.setMatch(s, rec.identity, n > 0);
  }

  private namedPortsRef(rec: PeerRecord, delta: 1 | -1): void {
    let byName = this.namedPortsById.get(rec.identity);
    if (!byName) this.namedPortsById.set(rec.identity, (byName = new Map()));
    let changed = false;
    for (const [name, ports] of Object.entries(rec.namedPorts)) {
      let m = byName.get(name);
      if (!m) byName.set(name, (m = new Map()));
      for (const p of ports) {
        const k = `${p.port}/${p.protocol}`;
        const n = (m.get(k) ?? 0) + delta;
        if (n > 0) m.set(k, n);
        else m.delete(k);
        if (n === 0 || (n === 1 && delta === 1)) changed = true;
      }
      if (m.size === 0) byName.delete(name);
      if (byName.has(name)) addTo(this.idsByPortName, name, rec.identity);
      else removeFrom(this.idsByPortName, name, rec.identity);
    }
    if (byName.size === 0) this.namedPortsById.delete(rec.identity);
    if (!changed) return;
    // Endpoints whose egress named-port rules can reach this identity.
    for (const key of this.egressNamedPortPolicies) {
      const p = this.policies.get(key)!;
      const reaches = (p.egress?.rules ?? []).some(
        (r) => r.ports !== 'all' && r.ports.some((x) => x.kind === 'named') && (r.peers === 'any' || r.peers.fixed.includes(rec.identity) || r.peers.selectors.some((k) => this.selectors.get(k)!.ids.has(rec.identity))),
      );
      if (reaches) for (const id of this.selected.get(key) ?? []) this.markDirty(id);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Local endpoints

  upsertEndpoint(ep: PolicyEndpoint): void {
    const old = this.endpoints.get(ep.id);
    if (old && old.namespace === ep.namespace && old.identity === ep.identity && labelsEqual(old.labels, ep.labels) && namedPortsEqual(old.namedPorts ?? {}, ep.namedPorts ?? {})) return;
    const copy: PolicyEndpoint = { ...ep, labels: { ...ep.labels } };
    this.endpoints.set(ep.id, copy);
    if (old && old.namespace !== ep.namespace) removeFrom(this.endpointsByNs, old.namespace, ep.id);
    addTo(this.endpointsByNs, ep.namespace, ep.id);
    const before = this.policiesOf.get(ep.id) ?? new Set<string>();
    const after = new Set<string>();
    for (const key of this.policiesByNs.get(ep.namespace) ?? []) if (this.policySelects(this.policies.get(key)!, copy)) after.add(key);
    for (const key of before) if (!after.has(key)) this.selected.get(key)?.delete(ep.id);
    for (const key of after) addTo(this.selected, key, ep.id);
    if (after.size > 0) this.policiesOf.set(ep.id, after);
    else this.policiesOf.delete(ep.id);
    this.markDirty(ep.id);
  }

  deleteEndpoint(id: string): void {
    const old = this.endpoints.get(id);
    if (!old) return;
    this.endpoints.delete(id);
    removeFrom(this.endpointsByNs, old.namespace, id);
    for (const key of this.policiesOf.get(id) ?? []) this.selected.get(key)?.delete(id);
    this.policiesOf.delete(id);
    this.computed.delete(id);
    this.dirty.delete(id);
  }

  hasEndpoint(id: string): boolean {
    return this.endpoints.has(id);
  }

  /**
   * Local endpoints whose policy may have changed since the last call (sorted); the set is
   * emptied. Deleted endpoints are not in it (the caller deleted them).
   */
  takeDirty(): Set<string> {
    const out = new Set([...this.dirty].sort(compareStrings));
    this.dirty.clear();
    return out;
  }

  /** The current policy of a local endpoint. Throws for an unknown id. */
  endpointPolicy(id: string): EndpointPolicy {
    return this.compute(id).policy;
  }

  // -------------------------------------------------------------------------------------------
  // CIDR identities

  /**
   * CIDR prefixes for the ipcache since the last call: `upsert` prefix → CIDR identity,
   * `remove` prefixes no policy needs any more (sorted). Write upserts after the policy rules
   * that admit them and removals after the rules stop naming them (the datapath's dependency
   * order): then no packet meets an identity its rules do not know yet. A CIDR entry must never
   * replace a pod's or node's own entry of the same prefix.
   */
  takeCidrChanges(): { upsert: Map<string, number>; remove: string[] } {
    const upsert = new Map<string, number>();
    const remove: string[] = [];
    for (const prefix of [...this.touchedPrefixes].sort(compareStrings)) {
      const want = this.prefixes.get(prefix)?.id;
      const have = this.emitted.get(prefix);
      if (want === have) continue;
      if (want === undefined) {
        remove.push(prefix);
        this.emitted.delete(prefix);
        this.usedCidrIds.delete(have!);
      } else {
        upsert.set(prefix, want);
        this.emitted.set(prefix, want);
      }
    }
    this.touchedPrefixes.clear();
    return { upsert, remove };
  }

  /** Current CIDR prefixes and their identities, sorted by prefix. */
  cidrIdentities(): Map<string, number> {
    return new Map([...this.prefixes].sort(([a], [b]) => compareStrings(a, b)).map(([k, v]) => [k, v.id]));
  }

  // -------------------------------------------------------------------------------------------
  // Reports

  /** Problems of every policy (parse-time) and of the rules computed for endpoints; sorted, deduplicated. */
  problems(): PolicyProblem[] {
    const all: PolicyProblem[] = [];
    for (const p of this.policies.values()) all.push(...p.problems);
    for (const id of this.endpoints.keys()) all.push(...this.compute(id).warnings);
    const seen = new Map<string, PolicyProblem>();
    for (const p of all) seen.set(`${p.policy}\0${p.severity}\0${p.message}`, p);
    return [...seen.values()].sort((a, b) => compareStrings(a.policy, b.policy) || compareStrings(a.severity, b.severity) || compareStrings(a.message, b.message));
  }

  /** Policies applied as written (no denied problem), sorted. */
  applied(): string[] {
    return [...this.policies.values()].filter((p) => p.applied).map((p) => p.key).sort(compareStrings);
  }

  stats(): PolicyEngineStats {
    return { selectorEvaluations: this.evaluations, selectors: this.selectors.size, policies: this.policies.size, cidrIdentities: this.prefixes.size };
  }

  // -------------------------------------------------------------------------------------------
  // Selector cache internals

  private matches(sel: PeerSelector, labels: Labels): boolean {
    if (sel.kind === 'labels') {
      this.evaluations++;
      return selectorMatches(sel.sel, labels);
    }
    if (sel.kind === 'ns') {
      this.evaluations++;
      const ns = labels[LABEL_NAMESPACE];
      return ns !== undefined && selectorMatches(sel.pod, labels) && selectorMatches(sel.ns, this.namespaceLabels(ns));
    }
    return false;
  }

  private policySelects(p: ParsedPolicy, ep: PolicyEndpoint): boolean {
    if (p.namespace !== ep.namespace) return false;
    this.evaluations++;
    return selectorMatches(p.endpointSelector, ep.labels);
  }

  /** Put id in or out of a selector's match set; true when that changed it. */
  private setMatch(s: CachedSelector, id: number, on: boolean): boolean {
    if (on === s.ids.has(id)) return false;
    if (on) {
      s.ids.add(id);
      addTo(this.selectorsOfId, id, s);
    } else {
      s.ids.delete(id);
      removeFrom(this.selectorsOfId, id, s);
    }
    return true;
  }

  private selectorsChanged(changed: Iterable<CachedSelector>): void {
    const policies = new Set<string>();
    for (const s of changed) for (const u of s.users) policies.add(u);
    for (const key of policies) for (const id of this.selected.get(key) ?? []) this.markDirty(id);
  }

  private markDirty(id: string): void {
    this.dirty.add(id);
    this.computed.delete(id);
  }

  private acquireSelector(key: string, sel: PeerSelector, user: string): void {
    const have = this.selectors.get(key);
    if (have) {
      have.users.add(user);
      return;
    }
    const s: CachedSelector = { key, sel, ids: new Set(), users: new Set([user]), namespaces: namespacesOf(sel), podRefs: new Map() };
    this.selectors.set(key, s);
    if (sel.kind === 'labels' || sel.kind === 'ns') {
      if (s.namespaces) for (const ns of s.namespaces) addTo(this.selectorsByNs, ns, s);
      else this.selectorsAnyNs.add(s);
      const candidates = s.namespaces ? s.namespaces.flatMap((ns) => [...(this.identitiesByNs.get(ns) ?? [])]) : [...this.identities.keys()];
      for (const id of candidates) if (id > IDENTITY_RESERVED_MAX && this.matches(sel, this.identities.get(id)!)) this.setMatch(s, id, true);
    } else if (sel.kind === 'world') {
      this.worldSelectors.add(s);
      this.setMatch(s, IDENTITY_WORLD, true);
      for (const p of this.prefixes.values()) this.setMatch(s, p.id, true);
    } else {
      this.cidrSelectors.add(s);
      for (const [ip, rec] of this.peers) this.peerRef(s, parseIp(ip)!, rec, 1);
      // Until the ipcache holds 0.0.0.0/0, addresses outside the mesh are still world.
      if (sel.cidr.prefix === 0 && sel.except.length === 0) this.setMatch(s, IDENTITY_WORLD, true);
      // Existing prefixes first, then this selector's own (which also updates the others).
      for (const p of this.prefixes.values()) if (this.cidrSelects(sel, p.cidr)) this.setMatch(s, p.id, true);
      for (const c of [sel.cidr, ...sel.except]) this.refPrefix(c);
    }
  }

  private releaseSelector(key: string, user: string): void {
    const s = this.selectors.get(key);
    if (!s || !s.users.delete(user) || s.users.size > 0) return;
    this.selectors.delete(key);
    for (const id of [...s.ids]) this.setMatch(s, id, false);
    if (s.sel.kind === 'labels' || s.sel.kind === 'ns') {
      if (s.namespaces) for (const ns of s.namespaces) removeFrom(this.selectorsByNs, ns, s);
      else this.selectorsAnyNs.delete(s);
    } else if (s.sel.kind === 'world') this.worldSelectors.delete(s);
    else {
      this.cidrSelectors.delete(s);
      for (const c of [s.sel.cidr, ...s.sel.except]) this.unrefPrefix(c);
    }
  }

  private cidrSelects(sel: Extract<PeerSelector, { kind: 'cidr' }>, prefix: Cidr): boolean {
    return cidrInside(sel.cidr, prefix) && !sel.except.some((e) => cidrInside(e, prefix));
  }

  private refPrefix(c: Cidr): void {
    const k = formatCidr(c);
    const have = this.prefixes.get(k);
    if (have) {
      have.refs++;
      return;
    }
    const id = this.allocateCidrIdentity(k);
    this.prefixes.set(k, { cidr: c, id, refs: 1 });
    this.touchedPrefixes.add(k);
    const changed = new Set<CachedSelector>();
    for (const s of this.cidrSelectors) if (this.cidrSelects(s.sel as Extract<PeerSelector, { kind: 'cidr' }>, c) && this.setMatch(s, id, true)) changed.add(s);
    for (const s of this.worldSelectors) if (this.setMatch(s, id, true)) changed.add(s);
    this.selectorsChanged(changed);
  }

  private unrefPrefix(c: Cidr): void {
    const k = formatCidr(c);
    const p = this.prefixes.get(k);
    if (!p || --p.refs > 0) return;
    this.prefixes.delete(k);
    this.touchedPrefixes.add(k);
    const changed = new Set<CachedSelector>();
    for (const s of [...(this.selectorsOfId.get(p.id) ?? [])]) if (this.setMatch(s, p.id, false)) changed.add(s);
    this.selectorsChanged(changed);
    // The number stays taken until takeCidrChanges has told the caller to remove it.
    if (this.emitted.get(k) !== p.id) this.usedCidrIds.delete(p.id);
  }

  /** The number a prefix had when the kernel has it already (emitted or adopted), else the next free one. */
  private allocateCidrIdentity(prefix: string): number {
    const emitted = this.emitted.get(prefix);
    if (emitted !== undefined) return emitted;
    for (let i = 0; i < CIDR_IDENTITY_MAX; i++) {
      const n = this.nextCidr;
      this.nextCidr = n >= CIDR_IDENTITY_MAX ? 1 : n + 1;
      const id = CIDR_IDENTITY_BASE + n;
      if (!this.usedCidrIds.has(id)) {
        this.usedCidrIds.add(id);
        return id;
      }
    }
    throw new Error('policy engine: no CIDR identity left');
  }

  // -------------------------------------------------------------------------------------------
  // Rules of one endpoint

  private compute(id: string): Computed {
    const cached = this.computed.get(id);
    if (cached) return cached;
    const ep = this.endpoints.get(id);
    if (!ep) throw new Error(`policy engine: unknown endpoint ${id}`);
    const warnings: PolicyProblem[] = [];
    const dirs: Record<Dir, { enforced: boolean; raw: RawRule[] }> = { ingress: { enforced: false, raw: [] }, egress: { enforced: false, raw: [] } };
    for (const key of [...(this.policiesOf.get(id) ?? [])].sort(compareStrings)) {
      const pol = this.policies.get(key)!;
      const warn = (m: string) => warnings.push({ policy: key, severity: 'warning', message: m });
      for (const dir of DIRS) {
        const d = pol[dir];
        if (!d) continue;
        const out = dirs[dir];
        if (d.enforce) out.enforced = true;
        for (const rule of d.rules) this.expandRule(rule, dir, ep, out.raw, warn);
      }
    }
    const result = (dir: Dir): DirectionPolicy => {
      const d = dirs[dir];
      if (!d.enforced) return UNENFORCED;
      const rules = normalizeRules(d.raw);
      if (this.maxEntries !== Infinity) {
        const n = policyEntryCount(rules.map((r) => ({ identity: r.identity, port: r.port, endPort: r.endPort, proto: r.protocol })));
        if (n > this.maxEntries) {
          for (const key of this.policiesOf.get(id) ?? []) {
            if (this.policies.get(key)![dir]) warnings.push({ policy: key, severity: 'denied', message: `endpoint ${id}: ${dir} needs ${n} policy map entries, more than ${this.maxEntries}; it denies all ${dir}` });
          }
          return { enforced: true, rules: [] };
        }
      }
      return { enforced: true, rules };
    };
    const c: Computed = { policy: { ingress: result('ingress'), egress: result('egress') }, warnings };
    this.computed.set(id, c);
    return c;
  }

  private peerIds(rule: ParsedRule): number[] | 'any' {
    if (rule.peers === 'any') return 'any';
    const set = new Set<number>(rule.peers.fixed);
    for (const k of rule.peers.selectors) for (const i of this.selectors.get(k)!.ids) set.add(i);
    return [...set];
  }

  private expandRule(rule: ParsedRule, dir: Dir, ep: PolicyEndpoint, out: RawRule[], warn: (m: string) => void): void {
    const ids = this.peerIds(rule);
    if (ids !== 'any' && ids.length === 0) return;
    const idList = ids === 'any' ? [IDENTITY_ANY] : ids;
    const add = (identity: number, protocol: number, port: number, endPort: number) => {
      if (protocol === PROTO_ANY && port !== 0) for (const p of ANY_PROTOCOLS) out.push({ identity, protocol: p, port, endPort });
      else out.push({ identity, protocol, port, endPort: port === 0 ? 0 : endPort });
    };
    if (rule.ports === 'all') {
      for (const i of idList) add(i, PROTO_ANY, 0, 0);
      return;
    }
    for (const p of rule.ports) {
      if (p.kind === 'number') {
        for (const i of idList) add(i, p.protocol, p.port, p.endPort);
        continue;
      }
      const fits = (np: NamedPort) => p.protocol === PROTO_ANY || np.protocol === p.protocol;
      if (dir === 'ingress') {
        const found = (ep.namedPorts?.[p.name] ?? []).filter(fits);
        if (found.length === 0) warn(`named port "${p.name}" is not a port of endpoint ${ep.id}, it allows nothing there`);
        for (const np of found) for (const i of idList) add(i, np.protocol, np.port, np.port);
        continue;
      }
      // Egress: the port belongs to the destination; resolve it per peer identity.
      const targets = ids === 'any' ? [...(this.idsByPortName.get(p.name) ?? [])] : ids;
      let any = false;
      for (const i of targets) {
        for (const k of this.namedPortsById.get(i)?.get(p.name)?.keys() ?? []) {
          const [port, protocol] = k.split('/').map(Number);
          if (!fits({ port, protocol })) continue;
          add(i, protocol, port, port);
          any = true;
        }
      }
      if (!any) warn(`named port "${p.name}" is not a port of any destination pod, it allows nothing`);
    }
  }
}

/**
 * Merge and sort raw rules: per identity an L3 rule absorbs the others, per protocol an any-port
 * rule absorbs its ranges, ranges are merged; then rules that the same rule for identity 0 covers
 * are dropped. Sorted by identity, protocol, port.
 */
function normalizeRules(raw: readonly RawRule[]): PolicyRule[] {
  type Group = { l3: boolean; protos: Map<number, { all: boolean; ranges: Array<[number, number]> }> };
  const groups = new Map<number, Group>();
  for (const r of raw) {
    let g = groups.get(r.identity);
    if (!g) groups.set(r.identity, (g = { l3: false, protos: new Map() }));
    if (r.protocol === PROTO_ANY) {
      g.l3 = true;
      continue;
    }
    let p = g.protos.get(r.protocol);
    if (!p) g.protos.set(r.protocol, (p = { all: false, ranges: [] }));
    if (r.port === 0) p.all = true;
    else p.ranges.push([r.port, Math.max(r.port, r.endPort)]);
  }
  for (const g of groups.values()) {
    for (const p of g.protos.values()) {
      p.ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      const merged: Array<[number, number]> = [];
      for (const [lo, hi] of p.ranges) {
        const last = merged[merged.length - 1];
        if (last && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
        else merged.push([lo, hi]);
      }
      p.ranges = merged;
    }
  }
  const anyGroup = groups.get(IDENTITY_ANY);
  const out: PolicyRule[] = [];
  const emit = (identity: number, protocol: number, port: number, endPort: number) =>
    out.push(endPort > port ? { identity, port, protocol, endPort } : { identity, port, protocol });
  for (const [identity, g] of groups) {
    const cover = identity === IDENTITY_ANY ? undefined : anyGroup;
    if (g.l3) {
      if (!cover?.l3) emit(identity, PROTO_ANY, 0, 0);
      continue;
    }
    if (cover?.l3) continue;
    for (const [protocol, p] of g.protos) {
      const c = cover?.protos.get(protocol);
      if (c?.all) continue;
      if (p.all) {
        emit(identity, protocol, 0, 0);
        continue;
      }
      for (const [lo, hi] of p.ranges) {
        if (c && c.ranges.some(([a, b]) => a <= lo && hi <= b)) continue;
        emit(identity, protocol, lo, hi);
      }
    }
  }
  return out.sort((a, b) => a.identity - b.identity || a.protocol - b.protocol || a.port - b.port);
}
