/**
 * Typed schemas of the object kinds meshctl reads (Pod, Service, Node, Namespace, Deployment),
 * shared by `lab apply` (which refuses what fails them) and the agent (whose informers skip and
 * report what fails them), so an object is judged the same way where it is written and where it
 * is enforced. They are strict about what the datapath cannot do (a NodePort Service, a
 * hostNetwork Pod, ClientIP session affinity): such an object is refused, never half-applied.
 * The policy kinds live in policy-schema.ts.
 *
 * parseXxx returns only the fields meshctl reads (unknown fields are dropped, `status.meshctl`
 * kept whole): never write a parsed object back to the store.
 */
import { z } from 'zod';
import { LabelSelectorSchema, LabelsSchema } from './policy-schema.js';
import type { KubeObject } from './types.js';
import { parseCidr, parseIp } from '../util/cidr.js';
import { ValidationError } from '../util/errors.js';

const Ipv4 = z.string().refine((s) => parseIp(s) !== null, 'must be an IPv4 address');
const Cidr4 = z.string().refine((s) => parseCidr(s) !== null, 'must be an IPv4 CIDR');
const Port = z.number().int().min(1).max(65535);
/** IANA service name, as Kubernetes requires of port names: ≤ 15 of [a-z0-9-], a letter, no `--`, no edge `-`. */
const PortName = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/, 'must be at most 15 characters of a-z, 0-9 and - (not at either end)')
  .refine((s) => /[a-z]/.test(s) && !s.includes('--'), 'must contain a letter and no "--"');

export const ObjectMetaSchema = z.object({
  name: z.string().min(1),
  namespace: z.string().min(1).optional(),
  labels: LabelsSchema.optional(),
  annotations: LabelsSchema.optional(),
  uid: z.string().optional(),
  resourceVersion: z.string().optional(),
  creationTimestamp: z.string().optional(),
  ownerReferences: z.array(z.object({ apiVersion: z.string().optional(), kind: z.string(), name: z.string() })).optional(),
});

const NamespacedMeta = ObjectMetaSchema.extend({ namespace: z.string().min(1) });

/** A field the datapath cannot honour: present only with its harmless value. */
function refuse<T extends z.ZodTypeAny>(schema: T, allowed: (v: z.infer<T>) => boolean, why: string) {
  return schema.optional().refine((v) => v === undefined || allowed(v), why);
}

export const ContainerPortSchema = z.object({
  containerPort: Port,
  protocol: z.enum(['TCP', 'UDP', 'SCTP']).optional(),
  name: PortName.optional(),
});

export const ContainerSchema = z.object({
  name: z.string().min(1),
  image: z.string().min(1),
  ports: z.array(ContainerPortSchema).optional(),
});

export const PodSpecSchema = z.object({
  containers: z.array(ContainerSchema).min(1),
  nodeName: z.string().optional(),
  hostNetwork: refuse(z.boolean(), (v) => !v, 'hostNetwork pods are not supported: the datapath only enforces pod-network endpoints'),
});

/** The lab's pod wiring (what CNI ADD would report); read through an EndpointSource. */
export const LabPodStatusSchema = z.object({ netns: z.string().min(1), lxc: z.string().min(1).max(15) }).passthrough();

export const PodStatusSchema = z.object({
  phase: z.enum(['Pending', 'Running', 'Succeeded', 'Failed', 'Unknown']).optional(),
  podIP: Ipv4.optional(),
  podIPs: z.array(z.object({ ip: Ipv4 })).optional(),
  hostIP: Ipv4.optional(),
  startTime: z.string().optional(),
  meshctl: LabPodStatusSchema.optional(),
});

export const PodSchema = z.object({
  apiVersion: z.literal('v1'),
  kind: z.literal('Pod'),
  metadata: NamespacedMeta,
  spec: PodSpecSchema,
  status: PodStatusSchema.optional(),
});
export type Pod = z.infer<typeof PodSchema>;

export const ServicePortSchema = z.object({
  name: PortName.optional(),
  port: Port,
  targetPort: z.union([Port, PortName]).optional(),
  protocol: z.enum(['TCP', 'UDP'], { errorMap: () => ({ message: 'must be TCP or UDP (the datapath balances no other protocol)' }) }).optional(),
});

