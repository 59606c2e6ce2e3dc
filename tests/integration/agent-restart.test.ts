/**
 * The agent's restart story and its tolerance of bad store data, on a real lab cluster:
 * traffic keeps flowing while agents are down (programs and pinned maps stay), restarted agents
 * converge without flushing, a pod made during the outage is wired once they are back, and a
 * corrupt object in the store is skipped and counted.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES, TestLab, eventually, requireRoot, sh, sleep } from '../helpers/lab.js';
import { labPrefix } from '../../src/lab/state.js';
import { pidAlive } from '../../src/util/exec.js';
import { BpfMap } from '../../src/datapath/addon.js';
import { ConfigFlags, configCodec } from '../../src/datapath/codecs.js';
import { connect } from 'node:net';

const lab = new TestLab('/tmp/meshctl-test-agent');
const prefix = labPrefix(lab.home);
const agentPid = (node: string): number => Number(readFileSync(join(lab.home, 'clusters', 'r1', 'run', `agent-${node}.pid`), 'utf8'));

async function pod(ns: string, name: string): Promise<any> {
  const items = (await lab.json(['lab', 'get', 'pods', '-n', ns, '--context', 'r1'])).items;
  return items.find((p: any) => p.metadata.name === name);
}

async function curl(from: string, ip: string, timeoutS = 3): Promise<string | null> {
  const r = await lab.cli(['lab', 'exec', '--context', 'r1', from, '--', 'curl', '-s', '-m', String(timeoutS), `http://${ip}:8080/`]);
  return r.exitCode === 0 ? r.stdout : null;
}

async function metrics(node: string): Promise<string> {
  return (await sh('ip', ['netns', 'exec', `mesh${prefix}-r1.${node.split('-')[1]}`, 'curl', '-s', '-m', '3', 'http://127.0.0.1:9962/metrics'])).stdout;
}

beforeAll(async () => {
  requireRoot();
  await lab.cleanup();
  await lab.ok(['lab', 'create', 'r1', '--id', '7', '--pod-cidr', '10.7.0.0/16', '--nodes', '2']);
  await lab.ok(['lab', 'apply', '-f', join(FIXTURES, 'agent', 'iperf-pods.yaml'), '--context', 'r1']);
}, 120_000);

afterAll(async () => {
  await lab.cleanup();
});

test('killing both agents breaks no stream; they converge; a pod made meanwhile gets wired', async () => {
  const server = await pod('perf', 'server');
  await eventually(async () => (await curl('perf/client', server.status.podIP)) !== null, 20_000, 'client reaches server across nodes');

  const serverNs = server.status.meshctl.netns;
  const iperfServer = spawn('ip', ['netns', 'exec', serverNs, 'iperf3', '-s', '-1', '-p', '5201'], { stdio: 'ignore' });
  await sleep(500);
  const client = await pod('perf', 'client');
  const iperf = spawn('ip', ['netns', 'exec', client.status.meshctl.netns, 'iperf3', '-c', server.status.podIP, '-t', '10', '-i', '1', '-J', '-b', '200M'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  iperf.stdout.on('data', (d) => (out += d));
  const done = new Promise<number>((resolve) => iperf.on('exit', (code) => resolve(code ?? -1)));

  try {
    await sleep(2000);
    // The outage: both agents frozen, then killed; the supervisor brings them back.
    const pids = [agentPid('r1-n1'), agentPid('r1-n2')];
    for (const p of pids) process.kill(p, 'SIGSTOP');
    await lab.ok(['lab', 'apply', '-f', join(FIXTURES, 'agent', 'late-pod.yaml'), '--context', 'r1']);
    await sleep(1500);
    for (const p of pids) process.kill(p, 'SIGKILL');
    const killedAt = Date.now();
    await eventually(
      async () => ['r1-n1', 'r1-n2'].every((n) => {
        try {
          const p = agentPid(n);
          return !pids.includes(p) && pidAlive(p);
        } catch {
          return false;
        }
      }),
      10_000,
      'agents restarted',
    );

    process.stderr.write(`agents back ${Date.now() - killedAt} ms after SIGKILL\n`);
    const code = await done;
    expect(code).toBe(0);
    const result = JSON.parse(out);
    expect(result.error).toBeUndefined();
    const perSecond = result.intervals.map((i: any) => i.sum.bits_per_second as number);
    process.stderr.write(`iperf3 across the restart: ${perSecond.map((b: number) => (b / 1e6).toFixed(0)).join(' ')} Mbit/s\n`);
    expect(perSecond.length).toBeGreaterThanOrEqual(9);
    for (const b of perSecond) expect(b).toBeGreaterThan(1e6); // no interval stalled
  } finally {
    iperf.kill('SIGKILL');
    iperfServer.kill('SIGKILL');
  }

  // The pod created while the agents were down is wired once they are back.
  const late = await pod('perf', 'late');
  const t0 = Date.now();
  const answer = await eventually(async () => curl('perf/client', late.status.podIP, 2), 20_000, 'client reaches the late pod');
  process.stderr.write(`late pod reachable ${Date.now() - t0} ms after the stream ended\n`);
  expect(JSON.parse(answer!).pod).toBe('late');
  // and nothing wanted was flushed: the old pair still talks
  expect(await curl('perf/client', server.status.podIP)).not.toBeNull();
});

test('a corrupt object in the store is skipped, counted, and the agent keeps working', async () => {
  const list = await lab.json(['lab', 'list']);
  const endpoint = list.clusters[0].store.endpoint;
  const put = await sh('etcdctl', ['--endpoints', endpoint, 'put', '/registry/pods/perf/garbage', '{not json']);
  expect(put.exitCode).toBe(0);
  const put2 = await sh('etcdctl', ['--endpoints', endpoint, 'put', '/registry/services/perf/half', '{"kind":"Service"}']);
  expect(put2.exitCode).toBe(0);
  const before = agentPid('r1-n1');
  await eventually(async () => /meshctl_agent_invalid_objects (\d+)/.exec(await metrics('r1-n1'))?.[1] === '2', 15_000, 'invalid objects counted');
  expect(agentPid('r1-n1')).toBe(before);
  expect(pidAlive(before)).toBe(true);
  // still reconciling: a new pod is wired
  const late = await pod('perf', 'late');
  expect(await curl('perf/client', late.status.podIP)).not.toBeNull();
  await sh('etcdctl', ['--endpoints', endpoint, 'del', '/registry/pods/perf/garbage']);
  await sh('etcdctl', ['--endpoints', endpoint, 'del', '/registry/services/perf/half']);
  await eventually(async () => /meshctl_agent_invalid_objects (\d+)/.exec(await metrics('r1-n1'))?.[1] === '0', 15_000, 'invalid count back to 0');
});

test('flow events run only while someone subscribes to the flow socket', async () => {
  const cfgPath = `/sys/fs/bpf/meshctl/${prefix}/r1/r1-n1/mesh_config`;
  const flags = (): number => {
    const m = BpfMap.openPinned(cfgPath);
    try {
      return configCodec.decode(m.lookup(Buffer.alloc(4))!).flags;
    } finally {
      m.close();
    }
  };
  expect(flags() & ConfigFlags.noFlows).toBe(ConfigFlags.noFlows);
  const sock = connect(join(lab.home, 'clusters', 'r1', 'run', 'flows-r1-n1.sock'));
  await new Promise<void>((resolve, reject) => sock.once('connect', () => resolve()).once('error', reject));
  let lines = '';
  sock.on('data', (d) => (lines += d));
  await eventually(async () => (flags() & ConfigFlags.noFlows) === 0, 5_000, 'flow events on');
  const server = await pod('perf', 'server');
  expect(await curl('perf/client', server.status.podIP)).not.toBeNull();
  await eventually(async () => lines.split('\n').some((l) => l.includes(server.status.podIP)), 5_000, 'a flow record for the request');
  sock.destroy();
  await eventually(async () => (flags() & ConfigFlags.noFlows) === ConfigFlags.noFlows, 5_000, 'flow events off again');
});

test('a pod deleted and made again under the same name is wired again', async () => {
  const file = join(FIXTURES, 'agent', 'late-pod.yaml');
  await lab.ok(['lab', 'remove', '-f', file, '--context', 'r1']);
  await lab.ok(['lab', 'apply', '-f', file, '--context', 'r1']);
  const late = await pod('perf', 'late');
  const answer = await eventually(async () => curl('perf/client', late.status.podIP, 2), 10_000, 'client reaches the re-made pod');
  expect(JSON.parse(answer!).pod).toBe('late');
});
