/**
 * Encoding of one endpoint's policy rules (one direction) into mesh_policy entries. Kept apart from
 * the Datapath class so the policy map's key layout can change without touching the writer.
 */
import { Direction, policyEntryCodec, policyKeyCodec, type PolicyKey } from './codecs.js';

export interface PolicyRule {
  /** Peer identity, 0 = any. */
  readonly identity: number;
  /** 0 = any port. */
  readonly port: number;
  /** Last port of a range (inclusive); default `port`. */
  readonly endPort?: number;
  /** IP protocol number; 0 = any. */
  readonly proto: number;
  readonly deny?: boolean;
}

export interface PolicyMapEntry {
  readonly key: Buffer;
  readonly value: Buffer;
}

/** The map entries that enforce `rules` for one endpoint and direction. */
export function policyEntries(endpointId: number, direction: Direction.Ingress | Direction.Egress, rules: readonly PolicyRule[]): PolicyMapEntry[] {
  const out: PolicyMapEntry[] = [];
  for (const r of rules) {
    const last = r.endPort ?? r.port;
    for (let port = r.port; port <= last; port++) {
      const key: PolicyKey = { endpointId, direction, proto: r.proto, identity: r.identity, dport: port };
      out.push({ key: policyKeyCodec.encode(key), value: policyEntryCodec.encode({ flags: r.deny ? 1 : 0, packets: 0n, bytes: 0n }) });
    }
  }
  return out;
}

/** The endpoint id a policy map key belongs to. */
export function policyKeyEndpoint(key: Buffer): { endpointId: number; direction: number } {
  const k = policyKeyCodec.decode(key);
  return { endpointId: k.endpointId, direction: k.direction };
}