export const ServiceSpecSchema = z
  .object({
    type: refuse(z.string(), (v) => v === 'ClusterIP', 'only ClusterIP services are supported (the datapath has no NodePort, LoadBalancer or ExternalName)'),
    clusterIP: Ipv4.optional(),
    clusterIPs: z.array(Ipv4).optional(),
    selector: LabelsSchema.optional(),
    ports: z.array(ServicePortSchema).min(1),
    sessionAffinity: refuse(z.string(), (v) => v === 'None', 'only sessionAffinity None is supported'),
    externalIPs: refuse(z.array(z.string()), (v) => v.length === 0, 'externalIPs are not supported'),
    internalTrafficPolicy: refuse(z.string(), (v) => v === 'Cluster', 'only internalTrafficPolicy Cluster is supported'),
    ipFamilies: refuse(z.array(z.string()), (v) => v.every((f) => f === 'IPv4'), 'only IPv4 is supported'),
  })
  .superRefine((spec, ctx) => {
    const names = new Set<string>();
    const keys = new Set<string>();
    spec.ports.forEach((p, i) => {
      if (spec.ports.length > 1 && p.name === undefined) ctx.addIssue({ code: 'custom', path: ['ports', i, 'name'], message: 'is required when a service has more than one port' });
      if (p.name !== undefined) {
        if (names.has(p.name)) ctx.addIssue({ code: 'custom', path: ['ports', i, 'name'], message: `duplicate port name "${p.name}"` });
        names.add(p.name);
      }
      const k = `${p.port}/${p.protocol ?? 'TCP'}`;
      if (keys.has(k)) ctx.addIssue({ code: 'custom', path: ['ports', i, 'port'], message: `duplicate port ${k}` });
      keys.add(k);
    });
  });

export const ServiceSchema = z.object({
  apiVersion: z.literal('v1'),
  kind: z.literal('Service'),
  metadata: NamespacedMeta,
  spec: ServiceSpecSchema,
});
export type Service = z.infer<typeof ServiceSchema>;

/** The node's own report of itself (written by its agent). */
export const LabNodeStatusSchema = z
  .object({ vpc: z.string().optional(), routerIP: Ipv4.optional(), routing: z.enum(['tunnel', 'native', 'hybrid']).optional() })
  .passthrough();

export const NodeSchema = z.object({
  apiVersion: z.literal('v1'),
  kind: z.literal('Node'),
  metadata: ObjectMetaSchema,
  spec: z.object({ podCIDR: Cidr4.optional(), podCIDRs: z.array(Cidr4).optional() }).default({}),
  status: z
    .object({
      addresses: z.array(z.object({ type: z.string(), address: z.string() })).optional(),
      nodeInfo: z.object({ bootID: z.string().optional() }).optional(),
      meshctl: LabNodeStatusSchema.optional(),
    })
    .default({}),
});
export type Node = z.infer<typeof NodeSchema>;

export const NamespaceSchema = z.object({
  apiVersion: z.literal('v1'),
  kind: z.literal('Namespace'),
  metadata: ObjectMetaSchema.refine((m) => m.namespace === undefined, 'a Namespace has no namespace'),
});
export type Namespace = z.infer<typeof NamespaceSchema>;

export const DeploymentSpecSchema = z.object({
  replicas: z.number().int().min(0).max(100).optional(),
  selector: LabelSelectorSchema,
  template: z.object({ metadata: z.object({ labels: LabelsSchema.optional() }).passthrough(), spec: PodSpecSchema }).passthrough(),
});

export const DeploymentSchema = z.object({
  apiVersion: z.literal('apps/v1'),
  kind: z.literal('Deployment'),
  metadata: NamespacedMeta,
  spec: DeploymentSpecSchema,
});
export type Deployment = z.infer<typeof DeploymentSchema>;

/**
 * The first issue of a failed parse as one ValidationError: field is the dotted path, the message
 * `<path>: <rule>` (e.g. `spec.ports.0.port: Number must be less than or equal to 65535`).
 */
export function schemaError(err: z.ZodError, prefix: readonly (string | number)[] = []): ValidationError {
  const issue = err.issues[0];
  const path = [...prefix, ...issue.path].join('.') || '(object)';
  return new ValidationError(path, 'schema', `${path}: ${issue.message}`);
}

function parser<S extends z.ZodTypeAny>(schema: S): (obj: unknown) => z.infer<S> | ValidationError {
  return (obj) => {
    const r = schema.safeParse(obj);
    return r.success ? (r.data as z.infer<S>) : schemaError(r.error);
  };
}

/** A Pod as the agent reads it, or the first rule it breaks. */
export const parsePod: (obj: KubeObject | unknown) => Pod | ValidationError = parser(PodSchema);
/** A ClusterIP Service, or the first rule it breaks. */
export const parseService: (obj: KubeObject | unknown) => Service | ValidationError = parser(ServiceSchema);
export const parseNode: (obj: KubeObject | unknown) => Node | ValidationError = parser(NodeSchema);
export const parseNamespace: (obj: KubeObject | unknown) => Namespace | ValidationError = parser(NamespaceSchema);
export const parseDeployment: (obj: KubeObject | unknown) => Deployment | ValidationError = parser(DeploymentSchema);

/** Spec schemas by kind, for `lab apply` (which checks metadata itself). */
export const SPEC_SCHEMAS = {
  Pod: PodSpecSchema,
  Service: ServiceSpecSchema,
  Deployment: DeploymentSpecSchema,
} as const;

/** The node's InternalIP, if it reports one. */
export function nodeInternalIP(node: Node): string | undefined {
  return node.status.addresses?.find((a) => a.type === 'InternalIP')?.address;
}
