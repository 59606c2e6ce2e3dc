/**
 * Lab pod density: how long a cluster of N real pods over K nodes takes to build, how much its
 * workloads weigh, and when every pod answers, against baselines measured in the same run.
 *
 *   ip-batch   the same namespaces, veth pairs, addresses and routes as the lab makes, by plain
 *              `ip` in as few processes as it allows (the kernel's floor), no store, no workloads
 *   ip-each    the same, one `ip` process per command, 8 pods at a time (a plain script)
 *   lab        `lab create` with K nodes + `lab apply` of Deployments (store, IPAM, agents, one
 *              native echo per pod), then probes until every pod answers its node and a pod on
 *              the first node (through the agents' datapath)
 *
 * A warm-up round (a tenth of the pods) runs first and is not reported; then the rounds
 * alternate the variants' order. Figures are medians. The Node echo pods ran before is
 * measured once (one process) to show what N pods of it would weigh.
 *
 * Run as root: node dist/bench/density.js [--pods 500] [--nodes 4] [--rounds 2] [--home DIR]
 * Table on stderr, JSON on stdout.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { EtcdClusterClient } from '../src/cluster/etcd-client.js';
import { POD_MTU } from '../src/defaults.js';
import { deleteNetnsMany, listNetns } from '../src/lab/netns.js';
import { probeEchoes, workloadMemory, type ProbeTarget } from '../src/lab/probe.js';
import { LabPaths, labPrefix } from '../src/lab/state.js';
import { ECHO_MAIN, MESHCTL_BIN } from '../src/util/self.js';
import { fmt, hostInfo, markdownTable, median, note, requireRoot, revision, round, runBounded } from './common.js';

type Variant = 'ip-batch' | 'ip-each' | 'lab';
const VARIANTS: readonly Variant[] = ['ip-batch', 'ip-each', 'lab'];
const CLUSTER = 'dens';
const CLUSTER_ID = 214;
const POD_CIDR = '10.214.0.0/16';
const NAMESPACE = 'density';
const REPLICAS_PER_DEPLOYMENT = 100;
const BUDGET_S = 290;
const CREATE_TARGET_S = 60;
const RSS_TARGET_BYTES = 2.5 * 1024 ** 3;

interface Options {
  readonly pods: number;
  readonly nodes: number;
  readonly rounds: number;
  readonly home: string;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      pods: { type: 'string', default: '500' },
      nodes: { type: 'string', default: '4' },
      rounds: { type: 'string', default: '2' },
      home: { type: 'string', default: '/tmp/meshctl-bench-density' },
    },
  });
  const int = (flag: string, v: string | undefined, min: number, max: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${flag} ${v}: must be an integer from ${min} to ${max}`);
    return n;
  };
  const nodes = int('nodes', values.nodes, 1, 16);
  // 250 pods per node at most: a node's slice is a /24
  return { pods: int('pods', values.pods, 10, nodes * 250), nodes, rounds: int('rounds', values.rounds, 1, 5), home: values.home! };
}

interface Sample {
  readonly variant: Variant;
  /** Namespaces, links and addresses (baselines); lab create + lab apply (lab). */
  readonly createS: number;
  readonly deleteS: number;
  /** lab only */
  readonly labCreateS?: number;
  readonly labApplyS?: number;
  readonly applyPhasesS?: Record<string, number>;
  readonly answerNodeS?: number;
  readonly answerPodS?: number;
  readonly agentsReportedS?: number | null;
  readonly rssBytes?: number;
  readonly pssBytes?: number;
  readonly workloads?: number;
}

let cancel: AbortSignal | undefined;

