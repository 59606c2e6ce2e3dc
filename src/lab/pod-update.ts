/**
 * A Pod applied again, decided as Kubernetes decides it: metadata (labels, annotations) may
 * change in place, the spec may not. Pure functions, no I/O.
 */
import type { KubeObject } from '../cluster/types.js';
import { ValidationError } from '../util/errors.js';

/** Keys sorted at every level, so equal objects print equal whatever order their keys came in. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The first path where two values differ (`spec.containers[0].image`), or null. */
function firstDifference(a: unknown, b: unknown, path: string): string | null {
  if (canonical(a) === canonical(b)) return null;
  if (a && b && typeof a === 'object' && typeof b === 'object' && Array.isArray(a) === Array.isArray(b)) {
    if (Array.isArray(a) && Array.isArray(b)) {
      if (a.length !== b.length) return path;
      for (let i = 0; i < a.length; i++) {
        const d = firstDifference(a[i], b[i], `${path}[${i}]`);
        if (d) return d;
      }
      return path;
    }
    const ao = a as Record<string, unknown>;
    const bo = b as Record<string, unknown>;
    for (const k of [...new Set([...Object.keys(ao), ...Object.keys(bo)])].sort()) {
      const d = firstDifference(ao[k], bo[k], `${path}.${k}`);
      if (d) return d;
    }
  }
  return path;
}

/**
 * A Pod applied again, as Kubernetes treats it: metadata (labels, annotations) is updated in
 * place, the spec is immutable. Returns the object to write, null when nothing changed, and
 * throws a ValidationError naming the first spec field that differs.
 */
export function podMetadataUpdate(existing: KubeObject, manifest: KubeObject): KubeObject | null {
  const ns = existing.metadata.namespace ?? 'default';
  const want = { ...((manifest.spec ?? {}) as Record<string, unknown>) };
  const have = { ...((existing.spec ?? {}) as Record<string, unknown>) };
  if (want.nodeName === undefined) delete have.nodeName; // the lab scheduled it
  const diff = firstDifference(have, want, 'spec');
  if (diff) {
    throw new ValidationError(diff, 'immutable', `pod ${ns}/${existing.metadata.name}: ${diff} cannot change (a Pod's spec is immutable; delete the pod and apply it again)`);
  }
  const labels = manifest.metadata.labels ?? {};
  const annotations = manifest.metadata.annotations ?? {};
  if (canonical(labels) === canonical(existing.metadata.labels ?? {}) && canonical(annotations) === canonical(existing.metadata.annotations ?? {})) return null;
  const metadata = { ...existing.metadata, labels, annotations };
  if (Object.keys(labels).length === 0) delete (metadata as { labels?: unknown }).labels;
  if (Object.keys(annotations).length === 0) delete (metadata as { annotations?: unknown }).annotations;
  return { ...existing, metadata };
}
