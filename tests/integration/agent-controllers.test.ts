/**
 * The agent's controllers on a real lab cluster (2 nodes, native routing, so the agent also owns
 * kernel routes): what issue 6 asks of them, each against real traffic, flow events, the agents'
 * published status and metrics, and the pinned maps.
 *
 * Own state dir (and so own name prefix); cleaned up before and after. Needs root.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { FIXTURES, TestLab, eventually, requireRoot, sh, sleep } from '../helpers/lab.js';
import { FlowTap, curl, inPod, podsFrom, type Pod } from '../helpers/traffic.js';
import { labPrefix } from '../../src/lab/state.js';
import { pidAlive } from '../../src/util/exec.js';
import { BpfMap } from '../../src/datapath/addon.js';
import { ctKeyCodec } from '../../src/datapath/codecs.js';
import { EtcdClusterClient } from '../../src/cluster/etcd-client.js';

const lab = new TestLab('/tmp/meshctl-test-controllers');
const prefix = labPrefix(lab.home);
const CLUSTER = 'a1';
const NODES = ['a1-n1', 'a1-n2'];
const DIR = join(FIXTURES, 'controllers');
const nodeNetns = (node: string): string => `mesh${prefix}-${CLUSTER}.n${node.slice(-1)}`;
const agentPid = (node: string): number => Number(readFileSync(join(lab.home, 'clusters', CLUSTER, 'run', `agent-${node}.pid`), 'utf8'));
let store = '';

const apply = (file: string) => lab.ok(['lab', 'apply', '-f', join(DIR, file), '--context', CLUSTER]);
const remove = (file: string) => lab.ok(['lab', 'remove', '-f', join(DIR, file), '--context', CLUSTER]);
const etcdctl = (args: readonly string[]) => sh('etcdctl', ['--endpoints', store, ...args]);

async function pods(): Promise<Pod[]> {
  return podsFrom(await lab.json(['lab', 'get', 'pods', '-n', 'ctl', '--context', CLUSTER]));
}
async function pod(name: string): Promise<Pod> {
  const p = (await pods()).find((x) => x.name === name);
  if (!p) throw new Error(`no pod ${name}`);
  return p;
}

/** The status object an agent publishes. */
async function nodeStatus(node: string): Promise<any> {
  const r = await etcdctl(['get', `/registry/meshnodestatuses/${node}`, '--print-value-only']);
  return r.stdout.trim() ? JSON.parse(r.stdout).status : null;
}