async function sh(cmd: string, args: readonly string[], input?: string, timeoutMs = 120_000): Promise<string> {
  const r = await execa(cmd, args, { input, reject: false, timeout: timeoutMs, cancelSignal: cancel });
  if (r.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${`${r.stderr || r.stdout}`.trim().split('\n').slice(-2).join('; ') || r.shortMessage}`);
  return `${r.stdout}`;
}

async function meshctl(home: string, args: readonly string[], timeoutMs = 180_000, cancellable = true): Promise<{ stdout: string; stderr: string }> {
  const r = await execa(process.execPath, [MESHCTL_BIN, ...args], {
    env: { MESHCTL_HOME: home },
    reject: false,
    timeout: timeoutMs,
    ...(cancellable && cancel ? { cancelSignal: cancel } : {}),
  });
  if (r.exitCode !== 0) throw new Error(`meshctl ${args.join(' ')}: ${`${r.stderr}`.split('\n').filter((l) => l.trim()).slice(-3).join('; ') || r.shortMessage}`);
  return { stdout: `${r.stdout}`, stderr: `${r.stderr}` };
}

const secondsSince = (t0: number): number => (performance.now() - t0) / 1000;

/** Deployments of at most 100 replicas (the lab's cap) adding up to `pods`. */
function densityYaml(pods: number): string {
  const docs = [`apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ${NAMESPACE}\n`];
  for (let i = 1, left = pods; left > 0; i++, left -= REPLICAS_PER_DEPLOYMENT) {
    const n = Math.min(left, REPLICAS_PER_DEPLOYMENT);
    docs.push(
      `apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: echo-${i}\n  namespace: ${NAMESPACE}\nspec:\n  replicas: ${n}\n` +
        `  selector:\n    matchLabels:\n      app: echo-${i}\n  template:\n    metadata:\n      labels:\n        app: echo-${i}\n` +
        `    spec:\n      containers:\n        - name: echo\n          image: registry.k8s.io/e2e-test-images/agnhost:2.45\n`,
    );
  }
  return docs.join('---\n');
}

/** Names and addresses of a baseline: its own namespace prefix, the lab's address plan. */
function baselinePlan(prefix: string, opts: Options, pods: number) {
  const nodes = Array.from({ length: opts.nodes }, (_, i) => ({ netns: `mesh${prefix}-base.n${i + 1}`, routerIp: `10.215.${i}.1` }));
  const list = Array.from({ length: pods }, (_, i) => {
    const node = nodes[i % opts.nodes];
    const k = Math.floor(i / opts.nodes);
    return { node, netns: `mesh${prefix}-base.p${i}`, lxc: `lxcb${i}`, ip: `10.215.${i % opts.nodes}.${k + 2}` };
  });
  return { nodes, pods: list };
}

type Plan = ReturnType<typeof baselinePlan>;

function podCommands(p: Plan['pods'][number]): { node: string[]; inside: string[] } {
  return {
    node: [`link add ${p.lxc} mtu ${POD_MTU} type veth peer name eth0 mtu ${POD_MTU} netns ${p.netns}`, `link set ${p.lxc} up`, `route replace ${p.ip}/32 dev ${p.lxc} scope link`],
    inside: ['link set lo up', 'link set eth0 up', `addr add ${p.ip}/32 dev eth0`, `route add ${p.node.routerIp} dev eth0 scope link`, `route add default via ${p.node.routerIp} dev eth0 mtu ${POD_MTU}`],
  };
}

async function baselineNodes(plan: Plan): Promise<void> {
  await sh('ip', ['-batch', '-'], plan.nodes.map((n) => `netns add ${n.netns}`).join('\n') + '\n');
  for (const n of plan.nodes) await sh('ip', ['-n', n.netns, '-batch', '-'], `link set lo up\naddr add ${n.routerIp}/32 dev lo\n`);
}

/**
 * The kernel's floor: the lab's commands in as few `ip` processes as they allow, as parallel as
 * the lab runs them (one for the namespaces, one per node side by side, two for the insides).
 */
async function runIpBatch(plan: Plan, dir: string): Promise<void> {
  await baselineNodes(plan);
  await sh('ip', ['-batch', '-'], plan.pods.map((p) => `netns add ${p.netns}`).join('\n') + '\n');
  await Promise.all(
    plan.nodes.map((n) => sh('ip', ['-n', n.netns, '-batch', '-'], plan.pods.filter((p) => p.node === n).flatMap((p) => podCommands(p).node).join('\n') + '\n')),
  );
  const lines = plan.pods.map((p, i) => {
    const f = join(dir, `${i}.batch`);
    writeFileSync(f, podCommands(p).inside.join('\n') + '\n');
    return `netns exec ${p.netns} ip -batch ${f}`;
  });
  const half = Math.ceil(lines.length / 2);
  await Promise.all([lines.slice(0, half), lines.slice(half)].map((chunk) => sh('ip', ['-batch', '-'], chunk.join('\n') + '\n')));
}

/** A plain script: every command its own `ip`, 8 pods at a time. */
async function runIpEach(plan: Plan): Promise<void> {
  await baselineNodes(plan);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < plan.pods.length) {
      const p = plan.pods[next++];
      await sh('ip', ['netns', 'add', p.netns]);
      const c = podCommands(p);
      for (const l of c.node) await sh('ip', ['-n', p.node.netns, ...l.split(' ')]);
      for (const l of c.inside) await sh('ip', ['-n', p.netns, ...l.split(' ')]);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
}

async function baselineCheck(plan: Plan): Promise<void> {
  const last = plan.pods[plan.pods.length - 1];
  const out = await sh('ip', ['-n', last.netns, '-br', 'addr', 'show', 'eth0']);
  if (!out.includes(`${last.ip}/32`)) throw new Error(`baseline pod ${last.netns} has no ${last.ip}: ${out}`);
}

async function deleteBaseline(prefix: string): Promise<void> {
  const mine = (await listNetns()).filter((n) => n.startsWith(`mesh${prefix}-base.`));
  await deleteNetnsMany([...mine.filter((n) => n.includes('.p')), ...mine.filter((n) => !n.includes('.p'))]);
}

async function measureBaseline(variant: 'ip-batch' | 'ip-each', prefix: string, opts: Options, pods: number): Promise<Sample> {
  const plan = baselinePlan(prefix, opts, pods);
  const dir = mkdtempSync(join(tmpdir(), 'meshctl-bench-density-'));
  try {
    await deleteBaseline(prefix);
    const t0 = performance.now();
    if (variant === 'ip-batch') await runIpBatch(plan, dir);
    else await runIpEach(plan);
    const createS = secondsSince(t0);
    await baselineCheck(plan);
    const t1 = performance.now();
    await deleteBaseline(prefix);
    return { variant, createS, deleteS: secondsSince(t1) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function measureLab(opts: Options, pods: number): Promise<Sample> {
  const yaml = join(opts.home, 'density.yaml');
  await meshctl(opts.home, ['lab', 'delete', '--all']).catch(() => undefined);
  const t0 = performance.now();
  await meshctl(opts.home, ['lab', 'create', CLUSTER, '--id', String(CLUSTER_ID), '--pod-cidr', POD_CIDR, '--nodes', String(opts.nodes)]);
  const labCreateS = secondsSince(t0);
  writeFileSync(yaml, densityYaml(pods));
  const t1 = performance.now();
  const applied = await meshctl(opts.home, ['lab', 'apply', '-f', yaml, '--context', CLUSTER, '--timings']);
  const labApplyS = secondsSince(t1);
  const appliedAt = performance.now();
  const phases: Record<string, number> = {};
  for (const m of applied.stderr.matchAll(/^\s+(\S+) \((\d+\.\d+)s\)$/gm)) phases[m[1]] = Number(m[2]);

  const state = JSON.parse(readFileSync(join(opts.home, 'lab.json'), 'utf8'));
  const c = state.clusters[CLUSTER];
  const store = new EtcdClusterClient({ endpoints: [c.store.endpoint] });
  try {
    const list = (await store.list('pods', NAMESPACE)).items.map((p: any) => ({ name: p.metadata.name, node: p.spec.nodeName, ip: p.status.podIP, netns: p.status.meshctl.netns }));
    if (list.length !== pods) throw new Error(`lab apply made ${list.length} pods, not ${pods}`);
    const target = (p: (typeof list)[number]): ProbeTarget => ({ ip: p.ip, line: `${CLUSTER}/${p.node}/${NAMESPACE}/${p.name}` });
    const client = list.find((p) => p.node === c.nodes[0].name)!;
    let agentsReportedS: number | null = null;
    const agents = (async () => {
      const want = new Map<string, number>();
      for (const p of list) want.set(p.node, (want.get(p.node) ?? 0) + 1);
      const deadline = performance.now() + 120_000;
      while (performance.now() < deadline && !cancel?.aborted) {
        const st = await store.list('meshnodestatuses');
        const got = new Map(st.items.map((i) => [i.metadata.name, (i.status as { datapath?: { endpoints?: number } })?.datapath?.endpoints]));
        if ([...want].every(([n, k]) => got.get(n) === k)) return void (agentsReportedS = secondsSince(appliedAt));
        await new Promise((r) => setTimeout(r, 250));
      }
    })();
    const [fromPod, ...fromNodes] = await Promise.all([
      probeEchoes(client.netns, list.map(target), { deadlineMs: 120_000 }),
      ...c.nodes.map((n: { name: string; netns: string }) => probeEchoes(n.netns, list.filter((p) => p.node === n.name).map(target), { deadlineMs: 60_000 })),
    ]);
    await agents;
    const failed = [fromPod, ...fromNodes].flatMap((r) => r.failed);
    if (failed.length > 0) throw new Error(`${failed.length} probe(s) unanswered, e.g. ${failed[0].ip}: ${failed[0].error}`);
    const mem = await workloadMemory(new LabPaths(opts.home), CLUSTER);
    const t2 = performance.now();
    await meshctl(opts.home, ['lab', 'delete', '--all']);
    return {
      variant: 'lab',
      createS: labCreateS + labApplyS,
      deleteS: secondsSince(t2),
      labCreateS,
      labApplyS,
      applyPhasesS: phases,
      answerNodeS: Math.max(...fromNodes.map((r) => r.lastAnswerMs)) / 1000,
      answerPodS: fromPod.lastAnswerMs / 1000,
      agentsReportedS,
      rssBytes: mem.rssBytes,
      pssBytes: mem.pssBytes,
      workloads: mem.processes,
    };
  } finally {
    await store.close();
  }
}

/** RSS of one Node echo (what every pod ran before the native one), in a baseline namespace. */
async function nodeEchoRss(prefix: string): Promise<number> {
  const ns = `mesh${prefix}-base.echo`;
  await sh('ip', ['netns', 'add', ns]);
  let child: ResultPromise | null = null;
  try {
    await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    child = execa('ip', ['netns', 'exec', ns, process.execPath, ECHO_MAIN, 'c', 'n', 'ns', 'p', '127.0.0.1'], { reject: false });
    for (let i = 0; i < 100; i++) {
      if ((await sh('ip', ['netns', 'exec', ns, 'ss', '-Hltn', 'sport = :8080'])).trim()) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const pids = (await sh('ip', ['netns', 'pids', ns])).split('\n').map(Number).filter(Boolean);
    let rss = 0;
    for (const pid of pids) rss += Number(/^Rss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0) * 1024;
    return rss;
  } finally {
    child?.kill('SIGKILL');
    await child?.catch(() => undefined);
    await deleteNetnsMany([ns]);
  }
}

/** Rough wall-clock of a run on this 2-core machine when it is not otherwise busy. */
function estimateSeconds(opts: Options): number {
  const lab = 15 + opts.pods * 0.06;
  const baselines = opts.pods * 0.03;
  return Math.round(lab * 0.4 + opts.rounds * (lab + baselines));
}

interface Summary {
  readonly variant: Variant;
  readonly createS: number;
  readonly deleteS: number;
  readonly ratio: number;
  readonly lab?: {
    readonly labCreateS: number;
    readonly labApplyS: number;
    readonly applyPhasesS: Record<string, number>;
    readonly answerNodeS: number;
    readonly answerPodS: number;
    readonly agentsReportedS: number | null;
    readonly rssMB: number;
    readonly pssMB: number;
    readonly workloads: number;
    readonly createTargetMet: boolean;
    readonly rssTargetMet: boolean;
  };
}

function summarize(samples: readonly Sample[]): Summary[] {
  const of = (v: Variant): Sample[] => samples.filter((s) => s.variant === v);
  const base = median(of('ip-batch').map((s) => s.createS));
  return VARIANTS.filter((v) => of(v).length > 0).map((v) => {
    const ss = of(v);
    const m = (f: (s: Sample) => number | undefined): number => median(ss.map(f).filter((x): x is number => typeof x === 'number'));
    const createS = m((s) => s.createS);
    const out: Summary = { variant: v, createS: round(createS), deleteS: round(m((s) => s.deleteS)), ratio: round(createS / base) };
    if (v !== 'lab') return out;
    const phases: Record<string, number> = {};
    for (const k of Object.keys(ss[0].applyPhasesS ?? {})) phases[k] = round(m((s) => s.applyPhasesS?.[k]));
    const agents = ss.map((s) => s.agentsReportedS).filter((x): x is number => typeof x === 'number');
    const rss = m((s) => s.rssBytes);
    return {
      ...out,
      lab: {
        labCreateS: round(m((s) => s.labCreateS)),
        labApplyS: round(m((s) => s.labApplyS)),
        applyPhasesS: phases,
        answerNodeS: round(m((s) => s.answerNodeS)),
        answerPodS: round(m((s) => s.answerPodS)),
        agentsReportedS: agents.length === ss.length ? round(median(agents)) : null,
        rssMB: round(rss / 1024 ** 2, 0),
        pssMB: round(m((s) => s.pssBytes) / 1024 ** 2, 0),
        workloads: m((s) => s.workloads),
        createTargetMet: createS <= CREATE_TARGET_S,
        rssTargetMet: rss < RSS_TARGET_BYTES,
      },
    };
  });
}

function table(sum: readonly Summary[], opts: Options, nodeEchoMB: number | null): string {
  const rows = sum.map((s) => [
    s.variant,
    s.variant === 'lab' ? `${fmt(s.createS)} (create ${fmt(s.lab!.labCreateS)} + apply ${fmt(s.lab!.labApplyS)}) ${s.lab!.createTargetMet ? '✅' : '❌'} ≤${CREATE_TARGET_S}s` : fmt(s.createS),
    `${fmt(s.ratio)}×`,
    fmt(s.deleteS),
    s.lab ? `${fmt(s.lab.rssMB, 0)} MB (PSS ${fmt(s.lab.pssMB, 0)}) ${s.lab.rssTargetMet ? '✅' : '❌'} <2560` : s.variant === 'ip-batch' && nodeEchoMB ? `0 (Node echo: ${fmt(nodeEchoMB * opts.pods, 0)} MB)` : '0',
    s.lab ? `node ${fmt(s.lab.answerNodeS)}, pod ${fmt(s.lab.answerPodS)}, status ${fmt(s.lab.agentsReportedS)}` : '-',
  ]);
  return markdownTable([`${opts.pods} pods / ${opts.nodes} nodes`, 'build s', '×ip-batch', 'delete s', 'workload RSS', 'all answer, s after apply'], rows);
}

async function main(): Promise<void> {
  requireRoot('bench/density', 'network namespaces, veth pairs and a lab');
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    note(`❌ ${(err as Error).message}`);
    process.exitCode = 2;
    return;
  }
  const estimate = estimateSeconds(opts);
  if (estimate > BUDGET_S - 30) {
    note(`❌ this run would take about ${estimate}s; the budget is ${BUDGET_S}s: lower --rounds or --pods`);
    process.exitCode = 2;
    return;
  }
  const prefix = labPrefix(opts.home);
  const startedAt = new Date().toISOString();
  const hostBefore = hostInfo();
  const samples: Sample[] = [];
  const errors: string[] = [];
  let nodeEchoBytes: number | null = null;
  let reported = false;
  const report = (): void => {
    if (reported) return;
    reported = true;
    const sum = summarize(samples);
    const hostAfter = hostInfo();
    const echoMB = nodeEchoBytes === null ? null : nodeEchoBytes / 1024 ** 2;
    if (sum.length) note(`\n${table(sum, opts, echoMB)}\n`);
    const lab = sum.find((s) => s.lab)?.lab;
    if (lab) note(`lab apply phases (medians, s): ${Object.entries(lab.applyPhasesS).map(([k, v]) => `${k} ${fmt(v)}`).join(', ')}`);
    note(
      `Medians of ${opts.rounds} round(s) after a warm-up; "all answer": every pod's TCP echo greeted its node (wiring) and a pod on the first node (agents' datapath);` +
        ` "status": the agents' status objects counted every endpoint. Load average ${hostBefore.loadavg1m} before, ${hostAfter.loadavg1m} after (${hostAfter.cpus} CPUs).`,
    );
    process.stdout.write(
      `${JSON.stringify(
        {
          benchmark: 'density',
          revision: revision(),
          startedAt,
          finishedAt: new Date().toISOString(),
          host: { ...hostAfter, loadavg1mBefore: hostBefore.loadavg1m },
          options: opts,
          nodeEchoRssMB: echoMB === null ? null : round(echoMB, 1),
          results: sum,
          samples,
          errors,
        },
        null,
        2,
      )}\n`,
    );
  };
  await runBounded(
    'bench/density',
    BUDGET_S * 1000,
    async (signal) => {
      cancel = signal;
      const warm = Math.max(10, Math.round(opts.pods / 10));
      note(`⌛ density benchmark: ${opts.pods} pods over ${opts.nodes} nodes, warm-up (a lab of ${warm} pods) + ${opts.rounds} round(s) × ${VARIANTS.join('/')} (about ${estimate}s); load ${hostBefore.loadavg1m}`);
      await measureLab(opts, warm);
      nodeEchoBytes = await nodeEchoRss(prefix);
      for (let r = 0; r < opts.rounds; r++) {
        const order = r % 2 === 0 ? VARIANTS : [...VARIANTS].reverse();
        for (const v of order) {
          if (signal.aborted) return false;
          try {
            const s = v === 'lab' ? await measureLab(opts, opts.pods) : await measureBaseline(v, prefix, opts, opts.pods);
            samples.push(s);
            note(`   round ${r + 1} ${v}: build ${fmt(s.createS)}s${s.rssBytes ? `, RSS ${fmt(s.rssBytes / 1024 ** 2, 0)} MB, all answered ${fmt(s.answerPodS)}s after apply` : ''}`);
          } catch (err) {
            if (signal.aborted) throw err;
            errors.push(`round ${r + 1} ${v}: ${(err as Error).message}`);
            note(`❌ round ${r + 1} ${v}: ${(err as Error).message}`);
          }
        }
      }
      report();
      return errors.length === 0;
    },
    async () => {
      await meshctl(opts.home, ['lab', 'delete', '--all'], 180_000, false).catch((err: Error) => note(`⚠️  ${err.message}`));
      await deleteBaseline(prefix);
      rmSync(opts.home, { recursive: true, force: true });
    },
    (why) => {
      errors.push(why);
      report();
    },
  );
}

await main();
