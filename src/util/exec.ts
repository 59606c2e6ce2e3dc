import { readFileSync } from 'node:fs';
import { execa } from 'execa';
import { OperationError } from './errors.js';

export interface RunOptions {
  /** Network namespace to run in (via `ip netns exec`); default: the caller's. */
  readonly netns?: string;
  /** Standard input text. */
  readonly input?: string;
  /** Fail on a non-zero exit; default true. */
  readonly check?: boolean;
  /** Milliseconds before the command is killed; default 30000. */
  readonly timeoutMs?: number;
}

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly exitCode: number;
}

/** Run a command and collect its output; a failure names the command and quotes its stderr. */
export async function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const [file, argv] = opts.netns ? ['ip', ['netns', 'exec', opts.netns, cmd, ...args]] : [cmd, [...args]];
  const r = await execa(file, argv, {
    reject: false,
    input: opts.input,
    timeout: opts.timeoutMs ?? 30_000,
    stripFinalNewline: true,
  });
  const exitCode = r.exitCode ?? -1;
  if ((opts.check ?? true) && (exitCode !== 0 || r.failed)) {
    const why = (r.stderr || r.stdout || r.shortMessage || '').toString().trim().split('\n').slice(-3).join('; ');
    throw new OperationError(`${[cmd, ...args].join(' ')}: ${why || `exit ${exitCode}`}`);
  }
  return { stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), exitCode };
}

/** `ip` with arguments; `-n NS` when a namespace is given. */
export async function ip(args: readonly string[], netns?: string, check = true): Promise<RunResult> {
  return run('ip', netns ? ['-n', netns, ...args] : args, { check });
}

/** Run many `ip` commands in one process (`ip -batch -`), failing on the first error. */
export async function ipBatch(lines: readonly string[], netns?: string): Promise<void> {
  if (lines.length === 0) return;
  await run('ip', [...(netns ? ['-n', netns] : []), '-batch', '-'], { input: lines.join('\n') + '\n' });
}

/** Does a command exist on PATH? */
export async function haveCommand(name: string): Promise<boolean> {
  const r = await run('sh', ['-c', `command -v ${name}`], { check: false });
  return r.exitCode === 0;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Is a process alive? A zombie (exited, not yet reaped) counts as dead. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}