async function metric(node: string, name: string, labels = ''): Promise<number | undefined> {
  const r = await sh('ip', ['netns', 'exec', nodeNetns(node), 'curl', '-s', '-m', '3', 'http://127.0.0.1:9962/metrics']);
  const line = r.stdout.split('\n').find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ''} `) || (!labels && l.startsWith(`${name} `)));
  return line ? Number(line.split(' ').pop()) : undefined;
}

async function restartAgent(node: string): Promise<void> {
  const before = agentPid(node);
  process.kill(before, 'SIGKILL');
  await eventually(async () => {
    try {
      const p = agentPid(node);
      return p !== before && pidAlive(p);
    } catch {
      return false;
    }
  }, 10_000, `agent of ${node} restarted`);
}

/** Wait until the node's agent (a new one after a restart) published a status with this pid. */
async function statusOfCurrentAgent(node: string, want: (s: any) => boolean, what: string, timeoutMs = 20_000): Promise<any> {
  return eventually(async () => {
    const s = await nodeStatus(node);
    return s && s.pid === agentPid(node) && want(s) ? s : null;
  }, timeoutMs, what, 200);
}

beforeAll(async () => {
  requireRoot();
  await lab.cleanup();
  await lab.ok(['lab', 'create', CLUSTER, '--id', '9', '--pod-cidr', '10.9.0.0/16', '--nodes', '2', '--routing', 'native']);
  await apply('app.yaml');
  await apply('sticky-1.yaml');
  await apply('sticky-2.yaml');
  store = (await lab.json(['lab', 'list'])).clusters[0].store.endpoint;
}, 120_000);

afterAll(async () => {
  await lab.cleanup();
});

test('a policy with a field the datapath cannot enforce is refused by lab apply, naming the field, and nothing is created', async () => {
  const r = await lab.cli(['lab', 'apply', '-f', join(DIR, 'unsupported.yaml'), '--context', CLUSTER]);
  expect(r.exitCode).toBe(2);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.stderr).toContain('spec.ingressDeny');
  const list = await lab.json(['lab', 'get', 'meshnetworkpolicies', '-n', 'ctl', '--context', CLUSTER]);
  expect(list.items).toHaveLength(0);
});

test('the same policy written straight into the store makes its endpoints deny ingress, and is counted and shown', async () => {
  const client = await pod('client');
  const echo = (await pods()).find((p) => p.name.startsWith('echo-'))!;
  await eventually(async () => (await curl(client, echo)).exitCode === 0, 20_000, 'client reaches echo before the policy');
  const policy = {
    apiVersion: 'cilium.io/v2',
    kind: 'MeshNetworkPolicy',
    metadata: { name: 'deny-other', namespace: 'ctl' },
    spec: { endpointSelector: { matchLabels: { app: 'echo' } }, ingressDeny: [{ fromEndpoints: [{ matchLabels: { app: 'other' } }] }] },
  };
  expect((await etcdctl(['put', '/registry/meshnetworkpolicies/ctl/deny-other', JSON.stringify(policy)])).exitCode).toBe(0);
  try {
    // Default-deny on the selected side: even the client, which the written rules never named, is cut off.
    await eventually(async () => (await curl(client, echo, 8080, 1)).exitCode === 28, 20_000, 'echo denies ingress');
    await eventually(async () => ((await metric(echo.node, 'meshctl_agent_policy_problems')) ?? 0) >= 1, 10_000, 'policy problem counted');
    const st = await eventually(async () => {
      const s = await nodeStatus(echo.node);
      return s?.datapath?.policyProblems?.length ? s : null;
    }, 10_000, 'policy problem in status');
    expect(JSON.stringify(st.datapath.policyProblems)).toContain('deny-other');
    expect(JSON.stringify(st.datapath.policyProblems)).toContain('ingressDeny');
  } finally {
    await etcdctl(['del', '/registry/meshnetworkpolicies/ctl/deny-other']);
  }
  await eventually(async () => (await curl(client, echo)).exitCode === 0, 20_000, 'echo reachable once the policy is gone');
});

test('a policy too big for its map is reported and denies its endpoints; every other endpoint keeps working', async () => {
  const client = await pod('client');
  const echos = (await pods()).filter((p) => p.name.startsWith('echo-'));
  const sticky = await pod('sticky-1');
  await eventually(async () => (await curl(client, echos[0])).exitCode === 0, 20_000, 'client reaches echo before the policy');
  // 17,000 single ports that share no aligned prefix: more policy map entries than one endpoint may take.
  const ports = Array.from({ length: 17_000 }, (_, i) => ({ port: String(2 * i + 1), protocol: 'TCP' }));
  const big = {
    apiVersion: 'cilium.io/v2',
    kind: 'MeshNetworkPolicy',
    metadata: { name: 'too-big', namespace: 'ctl' },
    spec: { endpointSelector: { matchLabels: { app: 'echo' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports }] }] },
  };
  const store_ = new EtcdClusterClient({ endpoints: [store] });
  try {
    await store_.put('meshnetworkpolicies', big);
    for (const e of echos) await eventually(async () => (await curl(client, e, 8080, 1)).exitCode === 28, 20_000, `${e.name} denies ingress`);
    const st = await eventually(async () => {
      const x = await nodeStatus(echos[0].node);
      return JSON.stringify(x?.datapath?.policyProblems ?? []).includes('too-big') ? x : null;
    }, 15_000, 'the policy reported in status');
    expect(JSON.stringify(st.datapath.policyProblems)).toMatch(/policy map entries/);
    // Everything else is still programmed: a pod the policy does not select answers.
    expect((await curl(client, sticky)).exitCode).toBe(0);
  } finally {
    await store_.delete('meshnetworkpolicies', 'ctl', 'too-big');
    await store_.close();
  }
  for (const e of echos) await eventually(async () => (await curl(client, e)).exitCode === 0, 20_000, `${e.name} reachable again`);
});

test('one pod whose identity cannot be allocated is reported alone; every other endpoint is programmed; a restarted agent is not ready while it fails', async () => {
  const node = 'a1-n1';
  const bad = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'bad', namespace: 'ctl', labels: { app: 'x'.repeat(80) } },
    spec: { nodeName: node, containers: [{ name: 'c', image: 'x' }] },
    status: { phase: 'Running', podIP: '10.9.1.250', meshctl: { netns: `mesh${prefix}-${CLUSTER}.pbad`, lxc: 'lxcbad0' } },
  };
  expect((await etcdctl(['put', '/registry/pods/ctl/bad', JSON.stringify(bad)])).exitCode).toBe(0);
  try {
    await eventually(async () => ((await metric(node, 'meshctl_agent_item_errors', 'controller="endpoints"')) ?? 0) >= 1, 15_000, 'the bad pod counted as an endpoints error');
    const st = await eventually(async () => {
      const x = await nodeStatus(node);
      return x?.datapath?.errors?.length ? x : null;
    }, 10_000, 'the bad pod in the status object');
    expect(st.datapath.errors).toEqual([expect.objectContaining({ controller: 'endpoints', key: 'ctl/bad' })]);
    expect(st.datapath.errors[0].message).toContain('no identity can be allocated');
    // Another pod made now is still programmed and answers.
    writeFileSync(join(lab.home, 'late.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: late\n  namespace: ctl\n  labels:\n    app: late\nspec:\n  nodeName: a1-n1\n  containers:\n    - name: c\n      image: x\n');
    await lab.ok(['lab', 'apply', '-f', join(lab.home, 'late.yaml'), '--context', CLUSTER]);
    const late = await pod('late');
    const other = await pod('other');
    await eventually(async () => (await curl(other, late)).exitCode === 0, 15_000, 'the late pod answers');

    // A restarted agent whose initial sync has a failing item is not ready, and says why.
    await restartAgent(node);
    const s = await statusOfCurrentAgent(node, (x) => x.datapath && 'ready' in x.datapath && x.datapath.errors?.length > 0, 'restarted agent reports the bad pod');
    expect(s.datapath.ready).toBe(false);
    expect(s.datapath.errors[0].key).toBe('ctl/bad');
    expect((await curl(other, late)).exitCode).toBe(0);
  } finally {
    await etcdctl(['del', '/registry/pods/ctl/bad']);
  }
  await statusOfCurrentAgent(node, (x) => x.datapath?.ready === true, 'ready once the bad pod is gone');
});

test('a restarted agent writes no map entry when nothing changed, and removes a stale route it made before', async () => {
  const node = 'a1-n2';
  const ns = nodeNetns(node);
  const routes = async (): Promise<string[]> => (JSON.parse((await sh('ip', ['-n', ns, '-j', 'route', 'show', 'proto', '199'])).stdout || '[]') as Array<{ dst: string }>).map((r) => r.dst).sort();
  const wanted = await eventually(async () => {
    const r = await routes();
    return r.length ? r : null;
  }, 10_000, 'the agent route to the peer slice');
  const gw = (JSON.parse((await sh('ip', ['-n', ns, '-j', 'route', 'show', 'default'])).stdout) as Array<{ gateway: string }>)[0].gateway;
  expect((await sh('ip', ['-n', ns, 'route', 'add', '10.9.250.0/24', 'via', gw, 'proto', '199'])).exitCode).toBe(0);
  await restartAgent(node);
  const s = await statusOfCurrentAgent(node, (x) => x.datapath?.ready === true, 'restarted agent ready');
  expect(s.datapath.initialWrites).toEqual({ updates: 0, deletes: 0 });
  expect(s.datapath.removedStaleRoutes).toBe(1);
  expect(await routes()).toEqual(wanted);
  const client = await pod('client');
  const far = (await pods()).find((p) => p.node !== client.node && p.name.startsWith('echo-'))!;
  expect((await curl(client, far)).exitCode).toBe(0);
});

test('scaling a service up under a request loop drops nothing, and new pods under an existing policy are never denied', async () => {
  await apply('allow-client.yaml');
  const client = await pod('client');
  const svcIp = (await lab.json(['lab', 'get', 'services', '-n', 'ctl', '--context', CLUSTER])).items.find((s: any) => s.metadata.name === 'echo').spec.clusterIP;
  await eventually(async () => (await inPod(client, ['curl', '-s', '-m', '2', `http://${svcIp}/`])).exitCode === 0, 20_000, 'client reaches the service');
  const taps = await Promise.all(NODES.map((n) => FlowTap.open(lab.home, CLUSTER, n)));
  const before = new Set((await pods()).filter((p) => p.name.startsWith('echo-')).map((p) => p.ip));
  // A request loop through the service while it grows from 2 to 6 backends.
  // The loop runs until the test says stop (after every new backend served for a while), 90 s at most.
  const stop = join(lab.home, 'stop-loop');
  rmSync(stop, { force: true });
  const loop = spawn('ip', ['netns', 'exec', client.netns, 'bash', '-c', `ok=0; bad=0; end=$((SECONDS+90)); while [ $SECONDS -lt $end ] && [ ! -e ${stop} ]; do if curl -s -m 1 -o /dev/null http://${svcIp}/; then ok=$((ok+1)); else bad=$((bad+1)); fi; done; echo "$ok $bad"`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  loop.stdout.on('data', (d) => (out += d));
  const done = new Promise<void>((resolve) => loop.on('exit', () => resolve()));
  try {
    await sleep(1000);
    await apply('echo-6.yaml');
    const fresh = (await pods()).filter((p) => p.name.startsWith('echo-') && !before.has(p.ip));
    expect(fresh).toHaveLength(4);
    // Probe each new pod directly as soon as it exists.
    for (const p of fresh) await eventually(async () => (await curl(client, p, 8080, 1)).exitCode === 0, 10_000, `client reaches new ${p.name}`);
    await sleep(3000);
    writeFileSync(stop, '');
    await done;
    const [ok, bad] = out.trim().split(' ').map(Number);
    process.stderr.write(`request loop across the scale-up: ${ok} ok, ${bad} failed\n`);
    expect(ok).toBeGreaterThan(20);
    expect(bad).toBe(0);
    for (const p of fresh) {
      for (const t of taps) expect(t.count({ verdict: 'DROPPED', dropReason: 'POLICY_DENIED', src: client.ip, dst: p.ip })).toBe(0);
    }
  } finally {
    loop.kill('SIGKILL');
    for (const t of taps) t.close();
    await remove('allow-client.yaml');
    await apply('app.yaml');
  }
}, 120_000);

