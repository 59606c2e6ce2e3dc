/**
 * The pure half of the export process: what one store object wants at its `mesh/v1/` key. No I/O;
 * each function returns the value (parsed by its zod schema, so it is exactly what a peer will
 * accept), an Error naming the field and the rule when the object cannot be exported, or (for
 * identities) null when the object is not this cluster's to export.
 */
import type { z } from 'zod';
import type { KubeObject } from '../cluster/types.js';
import { identityClusterId, parseIdentity } from '../cluster/identity.js';
import {
  ClusterConfigSchema,
  IpEntrySchema,
  MESH_VERSION,
  RemoteIdentitySchema,
  RemoteNodeSchema,
  type ClusterConfig,
  type IpEntry,
  type RemoteIdentity,
  type RemoteNode,
} from './schema.js';

/** Capabilities every meshctl exporter announces. */
export const EXPORT_CAPABILITIES = { syncedMarkers: true, maxConnectedClusters: 255 } as const;

type Rec = Record<string, unknown>;
const rec = (v: unknown): Rec => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Rec) : {});

/** Parse with a schema; the first issue becomes a one-line Error (`<what>: <path>: <message>`). */
function checked<S extends z.ZodTypeAny>(what: string, schema: S, value: unknown): z.infer<S> | Error {
  const r = schema.safeParse(value);
  if (r.success) return r.data as z.infer<S>;
  const issue = r.error.issues[0];
  const path = issue?.path.length ? `${issue.path.join('.')}: ` : '';
  return new Error(`${what}: ${path}${issue?.message ?? 'invalid'}`);
}

/** meshclusterconfigs/<cluster> → ClusterConfig (encryption `none` unless spec.encryption says otherwise). */
export function clusterConfigValue(obj: KubeObject, cluster: string): ClusterConfig | Error {
  const what = `meshclusterconfig ${obj.metadata.name}`;
  const spec = rec(obj.spec);
  if (obj.metadata.name !== cluster) return new Error(`${what}: name is not the exported cluster ${cluster}`);
  if (spec.name !== cluster) return new Error(`${what}: spec.name ${JSON.stringify(spec.name)} is not ${cluster}`);
  return checked(what, ClusterConfigSchema, {
    version: MESH_VERSION,
    name: spec.name,
    id: spec.id,
    podCidrs: spec.podCIDRs,
    serviceCidr: spec.serviceCIDR,
    routing: spec.routing,
    vpcs: spec.vpcs,
    encryption: spec.encryption ?? 'none',
    capabilities: { ...EXPORT_CAPABILITIES },
  });
}

/** A Node (agent.ts nodeObject()) → RemoteNode: InternalIP, pod CIDR(s), VPC and node id. */
export function remoteNodeValue(obj: KubeObject, cluster: string): RemoteNode | Error {
  const what = `node ${obj.metadata.name}`;
  const labelCluster = obj.metadata.labels?.['meshctl.io/cluster'];
  if (labelCluster !== undefined && labelCluster !== cluster) return new Error(`${what}: label meshctl.io/cluster is ${labelCluster}, not ${cluster}`);
  const spec = rec(obj.spec);
  const status = rec(obj.status);
  const mc = rec(status.meshctl);
  const addresses = Array.isArray(status.addresses) ? status.addresses.map(rec) : [];
  const internal = addresses.find((a) => a.type === 'InternalIP')?.address;
  if (internal === undefined) return new Error(`${what}: status.addresses has no InternalIP`);
  const podCidrs = Array.isArray(spec.podCIDRs) && spec.podCIDRs.length > 0 ? spec.podCIDRs : typeof spec.podCIDR === 'string' ? [spec.podCIDR] : [];
  const value: Rec = {
    version: MESH_VERSION,
    cluster,
    name: obj.metadata.name,
    ip: internal,
    podCidrs,
    vpc: mc.vpc ?? obj.metadata.labels?.['meshctl.io/vpc'],
    nodeId: mc.nodeId ?? 0,
  };
  if (mc.wireguardKey !== undefined) value.wireguardKey = mc.wireguardKey;
  return checked(what, RemoteNodeSchema, value);
}

/**
 * A MeshIdentity (identity.ts identityObject()) → RemoteIdentity; null when its cluster bits
 * (16–23) are not `clusterId` (another cluster's number: never exported from here).
 */
export function remoteIdentityValue(obj: KubeObject, cluster: string, clusterId: number): RemoteIdentity | Error | null {
  const what = `identity ${obj.metadata.name}`;
  const p = parseIdentity(obj);
  if (p instanceof Error) return new Error(`${what}: ${p.message}`);
  if (identityClusterId(p.spec.id) !== clusterId) return null;
  return checked(what, RemoteIdentitySchema, { version: MESH_VERSION, cluster, id: p.spec.id, labels: p.spec.labels });
}

/** A MeshEndpoint ({ip, identity, node} published by agents) → IpEntry. */
export function ipEntryValue(obj: KubeObject, cluster: string): IpEntry | Error {
  const ns = obj.metadata.namespace;
  const what = `meshendpoint ${ns ? `${ns}/` : ''}${obj.metadata.name}`;
  const spec = rec(obj.spec);
  return checked(what, IpEntrySchema, { version: MESH_VERSION, cluster, ip: spec.ip, identity: spec.identity, node: spec.node });
}

/** The address a MeshEndpoint claims (its mesh/v1/ip key), or undefined. */
export function endpointIp(obj: KubeObject): string | undefined {
  const ip = rec(obj.spec).ip;
  return typeof ip === 'string' && ip !== '' && !ip.includes('/') ? ip : undefined;
}
