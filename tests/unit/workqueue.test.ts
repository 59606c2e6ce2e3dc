import { WorkQueue } from '../../src/agent/workqueue.js';

const tick = (ms = 5): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('WorkQueue', () => {
  test('a key added many times before it runs is reconciled once', async () => {
    const seen: string[] = [];
    const q = new WorkQueue({ name: 't', reconcile: (k) => void seen.push(k) });
    for (let i = 0; i < 5; i++) q.add('a');
    q.add('b');
    await q.idle();
    expect(seen.sort()).toEqual(['a', 'b']);
    q.stop();
  });

  test('a key added while it runs runs again afterwards, never twice at once', async () => {
    let running = 0;
    let maxRunning = 0;
    let runs = 0;
    const q = new WorkQueue({
      name: 't',
      reconcile: async () => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        runs++;
        if (runs === 1) q.add('a');
        await tick(2);
        running--;
      },
    });
    q.add('a');
    await tick(50);
    await q.idle();
    expect(runs).toBe(2);
    expect(maxRunning).toBe(1);
    q.stop();
  });

  test('a failing key is retried alone with backoff and its error kept until it succeeds', async () => {
    let fails = 3;
    const ok: string[] = [];
    const q = new WorkQueue({
      name: 't',
      retryBaseMs: 5,
      reconcile: (k) => {
        if (k === 'bad' && fails-- > 0) throw new Error(`boom ${fails}`);
        ok.push(k);
      },
    });
    q.add('bad');
    q.add('good');
    await q.idle();
    expect(ok).toEqual(['good']);
    expect(q.errors()).toEqual([expect.objectContaining({ key: 'bad', message: 'boom 2', attempts: 1 })]);
    for (let i = 0; i < 100 && ok.length < 2; i++) await tick(5);
    expect(ok).toEqual(['good', 'bad']);
    expect(q.errors()).toEqual([]);
    expect(q.failed).toBe(3);
    q.stop();
  });

  test('afterBatch runs once per batch, after the keys of the batch', async () => {
    const log: string[] = [];
    const q = new WorkQueue({ name: 't', reconcile: (k) => void log.push(k), afterBatch: () => void log.push('flush') });
    q.add('a');
    q.add('b');
    q.add('c');
    await q.idle();
    expect(log).toEqual(['a', 'b', 'c', 'flush']);
    q.stop();
  });

  test('forget drops a pending retry', async () => {
    let n = 0;
    const q = new WorkQueue({ name: 't', retryBaseMs: 20, reconcile: () => { n++; throw new Error('x'); } });
    q.add('k');
    await q.idle();
    q.forget('k');
    await tick(60);
    expect(n).toBe(1);
    expect(q.errors()).toEqual([]);
    q.stop();
  });
});

describe('WorkQueue paused', () => {
  test('collects keys while paused and reconciles them on resume', async () => {
    const seen: string[] = [];
    const q = new WorkQueue({ name: 't', paused: true, reconcile: (k) => void seen.push(k) });
    q.add('a');
    q.add('b');
    await new Promise((r) => setTimeout(r, 10));
    expect(seen).toEqual([]);
    q.resume();
    await q.idle();
    expect(seen).toEqual(['a', 'b']);
    q.stop();
  });
});
