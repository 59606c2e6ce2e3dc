/**
 * Policy compilation: Kubernetes NetworkPolicy and MeshNetworkPolicy (CiliumNetworkPolicy-shaped)
 * → per local endpoint, the (identity, port, protocol) triples allowed in each direction.
 *
 * Pure: no store, no clock. compilePolicies() is the one-shot form (it feeds a PolicyEngine, see
 * policy-engine.ts, with everything and reads every endpoint back); the agent's controller keeps one
 * PolicyEngine and feeds it changes instead.
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
 *   Namespaces are the same across clusters by name (namespace sameness). `ipBlock` → the CIDR
 *   identities of its CIDR minus `except`, plus the identities of peer pods whose IP lies there
 *   (policy-engine.ts). Missing or empty `from`/`to` = any identity (0).
 * - Ports: numeric `port` with `protocol` (default TCP); `endPort` ranges of any width stay one
 *   rule with `endPort`. Named ports are resolved on ingress from the selected endpoint's own
 *   `namedPorts`, on egress from the destination pods' (peers'); unresolvable ones allow nothing
 *   and are reported as warnings.
 *
 * MeshNetworkPolicy:
 * - `endpointSelector` selects endpoints of the policy's namespace. A direction is enforced when
 *   its rule list is non-empty (Cilium), unless `enableDefaultDeny.<direction>` is false, in which
 *   case its rules only add to what other policies enforce.
 * - `fromEndpoints`/`toEndpoints`: restricted to the policy's namespace unless the selector names
 *   `io.kubernetes.pod.namespace`; `[{}]` = every endpoint of that namespace in this cluster.
 *   `fromEntities`/`toEntities`: all, world, host, remote-node, health, init, unmanaged,
 *   kube-apiserver, cluster (every identity of this cluster plus host, remote-node, health, init and
 *   kube-apiserver). `world` also covers every CIDR identity. `fromCIDR(Set)`/`toCIDR(Set)` as
 *   ipBlock. A rule with no peer field allows any identity when it has `toPorts`, nothing
 *   otherwise (`ingress: [{}]` is Cilium's deny-all).
 * - `toPorts[].ports[]`: `port` number, numeric string or name (0/absent = all), `protocol`
 *   TCP/UDP/SCTP/ANY (default ANY), `endPort` as above.
 *
 * Fail closed: a field the datapath cannot enforce (unsupportedPolicyField: `ingressDeny`,
 * `fromRequires`, `toFQDNs`, `toServices`, L7 `rules`, unknown fields, ...) or malformed input
 * makes the policy select its endpoints in that direction (both for a spec-wide field) with no
 * rules, so they deny there; it is reported with severity `denied`. A policy whose endpoint
 * selector cannot be read denies both directions for every endpoint of its namespace.
 *
 * Protocol numbers follow the datapath's policy key: 0 = any (only with port 0), 6 TCP, 17 UDP,
 * 132 SCTP. A port with protocol ANY is expanded to TCP, UDP and SCTP entries.
 */
import type { KubeObject } from '../cluster/types.js';
import { IDENTITY_RESERVED_MAX } from './identity.js';
import { compareStrings, type Labels } from './labels.js';
import { PolicyEngine, PROTO_ANY, PROTO_SCTP, PROTO_TCP, PROTO_UDP, type PolicyPeer } from './policy-engine.js';

export { IDENTITY_ANY, LABEL_NAMESPACE_NAME, PROTO_ANY, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyEngine } from './policy-engine.js';

export interface PolicyRule {
  /** Peer identity; 0 = any. */
  readonly identity: number;
  /** Destination port; 0 = any. */
  readonly port: number;
  /** Last port of a range (inclusive), only when above `port`. */
  readonly endPort?: number;
  /** IP protocol number; 0 = any (then port is 0). */
  readonly protocol: number;
}

export interface DirectionPolicy {
  /** Selected by some policy in this direction: default-deny, only `rules` pass. */
  readonly enforced: boolean;
  /** Allowed rules, merged (ranges joined), without rules another one covers, sorted by identity, protocol, port. */
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
  /** Every pod of the cluster by IP (ipBlock matching, egress named ports); default none. */
  readonly peers?: ReadonlyMap<string, PolicyPeer>;
}

