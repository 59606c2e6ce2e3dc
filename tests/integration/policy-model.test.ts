/**
 * NetworkPolicy against the upstream Kubernetes e2e model, on a real lab cluster: namespaces x, y, z
 * with pods a, b, c (a and b on node 1, c on node 2). Each case applies one policy and checks the
 * full 9×9 reachability matrix on one port with real TCP connections, against the matrix
 * Kubernetes' semantics give.
 *
 * Own state dir (and so own name prefix); cleaned up before and after. Needs root.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES, TestLab, eventually, requireRoot, sh } from '../helpers/lab.js';
import { inPod, podsFrom, type Pod } from '../helpers/traffic.js';

const lab = new TestLab('/tmp/meshctl-test-policy-model');
const CLUSTER = 'm1';
const DIR = join(FIXTURES, 'policy-model');
const NAMES = ['x/a', 'x/b', 'x/c', 'y/a', 'y/b', 'y/c', 'z/a', 'z/b', 'z/c'] as const;
type Name = (typeof NAMES)[number];
let pods: Map<Name, Pod>;
let store = '';

const apply = (file: string) => lab.ok(['lab', 'apply', '-f', file.startsWith('/') ? file : join(DIR, file), '--context', CLUSTER]);
const remove = (file: string) => lab.ok(['lab', 'remove', '-f', file.startsWith('/') ? file : join(DIR, file), '--context', CLUSTER]);

/** One TCP connection that must complete its handshake within 2 s (bash in the pod starts inside that time too). */
async function connects(from: Pod, to: Pod, port: number): Promise<boolean> {
  const r = await inPod(from, ['bash', '-c', `timeout 2 bash -c '</dev/tcp/${to.ip}/${port}'`]);
  return r.exitCode === 0;
}

/** The whole matrix: `from→to` for every pair that connects. */
async function reachability(port: number): Promise<Set<string>> {
  const pairs = NAMES.flatMap((f) => NAMES.map((t) => [f, t] as const));
  const ok = new Set<string>();
  for (let i = 0; i < pairs.length; i += 9) {
    await Promise.all(
      pairs.slice(i, i + 9).map(async ([f, t]) => {
        if (await connects(pods.get(f)!, pods.get(t)!, port)) ok.add(`${f}→${t}`);
      }),
    );
  }
  return ok;
}

/** Every pair connects except those `denied` says (a pod always reaches itself: that never leaves its namespace). */
function expected(denied: (from: Name, to: Name) => boolean): Set<string> {
  const out = new Set<string>();
  for (const f of NAMES) for (const t of NAMES) if (f === t || !denied(f, t)) out.add(`${f}→${t}`);
  return out;
}

/** Policies apply asynchronously: wait until the matrix is as expected (or fail showing the difference). */
async function expectMatrix(port: number, want: Set<string>): Promise<void> {
  let last = new Set<string>();
  try {
    await eventually(async () => {
      last = await reachability(port);
      return [...want].every((k) => last.has(k)) && [...last].every((k) => want.has(k));
    }, 60_000, `reachability on port ${port}`, 500);
  } catch (err) {
    const missing = [...want].filter((k) => !last.has(k));
    const extra = [...last].filter((k) => !want.has(k));
    throw new Error(`${(err as Error).message}\n  should connect but do not: ${missing.join(', ') || '-'}\n  should not connect but do: ${extra.join(', ') || '-'}`);
  }
}

beforeAll(async () => {
  requireRoot();
  await lab.cleanup();
  await lab.ok(['lab', 'create', CLUSTER, '--id', '11', '--pod-cidr', '10.11.0.0/16', '--nodes', '2']);
  await apply('model.yaml');
  store = (await lab.json(['lab', 'list'])).clusters[0].store.endpoint;
  pods = new Map();
  for (const ns of ['x', 'y', 'z']) {
    for (const p of podsFrom(await lab.json(['lab', 'get', 'pods', '-n', ns, '--context', CLUSTER]))) pods.set(`${ns}/${p.name}` as Name, p);
  }
  expect(pods.size).toBe(9);
}, 120_000);

afterAll(async () => {
  await lab.cleanup();
});

test('no policy: every pod reaches every pod', async () => {
  await expectMatrix(8080, expected(() => false));
});

test('egress to a named port: x/a reaches only namespace y, only on the port named serve-8080', async () => {
  await apply('egress-named-port.yaml');
  try {
    await expectMatrix(8080, expected((f, t) => f === 'x/a' && !t.startsWith('y/')));
    await expectMatrix(9000, expected((f) => f === 'x/a'));
  } finally {
    await remove('egress-named-port.yaml');
  }
  await expectMatrix(9000, expected(() => false));
});

test('ipBlock admits exactly its CIDR minus except: pods inside it by their own identity, others not', async () => {
  // Node 1's pod slice holds a and b of every namespace; except x/b.
  const node1 = JSON.parse((await sh('etcdctl', ['--endpoints', store, 'get', `/registry/nodes/${CLUSTER}-n1`, '--print-value-only'])).stdout);
  const slice = node1.spec.podCIDR as string;
  const xb = pods.get('x/b')!.ip;
  const file = join(lab.home, 'ipblock.yaml');
  writeFileSync(
    file,
    `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: ipblock
  namespace: z
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Ingress]
  ingress:
    - from:
        - ipBlock:
            cidr: ${slice}
            except: [${xb}/32]
`,
  );
  await apply(file);
  try {
    const onNode1 = (n: Name): boolean => pods.get(n)!.node === `${CLUSTER}-n1`;
    await expectMatrix(8080, expected((f, t) => t === 'z/a' && (!onNode1(f) || f === 'x/b')));
  } finally {
    await remove(file);
  }
});

test('an endPort range of 10,000 ports: inside passes, outside is denied', async () => {
  await apply('end-port.yaml');
  try {
    await expectMatrix(9000, expected((f, t) => t === 'y/b' && f !== 'x/c'));
    await expectMatrix(8080, expected((_f, t) => t === 'y/b'));
  } finally {
    await remove('end-port.yaml');
  }
});

test('a pod relabelled in place moves into and out of a policy\'s selection', async () => {
  await apply('relabel-target.yaml');
  const xa = (labels: string): string => {
    const file = join(lab.home, 'xa.yaml');
    writeFileSync(
      file,
      `apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: x
  labels:
${labels}
spec:
  nodeName: ${CLUSTER}-n1
  containers:
    - name: cont
      image: registry.k8s.io/e2e-test-images/agnhost:2.45
      ports:
        - name: serve-8080
          containerPort: 8080
        - name: serve-9000
          containerPort: 9000
`,
    );
    return file;
  };
  try {
    await expectMatrix(8080, expected((_f, t) => t === 'y/c'));
    const r = await apply(xa('    pod: a\n    role: friend'));
    expect(r.stderr + r.stdout).toMatch(/configured/);
    await expectMatrix(8080, expected((f, t) => t === 'y/c' && f !== 'x/a'));
    await apply(xa('    pod: a'));
    await expectMatrix(8080, expected((_f, t) => t === 'y/c'));
  } finally {
    await remove('relabel-target.yaml');
  }
});
