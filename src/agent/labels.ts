/**
 * Identity labels and label selectors.
 *
 * A pod's identity labels are what its security identity is allocated from and what policy
 * selectors are matched against: the pod's own labels (without per-revision ones such as
 * `pod-template-hash`) plus its namespace and cluster under Cilium's label keys.
 */
import { createHash } from 'node:crypto';
import { LABEL_CLUSTER, LABEL_NAMESPACE } from '../defaults.js';
import type { KubeObject } from '../cluster/types.js';

export type Labels = Record<string, string>;

/**
 * Pod labels left out of identity labels: they change with every rollout of a workload and would
 * give each revision its own identity (Cilium leaves out the same ones).
 */
export const IDENTITY_EXCLUDED_LABELS: readonly string[] = ['pod-template-hash', 'controller-revision-hash', 'pod-template-generation'];

/** A copy of the labels with keys in code-unit order, so JSON of equal sets is equal. */
export function sortLabels(labels: Labels): Labels {
  const out: Labels = {};
  for (const k of Object.keys(labels).sort(compareStrings)) out[k] = labels[k];
  return out;
}

/**
 * Identity labels of a pod in `cluster`: metadata.labels minus IDENTITY_EXCLUDED_LABELS, plus
 * `io.kubernetes.pod.namespace` (default `default`) and `io.cilium.k8s.policy.cluster`, which
 * override pod labels of the same keys. Keys sorted.
 */
export function podIdentityLabels(pod: KubeObject, cluster: string): Labels {
  const out: Labels = {};
  for (const [k, v] of Object.entries(pod.metadata.labels ?? {})) {
    if (!IDENTITY_EXCLUDED_LABELS.includes(k)) out[k] = v;
  }
  out[LABEL_NAMESPACE] = pod.metadata.namespace ?? 'default';
  out[LABEL_CLUSTER] = cluster;
  return sortLabels(out);
}

/**
 * Canonical text of a label set: `k=v` pairs sorted by key and joined by `;`. `%`, `;` and `=`
 * inside keys and values are percent-escaped, so two different sets never share a form.
 */
export function canonicalLabels(labels: Labels): string {
  return Object.keys(labels)
    .sort(compareStrings)
    .map((k) => `${escapeLabelText(k)}=${escapeLabelText(labels[k])}`)
    .join(';');
}

/** sha256 (hex) of canonicalLabels(labels): the key an identity is found by. */
export function labelsHash(labels: Labels): string {
  return createHash('sha256').update(canonicalLabels(labels), 'utf8').digest('hex');
}

/** Are two label sets equal? */
export function labelsEqual(a: Labels, b: Labels): boolean {
  return canonicalLabels(a) === canonicalLabels(b);
}

/** Is v a plain object of string values (a label set as read from JSON)? */
export function isLabels(v: unknown): v is Labels {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  return Object.values(v).every((x) => typeof x === 'string');
}

function escapeLabelText(s: string): string {
  return s.replace(/[%;=]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);
}

/** Locale-independent string order (deterministic on every machine). */
export function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Selectors

export type SelectorOperator = 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';

/** One requirement of a label selector. matchLabels k=v becomes `{ key: k, operator: 'In', values: [v] }`. */
export interface SelectorRequirement {
  readonly key: string;
  readonly operator: SelectorOperator;
  readonly values: readonly string[];
}

/** A label selector reduced to requirements that must all hold. No requirements selects everything. */
export interface Selector {
  readonly requirements: readonly SelectorRequirement[];
}

/** Thrown by parseSelector with the path of the offending field. */
export class SelectorError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
    this.name = 'SelectorError';
  }
}

const OPERATORS: readonly SelectorOperator[] = ['In', 'NotIn', 'Exists', 'DoesNotExist'];

/**
 * Cilium writes selector keys with a source prefix (`k8s:app`, `any:app`); identity labels here
 * carry no source, so the prefix is dropped.
 */
