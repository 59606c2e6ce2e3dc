import { podMetadataUpdate } from '../../src/lab/pod-update.js';
import type { KubeObject } from '../../src/cluster/types.js';
import { ValidationError } from '../../src/util/errors.js';

const existing: KubeObject = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name: 'client', namespace: 'demo', uid: 'u-1', creationTimestamp: '2026-01-01T00:00:00Z', labels: { app: 'client' } },
  spec: { containers: [{ name: 'c', image: 'curl:1', ports: [{ containerPort: 80 }] }], nodeName: 'c1-n1' },
  status: { phase: 'Running', podIP: '10.1.0.2' },
};

function manifest(metadata: Partial<KubeObject['metadata']>, spec: unknown = { containers: [{ name: 'c', image: 'curl:1', ports: [{ containerPort: 80 }] }] }): KubeObject {
  return { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'client', namespace: 'demo', ...metadata }, spec };
}

describe('podMetadataUpdate', () => {
  const updates: Array<[string, KubeObject, KubeObject['metadata'] | null]> = [
    ['same labels, spec without the scheduled nodeName', manifest({ labels: { app: 'client' } }), null],
    ['same, keys in another order', manifest({ labels: { app: 'client' } }, { containers: [{ ports: [{ containerPort: 80 }], image: 'curl:1', name: 'c' }] }), null],
    ['label added', manifest({ labels: { app: 'client', tier: 'web' } }), { ...existing.metadata, labels: { app: 'client', tier: 'web' }, annotations: undefined as never }],
    ['label value changed', manifest({ labels: { app: 'other' } }), { ...existing.metadata, labels: { app: 'other' } }],
    ['labels removed', manifest({}), { name: 'client', namespace: 'demo', uid: 'u-1', creationTimestamp: '2026-01-01T00:00:00Z' }],
    ['annotation added', manifest({ labels: { app: 'client' }, annotations: { a: 'b' } }), { ...existing.metadata, annotations: { a: 'b' } }],
    ['same nodeName given', manifest({ labels: { app: 'client' } }, { containers: [{ name: 'c', image: 'curl:1', ports: [{ containerPort: 80 }] }], nodeName: 'c1-n1' }), null],
  ];
  test.each(updates)('%s', (_name, m, want) => {
    const got = podMetadataUpdate(existing, m);
    if (want === null) return expect(got).toBeNull();
    expect(JSON.parse(JSON.stringify(got!.metadata))).toEqual(JSON.parse(JSON.stringify(want)));
    // everything but metadata is kept: spec (with its nodeName) and status
    expect(got!.spec).toEqual(existing.spec);
    expect(got!.status).toEqual(existing.status);
  });

  const refused: Array<[string, unknown, string]> = [
    ['image', { containers: [{ name: 'c', image: 'curl:2', ports: [{ containerPort: 80 }] }] }, 'spec.containers[0].image'],
    ['a port', { containers: [{ name: 'c', image: 'curl:1', ports: [{ containerPort: 81 }] }] }, 'spec.containers[0].ports[0].containerPort'],
    ['a second container', { containers: [{ name: 'c', image: 'curl:1', ports: [{ containerPort: 80 }] }, { name: 'd', image: 'x' }] }, 'spec.containers'],
    ['another node', { containers: [{ name: 'c', image: 'curl:1', ports: [{ containerPort: 80 }] }], nodeName: 'c1-n2' }, 'spec.nodeName'],
    ['a new field', { containers: [{ name: 'c', image: 'curl:1', ports: [{ containerPort: 80 }] }], hostNetwork: true }, 'spec.hostNetwork'],
  ];
  test.each(refused)('changed %s is refused naming the field', (_name, spec, field) => {
    let err: unknown;
    try {
      podMetadataUpdate(existing, manifest({ labels: { app: 'client' } }, spec));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as ValidationError).field).toBe(field);
    expect((err as Error).message).toBe(`pod demo/client: ${field} cannot change (a Pod's spec is immutable; delete the pod and apply it again)`);
  });
});
