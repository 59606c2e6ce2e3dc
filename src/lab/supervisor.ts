/**
 * One supervisor process per lab cluster keeps that cluster's processes alive: the store etcd,
 * one agent per node and one workload per pod. The wanted set is the files in
 * clusters/<c>/procs/*.json, which the CLI writes and removes; the supervisor rescans it often,
 * starts what is missing, stops what is no longer wanted and restarts a process that exits
 * (after RESTART_DELAY_MS, doubling up to RESTART_DELAY_MAX_MS while it keeps failing fast).
 *
 * Why a per-cluster supervisor: `lab delete c1` stops exactly one process group, and a crash
 * in one cluster's supervisor cannot take another cluster's processes with it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync, writeFileSync, rmSync, readdirSync, mkdirSync, existsSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { RESTART_DELAY_MAX_MS, RESTART_DELAY_MS } from '../defaults.js';
import { pidAlive } from '../util/exec.js';
import { LabPaths } from './state.js';

export const ProcSpecSchema = z.object({
  name: z.string().regex(/^[a-zA-Z0-9_.-]+$/),
  /** Network namespace to run in; absent = the host's. */
  netns: z.string().optional(),
  argv: z.array(z.string()).min(1),
  env: z.record(z.string()).optional(),
});
export type ProcSpec = z.infer<typeof ProcSpecSchema>;

interface Running {
  spec: ProcSpec;
  specText: string;
  child: ChildProcess | null;
  startedAt: number;
  delay: number;
  timer: NodeJS.Timeout | null;
  restarts: number;
}

