/**
 * The cluster mesh wire contract: the keys a clustermesh-apiserver holds under `mesh/v1/` and the
 * JSON values at them (DESIGN §5). The export process writes them; remote clients in other clusters'
 * agents read and validate them. Every value carries `version: 1`; a reader rejects any value that
 * does not parse here (and counts it), it never trusts a shape.
 *
 *   mesh/v1/cluster-config/<c>            ClusterConfig
 *   mesh/v1/nodes/<c>/<node>              RemoteNode
 *   mesh/v1/identities/<c>/<id>           RemoteIdentity   (id in decimal)
 *   mesh/v1/ip/<c>/<ip>                   IpEntry
 *   mesh/v1/services/<c>/<ns>/<name>      (global services: a later issue)
 *   mesh/v1/synced/<c>/<kind>             SyncMarker       (kind: nodes | identities | ip | services)
 *   mesh/v1/heartbeat/<c>                 Heartbeat
 */
import { z } from 'zod';
import { ROUTING_MODES } from '../defaults.js';

export const MESH_PREFIX = 'mesh/v1/';
export const MESH_VERSION = 1 as const;

/** Kinds with a sync marker; a remote client applies a peer's data only once all of these are synced. */
export const SYNC_KINDS = ['nodes', 'identities', 'ip'] as const;
export type SyncKind = (typeof SYNC_KINDS)[number];

export const meshKeys = {
  clusterConfig: (c: string): string => `${MESH_PREFIX}cluster-config/${c}`,
  node: (c: string, node: string): string => `${MESH_PREFIX}nodes/${c}/${node}`,
  nodes: (c: string): string => `${MESH_PREFIX}nodes/${c}/`,
  identity: (c: string, id: number): string => `${MESH_PREFIX}identities/${c}/${id}`,
  identities: (c: string): string => `${MESH_PREFIX}identities/${c}/`,
  ip: (c: string, ip: string): string => `${MESH_PREFIX}ip/${c}/${ip}`,
  ips: (c: string): string => `${MESH_PREFIX}ip/${c}/`,
  service: (c: string, ns: string, name: string): string => `${MESH_PREFIX}services/${c}/${ns}/${name}`,
  synced: (c: string, kind: SyncKind | 'services'): string => `${MESH_PREFIX}synced/${c}/${kind}`,
  heartbeat: (c: string): string => `${MESH_PREFIX}heartbeat/${c}`,
} as const;

export type MeshKeyKind = 'cluster-config' | 'nodes' | 'identities' | 'ip' | 'services' | 'synced' | 'heartbeat';

/** A key split into its kind, the cluster it names and the rest (node name, id, ip, kind…). */
export interface ParsedMeshKey {
  readonly kind: MeshKeyKind;
  readonly cluster: string;
  readonly rest: string;
}

const KEY_KINDS = new Set<string>(['cluster-config', 'nodes', 'identities', 'ip', 'services', 'synced', 'heartbeat']);

/** Parse a `mesh/v1/` key; null when it is not one (a reader skips and counts those). */
export function parseMeshKey(key: string): ParsedMeshKey | null {
  if (!key.startsWith(MESH_PREFIX)) return null;
  const parts = key.slice(MESH_PREFIX.length).split('/');
  const [kind, cluster, ...rest] = parts;
  if (!kind || !KEY_KINDS.has(kind) || !cluster) return null;
  const single = kind === 'cluster-config' || kind === 'heartbeat';
  if (single ? rest.length !== 0 : rest.length === 0 || rest.some((r) => r === '')) return null;
  return { kind: kind as MeshKeyKind, cluster, rest: rest.join('/') };
}

const clusterName = z.string().regex(/^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/);
const ipv4 = z.string().regex(/^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/);
const cidr4 = z.string().regex(/^(\d{1,3}\.){3}\d{1,3}\/(\d|[12]\d|3[0-2])$/);
const version = z.literal(MESH_VERSION);

export const ClusterConfigSchema = z.object({
  version,
  name: clusterName,
  id: z.number().int().min(1).max(255),
  podCidrs: z.array(cidr4).min(1),
  serviceCidr: cidr4,
  routing: z.enum(ROUTING_MODES),
  /** VPCs the cluster's nodes are in (lab: underlay bridges; cloud: VPC ids). */
  vpcs: z.array(z.string().min(1).max(64)).min(1),
  encryption: z.enum(['none', 'wireguard']),
  capabilities: z.object({
    /** Sync markers are written (always true for meshctl exporters). */
    syncedMarkers: z.boolean(),
    maxConnectedClusters: z.number().int().min(1).max(511),
  }),
});
export type ClusterConfig = z.infer<typeof ClusterConfigSchema>;

export const RemoteNodeSchema = z.object({
  version,
  cluster: clusterName,
  name: z.string().min(1).max(253),
  ip: ipv4,
  /** The node's slice(s) of the pod CIDR (routes for direct routing). */
  podCidrs: z.array(cidr4),
  vpc: z.string().min(1).max(64),
  /** Node number within its cluster, 1..65535 (0 = unknown). */
  nodeId: z.number().int().min(0).max(0xffff),
  wireguardKey: z.string().optional(),
});
export type RemoteNode = z.infer<typeof RemoteNodeSchema>;

export const RemoteIdentitySchema = z.object({
  version,
  cluster: clusterName,
  id: z.number().int().min(1).max(0xffffff),
  labels: z.record(z.string().max(63 + 253 + 1), z.string().max(63)),
});
export type RemoteIdentity = z.infer<typeof RemoteIdentitySchema>;

export const IpEntrySchema = z.object({
  version,
  cluster: clusterName,
  ip: ipv4,
  identity: z.number().int().min(1).max(0xffffff),
  /** Name of the node the address lives on; its RemoteNode gives the tunnel endpoint. */
  node: z.string().min(1).max(253),
});
export type IpEntry = z.infer<typeof IpEntrySchema>;

export const SyncMarkerSchema = z.object({
  version,
  cluster: clusterName,
  kind: z.enum(['nodes', 'identities', 'ip', 'services']),
  /** ISO time the initial export of this kind completed. */
  at: z.string(),
});
export type SyncMarker = z.infer<typeof SyncMarkerSchema>;

export const HeartbeatSchema = z.object({
  version,
  cluster: clusterName,
  /** ISO time of the beat; a reader uses its own clock for staleness (when it last saw a change). */
  at: z.string(),
  seq: z.number().int().min(0),
});
export type Heartbeat = z.infer<typeof HeartbeatSchema>;

/** How often the export process beats, and after how long without a beat a peer is disconnected. */
export const HEARTBEAT_INTERVAL_MS = 1000;
export const HEARTBEAT_TIMEOUT_MS = 5000;
