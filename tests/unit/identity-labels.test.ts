import { canonicalLabels, labelsHash, parseSelector, podIdentityLabels, selectorMatches, SelectorError } from '../../src/agent/labels.js';
import { identityClusterId, isClusterIdentity, makeIdentity, reservedIdentityLabels, IDENTITY_WORLD } from '../../src/agent/identity.js';
import { LABEL_CLUSTER, LABEL_NAMESPACE } from '../../src/defaults.js';
import { ValidationError } from '../../src/util/errors.js';

describe('identity labels', () => {
  test('pod labels minus per-revision ones, plus namespace and cluster, sorted', () => {
    const pod = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', namespace: 'demo', labels: { z: '1', app: 'web', 'pod-template-hash': 'abc', [LABEL_CLUSTER]: 'spoofed' } } };
    const l = podIdentityLabels(pod, 'c1');
    expect(Object.entries(l)).toEqual([
      ['app', 'web'],
      [LABEL_CLUSTER, 'c1'],
      [LABEL_NAMESPACE, 'demo'],
      ['z', '1'],
    ]);
    expect(podIdentityLabels({ ...pod, metadata: { name: 'p' } }, 'c1')).toEqual({ [LABEL_CLUSTER]: 'c1', [LABEL_NAMESPACE]: 'default' });
  });

  test.each([
    ['sorted pairs', { b: '2', a: '1' }, 'a=1;b=2'],
    ['separators escaped', { 'a=b': 'c;d', e: '%' }, 'a%3Db=c%3Bd;e=%25'],
    ['empty value', { a: '' }, 'a='],
  ])('canonical form: %s', (_name, labels, want) => {
    expect(canonicalLabels(labels)).toBe(want);
  });

  test('hash is order-independent and separates look-alike sets', () => {
    expect(labelsHash({ a: '1', b: '2' })).toBe(labelsHash({ b: '2', a: '1' }));
    expect(labelsHash({ a: '1;b=2' })).not.toBe(labelsHash({ a: '1', b: '2' }));
    expect(labelsHash({ a: '1' })).toMatch(/^[0-9a-f]{64}$/);
  });

  test('selectors: matchLabels, expressions, k8s: prefix', () => {
    const sel = parseSelector({ matchLabels: { 'k8s:app': 'a' }, matchExpressions: [{ key: 'tier', operator: 'NotIn', values: ['db'] }] }, 's');
    expect(selectorMatches(sel, { app: 'a', tier: 'web' })).toBe(true);
    expect(selectorMatches(sel, { app: 'a', tier: 'db' })).toBe(false);
    expect(selectorMatches(parseSelector({}, 's'), {})).toBe(true);
    expect(() => parseSelector({ matchLabels: { a: 1 } }, 's')).toThrow(new SelectorError('s.matchLabels', 'must map keys to string values'));
    expect(() => parseSelector({ matchExpressions: [{ key: 'a', operator: 'Exists', values: ['x'] }] }, 's')).toThrow('s.matchExpressions[0].values: Exists takes no values');
  });

  test('identity numbers', () => {
    expect(makeIdentity(1, 1)).toBe(65537);
    expect(makeIdentity(255, 65535)).toBe(0xffffff);
    expect(identityClusterId(makeIdentity(7, 3))).toBe(7);
    expect(isClusterIdentity(IDENTITY_WORLD)).toBe(false);
    expect(isClusterIdentity(7 << 16)).toBe(false);
    expect(reservedIdentityLabels(IDENTITY_WORLD)).toEqual({ 'reserved:world': '' });
    expect(() => makeIdentity(1, 0)).toThrow(new ValidationError('identity', 'range', 'local identity 0 out of range 1..65535'));
  });
});
