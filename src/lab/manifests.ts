/** Parsing and validating the Kubernetes YAML that `lab apply` and `lab remove` take. */
import YAML from 'yaml';
import { z } from 'zod';
import { LabelSelectorSchema, LabelsSchema, MeshNetworkPolicySpecSchema, NetworkPolicySpecSchema, unsupportedPolicyField } from '../cluster/policy-schema.js';
import { SPEC_SCHEMAS } from '../cluster/schemas.js';
import { isKind, RESOURCES, type Kind, type KubeObject } from '../cluster/types.js';
import { ValidationError } from '../util/errors.js';

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/;

const Labels = LabelsSchema;

const specSchemas: Record<Kind, z.ZodTypeAny> = {
  Namespace: z.any().optional(),
  Node: z.never(),
  MeshNodeStatus: z.never(),
  MeshClusterConfig: z.never(),
  MeshPeer: z.never(),
  Pod: SPEC_SCHEMAS.Pod,
  Deployment: SPEC_SCHEMAS.Deployment,
  Service: SPEC_SCHEMAS.Service,
  NetworkPolicy: NetworkPolicySpecSchema,
  MeshNetworkPolicy: MeshNetworkPolicySpecSchema,
};

/** Kinds a user may apply. */
export const APPLICABLE_KINDS: readonly Kind[] = ['Namespace', 'Pod', 'Deployment', 'Service', 'NetworkPolicy', 'MeshNetworkPolicy'];

export interface Manifest {
  readonly kind: Kind;
  readonly resource: string;
  readonly namespace: string | undefined;
  readonly name: string;
  readonly object: KubeObject;
  readonly where: string;
}

/** Parse a YAML stream into validated manifests; the first problem is one ValidationError line. */
export function parseManifests(text: string, file: string): Manifest[] {
  const docs = YAML.parseAllDocuments(text);
  const out: Manifest[] = [];
  let index = 0;
  for (const doc of docs) {
    index++;
    const where = `${file} (document ${index})`;
    if (doc.errors.length > 0) {
      const e = doc.errors[0];
      const line = e.linePos?.[0] ? ` at line ${e.linePos[0].line}` : '';
      throw new ValidationError('yaml', 'syntax', `invalid YAML in ${file}${line}: ${e.message.split('\n')[0]}`);
    }
    const raw: unknown = doc.toJS();
    if (raw === null || raw === undefined) continue;
    if (typeof raw !== 'object' || Array.isArray(raw)) {
      throw new ValidationError('yaml', 'object', `invalid manifest in ${where}: expected a mapping with apiVersion, kind and metadata`);
    }
    const o = raw as Record<string, unknown>;
    const kind = o.kind;
    if (typeof kind !== 'string' || typeof o.apiVersion !== 'string') {
      throw new ValidationError('manifest', 'kind', `invalid manifest in ${where}: apiVersion and kind are required`);
    }
    if (!isKind(kind) || !APPLICABLE_KINDS.includes(kind)) {
      throw new ValidationError('kind', 'supported', `unsupported kind "${kind}" in ${where}: supported kinds are ${APPLICABLE_KINDS.join(', ')}`);
    }
    const meta = o.metadata as Record<string, unknown> | undefined;
    const name = meta?.name;
    if (typeof name !== 'string' || name.length === 0) {
      throw new ValidationError('metadata.name', 'required', `invalid ${kind} in ${where}: metadata.name is required`);
    }
    const nameRule = kind === 'Namespace' ? DNS_LABEL : DNS_SUBDOMAIN;
    const maxLen = kind === 'Namespace' ? 63 : 253;
    if (!nameRule.test(name) || name.length > maxLen) {
      throw new ValidationError('metadata.name', 'dns', `invalid ${kind} name "${name}" in ${where}: must be lowercase a-z, 0-9 and '-' (at most ${maxLen} characters)`);
    }
    const namespaced = RESOURCES[kind].namespaced;
    let namespace: string | undefined;
    if (namespaced) {
      namespace = typeof meta?.namespace === 'string' ? meta.namespace : 'default';
      if (!DNS_LABEL.test(namespace) || namespace.length > 63) {
        throw new ValidationError('metadata.namespace', 'dns', `invalid namespace "${namespace}" of ${kind} ${name} in ${where}`);
      }
    }
    if (meta?.labels !== undefined && !Labels.safeParse(meta.labels).success) {
      throw new ValidationError('metadata.labels', 'strings', `invalid labels of ${kind} ${name} in ${where}: values must be strings`);
    }
    if (kind !== 'Namespace') {
      const parsed = specSchemas[kind].safeParse(o.spec);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        const path = ['spec', ...issue.path].join('.');
        throw new ValidationError(path, 'schema', `invalid ${kind} ${name} in ${where}: ${path}: ${issue.message}`);
      }
    }
    if (kind === 'NetworkPolicy' || kind === 'MeshNetworkPolicy') {
      const field = unsupportedPolicyField(kind, o.spec);
      if (field) throw new ValidationError(field, 'supported', `unsupported field ${field} in ${kind} ${name} in ${where}: the datapath cannot enforce it`);
    }
    if (kind === 'Deployment') {
      const spec = o.spec as { selector: { matchLabels?: Record<string, string> }; template: { metadata: { labels?: Record<string, string> } } };
      const tl = spec.template.metadata.labels ?? {};
      for (const [k, v] of Object.entries(spec.selector.matchLabels ?? {})) {
        if (tl[k] !== v) {
          throw new ValidationError('spec.selector', 'match', `invalid Deployment ${name} in ${where}: selector ${k}=${v} does not match the template's labels`);
        }
      }
    }
    const object: KubeObject = {
      ...(o as KubeObject),
      metadata: { ...(meta as KubeObject['metadata']), name, ...(namespace ? { namespace } : {}) },
    };
    out.push({ kind, resource: RESOURCES[kind].resource, namespace, name, object, where });
  }
  return out;
}

/** Does a label set match a selector (matchLabels and matchExpressions)? */
export function selectorMatches(sel: z.infer<typeof LabelSelectorSchema> | undefined, labels: Record<string, string>): boolean {
  if (!sel) return true;
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of sel.matchExpressions ?? []) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key);
    const vals = e.values ?? [];
    if (e.operator === 'In' && !(has && vals.includes(labels[e.key]))) return false;
    if (e.operator === 'NotIn' && has && vals.includes(labels[e.key])) return false;
    if (e.operator === 'Exists' && !has) return false;
    if (e.operator === 'DoesNotExist' && has) return false;
  }
  return true;
}
