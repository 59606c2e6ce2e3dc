/**
 * Cluster mesh propagation: how long from a pod's MeshEndpoint appearing in c1's store (its agent
 * publishes it once the pod's entries are written) until its address is in the pinned ipcache of
 * every c2 node (c1 store → export → c1 apiserver → c2 agents' remote clients), against
 * the time to c1's own other node (store → that node's agent) as the baseline, for the same pods
 * in the same run. 200 pods, created on c1-n1 in bursts of 20 after one warm-up burst.
 *
 * Two tunnel clusters of 2 nodes in their own state dir (--home, default a mkdtemp dir), enabled
 * and connected; `lab delete --all` before and after (also on error). Prints a markdown table on
 * stderr and JSON on stdout. Target: p99 ≤ 100 ms. Not a test: nothing fails on a missed target.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { Etcd3 } from 'etcd3';
import { BpfMap } from '../src/datapath/addon.js';
import { MapNames, ipcacheKeyCodec } from '../src/datapath/codecs.js';
import { nodePinDir } from '../src/datapath/datapath.js';
import { LabPaths, labPrefix, readLabState } from '../src/lab/state.js';
import { MESHCTL_BIN } from '../src/util/self.js';
import { fmt, hostInfo, markdownTable, note, requireRoot, revision, round } from './common.js';

const BURST = 20;
const BURSTS = 10;
const TARGET_P99_MS = 100;
const argHome = process.argv.indexOf('--home');
const home = argHome > 0 ? process.argv[argHome + 1] : mkdtempSync(join(tmpdir(), 'meshctl-bench-mesh-'));
const paths = new LabPaths(home);
const prefix = labPrefix(home);

async function meshctl(args: readonly string[], timeoutMs = 600_000): Promise<string> {
  const r = await execa(process.execPath, [MESHCTL_BIN, ...args], { env: { ...process.env, MESHCTL_HOME: home }, reject: false, timeout: timeoutMs });
  if (r.exitCode !== 0) throw new Error(`meshctl ${args.join(' ')} exited ${r.exitCode}: ${String(r.stderr).trim()}`);
  return String(r.stdout);
}

function percentile(values: readonly number[], p: number): number {
  if (!values.length) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

/** /32 addresses a pinned ipcache holds now. */
function addresses(map: BpfMap): Set<string> {
  const d = map.dump();
  const ks = d.count ? d.keys.length / d.count : 0;
  const out = new Set<string>();
  for (let i = 0; i < d.count; i++) {
    const k = ipcacheKeyCodec.decode(d.keys, i * ks);
    if (k.prefixLen === 32) out.add(k.ip);
  }
  return out;
}

function podsYaml(names: readonly string[], node: string): string {
  return names
    .map((n) => `apiVersion: v1\nkind: Pod\nmetadata:\n  name: ${n}\n  namespace: bench\n  labels:\n    app: bench\nspec:\n  nodeName: ${node}\n  containers:\n    - name: echo\n      image: echo\n`)
    .join('---\n');
}

interface Sample {
  readonly ip: string;
  readonly burst: number;
  /** ms from the MeshEndpoint in c1's store to the entry on c1-n2 (baseline) and on each c2 node (max = all). */
  readonly local: number;
  readonly remote: number;
}