export async function runSupervisor(paths: LabPaths, cluster: string): Promise<void> {
  const procsDir = paths.procsDir(cluster);
  const runDir = paths.runDir(cluster);
  const logsDir = paths.logsDir(cluster);
  mkdirSync(runDir, { recursive: true });
  mkdirSync(logsDir, { recursive: true });
  writeFileSync(paths.supervisorPidFile(cluster), String(process.pid));
  const procs = new Map<string, Running>();
  let stopping = false;

  const log = (msg: string): void => {
    process.stderr.write(`${new Date().toISOString()} ${msg}\n`);
  };

  // A previous supervisor may have died and left its children behind: replace them.
  for (const f of existsSync(runDir) ? readdirSync(runDir) : []) {
    if (!f.endsWith('.pid') || f === 'supervisor.pid') continue;
    const pid = Number(readFileSync(join(runDir, f), 'utf8').trim());
    if (pid && pidAlive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    rmSync(join(runDir, f), { force: true });
  }

  const start = (r: Running): void => {
    r.timer = null;
    if (stopping) return;
    const spec = r.spec;
    const logFd = openSync(join(logsDir, `${spec.name}.log`), 'a');
    // nsenter switches only the network namespace; `ip netns exec` would also remount /sys,
    // hiding the host's bpffs where agents pin their maps.
    const [cmd, args] = spec.netns
      ? ['nsenter', [`--net=/run/netns/${spec.netns}`, '--', ...spec.argv]]
      : [spec.argv[0], spec.argv.slice(1)];
    const child = spawn(cmd, args, {
      stdio: ['ignore', logFd, logFd],
      env: { ...process.env, ...(spec.env ?? {}) },
    });
    closeSync(logFd);
    r.child = child;
    r.startedAt = Date.now();
    if (child.pid) writeFileSync(join(runDir, `${spec.name}.pid`), String(child.pid));
    log(`started ${spec.name} pid ${child.pid}${r.restarts ? ` (restart ${r.restarts})` : ''}`);
    child.on('error', (err) => log(`${spec.name}: ${err.message}`));
    child.on('exit', (code, signal) => {
      if (r.child !== child) return;
      r.child = null;
      if (stopping || !procs.has(spec.name)) return;
      const ranFor = Date.now() - r.startedAt;
      r.delay = ranFor > 10_000 ? RESTART_DELAY_MS : Math.min(r.delay * 2, RESTART_DELAY_MAX_MS);
      r.restarts++;
      log(`${spec.name} exited (${signal ?? `code ${code}`}); restarting in ${r.delay}ms`);
      r.timer = setTimeout(() => start(r), r.delay);
    });
  };

  const stop = (r: Running): void => {
    if (r.timer) clearTimeout(r.timer);
    r.timer = null;
    const child = r.child;
    r.child = null;
    rmSync(join(runDir, `${r.spec.name}.pid`), { force: true });
    if (child?.pid && child.exitCode === null) {
      child.kill('SIGTERM');
      setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }, 2000).unref();
    }
  };

  // Specs by file, with the stat they were read at: a lab with hundreds of pods rescans often,
  // and only a file that was replaced (new inode) or rewritten is read and parsed again.
  const parsed = new Map<string, { stamp: string; spec: ProcSpec | null; text: string }>();
  const scan = (): void => {
    if (stopping) return;
    const wanted = new Map<string, { spec: ProcSpec; text: string }>();
    let files: string[] = [];
    try {
      files = readdirSync(procsDir).filter((f) => f.endsWith('.json'));
    } catch {
      files = [];
    }
    const seen = new Set(files);
    for (const f of parsed.keys()) if (!seen.has(f)) parsed.delete(f);
    for (const f of files) {
      let stamp = '';
      try {
        const st = statSync(join(procsDir, f));
        stamp = `${st.ino}:${st.mtimeMs}:${st.size}`;
      } catch {
        continue; // removed meanwhile
      }
      let entry = parsed.get(f);
      if (!entry || entry.stamp !== stamp) {
        try {
          const text = readFileSync(join(procsDir, f), 'utf8');
          entry = { stamp, spec: ProcSpecSchema.parse(JSON.parse(text)), text };
        } catch (err) {
          log(`skipping ${f}: ${err instanceof Error ? err.message.split('\n')[0] : err}`);
          entry = { stamp, spec: null, text: '' };
        }
        parsed.set(f, entry);
      }
      if (entry.spec) wanted.set(entry.spec.name, { spec: entry.spec, text: entry.text });
    }
    for (const [name, r] of procs) {
      const w = wanted.get(name);
      if (!w || w.text !== r.specText) {
        stop(r);
        procs.delete(name);
        if (w) log(`${name} changed; restarting`);
        else log(`stopped ${name}`);
      }
    }
    for (const [name, w] of wanted) {
      if (procs.has(name)) continue;
      const r: Running = { spec: w.spec, specText: w.text, child: null, startedAt: 0, delay: RESTART_DELAY_MS, timer: null, restarts: 0 };
      procs.set(name, r);
      start(r);
    }
  };

  const shutdown = (): void => {
    if (stopping) return;
    stopping = true;
    for (const r of procs.values()) stop(r);
    rmSync(paths.supervisorPidFile(cluster), { force: true });
    setTimeout(() => process.exit(0), 300).unref();
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);

  scan();
  const timer = setInterval(scan, 250);
  await new Promise<void>((resolve) => {
    process.once('exit', () => {
      clearInterval(timer);
      resolve();
    });
  });
}

/** Write (or replace) a wanted process; the supervisor starts it within a quarter second. */
export function writeProcSpec(paths: LabPaths, cluster: string, spec: ProcSpec): void {
  const dir = paths.procsDir(cluster);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${spec.name}.json`);
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, JSON.stringify(ProcSpecSchema.parse(spec)));
  // rename is atomic, so the supervisor never reads half a file
  renameSync(tmp, file);
}

export function removeProcSpec(paths: LabPaths, cluster: string, name: string): void {
  rmSync(join(paths.procsDir(cluster), `${name}.json`), { force: true });
}

/** Pid of a supervised process, if it is running. */
export function procPid(paths: LabPaths, cluster: string, name: string): number | null {
  try {
    const pid = Number(readFileSync(join(paths.runDir(cluster), `${name}.pid`), 'utf8').trim());
    return pid && pidAlive(pid) ? pid : null;
  } catch {
    return null;
  }
}

export function supervisorPid(paths: LabPaths, cluster: string): number | null {
  try {
    const pid = Number(readFileSync(paths.supervisorPidFile(cluster), 'utf8').trim());
    return pid && pidAlive(pid) ? pid : null;
  } catch {
    return null;
  }
}
