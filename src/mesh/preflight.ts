/**
 * The decisions of `meshctl connect` / `disconnect` that need no I/O: which directions a mode asks
 * for, which clusters end up in one mesh (the connected component of the MeshPeer graph after the
 * change), and the rules those clusters must keep between them (names, ids, CIDRs, encryption, CAs).
 * Every refusal is one line naming the values and the rule; `connect.ts` gathers the facts and runs
 * these before it writes anything.
 */
import { cidrsOverlap, parseCidr } from '../util/cidr.js';
import { OperationError, ValidationError } from '../util/errors.js';
import { validateClusterName } from '../lab/validate.js';
import type { MeshPeerSpec } from './peers.js';

/** `--connection-mode` values (cilium-cli's names). */
export const CONNECTION_MODES = ['bidirectional', 'unicast', 'mesh'] as const;
export type ConnectionMode = (typeof CONNECTION_MODES)[number];

/** What a refusal is about; the CLI picks its hint by this, never by the message. */
export type PreflightCheck = 'not-enabled' | 'name' | 'id' | 'cidr' | 'encryption' | 'ca' | 'health' | 'store';

/** A pre-flight refusal: nothing was written. Exit code 1. */
export class PreflightError extends OperationError {
  constructor(
    readonly check: PreflightCheck,
    message: string,
    /** One line telling how to fix it, when there is one. */
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'PreflightError';
  }
}

/** X → Y: X's agents read Y's clustermesh-apiserver (user remote-X there, MeshPeer Y in X's store). */
export interface Direction {
  readonly from: string;
  readonly to: string;
}

export const formatDirection = (d: Direction): string => `${d.from} → ${d.to}`;

/** `--connection-mode`; default bidirectional. */
export function parseConnectionMode(text: string | undefined): ConnectionMode {
  if (text === undefined) return 'bidirectional';
  if ((CONNECTION_MODES as readonly string[]).includes(text)) return text as ConnectionMode;
  throw new ValidationError('connection-mode', 'choice', `invalid connection mode "${text}": must be one of ${CONNECTION_MODES.join(', ')}`);
}

/** `--destination-context c2,c3`: names, in the order given, each once. */
export function parseDestinations(text: string | readonly string[]): string[] {
  const raw = typeof text === 'string' ? text.split(',') : [...text];
  const names = raw.map((n) => n.trim());
  const shown = typeof text === 'string' ? text : text.join(',');
  if (names.length === 0 || names.some((n) => n === '')) {
    throw new ValidationError('destination-context', 'list', `invalid destination list "${shown}": give cluster names separated by commas`);
  }
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup !== undefined) {
    throw new ValidationError('destination-context', 'unique', `invalid destination list "${shown}": ${dup} is listed twice`);
  }
  return names;
}

/**
 * The directions a mode asks for, in the order they are made: bidirectional gives source → d and
 * d → source per destination, unicast only source → d, mesh every ordered pair among the source
 * and the destinations.
 */
export function planDirections(source: string, destinations: readonly string[], mode: ConnectionMode): Direction[] {
  if (destinations.includes(source)) {
    throw new ValidationError('destination-context', 'self', `cannot connect cluster ${source} to itself`);
  }
  const out: Direction[] = [];
  if (mode === 'mesh') {
    const members = [source, ...destinations];
    for (let i = 0; i < members.length; i++) {
      for (let j = i + 1; j < members.length; j++) {
        out.push({ from: members[i], to: members[j] }, { from: members[j], to: members[i] });
      }
    }
    return out;
  }
  for (const d of destinations) {
    out.push({ from: source, to: d });
    if (mode === 'bidirectional') out.push({ from: d, to: source });
  }
  return out;
}

/**
 * Clusters that end up in one mesh with `start`: the connected component of the graph whose edges
 * are the peer links (either way: a one-way link still mixes the two clusters' data in the reader).
 * Sorted by name.
 */
export function meshComponent(start: readonly string[], links: readonly Direction[]): string[] {
  const adj = new Map<string, string[]>();
  const add = (a: string, b: string): void => {
    const l = adj.get(a);
    if (l) l.push(b);
    else adj.set(a, [b]);
  };
  for (const { from, to } of links) {
    add(from, to);
    add(to, from);
  }
  const seen = new Set<string>(start);
  const queue = [...start];
  while (queue.length > 0) {
    const c = queue.pop()!;
    for (const n of adj.get(c) ?? []) {
      if (!seen.has(n)) {
        seen.add(n);
        queue.push(n);
      }
    }
  }
  return [...seen].sort();
}

/** What the pre-flight knows of a cluster that would be in the mesh. */
export interface MemberFacts {
  readonly name: string;
  readonly id: number;
  /** Empty when unknown (a peer known only from a MeshPeer object, its cluster gone from the lab). */
  readonly podCidrs: readonly string[];
  /** Undefined when unknown. */
  readonly serviceCidr?: string;
  /** The cluster config's encryption; 'none' when the field is absent. */
  readonly encryption?: string;
}

const LIST_MAX = 8;

/** `(c1, c2, c3)`, shortened for large meshes. */
function memberList(names: readonly string[]): string {
  const shown = names.slice(0, LIST_MAX).join(', ');
  return names.length > LIST_MAX ? `(${shown}, … ${names.length} clusters)` : `(${shown})`;
}

/**
 * The rules between the clusters that would be in one mesh: valid names, ids in 1..255 and unique,
 * pod and service CIDRs all disjoint (a pod CIDR may not overlap another cluster's service CIDR
 * either), one encryption mode. Throws the first refusal (members are checked in name order).
 */
