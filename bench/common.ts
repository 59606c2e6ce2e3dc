/**
 * Small helpers the benchmarks share: the root check, progress lines on stderr, medians,
 * a markdown table, and a wall-clock budget that aborts a run which overstays it.
 */
import { execFileSync } from 'node:child_process';
import { cpus, loadavg, release } from 'node:os';

import { ROOT } from '../src/util/self.js';

/** Stops with a clear message unless running as root (namespaces, tc and BPF all need it). */
export function requireRoot(bench: string, why: string): void {
  if (process.getuid?.() === 0) return;
  process.stderr.write(`❌ ${bench} needs root (${why}); run it with sudo\n`);
  process.exit(1);
}

/** A progress line for people, on stderr (stdout carries the JSON only). */
export function note(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

/** Median of a non-empty list (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Rounds to `digits` decimals for tables and JSON (NaN stays NaN, printed as '-'). */
export function round(value: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

export function fmt(value: number | null | undefined, digits = 2): string {
  return value === null || value === undefined || !Number.isFinite(value) ? '-' : value.toFixed(digits);
}

/** A markdown table: header row, separator, rows; columns padded to their widest cell. */
export function markdownTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [line(headers), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}

/** What the machine looked like while a benchmark ran (the load matters on a shared 2-core box). */
export function hostInfo(): { kernel: string; cpus: number; loadavg1m: number } {
  return { kernel: release(), cpus: cpus().length, loadavg1m: round(loadavg()[0]) };
}

/** The commit measured, with `+dirty` when the work tree has changes; null outside a git checkout. */
export function revision(): string | null {
  try {
    const git = (args: string[]): string => execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return `${git(['rev-parse', '--short', 'HEAD'])}${git(['status', '--porcelain', '--untracked-files=no']) ? '+dirty' : ''}`;
  } catch {
    return null;
  }
}

/** How long an aborted run waits for `main` to stop at its next step before cleaning up anyway. */
const ABORT_GRACE_MS = 20_000;

/**
 * Runs `main`, then `cleanup`, also when `main` throws, on SIGINT/SIGTERM, and when
 * `budgetMs` passes (then the run fails with a message naming the budget). An abort fires the
 * signal `main` gets (it should stop at its next step and kill what it runs), calls `onAbort`
 * so what was measured so far can still be reported, waits for `main` to stop (at most
 * ABORT_GRACE_MS), cleans up and exits. Exit code: 0 when main resolves true, 1 otherwise,
 * 128 + the signal's number on SIGINT/SIGTERM.
 */
export async function runBounded(
  name: string,
  budgetMs: number,
  main: (signal: AbortSignal) => Promise<boolean>,
  cleanup: () => Promise<void>,
  onAbort?: (why: string) => void,
): Promise<void> {
  const controller = new AbortController();
  let cleaning: Promise<void> | null = null;
  const cleanOnce = (): Promise<void> => {
    cleaning ??= cleanup().catch((err: unknown) => note(`⚠️  ${name}: cleanup: ${(err as Error).message}`));
    return cleaning;
  };
  let mainDone: Promise<unknown> = Promise.resolve();
  const bail = (code: number, why: string): void => {
    if (controller.signal.aborted) return;
    note(`❌ ${name}: ${why}; stopping and cleaning up`);
    controller.abort(new Error(why));
    try {
      onAbort?.(why);
    } catch (err) {
      note(`⚠️  ${name}: reporting after the abort: ${(err as Error).message}`);
    }
    const grace = new Promise((resolve) => setTimeout(resolve, ABORT_GRACE_MS).unref());
    void Promise.race([mainDone.catch(() => undefined), grace])
      .then(cleanOnce)
      .finally(() => process.exit(code));
  };
  const onSignal = (sig: NodeJS.Signals): void => bail(sig === 'SIGINT' ? 130 : 143, sig);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const timer = setTimeout(() => bail(1, `still running after its ${budgetMs / 1000}s budget`), budgetMs);
  let ok = false;
  try {
    const run = main(controller.signal);
    mainDone = run;
    ok = await run;
  } catch (err) {
    if (!controller.signal.aborted) note(`❌ ${name}: ${(err as Error).message}`);
  } finally {
    clearTimeout(timer);
    if (!controller.signal.aborted) await cleanOnce();
  }
  process.exitCode = ok ? 0 : 1;
}
