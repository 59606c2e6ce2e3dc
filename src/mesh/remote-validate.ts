/**
 * What a remote client takes from a peer's clustermesh-apiserver: pure checks of each key and value
 * (no I/O), stricter than Cilium's. A peer is not trusted: a value that fails is skipped and
 * counted under its reason (`meshctl_remote_invalid_objects{peer,reason}`), never fatal for the rest.
 *
 * Reasons:
 *   bad-key              the key does not parse as a mesh/v1 key of a kind we read
 *   wrong-cluster        the key or the value (value.cluster, the cluster label) names another cluster
 *   key-mismatch         the key's node name, id or address differs from the value's
 *   not-json             the value is not JSON
 *   schema               the value does not match its schema (version 1)
 *   reserved-identity    an identity below 256 (host, world, remote-node…): never taken from a peer
 *   identity-cluster     an identity without the peer's cluster id in bits 16–23
 *   ip-outside-pod-cidr  an address (or a node's pod slice) outside the peer's declared pod CIDRs
 *   local-address        an address inside this cluster's pod CIDRs or one of its nodes' addresses
 *   config-mismatch      the cluster config names another cluster or id, or its pod CIDRs overlap ours
 */
import type { ZodType } from 'zod';
import { LABEL_CLUSTER } from '../defaults.js';
import { cidrContains, cidrsOverlap, parseCidr, parseIp, type Cidr } from '../util/cidr.js';
import {
  ClusterConfigSchema,
  HeartbeatSchema,
  IpEntrySchema,
  RemoteIdentitySchema,
  RemoteNodeSchema,
  SyncMarkerSchema,
  parseMeshKey,
  type ClusterConfig,
  type Heartbeat,
  type IpEntry,
  type MeshKeyKind,
  type RemoteIdentity,
  type RemoteNode,
  type SyncMarker,
} from './schema.js';

export const INVALID_REASONS = [
  'bad-key',
  'wrong-cluster',
  'key-mismatch',
  'not-json',
  'schema',
  'reserved-identity',
  'identity-cluster',
  'ip-outside-pod-cidr',
  'local-address',
  'config-mismatch',
] as const;
export type InvalidReason = (typeof INVALID_REASONS)[number];

/** A value that failed: its reason and a short detail for logs. */
export interface Invalid {
  readonly invalid: InvalidReason;
  readonly detail: string;
}

export const isInvalid = (v: unknown): v is Invalid => typeof v === 'object' && v !== null && 'invalid' in v;

const bad = (invalid: InvalidReason, detail: string): Invalid => ({ invalid, detail });

/** The peer as the MeshPeer object names it, and its pod CIDRs once its cluster config was accepted. */
export interface PeerIdentity {
  readonly name: string;
  readonly clusterId: number;
  readonly podCidrs: readonly Cidr[];
}

/** What is ours: this cluster's pod CIDRs and its nodes' addresses (numbers, see util/cidr). */
export interface LocalView {
  readonly podCidrs: readonly Cidr[];
  isLocalNodeIp(ip: number): boolean;
}

/** The kinds a remote client reads. */
export type ReadKind = Exclude<MeshKeyKind, 'services'>;

/** A key of the peer split into kind and rest (node name, id, address, marker kind). */
export function classifyKey(peer: string, key: string): { kind: ReadKind; rest: string } | Invalid {
  const k = parseMeshKey(key);
  if (!k || k.kind === 'services') return bad('bad-key', `key ${key} is not a mesh/v1 key of a kind read from peers`);
  if (k.cluster !== peer) return bad('wrong-cluster', `key ${key} names cluster ${k.cluster}, not ${peer}`);
  return { kind: k.kind, rest: k.rest };
}

function parseJson<T>(schema: ZodType<T>, raw: string | Buffer): T | Invalid {
  let v: unknown;
  try {
    v = JSON.parse(typeof raw === 'string' ? raw : raw.toString('utf8'));
  } catch {
    return bad('not-json', 'value is not JSON');
  }
  const r = schema.safeParse(v);
  if (!r.success) {
    const i = r.error.issues[0];
    return bad('schema', `${i.path.join('.') || 'value'}: ${i.message}`);
  }
  return r.data;
}

function sameCluster<T extends { cluster: string }>(peer: string, v: T | Invalid): T | Invalid {
  if (isInvalid(v)) return v;
  return v.cluster === peer ? v : bad('wrong-cluster', `value.cluster is ${v.cluster}, not ${peer}`);
}

function isLocalAddress(local: LocalView, ip: number): boolean {
  return local.isLocalNodeIp(ip) || local.podCidrs.some((c) => cidrContains(c, ip));
}

/** The peer's cluster config: it must name the MeshPeer's cluster and id, and not overlap our pod CIDRs. */
export function validateClusterConfig(peer: { name: string; clusterId: number }, raw: string | Buffer, local: LocalView): ClusterConfig | Invalid {
  const v = parseJson(ClusterConfigSchema, raw);
  if (isInvalid(v)) return v;
  if (v.name !== peer.name || v.id !== peer.clusterId) return bad('config-mismatch', `cluster config says ${v.name} id ${v.id}, the MeshPeer says ${peer.name} id ${peer.clusterId}`);
  for (const text of v.podCidrs) {
    const c = parseCidr(text);
    if (!c) return bad('schema', `podCidrs: ${text} is not a network address`);
    if (local.podCidrs.some((l) => cidrsOverlap(l, c))) return bad('config-mismatch', `pod CIDR ${text} overlaps this cluster's`);
  }
  return v;
}