/**
 * A UDP client on one source port that sends a datagram through the service every 100 ms and prints
 * which backend answered (the echo's identity line), one line per answer.
 */
const UDP_LOOP = `
const d = require('dgram').createSocket('udp4');
d.on('message', (m) => console.log(String(m).split('\\n')[0]));
d.bind(0, () => { setInterval(() => d.send('ping', Number(process.argv[2]), process.argv[1]), 100); setTimeout(() => process.exit(0), 20000); });`;

test('a backend removed mid-flow gets its client moved to another backend, not black-holed', async () => {
  const client = await pod('client');
  const vip = (await lab.json(['lab', 'get', 'services', '-n', 'ctl', '--context', CLUSTER])).items.find((s: any) => s.metadata.name === 'sticky').spec.clusterIP;
  const proc = spawn('ip', ['netns', 'exec', client.netns, process.execPath, '-e', UDP_LOOP, vip, '9001'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d) => (out += d));
  const answers = (): string[] => out.split('\n').filter(Boolean);
  try {
    await eventually(async () => answers().length >= 3, 10_000, 'answers through the service');
    const first = answers()[0];
    // One flow sticks to one backend.
    expect(new Set(answers())).toEqual(new Set([first]));
    const holder = first.split('/').pop()!;
    expect(['sticky-1', 'sticky-2']).toContain(holder);
    await remove(`${holder}.yaml`);
    const removedAt = answers().length;
    // The same flow (same 5-tuple) now answers from the other backend, within a few datagrams.
    const moved = await eventually(async () => answers().slice(removedAt).find((a) => !a.endsWith(`/${holder}`)), 5_000, 'an answer from another backend');
    expect(moved).toMatch(/sticky-\d$/);
    const after = answers().slice(removedAt);
    const lost = after.indexOf(moved!);
    process.stderr.write(`backend ${holder} removed: flow moved to ${moved} after ${lost} answer(s) from the old one\n`);
    await apply(`${holder}.yaml`);
  } finally {
    proc.kill('SIGKILL');
  }
});

