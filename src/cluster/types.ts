/** Kubernetes-shaped objects as the lab store holds them (`/registry/<resource>/<ns>/<name>`). */
import { z } from 'zod';

export const ObjectMetaSchema = z
  .object({
    name: z.string(),
    namespace: z.string().optional(),
    labels: z.record(z.string()).optional(),
    annotations: z.record(z.string()).optional(),
    uid: z.string().optional(),
    resourceVersion: z.string().optional(),
    creationTimestamp: z.string().optional(),
    ownerReferences: z.array(z.object({ kind: z.string(), name: z.string() }).passthrough()).optional(),
  })
  .passthrough();

export const KubeObjectSchema = z
  .object({
    apiVersion: z.string(),
    kind: z.string(),
    metadata: ObjectMetaSchema,
    spec: z.any().optional(),
    status: z.any().optional(),
  })
  .passthrough();

export type KubeObject = z.infer<typeof KubeObjectSchema>;

/** Resource (plural, lowercase) per kind, and whether it lives in a namespace. */
export const RESOURCES = {
  Namespace: { resource: 'namespaces', namespaced: false },
  Node: { resource: 'nodes', namespaced: false },
  Pod: { resource: 'pods', namespaced: true },
  Deployment: { resource: 'deployments', namespaced: true },
  Service: { resource: 'services', namespaced: true },
  NetworkPolicy: { resource: 'networkpolicies', namespaced: true },
  MeshNetworkPolicy: { resource: 'meshnetworkpolicies', namespaced: true },
  MeshNodeStatus: { resource: 'meshnodestatuses', namespaced: false },
  MeshClusterConfig: { resource: 'meshclusterconfigs', namespaced: false },
  /** A connected peer cluster: its apiserver address and the credentials to read it (src/mesh/peers.ts). */
  MeshPeer: { resource: 'meshpeers', namespaced: false },
} as const;

export type Kind = keyof typeof RESOURCES;

export function isKind(k: string): k is Kind {
  return Object.prototype.hasOwnProperty.call(RESOURCES, k);
}

/** Store key of an object. */
export function objectKey(resource: string, namespace: string | undefined, name: string): string {
  return namespace ? `/registry/${resource}/${namespace}/${name}` : `/registry/${resource}/${name}`;
}
