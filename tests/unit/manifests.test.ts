import { parseManifests, selectorMatches } from '../../src/lab/manifests.js';
import { ValidationError } from '../../src/util/errors.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/lab.js';

function message(text: string): string {
  try {
    parseManifests(text, 'f.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ValidationError);
    return (err as Error).message;
  }
  throw new Error('expected a ValidationError');
}

describe('manifests', () => {
  test('the fixture app parses with namespaces defaulted', () => {
    const m = parseManifests(readFileSync(join(ROOT, 'fixtures', 'echo-app.yaml'), 'utf8'), 'echo-app.yaml');
    expect(m.map((x) => `${x.kind}/${x.namespace ?? ''}/${x.name}`)).toEqual([
      'Namespace//demo',
      'Deployment/demo/echo',
      'Service/demo/echo',
      'Pod/demo/client',
      'Pod/demo/other',
    ]);
  });

  test.each([
    ['malformed YAML', 'kind: Pod\n  metadata: [oops', /^invalid YAML in f\.yaml at line \d+: /],
    ['unknown kind', 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n', /^unsupported kind "ConfigMap" in f\.yaml \(document 1\): supported kinds are Namespace, Pod, Deployment, Service, NetworkPolicy, MeshNetworkPolicy$/],
    ['no name', 'apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {containers: [{name: a, image: b}]}\n', /metadata\.name is required/],
    ['bad name', 'apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Pod}\nspec: {containers: [{name: a, image: b}]}\n', /invalid Pod name "Bad_Pod"/],
    ['no containers', 'apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n', /^invalid Pod p in f\.yaml \(document 1\): spec\.containers: /],
    ['bad port', 'apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 70000}]}\n', /spec\.ports\.0\.port/],
    ['selector mismatch', 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {selector: {matchLabels: {app: a}}, template: {metadata: {labels: {app: b}}, spec: {containers: [{name: a, image: b}]}}}\n', /selector app=a does not match/],
    ['scalar document', '42\n', /expected a mapping/],
  ])('%s', (_name, text, want) => {
    expect(message(text)).toMatch(want);
  });

  test('selectors', () => {
    expect(selectorMatches({ matchLabels: { app: 'a' } }, { app: 'a', x: 'y' })).toBe(true);
    expect(selectorMatches({ matchLabels: { app: 'a' } }, { app: 'b' })).toBe(false);
    expect(selectorMatches({ matchExpressions: [{ key: 'app', operator: 'In', values: ['a', 'b'] }] }, { app: 'b' })).toBe(true);
    expect(selectorMatches({ matchExpressions: [{ key: 'app', operator: 'DoesNotExist' }] }, { app: 'b' })).toBe(false);
  });
});