async function main(): Promise<void> {
  requireRoot('mesh-propagation', 'lab clusters: namespaces, BPF');
  await meshctl(['lab', 'delete', '--all']).catch(() => undefined);
  note(`⌛ two clusters in ${home}`);
  await meshctl(['lab', 'create', 'c1', '--id', '1', '--pod-cidr', '10.1.0.0/16', '--service-cidr', '10.97.0.0/16', '--nodes', '2']);
  await meshctl(['lab', 'create', 'c2', '--id', '2', '--pod-cidr', '10.2.0.0/16', '--service-cidr', '10.98.0.0/16', '--nodes', '2']);
  for (const c of ['c1', 'c2']) await meshctl(['enable', '--context', c]);
  await meshctl(['connect', '--context', 'c1', '--destination-context', 'c2']);
  await meshctl(['status', '--context', 'c2', '--wait', '--wait-duration', '5m']);
  const ns = join(home, 'ns.yaml');
  writeFileSync(ns, 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n');
  await meshctl(['lab', 'apply', '-f', ns, '--context', 'c1']);

  const lab = (await readLabState(paths))!;
  const c1 = lab.clusters.c1;
  const [n1, n2] = c1.nodes.map((n) => n.name);
  const open = (cluster: string, node: string): BpfMap => BpfMap.openPinned(join(nodePinDir(prefix, cluster, node), MapNames.ipcache));
  const targets = { local: open('c1', n2), remote: lab.clusters.c2.nodes.map((n) => open('c2', n.name)) };

  // t0 of each address: its MeshEndpoint's arrival in c1's store
  const etcd = new Etcd3({ hosts: c1.store.endpoint });
  const born = new Map<string, number>();
  const watcher = await etcd.watch().prefix('/registry/meshendpoints/').create();
  watcher.on('put', (kv) => {
    try {
      const ip = (JSON.parse(kv.value.toString()) as { spec?: { ip?: string } }).spec?.ip;
      if (ip && !born.has(ip)) born.set(ip, Date.now());
    } catch {
      /* not an endpoint */
    }
  });

  const samples: Sample[] = [];
  try {
    for (let b = 0; b <= BURSTS; b++) {
      const names = Array.from({ length: BURST }, (_, i) => `p${b}-${i}`);
      const file = join(home, `burst-${b}.yaml`);
      writeFileSync(file, podsYaml(names, n1));
      const seenLocal = new Map<string, number>();
      const seenRemote = new Map<string, number[]>();
      const before = new Set(born.keys());
      const applying = meshctl(['lab', 'apply', '-f', file, '--context', 'c1']);
      let applied = false;
      void applying.then(() => (applied = true));
      const deadline = Date.now() + 120_000;
      for (;;) {
        const now = Date.now();
        const fresh = [...born.keys()].filter((ip) => !before.has(ip));
        const local = addresses(targets.local);
        const remote = targets.remote.map(addresses);
        for (const ip of fresh) {
          if (!seenLocal.has(ip) && local.has(ip)) seenLocal.set(ip, now);
          const r = seenRemote.get(ip) ?? [];
          remote.forEach((set, i) => {
            if (r[i] === undefined && set.has(ip)) r[i] = now;
          });
          seenRemote.set(ip, r);
        }
        const complete = fresh.length >= BURST && fresh.every((ip) => seenLocal.has(ip) && (seenRemote.get(ip) ?? []).filter((x) => x !== undefined).length === targets.remote.length);
        if ((complete && applied) || now > deadline) {
          if (b > 0) {
            for (const ip of fresh) {
              const r = seenRemote.get(ip) ?? [];
              if (!seenLocal.has(ip) || r.filter((x) => x !== undefined).length !== targets.remote.length) continue;
              samples.push({ ip, burst: b, local: seenLocal.get(ip)! - born.get(ip)!, remote: Math.max(...r) - born.get(ip)! });
            }
          }
          note(`${b === 0 ? 'warm-up' : `burst ${b}/${BURSTS}`}: ${fresh.length} endpoints, ${seenLocal.size} on ${n2}, complete: ${complete}`);
          break;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      await applying;
    }
  } finally {
    await watcher.cancel();
    etcd.close();
    targets.local.close();
    for (const m of targets.remote) m.close();
  }

  const local = samples.map((s) => s.local);
  const remote = samples.map((s) => s.remote);
  const row = (what: string, v: number[]): string[] => [what, String(v.length), fmt(percentile(v, 50), 1), fmt(percentile(v, 99), 1), fmt(Math.max(...v), 1)];
  const p99 = percentile(remote, 99);
  note(
    markdownTable(
      ['path', 'pods', 'p50 ms', 'p99 ms', 'max ms'],
      [row(`c1 store -> c1's other node (${n2}) [baseline]`, local), row('c1 store -> every c2 node (export, apiserver, remote client)', remote)],
    ),
  );
  note(`${p99 <= TARGET_P99_MS ? '✅' : '❌'} remote p99 ${fmt(p99, 1)} ms (target ≤ ${TARGET_P99_MS} ms); machine shared, load ${hostInfo().loadavg1m}`);
  process.stdout.write(
    JSON.stringify(
      {
        bench: 'mesh-propagation',
        revision: revision(),
        host: hostInfo(),
        pods: samples.length,
        bursts: BURSTS,
        burstSize: BURST,
        baseline: { p50: round(percentile(local, 50), 1), p99: round(percentile(local, 99), 1) },
        remote: { p50: round(percentile(remote, 50), 1), p99: round(p99, 1), target: TARGET_P99_MS },
        samples,
      },
      null,
      2,
    ) + '\n',
  );
}

try {
  await main();
} catch (err) {
  process.stderr.write(`❌ ${(err as Error).message}\n`);
  process.exitCode = 1;
} finally {
  await meshctl(['lab', 'delete', '--all']).catch(() => undefined);
  if (argHome < 0) rmSync(home, { recursive: true, force: true });
}
process.exit();
