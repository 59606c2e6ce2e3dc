/**
 * Human output goes to stderr with status glyphs; data (-o json) goes to stdout.
 * Spinners only when stderr is a TTY; elsewhere plain lines.
 */
import chalk from 'chalk';

const tty = process.stderr.isTTY === true;

export const out = {
  ok(msg: string): void {
    process.stderr.write(`✅ ${msg}\n`);
  },
  warn(msg: string): void {
    process.stderr.write(`⚠️  ${tty ? chalk.yellow(msg) : msg}\n`);
  },
  fail(msg: string): void {
    process.stderr.write(`❌ ${tty ? chalk.red(msg) : msg}\n`);
  },
  wait(msg: string): void {
    process.stderr.write(`⌛ ${msg}\n`);
  },
  info(msg: string): void {
    process.stderr.write(`${msg}\n`);
  },
  hint(msg: string): void {
    process.stderr.write(`💡 ${msg}\n`);
  },
  /** Data for machines: stdout only. */
  data(value: unknown): void {
    process.stdout.write(JSON.stringify(value, null, 2) + '\n');
  },
  text(line: string): void {
    process.stdout.write(line + '\n');
  },
};

/** Render rows as an aligned table (first row is the header). */
export function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('   ')).join('\n');
}

/** Run a step with progress: a spinner on a TTY, plain ⌛/✅ lines elsewhere. */
export async function step<T>(title: string, fn: () => Promise<T>): Promise<T> {
  if (!tty) {
    const started = Date.now();
    const r = await fn();
    out.ok(`${title} (${((Date.now() - started) / 1000).toFixed(1)}s)`);
    return r;
  }
  const { default: ora } = await import('ora');
  const spinner = ora({ text: title, stream: process.stderr }).start();
  const started = Date.now();
  try {
    const r = await fn();
    spinner.succeed(`${title} (${((Date.now() - started) / 1000).toFixed(1)}s)`);
    return r;
  } catch (err) {
    spinner.fail(title);
    throw err;
  }
}
