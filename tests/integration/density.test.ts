/**
 * Lab pod density: 500 real pods (namespace, veth, address, route, native echo each) over 4
 * nodes of one cluster, through the real CLI. Every pod must answer with its own identity line,
 * from its node (the wiring) and from a pod on another node (through the agents' datapath), and
 * the workloads together must stay under 2.5 GB RSS. Times are printed; the bound asserted is
 * generous on purpose (a shared 2-core machine): this is not a timing test. bench/density.ts
 * measures the same against a baseline.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { EtcdClusterClient } from '../../src/cluster/etcd-client.js';
import { probeEchoes, workloadMemory, type ProbeTarget } from '../../src/lab/probe.js';
import { LabPaths, labPrefix } from '../../src/lab/state.js';
import { FIXTURES, TestLab, listNetns, requireRoot } from '../helpers/lab.js';

const lab = new TestLab('/tmp/meshctl-test-density');
const prefix = labPrefix(lab.home);
const PODS = 500;
const NODES = 4;
const RSS_LIMIT = 2.5 * 1024 ** 3;

beforeAll(async () => {
  requireRoot();
  await lab.cleanup();
});

afterAll(async () => {
  await lab.cleanup();
});

interface Pod {
  readonly name: string;
  readonly node: string;
  readonly ip: string;
  readonly netns: string;
  readonly phase: string;
}

const s = (ms: number): string => `${(ms / 1000).toFixed(1)}s`;

test(`${PODS} pods over ${NODES} nodes: created, every pod answers, workloads under 2.5 GB RSS`, async () => {
  const t0 = Date.now();
  await lab.ok(['lab', 'create', 'd1', '--id', '51', '--pod-cidr', '10.51.0.0/16', '--nodes', String(NODES)]);
  const createMs = Date.now() - t0;
  const t1 = Date.now();
  const applied = await lab.cli(['lab', 'apply', '-f', join(FIXTURES, 'density.yaml'), '--context', 'd1', '--timings'], {}, 300_000);
  const applyMs = Date.now() - t1;
  expect({ exitCode: applied.exitCode, stderr: applied.exitCode === 0 ? '' : applied.stderr }).toEqual({ exitCode: 0, stderr: '' });
  const appliedAt = Date.now();

  // Straight from the store (a CLI call costs a second or two on a busy machine), so the
  // probes start right after apply returns.
  const state = JSON.parse(readFileSync(join(lab.home, 'lab.json'), 'utf8'));
  const store = new EtcdClusterClient({ endpoints: [state.clusters.d1.store.endpoint] });
  let agentsMs = -1;
  let fromPod: Awaited<ReturnType<typeof probeEchoes>>;
  let fromNodes: Array<Awaited<ReturnType<typeof probeEchoes>>>;
  let client: Pod;
  let pods: Pod[];
  let endpoints: Record<string, unknown> = {};
  try {
    pods = (await store.list('pods', 'density')).items.map((p: any) => ({ name: p.metadata.name, node: p.spec.nodeName, ip: p.status.podIP, netns: p.status.meshctl.netns, phase: p.status.phase }));
    expect(pods).toHaveLength(PODS);
    const perNode = new Map<string, Pod[]>();
    for (const p of pods) perNode.set(p.node, [...(perNode.get(p.node) ?? []), p]);
    const target = (p: Pod): ProbeTarget => ({ ip: p.ip, line: `d1/${p.node}/density/${p.name}` });
    const nodeNetns = new Map<string, string>(state.clusters.d1.nodes.map((n: any) => [n.name, n.netns]));
    client = perNode.get(state.clusters.d1.nodes[0].name)![0];

    // The agents' own account: every node's status reports all its pods as endpoints.
    const agentsReady = (async () => {
      const deadline = Date.now() + 120_000;
      while (Date.now() < deadline) {
        const st = await store.list('meshnodestatuses');
        endpoints = Object.fromEntries(st.items.map((i) => [i.metadata.name, (i.status as { datapath?: { endpoints?: number } })?.datapath?.endpoints ?? '?']));
        if ([...perNode.entries()].every(([n, l]) => endpoints[n] === l.length)) return (agentsMs = Date.now() - appliedAt);
        await new Promise((r) => setTimeout(r, 250));
      }
      return -1;
    })();
    // Through the datapath: one pod on the first node reaches all the others, local and across the tunnel.
    const podProbe = probeEchoes(client.netns, pods.map(target), { deadlineMs: 120_000 });
    // The wiring alone: each node reaches every one of its pods through the pod's lxc.
    fromNodes = await Promise.all([...perNode.entries()].map(([node, list]) => probeEchoes(nodeNetns.get(node)!, list.map(target), { deadlineMs: 60_000 })));
    fromPod = await podProbe;
    await agentsReady;

    expect(pods.filter((p) => p.phase !== 'Running')).toEqual([]);
    expect(new Set(pods.map((p) => p.ip)).size).toBe(PODS);
    expect([...perNode.values()].map((l) => l.length)).toEqual(Array(NODES).fill(PODS / NODES)); // spread evenly
    expect(listNetns().filter((n) => n.startsWith(`mesh${prefix}-d1.p`))).toHaveLength(PODS);
    expect(fromNodes.flatMap((r) => r.failed)).toEqual([]);
    expect(fromPod.failed.slice(0, 5)).toEqual([]);
    expect(fromPod.answered).toBe(PODS);
  } finally {
    await store.close();
  }
  const nodeMs = Math.max(...fromNodes.map((r) => r.lastAnswerMs));

  const mem = await workloadMemory(new LabPaths(lab.home), 'd1');
  expect(mem.processes).toBe(PODS);
  process.stderr.write(
    [
      `density: ${PODS} pods over ${NODES} nodes`,
      `  lab create ${s(createMs)}, lab apply ${s(applyMs)}, together ${s(createMs + applyMs)} (target ≤ 60s)`,
      `  apply phases: ${applied.stderr.split('\n').filter((l) => /^\s+\S+ \(\d/.test(l)).map((l) => l.trim()).join(', ')}`,
      `  every pod answered its node within ${s(nodeMs)} of apply returning (${fromNodes.reduce((a, r) => a + r.attempts, 0)} connects for ${PODS} pods; failed attempts ${JSON.stringify(fromNodes.map((r) => r.errors))})`,
      `  every pod answered a pod on ${client.node} within ${s(fromPod.lastAnswerMs)} of apply returning (${fromPod.attempts} connects; failed ${JSON.stringify(fromPod.errors)}): agents' datapath`,
      `  agents reported all endpoints ${agentsMs >= 0 ? s(agentsMs) : 'never'} after apply (status refreshes every few s): ${JSON.stringify(endpoints)}`,
      `  workloads: ${mem.processes} processes, RSS ${(mem.rssBytes / 1024 ** 2).toFixed(0)} MB summed (limit 2560 MB), PSS ${(mem.pssBytes / 1024 ** 2).toFixed(0)} MB`,
      '',
    ].join('\n'),
  );
  expect(mem.rssBytes).toBeLessThan(RSS_LIMIT);
  expect(createMs + applyMs).toBeLessThan(240_000); // generous: the 60 s target is reported above
}, 600_000);

test('lab delete --all removes all 500 pods and everything else of the lab', async () => {
  const t0 = Date.now();
  await lab.ok(['lab', 'delete', '--all']);
  process.stderr.write(`density: lab delete --all with ${PODS} pods took ${s(Date.now() - t0)}\n`);
  expect(listNetns().filter((n) => n.startsWith(`mesh${prefix}-`))).toEqual([]);
}, 300_000);
