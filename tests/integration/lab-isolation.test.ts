/** Two labs in two state dirs run side by side and share nothing: names, links, addresses, processes. */
import { existsSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { TestLab, listNetns, requireRoot, sh } from '../helpers/lab.js';
import { labPrefix } from '../../src/lab/state.js';

const a = new TestLab('/tmp/meshctl-test-iso-a');
const b = new TestLab('/tmp/meshctl-test-iso-b');
const podYaml = `apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
    - name: web
      image: nginx
`;

beforeAll(async () => {
  requireRoot();
  await a.cleanup();
  await b.cleanup();
  mkdirSync('/tmp/meshctl-test-iso-files', { recursive: true });
  writeFileSync('/tmp/meshctl-test-iso-files/pod.yaml', podYaml);
});

afterAll(async () => {
  await a.cleanup();
  await b.cleanup();
  await sh('rm', ['-rf', '/tmp/meshctl-test-iso-files']);
});

test('two state dirs give two labs that do not interfere', async () => {
  const pa = labPrefix(a.home);
  const pb = labPrefix(b.home);
  expect(pa).not.toBe(pb);
  // same cluster name and pod CIDR in both: they live in different namespaces
  await a.ok(['lab', 'create', 'c1', '--id', '1', '--pod-cidr', '10.1.0.0/16', '--nodes', '1']);
  await b.ok(['lab', 'create', 'c1', '--id', '1', '--pod-cidr', '10.1.0.0/16', '--nodes', '1']);
  await a.ok(['lab', 'apply', '-f', '/tmp/meshctl-test-iso-files/pod.yaml', '--context', 'c1']);
  await b.ok(['lab', 'apply', '-f', '/tmp/meshctl-test-iso-files/pod.yaml', '--context', 'c1']);

  const la = await a.json(['lab', 'list']);
  const lb = await b.json(['lab', 'list']);
  expect(la.clusters[0].store.endpoint).not.toBe(lb.clusters[0].store.endpoint);
  expect(listNetns().filter((n) => n.startsWith(`mesh${pa}-`)).length).toBeGreaterThanOrEqual(4);
  expect(listNetns().filter((n) => n.startsWith(`mesh${pb}-`)).length).toBeGreaterThanOrEqual(4);

  // each pod answers in its own lab, at the same address
  for (const lab of [a, b]) {
    const pods = (await lab.json(['lab', 'get', 'pods', '--context', 'c1'])).items;
    expect(pods[0].status.podIP).toBe('10.1.0.2');
    const r = await lab.ok(['lab', 'exec', '--context', 'c1', 'default/web', '--', 'curl', '-s', '-m', '5', 'http://10.1.0.2:8080/']);
    expect(JSON.parse(r.stdout).pod).toBe('web');
  }

  // deleting lab A leaves lab B whole
  await a.ok(['lab', 'delete', '--all']);
  expect(listNetns().filter((n) => n.startsWith(`mesh${pa}-`))).toEqual([]);
  const after = await b.json(['lab', 'list']);
  expect(after.clusters[0].agentsReady).toBe(1);
  expect(after.clusters[0].store.ready).toBe(true);
  const r = await b.ok(['lab', 'exec', '--context', 'c1', 'default/web', '--', 'curl', '-s', '-m', '5', 'http://10.1.0.2:8080/']);
  expect(JSON.parse(r.stdout).pod).toBe('web');
  expect((await sh('ip', ['link', 'show', `mh${pb}`])).exitCode).toBe(0);
  expect((await sh('ip', ['link', 'show', `mh${pa}`])).exitCode).not.toBe(0);

  // deleting the last cluster by name takes the lab with it, and a new create starts afresh
  await b.ok(['lab', 'delete', 'c1']);
  expect(listNetns().filter((n) => n.startsWith(`mesh${pb}-`))).toEqual([]);
  expect((await sh('ip', ['link', 'show', `mh${pb}`])).exitCode).not.toBe(0);
  expect(existsSync(join(b.home, 'lab.json'))).toBe(false);
  await b.ok(['lab', 'create', 'c1', '--id', '1', '--pod-cidr', '10.1.0.0/16', '--nodes', '1']);
  expect((await b.json(['lab', 'list'])).clusters[0].agentsReady).toBe(1);
});
