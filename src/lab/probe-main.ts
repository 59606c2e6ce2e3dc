/**
 * Entry point run inside a lab namespace by probeEchoes (probe.ts): reads targets as JSON on
 * stdin, connects to each one's TCP echo until it greets with the expected identity line or the
 * deadline passes, and prints the outcome as JSON on stdout.
 */
import { connect } from 'node:net';
import type { ProbeResult, ProbeTarget } from './probe.js';

interface Input {
  readonly targets: ProbeTarget[];
  readonly port: number;
  readonly deadlineMs: number;
  readonly concurrency: number;
  readonly attemptMs: number;
}

function greet(t: ProbeTarget, port: number, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: t.ip, port });
    let got = '';
    const done = (why: string): void => {
      s.destroy();
      resolve(why);
    };
    s.setTimeout(timeoutMs, () => done('timeout'));
    s.on('data', (b) => {
      got += b.toString('utf8');
      if (got.includes('\n')) done(got.slice(0, got.indexOf('\n')) === t.line ? '' : `answered ${JSON.stringify(got.slice(0, got.indexOf('\n')))}`);
    });
    s.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
    s.on('end', () => done(`closed after ${JSON.stringify(got)}`));
  });
}

const input = JSON.parse(await new Promise<string>((resolve) => {
  let text = '';
  process.stdin.setEncoding('utf8').on('data', (c) => (text += c)).on('end', () => resolve(text));
})) as Input;
const started = Date.now();
const deadline = started + input.deadlineMs;
const pending = [...input.targets];
const lastError = new Map<string, string>();
const answeredAt = new Map<string, number>();
const errors: Record<string, number> = {};
let attempts = 0;
while (pending.length > 0 && Date.now() < deadline) {
  const round = pending.splice(0);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(input.concurrency, round.length) }, async () => {
      while (next < round.length) {
        const t = round[next++];
        attempts++;
        const why = await greet(t, input.port, input.attemptMs);
        if (why === '') answeredAt.set(t.ip, Date.now() - started);
        else {
          errors[why.split(' ')[0]] = (errors[why.split(' ')[0]] ?? 0) + 1;
          lastError.set(t.ip, why);
          pending.push(t);
        }
      }
    }),
  );
  if (pending.length > 0) await new Promise((r) => setTimeout(r, 200));
}
const result: ProbeResult = {
  answered: answeredAt.size,
  failed: pending.map((t) => ({ ip: t.ip, line: t.line, error: lastError.get(t.ip) ?? 'not tried' })),
  lastAnswerMs: Math.max(0, ...answeredAt.values()),
  attempts,
  errors,
};
process.stdout.write(JSON.stringify(result) + '\n');