/** The pod CIDRs of an accepted config as numbers. */
export function configPodCidrs(cfg: ClusterConfig): Cidr[] {
  return cfg.podCidrs.map((t) => parseCidr(t)!).filter((c) => c !== null);
}

/** mesh/v1/nodes/<peer>/<name>. Its address must not be ours; its pod slices inside the peer's CIDRs. */
export function validateNode(peer: PeerIdentity, name: string, raw: string | Buffer, local: LocalView): RemoteNode | Invalid {
  const v = sameCluster(peer.name, parseJson(RemoteNodeSchema, raw));
  if (isInvalid(v)) return v;
  if (v.name !== name) return bad('key-mismatch', `node ${name}: value names ${v.name}`);
  const ip = parseIp(v.ip)!;
  if (isLocalAddress(local, ip)) return bad('local-address', `node ${name}: ${v.ip} is an address of this cluster`);
  for (const text of v.podCidrs) {
    const c = parseCidr(text);
    if (!c) return bad('schema', `node ${name}: podCidrs: ${text} is not a network address`);
    if (!peer.podCidrs.some((p) => p.prefix <= c.prefix && cidrContains(p, c.network))) return bad('ip-outside-pod-cidr', `node ${name}: pod CIDR ${text} is outside the peer's pod CIDRs`);
  }
  return v;
}

/** Reserved, or without the peer's cluster id in bits 16–23. */
export function checkIdentity(peer: { clusterId: number }, id: number): Invalid | null {
  if (id < 256) return bad('reserved-identity', `identity ${id} is reserved`);
  if (((id >>> 16) & 0xff) !== peer.clusterId) return bad('identity-cluster', `identity ${id} carries cluster id ${(id >>> 16) & 0xff}, not ${peer.clusterId}`);
  return null;
}

/** mesh/v1/identities/<peer>/<id>. */
export function validateIdentity(peer: PeerIdentity, idText: string, raw: string | Buffer): RemoteIdentity | Invalid {
  const v = sameCluster(peer.name, parseJson(RemoteIdentitySchema, raw));
  if (isInvalid(v)) return v;
  if (String(v.id) !== idText) return bad('key-mismatch', `identity key ${idText}: value has id ${v.id}`);
  const e = checkIdentity(peer, v.id);
  if (e) return e;
  const label = v.labels[LABEL_CLUSTER];
  if (label !== undefined && label !== peer.name) return bad('wrong-cluster', `identity ${v.id}: label ${LABEL_CLUSTER}=${label}`);
  return v;
}

/** mesh/v1/ip/<peer>/<ip>. The address must be the peer's and not ours; the identity the peer's. */
export function validateIp(peer: PeerIdentity, ipText: string, raw: string | Buffer, local: LocalView): IpEntry | Invalid {
  const v = sameCluster(peer.name, fastIpEntry(peer.name, raw) ?? parseJson(IpEntrySchema, raw));
  if (isInvalid(v)) return v;
  if (v.ip !== ipText) return bad('key-mismatch', `ip key ${ipText}: value has ${v.ip}`);
  const ip = parseIp(v.ip)!;
  if (isLocalAddress(local, ip)) return bad('local-address', `${v.ip} is an address of this cluster`);
  if (!peer.podCidrs.some((c) => cidrContains(c, ip))) return bad('ip-outside-pod-cidr', `${v.ip} is outside the peer's pod CIDRs`);
  return checkIdentity(peer, v.identity) ?? v;
}

/**
 * The common case of IpEntrySchema without zod (the bulk of a peer's data): an object whose
 * fields have the schema's types and ranges, of this peer (so its name is a valid cluster name)
 * with an address that parses. Anything else goes through the schema, which names the problem.
 */
function fastIpEntry(peer: string, raw: string | Buffer): IpEntry | null {
  let v: unknown;
  try {
    v = JSON.parse(typeof raw === 'string' ? raw : raw.toString('utf8'));
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  const { ip, identity, node } = o;
  if (o.version !== 1 || o.cluster !== peer || typeof ip !== 'string' || typeof node !== 'string' || typeof identity !== 'number') return null;
  if (!Number.isInteger(identity) || identity < 1 || identity > 0xffffff || node.length < 1 || node.length > 253 || parseIp(ip) === null) return null;
  return { version: 1, cluster: peer, ip, identity, node };
}

/** mesh/v1/synced/<peer>/<kind>. */
export function validateSyncMarker(peer: { name: string }, kindText: string, raw: string | Buffer): SyncMarker | Invalid {
  const v = sameCluster(peer.name, parseJson(SyncMarkerSchema, raw));
  if (isInvalid(v)) return v;
  return v.kind === kindText ? v : bad('key-mismatch', `sync marker ${kindText}: value says ${v.kind}`);
}

/** mesh/v1/heartbeat/<peer>. */
export function validateHeartbeat(peer: { name: string }, raw: string | Buffer): Heartbeat | Invalid {
  return sameCluster(peer.name, parseJson(HeartbeatSchema, raw));
}