export function checkMembers(members: readonly MemberFacts[]): void {
  const sorted = [...members].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const names = sorted.map((m) => m.name);
  const where = `which would be in one mesh ${memberList(names)}`;
  for (const m of sorted) {
    try {
      validateClusterName(m.name);
    } catch (err) {
      throw new PreflightError('name', `${(err as Error).message} (${where})`);
    }
    if (!Number.isInteger(m.id) || m.id < 1 || m.id > 255) {
      throw new PreflightError('id', `cluster id ${m.id} of ${m.name} is out of range: must be an integer from 1 to 255`);
    }
  }
  const byId = new Map<number, string>();
  for (const m of sorted) {
    const other = byId.get(m.id);
    if (other !== undefined) {
      throw new PreflightError('id', `cluster id ${m.id} is used by both ${other} and ${m.name}, ${where}; cluster ids must be unique in a mesh`);
    }
    byId.set(m.id, m.name);
  }
  const ranges: Array<{ cluster: string; kind: 'pod CIDR' | 'service CIDR'; text: string }> = [];
  for (const m of sorted) {
    for (const p of m.podCidrs) ranges.push({ cluster: m.name, kind: 'pod CIDR', text: p });
    if (m.serviceCidr !== undefined) ranges.push({ cluster: m.name, kind: 'service CIDR', text: m.serviceCidr });
  }
  for (let i = 0; i < ranges.length; i++) {
    const a = ranges[i];
    const ac = parseCidr(a.text);
    if (!ac) throw new PreflightError('cidr', `${a.kind} "${a.text}" of ${a.cluster} is not a valid IPv4 prefix`);
    for (let j = i + 1; j < ranges.length; j++) {
      const b = ranges[j];
      if (b.cluster === a.cluster) continue;
      const bc = parseCidr(b.text);
      if (!bc || !cidrsOverlap(ac, bc)) continue;
      const rule = a.kind === b.kind ? `${a.kind}s must be disjoint in a mesh` : 'pod and service CIDRs must be disjoint in a mesh';
      throw new PreflightError('cidr', `${a.kind} ${a.text} of ${a.cluster} overlaps ${b.kind} ${b.text} of ${b.cluster}, ${where}; ${rule}`);
    }
  }
  const enc = sorted.map((m) => ({ name: m.name, encryption: m.encryption ?? 'none' }));
  const odd = enc.find((e) => e.encryption !== enc[0].encryption);
  if (odd) {
    throw new PreflightError(
      'encryption',
      `encryption differs: ${enc[0].name} uses ${enc[0].encryption}, ${odd.name} uses ${odd.encryption}, ${where}; every cluster of a mesh must use the same`,
    );
  }
}

/** `AB:CD:EF:01:23:45…` — enough of a fingerprint to tell two CAs apart in a message. */
export function shortFingerprint(fp: string): string {
  return fp.length > 23 ? `${fp.slice(0, 23)}…` : fp;
}

/**
 * Both ends of every direction must share one mesh CA (fingerprints equal), unless the user
 * allows trust bundles with --allow-mismatching-ca. Each pair is checked once.
 */
export function checkCas(directions: readonly Direction[], fingerprints: ReadonlyMap<string, string>, allowMismatching: boolean): void {
  if (allowMismatching) return;
  for (const d of directions) {
    const a = fingerprints.get(d.from);
    const b = fingerprints.get(d.to);
    if (a === undefined || b === undefined || a === b) continue;
    const [x, y] = d.from < d.to ? [d.from, d.to] : [d.to, d.from];
    const [fx, fy] = d.from < d.to ? [a, b] : [b, a];
    throw new PreflightError(
      'ca',
      `${x} and ${y} have different mesh CAs (${x}: ${shortFingerprint(fx)}, ${y}: ${shortFingerprint(fy)}); connecting them needs --allow-mismatching-ca`,
      `enable both with one CA (meshctl enable --ca-cert/--ca-key), or pass --allow-mismatching-ca to trust both`,
    );
  }
}

/** What one direction X → Y should hold: the MeshPeer Y in X's store, as this run would write it (less the credentials). */
export interface DesiredPeer {
  readonly cluster: string;
  readonly clusterId: number;
  readonly endpoints: readonly string[];
  readonly caBundle: string;
  readonly serverName: string;
}

/** What is there now for one direction. */
export interface ObservedDirection {
  /** The MeshPeer Y in X's store: its spec, an Error when it does not parse, null when absent. */
  readonly peer: MeshPeerSpec | Error | null;
  /** User remote-X exists in Y's apiserver. */
  readonly userExists: boolean;
  /** The MeshPeer's client certificate verifies against Y's CA as a client certificate for remote-X. */
  readonly certValid: boolean;
}

/**
 * `connected`: nothing to do; `absent`: nothing there; `stale`: some of it is there but not as
 * this run would write it (a changed address or CA, a missing user, a bad certificate): redo it.
 */
export function directionState(want: DesiredPeer, seen: ObservedDirection): 'connected' | 'absent' | 'stale' {
  if (seen.peer === null && !seen.userExists) return 'absent';
  if (seen.peer === null || seen.peer instanceof Error || !seen.userExists || !seen.certValid) return 'stale';
  const p = seen.peer;
  const same =
    p.cluster === want.cluster &&
    p.clusterId === want.clusterId &&
    p.caBundle === want.caBundle &&
    (p.serverName ?? '') === want.serverName &&
    p.endpoints.length === want.endpoints.length &&
    p.endpoints.every((e, i) => e === want.endpoints[i]);
  return same ? 'connected' : 'stale';
}
