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
const PolicyPort = z
  .object({
    port: z.union([z.number().int().min(1).max(65535), z.string()]).optional(),
    endPort: z.number().int().min(1).max(65535).optional(),
    protocol: z.enum(['TCP', 'UDP', 'SCTP', 'ANY']).optional(),
  })
  .passthrough();

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

// ---------------------------------------------------------------------------------------------
// What the datapath can enforce, field by field. A node is either a leaf (any value; its type is
// checked elsewhere), an object with known fields, a list of one node, or a field the datapath
// cannot enforce (a narrowing it would skip, a peer or L7 rule it has no notion of).

type Shape = 'leaf' | 'unsupported' | { readonly fields: Readonly<Record<string, Shape>> } | { readonly each: Shape };

const fields = (f: Record<string, Shape>): Shape => ({ fields: f });
const each = (s: Shape): Shape => ({ each: s });

const SELECTOR = fields({ matchLabels: 'leaf', matchExpressions: each(fields({ key: 'leaf', operator: 'leaf', values: 'leaf' })) });
const PORT = fields({ port: 'leaf', endPort: 'leaf', protocol: 'leaf' });

const NP_PEER = fields({ podSelector: SELECTOR, namespaceSelector: SELECTOR, ipBlock: fields({ cidr: 'leaf', except: 'leaf' }) });
const NETWORK_POLICY = fields({
  podSelector: SELECTOR,
  policyTypes: 'leaf',
  ingress: each(fields({ from: each(NP_PEER), ports: each(PORT) })),
  egress: each(fields({ to: each(NP_PEER), ports: each(PORT) })),
});

const CIDR_SET = fields({ cidr: 'leaf', except: 'leaf', cidrGroupRef: 'unsupported', cidrGroupSelector: 'unsupported' });
const TO_PORTS = each(
  fields({
    ports: each(PORT),
    rules: 'unsupported',
    listener: 'unsupported',
    originatingTLS: 'unsupported',
    terminatingTLS: 'unsupported',
    serverNames: 'unsupported',
  }),
);
const meshRule = (f: 'from' | 'to', extra: Record<string, Shape>): Shape =>
  fields({
    [`${f}Endpoints`]: each(SELECTOR),
    [`${f}Entities`]: 'leaf',
    [`${f}CIDR`]: 'leaf',
    [`${f}CIDRSet`]: each(CIDR_SET),
    [`${f}Requires`]: 'unsupported',
    [`${f}Nodes`]: 'unsupported',
    [`${f}Groups`]: 'unsupported',
    toPorts: TO_PORTS,
    icmps: 'unsupported',
    authentication: 'unsupported',
    ...extra,
  });
const MESH_NETWORK_POLICY = fields({
  endpointSelector: SELECTOR,
  description: 'leaf',
  labels: 'leaf',
  enableDefaultDeny: fields({ ingress: 'leaf', egress: 'leaf' }),
  ingress: each(meshRule('from', {})),
  egress: each(meshRule('to', { toFQDNs: 'unsupported', toServices: 'unsupported' })),
  ingressDeny: 'unsupported',
  egressDeny: 'unsupported',
  nodeSelector: 'unsupported',
  specs: 'unsupported',
});

function firstUnsupported(shape: Shape, v: unknown, path: string): string | null {
  if (shape === 'leaf' || v === undefined || v === null) return null;
  if (shape === 'unsupported') return path;
  if ('each' in shape) {
    if (!Array.isArray(v)) return null;
    for (let i = 0; i < v.length; i++) {
      const r = firstUnsupported(shape.each, v[i], `${path}[${i}]`);
      if (r) return r;
    }
    return null;
  }
  if (typeof v !== 'object' || Array.isArray(v)) return null;
  for (const k of Object.keys(v).sort()) {
    const sub = shape.fields[k];
    if (sub === undefined) return `${path}.${k}`;
    const r = firstUnsupported(sub, (v as Record<string, unknown>)[k], `${path}.${k}`);
    if (r) return r;
  }
  return null;
}

/**
 * The first field of a policy spec that the datapath cannot enforce, as a dotted path
 * (e.g. `spec.ingressDeny`, `spec.egress[0].toFQDNs`, `spec.ingress[1].toPorts[0].rules`), or null
 * when everything in it can be enforced. Strict: a field this version does not know counts as
 * one it cannot enforce, since skipping it could allow more than its author meant. Fields are
 * visited in key order, lists in order. Only field names are judged; values are the schemas' and
 * the compiler's business.
 */
export function unsupportedPolicyField(kind: 'NetworkPolicy' | 'MeshNetworkPolicy', spec: unknown): string | null {
  return firstUnsupported(kind === 'NetworkPolicy' ? NETWORK_POLICY : MESH_NETWORK_POLICY, spec, 'spec');
}
