/**
 * Encoding of one endpoint's policy rules (one direction) into mesh_policy entries. Kept apart from
 * the Datapath class so the policy map's key layout can change without touching the writer.
 *
 * mesh_policy is an LPM trie (bpf/lib/common.h): a rule matches L3 only (any protocol), one
 * protocol on any port, or one protocol on a prefix of the port. A port range becomes the aligned
 * prefixes that tile it (at most 30 for any range, 1 for a single port), and the datapath asks the
 * trie twice per new connection, with the peer's identity and with identity 0, each time getting
 * the most specific rule. So that "a deny among the matching rules wins" still holds with one
 * answer per lookup, every rule that a deny rule of the same identity covers is written as a deny,
 * and rules that a broader rule with the same verdict covers are left out.
 */
import { Direction, PolicyFlags, policyEntryCodec, policyKeyCodec, type PolicyKey } from './codecs.js';

export interface PolicyRule {
  /** Peer identity, 0 = any. */
  readonly identity: number;
  /** 0 = any port. */
  readonly port: number;
  /** Last port of a range (inclusive); default `port`. */
  readonly endPort?: number;
  /** IP protocol number; 0 = any (then port is 0). */
  readonly proto: number;
  readonly deny?: boolean;
}

export interface PolicyMapEntry {
  readonly key: Buffer;
  readonly value: Buffer;
}

/** One aligned port prefix: `port` with its low `16 - prefixLen` bits zero. */
export interface PortPrefix {
  readonly port: number;
  /** Matched leading bits, 0 (any port) ..16 (one port). */
  readonly prefixLen: number;
}

/**
 * The fewest aligned prefixes whose union is exactly `first..last` (inclusive, 0..65535).
 * 0..65535 is one prefix of length 0; any range needs at most 30.
 */
export function splitPortRange(first: number, last: number): PortPrefix[] {
  if (!Number.isInteger(first) || !Number.isInteger(last) || first < 0 || last > 0xffff || first > last) {
    throw new RangeError(`port range ${first}-${last}: must be 0 <= first <= last <= 65535`);
  }
  const out: PortPrefix[] = [];
  let lo = first;
  while (lo <= last) {
    let bits = 16;
    let size = 1;
    while (bits > 0 && lo % (size * 2) === 0 && lo + size * 2 - 1 <= last) {
      size *= 2;
      bits--;
    }
    out.push({ port: lo, prefixLen: bits });
    lo += size;
  }
  return out;
}

interface Span {
  readonly identity: number;
  /** 0 = L3 (any protocol). */
  readonly proto: number;
  readonly port: number;
  readonly bits: number;
  deny: boolean;
}

function spansOf(rules: readonly PolicyRule[]): Span[] {
  const byKey = new Map<string, Span>();
  const add = (s: Omit<Span, 'deny'>, deny: boolean) => {
    const k = `${s.identity}/${s.proto}/${s.port}/${s.bits}`;
    const cur = byKey.get(k);
    if (cur) cur.deny ||= deny;
    else byKey.set(k, { ...s, deny });
  };
  for (const r of rules) {
    const deny = r.deny === true;
    if (r.proto === 0) {
      if (r.port !== 0 || (r.endPort ?? 0) !== 0) throw new RangeError(`policy rule: protocol 0 (any) takes no port, got ${r.port}`);
      add({ identity: r.identity, proto: 0, port: 0, bits: 0 }, deny);
    } else if (r.port === 0) {
      add({ identity: r.identity, proto: r.proto, port: 0, bits: 0 }, deny);
    } else {
      for (const p of splitPortRange(r.port, r.endPort ?? r.port)) add({ identity: r.identity, proto: r.proto, port: p.port, bits: p.prefixLen }, deny);
    }
  }
  return [...byKey.values()];
}

/**
 * The spans to write: covered-by-deny turned into deny, then those a broader span of the same
 * verdict covers dropped (between such a pair every span has that verdict too, so the most
 * specific answer of a lookup does not change). Sorted by identity, protocol, port, prefix.
 */
function resolveSpans(rules: readonly PolicyRule[]): Span[] {
  const byIdentity = new Map<number, Span[]>();
  for (const s of spansOf(rules)) {
    const g = byIdentity.get(s.identity);
    if (g) g.push(s);
    else byIdentity.set(s.identity, [s]);
  }
  const out: Span[] = [];
  // A span's coverers are the L3 span and its proper prefixes (at most 16 per protocol): found by
  // key, so resolving n spans costs O(n), not a comparison of every pair.
  const at = (proto: number, bits: number, port: number): string => `${proto}/${bits}/${bits === 0 ? 0 : port >>> (16 - bits)}`;
  for (const group of byIdentity.values()) {
    const byPrefix = new Map<string, Span>();
    let l3: Span | undefined;
    for (const s of group) {
      if (s.proto === 0) l3 = s;
      else byPrefix.set(at(s.proto, s.bits, s.port), s);
    }
    const coverers = (s: Span): Span[] => {
      const found: Span[] = [];
      if (s.proto === 0) return found;
      if (l3) found.push(l3);
      for (let b = s.bits - 1; b >= 0; b--) {
        const a = byPrefix.get(at(s.proto, b, s.port));
        if (a) found.push(a);
      }
      return found;
    };
    // A coverer that is a deny makes the span a deny (the coverers of a coverer cover it too, so
    // the verdicts as given are enough).
    const denied = new Set(group.filter((s) => s.deny));
    for (const s of group) if (!s.deny && coverers(s).some((c) => denied.has(c))) s.deny = true;
    for (const s of group) if (!coverers(s).some((c) => c.deny === s.deny)) out.push(s);
  }
  return out.sort((a, b) => a.identity - b.identity || a.proto - b.proto || a.port - b.port || a.bits - b.bits);
}

/** The map entries that enforce `rules` for one endpoint and direction (deduplicated, sorted). */
export function policyEntries(endpointId: number, direction: Direction.Ingress | Direction.Egress, rules: readonly PolicyRule[]): PolicyMapEntry[] {
  return resolveSpans(rules).map((s) => {
    const key: PolicyKey = { endpointId, direction, proto: s.proto, identity: s.identity, dport: s.port, portPrefixLen: s.proto === 0 ? 0 : s.bits };
    return { key: policyKeyCodec.encode(key), value: policyEntryCodec.encode({ flags: s.deny ? PolicyFlags.deny : 0, packets: 0n, bytes: 0n }) };
  });
}

/** How many map entries `rules` take (what policyEntries would return), for capacity checks. */
export function policyEntryCount(rules: readonly PolicyRule[]): number {
  return resolveSpans(rules).length;
}

/** The endpoint id a policy map key belongs to. */
export function policyKeyEndpoint(key: Buffer): { endpointId: number; direction: number } {
  const k = policyKeyCodec.decode(key);
  return { endpointId: k.endpointId, direction: k.direction };
}
