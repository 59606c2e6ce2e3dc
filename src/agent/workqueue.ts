/**
 * A keyed work queue in client-go's shape: handlers add keys, a single worker reconciles them.
 *
 * - A key queued twice is reconciled once; a key added while it is being reconciled runs again after.
 * - A failing key is retried alone with exponential backoff and its last error is kept until it
 *   succeeds; the other keys go on.
 * - After each batch (every key that was ready when the batch began) `afterBatch` runs once, which is
 *   where the agent writes the datapath's pending deltas.
 */
import { errorMessage } from '../util/errors.js';

export interface WorkQueueOptions {
  /** Name for errors and metrics. */
  readonly name: string;
  /** Reconciles one key; a rejection schedules a retry. */
  readonly reconcile: (key: string) => Promise<void> | void;
  /** Runs after every batch, also when keys failed. */
  readonly afterBatch?: () => Promise<void> | void;
  /** First retry delay in ms; default 50, doubling per failure. */
  readonly retryBaseMs?: number;
  /** Largest retry delay in ms; default 5000. */
  readonly retryMaxMs?: number;
  /** Collect keys without reconciling them until resume(); default false. */
  readonly paused?: boolean;
}

export interface KeyError {
  readonly key: string;
  readonly message: string;
  readonly attempts: number;
  readonly since: string;
}

export class WorkQueue {
  private readonly queued = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly dirtyWhileProcessing = new Set<string>();
  private readonly retryTimers = new Map<string, NodeJS.Timeout>();
  private readonly failures = new Map<string, KeyError>();
  private running = false;
  private stopped = false;
  private paused: boolean;
  private idleWaiters: Array<() => void> = [];
  /** Keys reconciled successfully, in total. */
  reconciled = 0;
  /** Reconciles that failed, in total. */
  failed = 0;

  constructor(private readonly opts: WorkQueueOptions) {
    this.paused = opts.paused ?? false;
  }

  /** Collect keys without reconciling them until resume(). */
  pause(): void {
    this.paused = true;
  }

  /** Start reconciling the keys collected while paused. */
  resume(): void {
    this.paused = false;
    if (this.queued.size > 0) this.kick();
  }

  get name(): string {
    return this.opts.name;
  }

  /** Queue a key now (a pending retry of it is superseded). */
  add(key: string): void {
    if (this.stopped) return;
    const t = this.retryTimers.get(key);
    if (t) {
      clearTimeout(t);
      this.retryTimers.delete(key);
    }
    if (this.processing.has(key)) {
      this.dirtyWhileProcessing.add(key);
      return;
    }
    this.queued.add(key);
    this.kick();
  }

  /** Keys waiting, running or waiting for a retry. */
  get depth(): number {
    return this.queued.size + this.processing.size + this.retryTimers.size;
  }

  /** The keys whose last reconcile failed, with their errors. */
  errors(): KeyError[] {
    return [...this.failures.values()].sort((a, b) => a.key.localeCompare(b.key));
  }

  /** Forget a key's failure and pending retry (its object is gone and nothing is left to do). */
  forget(key: string): void {
    this.failures.delete(key);
    const t = this.retryTimers.get(key);
    if (t) clearTimeout(t);
    this.retryTimers.delete(key);
  }

  /** Resolves once nothing is queued or running (pending retries do not count). */
  idle(): Promise<void> {
    if (!this.running && (this.queued.size === 0 || this.paused)) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.retryTimers.values()) clearTimeout(t);
    this.retryTimers.clear();
    this.queued.clear();
    this.releaseIdle();
  }

  private kick(): void {
    if (this.running || this.stopped || this.paused) return;
    this.running = true;
    setImmediate(() => void this.drain());
  }

  private async drain(): Promise<void> {
    try {
      while (!this.stopped && this.queued.size > 0) {
        const batch = [...this.queued];
        this.queued.clear();
        for (const key of batch) {
          if (this.stopped) break;
          this.processing.add(key);
          try {
            await this.opts.reconcile(key);
            this.reconciled++;
            this.failures.delete(key);
          } catch (err) {
            this.failed++;
            this.scheduleRetry(key, errorMessage(err));
          } finally {
            this.processing.delete(key);
          }
          if (this.dirtyWhileProcessing.delete(key)) this.queued.add(key);
        }
        if (this.opts.afterBatch && !this.stopped) {
          try {
            await this.opts.afterBatch();
          } catch {
            // afterBatch reports its own errors; the keys are not to blame.
          }
        }
      }
    } finally {
      this.running = false;
      if (this.queued.size > 0 && !this.stopped) this.kick();
      else this.releaseIdle();
    }
  }

  private scheduleRetry(key: string, message: string): void {
    const prev = this.failures.get(key);
    const attempts = (prev?.attempts ?? 0) + 1;
    this.failures.set(key, { key, message, attempts, since: prev?.since ?? new Date().toISOString() });
    if (this.stopped || this.retryTimers.has(key)) return;
    const base = this.opts.retryBaseMs ?? 50;
    const delay = Math.min(this.opts.retryMaxMs ?? 5000, base * 2 ** Math.min(attempts - 1, 16));
    const t = setTimeout(() => {
      this.retryTimers.delete(key);
      this.add(key);
    }, delay);
    t.unref?.();
    this.retryTimers.set(key, t);
  }

  private releaseIdle(): void {
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const r of w) r();
  }
}
