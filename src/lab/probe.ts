/**
 * Probing lab pods from inside the lab: one process in a namespace of the lab (a pod or a
 * node) connects to many pods' TCP echo and checks each greets with its own identity line.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ECHO_TCP_PORT } from '../defaults.js';
import { OperationError } from '../util/errors.js';
import { run } from '../util/exec.js';
import { ROOT } from '../util/self.js';
import type { LabPaths } from './state.js';

const PROBE_MAIN = join(ROOT, 'dist', 'src', 'lab', 'probe-main.js');

export interface ProbeTarget {
  readonly ip: string;
  /** The identity line the pod must greet with: cluster/node/namespace/pod. */
  readonly line: string;
}

export interface ProbeResult {
  readonly answered: number;
  readonly failed: ReadonlyArray<{ readonly ip: string; readonly line: string; readonly error: string }>;
  /** Milliseconds from the start until the last pod answered. */
  readonly lastAnswerMs: number;
  readonly attempts: number;
  /** Failed attempts by kind (timeout, ECONNREFUSED, EHOSTUNREACH, answered, closed). */
  readonly errors: Readonly<Record<string, number>>;
}

export interface ProbeOptions {
  /** Keep retrying pods that did not answer until this many ms have passed; default 30000. */
  readonly deadlineMs?: number;
  /** Connections open at once; default 64. */
  readonly concurrency?: number;
  /** One attempt's timeout, ms; default 2000. */
  readonly attemptMs?: number;
}

/** From inside `netns`, connect to every target's TCP echo until it answers right or the deadline passes. */
export async function probeEchoes(netns: string, targets: readonly ProbeTarget[], opts: ProbeOptions = {}): Promise<ProbeResult> {
  const deadlineMs = opts.deadlineMs ?? 30_000;
  const input = { targets, port: ECHO_TCP_PORT, deadlineMs, concurrency: opts.concurrency ?? 64, attemptMs: opts.attemptMs ?? 2000 };
  const r = await run('ip', ['netns', 'exec', netns, process.execPath, PROBE_MAIN], {
    input: JSON.stringify(input),
    check: false,
    timeoutMs: deadlineMs + 30_000,
  });
  if (r.exitCode !== 0) throw new OperationError(`probe from ${netns}: ${r.stderr.trim().split('\n').slice(-2).join('; ') || `exit ${r.exitCode}`}`);
  return JSON.parse(r.stdout) as ProbeResult;
}

export interface WorkloadMemory {
  /** Pod workloads found running (pid file and live process). */
  readonly processes: number;
  /** Sum of their resident set sizes, bytes (shared pages counted once per process). */
  readonly rssBytes: number;
  /** Sum of their proportional set sizes, bytes (shared pages divided among the sharers). */
  readonly pssBytes: number;
}

/** Memory of a cluster's pod workloads, from their pid files and /proc. */
export async function workloadMemory(paths: LabPaths, cluster: string): Promise<WorkloadMemory> {
  const dir = paths.runDir(cluster);
  const files = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.startsWith('pod-') && f.endsWith('.pid'));
  let processes = 0;
  let rss = 0;
  let pss = 0;
  for (const f of files) {
    try {
      const pid = Number((await readFile(join(dir, f), 'utf8')).trim());
      const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
      const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1] ?? 0);
      rss += kb('Rss') * 1024;
      pss += kb('Pss') * 1024;
      processes++;
    } catch {
      /* exited meanwhile */
    }
  }
  return { processes, rssBytes: rss, pssBytes: pss };
}
