/** Helpers for integration tests: run the real CLI against a lab in a test-owned state dir. */
import { execa } from 'execa';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..', '..');
export const BIN = join(ROOT, 'dist', 'bin', 'meshctl.js');
export const FIXTURES = join(ROOT, 'fixtures');

/** Integration tests need root; without it they fail with this message (never skip). */
export function requireRoot(): void {
  if (process.getuid?.() !== 0) {
    throw new Error('needs root: integration tests build network namespaces, links and BPF; run `make test` as root');
  }
}

export interface CliResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

export class TestLab {
  /** A state dir of its own; its lab prefix (and so every name) follows from it. */
  constructor(readonly home: string) {}

  async cli(args: readonly string[], env: Record<string, string> = {}, timeoutMs = 90_000): Promise<CliResult> {
    const r = await execa(process.execPath, [BIN, ...args], {
      reject: false,
      env: { ...process.env, MESHCTL_HOME: this.home, ...env },
      timeout: timeoutMs,
    });
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
  }

  /** Run and require exit 0. */
  async ok(args: readonly string[], env: Record<string, string> = {}): Promise<CliResult> {
    const r = await this.cli(args, env);
    if (r.exitCode !== 0) throw new Error(`meshctl ${args.join(' ')} exited ${r.exitCode}: ${r.stderr}`);
    return r;
  }

  async json<T = any>(args: readonly string[]): Promise<T> {
    return JSON.parse((await this.ok([...args, '-o', 'json'])).stdout) as T;
  }

  /** Remove every trace of this lab (works even after a crashed run). */
  async cleanup(): Promise<void> {
    await this.cli(['lab', 'delete', '--all']);
  }
}

export function listNetns(): string[] {
  try {
    return readdirSync('/run/netns').sort();
  } catch {
    return [];
  }
}

export async function sh(cmd: string, args: readonly string[]): Promise<CliResult> {
  const r = await execa(cmd, args, { reject: false, timeout: 30_000 });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Poll until fn returns a truthy value; throw with the last value after timeoutMs. */
export async function eventually<T>(fn: () => Promise<T>, timeoutMs: number, what: string, stepMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (err) {
      last = err;
    }
    await sleep(stepMs);
  }
  throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
}