export function normalizeSelectorKey(key: string): string {
  for (const p of ['k8s:', 'any:']) if (key.startsWith(p)) return key.slice(p.length);
  return key;
}

/**
 * Parse a Kubernetes LabelSelector (`matchLabels`, `matchExpressions`) as found in a manifest.
 * Throws SelectorError naming `path` and the rule broken: In/NotIn need values, Exists/DoesNotExist
 * take none, keys are non-empty strings, values strings. Other fields are rejected too, because
 * ignoring a field could select more than the author meant.
 */
export function parseSelector(raw: unknown, path: string): Selector {
  if (raw === undefined || raw === null) return { requirements: [] };
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new SelectorError(path, 'must be a label selector object');
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (k !== 'matchLabels' && k !== 'matchExpressions') throw new SelectorError(`${path}.${k}`, 'unknown selector field');
  }
  const reqs: SelectorRequirement[] = [];
  if (o.matchLabels !== undefined) {
    if (!isLabels(o.matchLabels)) throw new SelectorError(`${path}.matchLabels`, 'must map keys to string values');
    for (const [k, v] of Object.entries(o.matchLabels)) {
      if (k === '') throw new SelectorError(`${path}.matchLabels`, 'empty key');
      reqs.push({ key: normalizeSelectorKey(k), operator: 'In', values: [v] });
    }
  }
  if (o.matchExpressions !== undefined) {
    if (!Array.isArray(o.matchExpressions)) throw new SelectorError(`${path}.matchExpressions`, 'must be a list');
    o.matchExpressions.forEach((e: unknown, i: number) => {
      const p = `${path}.matchExpressions[${i}]`;
      if (typeof e !== 'object' || e === null || Array.isArray(e)) throw new SelectorError(p, 'must be an object');
      const x = e as Record<string, unknown>;
      if (typeof x.key !== 'string' || x.key === '') throw new SelectorError(`${p}.key`, 'must be a non-empty string');
      if (typeof x.operator !== 'string' || !OPERATORS.includes(x.operator as SelectorOperator)) {
        throw new SelectorError(`${p}.operator`, `must be one of ${OPERATORS.join(', ')}`);
      }
      const op = x.operator as SelectorOperator;
      const values = x.values ?? [];
      if (!Array.isArray(values) || !values.every((v) => typeof v === 'string')) throw new SelectorError(`${p}.values`, 'must be a list of strings');
      if ((op === 'In' || op === 'NotIn') && values.length === 0) throw new SelectorError(`${p}.values`, `${op} needs at least one value`);
      if ((op === 'Exists' || op === 'DoesNotExist') && values.length > 0) throw new SelectorError(`${p}.values`, `${op} takes no values`);
      reqs.push({ key: normalizeSelectorKey(x.key), operator: op, values: [...(values as string[])] });
    });
  }
  return { requirements: reqs };
}

/** Does the selector name this key in any requirement? */
export function selectorNames(sel: Selector, key: string): boolean {
  return sel.requirements.some((r) => r.key === key);
}

/** The selector with more requirements ANDed in. */
export function selectorAnd(sel: Selector, ...more: SelectorRequirement[]): Selector {
  return { requirements: [...sel.requirements, ...more] };
}

/** Requirements on one key only, and the rest. */
export function splitSelector(sel: Selector, key: string): { on: Selector; rest: Selector } {
  return {
    on: { requirements: sel.requirements.filter((r) => r.key === key) },
    rest: { requirements: sel.requirements.filter((r) => r.key !== key) },
  };
}

/** Does a label set satisfy every requirement? */
export function selectorMatches(sel: Selector, labels: Labels): boolean {
  for (const r of sel.requirements) {
    const has = Object.prototype.hasOwnProperty.call(labels, r.key);
    switch (r.operator) {
      case 'In':
        if (!has || !r.values.includes(labels[r.key])) return false;
        break;
      case 'NotIn':
        if (has && r.values.includes(labels[r.key])) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
    }
  }
  return true;
}