export interface PolicyProblem {
  /** `NetworkPolicy <ns>/<name>` or `MeshNetworkPolicy <ns>/<name>`. */
  readonly policy: string;
  /**
   * denied: a part could not be enforced; the endpoints it selects deny in that direction (the
   * message says which endpoints and directions).
   * warning: applied, but a part allows nothing or less.
   */
  readonly severity: 'denied' | 'warning';
  readonly message: string;
}

export interface PolicyCompilation {
  /** Every input endpoint id → its policy. */
  readonly endpoints: Map<string, EndpointPolicy>;
  /** Sorted by policy, severity, then message. */
  readonly problems: PolicyProblem[];
  /** Policies applied as written (no denied problem), sorted. */
  readonly applied: string[];
  /** CIDR prefixes the rules' CIDR identities stand for (for the ipcache), sorted. */
  readonly cidrIdentities: Map<string, number>;
}

/** Compile policies for local endpoints in one go. Never throws on bad policies: they fail closed and are reported. */
export function compilePolicies(input: CompilePoliciesInput): PolicyCompilation {
  const engine = new PolicyEngine({ clusterName: input.clusterName });
  for (const n of input.namespaces) engine.upsertNamespace(n);
  for (const [id, labels] of input.identities) engine.upsertIdentity(id, labels);
  // Local endpoints' identities are candidates for selectors even before the allocator lists them.
  for (const ep of input.endpoints) if (ep.identity > IDENTITY_RESERVED_MAX && !input.identities.has(ep.identity)) engine.upsertIdentity(ep.identity, ep.labels);
  for (const [ip, peer] of input.peers ?? []) engine.upsertPeer(ip, peer);
  for (const ep of input.endpoints) engine.upsertEndpoint(ep);
  for (const p of input.policies) engine.upsertPolicy(p);
  const endpoints = new Map<string, EndpointPolicy>();
  for (const ep of [...input.endpoints].sort((a, b) => compareStrings(a.id, b.id))) endpoints.set(ep.id, engine.endpointPolicy(ep.id));
  return { endpoints, problems: engine.problems(), applied: engine.applied(), cidrIdentities: engine.cidrIdentities() };
}

/** Order of rules in results: identity, protocol, port. */
export function compareRules(a: PolicyRule, b: PolicyRule): number {
  return a.identity - b.identity || a.protocol - b.protocol || a.port - b.port || (a.endPort ?? a.port) - (b.endPort ?? b.port);
}

function ruleKey(r: PolicyRule): string {
  return `${r.identity}/${r.protocol}/${r.port}-${r.endPort ?? r.port}`;
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
  const key = ruleKey;
  const before = new Set(prev.map(key));
  const after = new Set(next.map(key));
  return { add: next.filter((r) => !before.has(key(r))), remove: prev.filter((r) => !after.has(key(r))) };
}

/** `identity/PROTO/port[-endPort]` text of a rule, e.g. `65537/TCP/80`, `0/ANY/0`, `65537/UDP/20000-29999`. */
export function formatRule(r: PolicyRule): string {
  const proto = r.protocol === PROTO_TCP ? 'TCP' : r.protocol === PROTO_UDP ? 'UDP' : r.protocol === PROTO_SCTP ? 'SCTP' : r.protocol === PROTO_ANY ? 'ANY' : String(r.protocol);
  return `${r.identity}/${proto}/${r.port}${r.endPort !== undefined && r.endPort > r.port ? `-${r.endPort}` : ''}`;
}

/** The rules in the datapath's form (Datapath.setPolicy / policyEntries). */
export function datapathRules(rules: readonly PolicyRule[]): Array<{ identity: number; port: number; endPort?: number; proto: number }> {
  return rules.map((r) => (r.endPort !== undefined ? { identity: r.identity, port: r.port, endPort: r.endPort, proto: r.protocol } : { identity: r.identity, port: r.port, proto: r.protocol }));
}