test('a deleted pod leaves no conntrack state behind on its node', async () => {
  writeFileSync(join(lab.home, 'ct.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: ct\n  namespace: ctl\n  labels:\n    app: ct\nspec:\n  nodeName: a1-n1\n  containers:\n    - name: c\n      image: x\n');
  await lab.ok(['lab', 'apply', '-f', join(lab.home, 'ct.yaml'), '--context', CLUSTER]);
  const ct = await pod('ct');
  const echo = (await pods()).find((p) => p.name.startsWith('echo-'))!;
  await eventually(async () => (await curl(ct, echo)).exitCode === 0, 15_000, 'ct pod reaches echo');
  const ctMap = `/sys/fs/bpf/meshctl/${prefix}/${CLUSTER}/a1-n1/mesh_conntrack`;
  const entriesOf = (ip: string): number => {
    const m = BpfMap.openPinned(ctMap);
    try {
      return m.keys().filter((k) => {
        const key = ctKeyCodec.decode(k);
        return key.saddr === ip || key.daddr === ip;
      }).length;
    } finally {
      m.close();
    }
  };
  expect(entriesOf(ct.ip)).toBeGreaterThan(0);
  await lab.ok(['lab', 'remove', '-f', join(lab.home, 'ct.yaml'), '--context', CLUSTER]);
  await eventually(async () => entriesOf(ct.ip) === 0, 10_000, `no conntrack entry of ${ct.ip}`);
});

test('forged VXLAN from a pod to its own node claiming another pod\'s identity is dropped with its reason', async () => {
  const attacker = await pod('other');
  const client = await pod('client');
  // sticky-1 and sticky-2 are pinned one per node, so the attacker's node always has one.
  const victim = (await pods()).find((p) => p.name.startsWith('sticky-') && p.node === attacker.node)!;
  expect(victim).toBeDefined();
  const clientIdentity = JSON.parse((await etcdctl(['get', `/registry/meshendpoints/ctl/client`, '--print-value-only'])).stdout).spec.identity as number;
  const nodeIp = JSON.parse((await etcdctl(['get', `/registry/nodes/${attacker.node}`, '--print-value-only'])).stdout).status.addresses[0].address as string;
  const tap = await FlowTap.open(lab.home, CLUSTER, attacker.node);
  try {
    const run = (args: string[]) => inPod(attacker, args);
    expect((await run(['ip', 'link', 'add', 'fv0', 'type', 'vxlan', 'id', String(clientIdentity), 'remote', nodeIp, 'dstport', '8472', 'dev', 'eth0'])).exitCode).toBe(0);
    await run(['ip', 'link', 'set', 'fv0', 'arp', 'off', 'up']);
    await run(['ip', 'addr', 'add', `${client.ip}/32`, 'dev', 'fv0']);
    await run(['ip', 'route', 'add', `${victim.ip}/32`, 'dev', 'fv0', 'src', client.ip]);
    await run(['ping', '-c', '3', '-i', '0.2', '-W', '1', victim.ip]);
    const n = await tap.atLeast({ verdict: 'DROPPED', src: client.ip, dst: victim.ip }, 1, 5000);
    expect(n).toBeGreaterThan(0);
    const rec = tap.find({ verdict: 'DROPPED', src: client.ip, dst: victim.ip })!;
    expect(rec.dropReason).toMatch(/TUNNEL|SOURCE|IDENTITY/);
    expect(tap.count({ verdict: 'FORWARDED', src: client.ip, dst: victim.ip })).toBe(0);
  } finally {
    tap.close();
    await inPod(attacker, ['ip', 'link', 'del', 'fv0']);
  }
});
