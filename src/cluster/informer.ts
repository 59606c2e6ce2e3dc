/**
 * Informers: a local cache of one resource kept current from a ClusterClient, with indexes and
 * add/update/delete handlers (client-go's shape).
 *
 * One list, then a watch from that list's revision, so no change between the two is missed and no
 * second list is needed. When the watch ends (a lost stream, a store restart, or ExpiredError after
 * a compaction) the informer lists again, after a backoff for failures and at once for an expired
 * watch, and delivers only the real differences between the new list and its cache.
 */
import type { ClusterClient, ListResult, Watch, WatchEvent } from './client.js';
import { ExpiredError } from './client.js';
import type { KubeObject } from './types.js';
import { errorMessage, OperationError, wrap } from '../util/errors.js';

/**
 * Called synchronously, in store order, from the informer's cache updates. Handlers must be cheap
 * (enqueue a key and return) and must not change the objects they are given; an exception is
 * reported through InformerOptions.onError and does not stop the other handlers.
 */
export interface ResourceEventHandlers<T> {
  onAdd?(obj: T): void;
  onUpdate?(oldObj: T, newObj: T): void;
  onDelete?(obj: T): void;
}

/** An index: the values an object is found under (e.g. its node name). Must not throw. */
export type IndexFunc<T> = (obj: T) => readonly string[];

export interface InformerOptions<T extends KubeObject> {
  /**
   * Typed validation of each object read. A value it rejects (an Error) is kept out of the cache
   * (an object already cached is deleted from it, with onDelete) and listed in invalid() until
   * the key is deleted or gets a valid value. It must keep metadata.resourceVersion. Default: the
   * object as read.
   */
  readonly parse?: (obj: KubeObject) => T | Error;
  /** Named indexes, queried with byIndex(name, value). */
  readonly indexers?: Readonly<Record<string, IndexFunc<T>>>;
  /** List and watch failures (the informer retries by itself) and handler exceptions. */
  readonly onError?: (err: Error) => void;
  /** Delay before the first re-list after a failure, ms; doubles up to backoffMaxMs. Default 100. */
  readonly backoffInitialMs?: number;
  /** Longest delay between re-list attempts, ms. Default 5000. */
  readonly backoffMaxMs?: number;
}

/** Counters of an informer's work, for metrics and tests. */
export interface InformerStats {
  /** Lists made (the first one included). */
  readonly lists: number;
  /** Watches that ended with ExpiredError. */
  readonly expired: number;
  /** Watches that ended with another error, and failed lists. */
  readonly failures: number;
  /** Store revision of the last list. */
  readonly listRevision: string;
  readonly lastError: string;
}

/** Cache key of an object: `namespace/name`, or `name` for cluster-scoped objects. */
export function keyOf(obj: KubeObject): string {
  const ns = obj.metadata.namespace;
  return ns ? `${ns}/${obj.metadata.name}` : obj.metadata.name;
}

/** The value byLabel indexes a label under. */
export function labelIndexValue(key: string, value: string): string {
  return `${key}=${value}`;
}

/** Indexes most controllers want. */
export const indexers = {
  /** Pods by spec.nodeName. */
  byNode: (obj: KubeObject): string[] => {
    const n = (obj.spec as { nodeName?: unknown } | undefined)?.nodeName;
    return typeof n === 'string' && n !== '' ? [n] : [];
  },
  /** Objects by metadata.namespace ('' for cluster-scoped ones). */
  byNamespace: (obj: KubeObject): string[] => [obj.metadata.namespace ?? ''],
  /** Pods by status.podIP and status.podIPs[].ip. */
  byPodIP: (obj: KubeObject): string[] => {
    const st = obj.status as { podIP?: unknown; podIPs?: unknown } | undefined;
    const out = new Set<string>();
    if (typeof st?.podIP === 'string' && st.podIP !== '') out.add(st.podIP);
    if (Array.isArray(st?.podIPs)) {
      for (const p of st.podIPs) {
        const addr = (p as { ip?: unknown } | null)?.ip;
        if (typeof addr === 'string' && addr !== '') out.add(addr);
      }
    }
    return [...out];
  },
  /** Objects by each of their labels, as labelIndexValue(key, value). */
  byLabel: (obj: KubeObject): string[] => Object.entries(obj.metadata.labels ?? {}).map(([k, v]) => labelIndexValue(k, v)),
} as const;

/**
 * A cache of one resource. Call start() once; stop() ends the watch and any retry. The cached
 * objects are shared with handlers and callers: treat them as read-only.
 */
export class Informer<T extends KubeObject = KubeObject> {
  private readonly cache = new Map<string, T>();
  private bad = new Map<string, string>();
  private readonly handlers: ResourceEventHandlers<T>[] = [];
  private readonly indexFns = new Map<string, IndexFunc<T>>();
  /** Index name → value → the one key under it, or a Set when there are several (most values of a unique index, such as an IP, have one). */
  private readonly indices = new Map<string, Map<string, IndexEntry>>();
  private watch: Watch | null = null;
  private watchSince = 0;
  /** Bumped by every list and by stop(), so callbacks of an older watch are ignored. */
  private generation = 0;
  private synced = false;
  private stopped = false;
  private starting: Promise<void> | null = null;
  private settle: { resolve: () => void; reject: (err: Error) => void } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private delay: number;
  private counters = { lists: 0, expired: 0, failures: 0, listRevision: '0', lastError: '' };
  private readonly parse: (obj: KubeObject) => T | Error;

  constructor(
    private readonly client: ClusterClient,
    readonly resource: string,
    readonly opts: InformerOptions<T> = {},
  ) {
    this.parse = opts.parse ?? ((obj) => obj as T);
    this.delay = opts.backoffInitialMs ?? 100;
    if (opts.indexers) this.addIndexers(opts.indexers);
  }

  /** Add a handler. Once synced, it first gets onAdd for every cached object. */
  addEventHandler(h: ResourceEventHandlers<T>): void {
    this.handlers.push(h);
    if (!this.synced) return;
    for (const obj of this.cache.values()) this.call(() => h.onAdd?.(obj));
  }

  /** Add indexes (built at once from the cache). A name already used by another function throws. */
  addIndexers(more: Readonly<Record<string, IndexFunc<T>>>): void {
    for (const [name, fn] of Object.entries(more)) {
      const have = this.indexFns.get(name);
      if (have === fn) continue;
      if (have) throw new Error(`informer ${this.resource}: index ${name} already exists with another function`);
      this.indexFns.set(name, fn);
      const idx = new Map<string, IndexEntry>();
      this.indices.set(name, idx);
      for (const [key, obj] of this.cache) addToIndex(idx, key, this.values(fn, obj));
    }
  }

  /**
   * List, deliver the list as onAdd, then watch. Resolves once the initial list has been delivered
   * (hasSynced); keeps retrying a failing list until then. Rejects if stop() comes first.
   */
  start(): Promise<void> {
    if (!this.starting) {
      this.starting = new Promise<void>((resolve, reject) => {
        this.settle = { resolve, reject };
      });
      if (this.stopped) this.settle?.reject(new OperationError(`informer ${this.resource} stopped before it synced`));
      else void this.relist();
    }
    return this.starting;
  }

  hasSynced(): boolean {
    return this.synced;
  }

  /** The cached object under "ns/name" (or "name"). */
  get(key: string): T | undefined {
    return this.cache.get(key);
  }

  list(): T[] {
    return [...this.cache.values()];
  }

  /** Cached keys, in no particular order. */
  keys(): IterableIterator<string> {
    return this.cache.keys();
  }

  get size(): number {
    return this.cache.size;
  }

  /** Objects whose index `index` holds `value`. Throws for an unknown index. */
  byIndex(index: string, value: string): T[] {
    const out: T[] = [];
    for (const key of this.indexKeys(index, value)) out.push(this.cache.get(key)!);
    return out;
  }

  /** Keys of the objects whose index `index` holds `value`. Throws for an unknown index. */
  indexKeys(index: string, value: string): string[] {
    const idx = this.indices.get(index);
    if (!idx) throw new Error(`informer ${this.resource}: no index ${index}`);
    const e = idx.get(value);
    return e === undefined ? [] : typeof e === 'string' ? [e] : [...e];
  }

  /** Keys whose current value was skipped, and why. */
  invalid(): ReadonlyMap<string, string> {
    return this.bad;
  }

  stats(): InformerStats {
    return { ...this.counters };
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.generation++;
    this.watch?.close();
    this.watch = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (!this.synced) this.settle?.reject(new OperationError(`informer ${this.resource} stopped before it synced`));
  }

  /**
   * Re-list now and watch again from that list, as after a watch error: handlers see only what
   * differs from the cache. For benchmarks and a forced resync.
   */
  async resync(): Promise<void> {
    if (this.stopped || !this.synced) return;
    this.watch?.close();
    this.watch = null;
    if (this.timer) clearTimeout(this.timer);
    await this.relist();
  }

  private async relist(): Promise<void> {
    this.timer = null;
    const gen = ++this.generation;
    this.counters.lists++;
    let list: ListResult;
    try {
      list = await this.client.list(this.resource);
    } catch (err) {
      if (gen !== this.generation) return;
      this.fail(wrap(`list ${this.resource}`, err));
      return;
    }
    if (gen !== this.generation) return;
    this.replace(list);
    this.counters.listRevision = list.revision;
    if (!this.synced) {
      this.synced = true;
      this.settle?.resolve();
    }
    this.watchSince = Date.now();
    this.watch = this.client.watch(this.resource, list.revision, {
      onEvent: (ev) => {
        if (gen === this.generation) this.apply(ev);
      },
      onInvalid: (key, reason) => {
        if (gen === this.generation) this.markInvalid(key, reason);
      },
      onError: (err) => {
        if (gen !== this.generation) return;
        this.watch = null;
        if (err instanceof ExpiredError) {
          this.counters.expired++;
          this.report(err);
          this.schedule(0);
          return;
        }
        // A watch that ran a while was healthy: start the backoff over.
        if (Date.now() - this.watchSince > (this.opts.backoffMaxMs ?? 5000)) this.delay = this.opts.backoffInitialMs ?? 100;
        this.fail(err);
      },
    });
  }

  private fail(err: Error): void {
    this.counters.failures++;
    this.report(err);
    const max = this.opts.backoffMaxMs ?? 5000;
    const wait = this.delay;
    this.delay = Math.min(max, Math.max(1, this.delay * 2));
    // Jitter, so the agents of a cluster do not all list at once after a store restart.
    this.schedule(Math.round(wait * (0.5 + Math.random() / 2)));
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.generation++;
    this.timer = setTimeout(() => void this.relist(), ms);
  }

  /** Bring the cache to a full list, delivering only the differences (deletes first). */
  private replace(list: ListResult): void {
    // A store that went back in time (restored or recreated) can reuse revisions for new content.
    const wentBack = this.synced && BigInt(list.revision) < BigInt(this.counters.listRevision);
    const bad = new Map<string, string>();
    for (const p of list.problems ?? []) bad.set(p.key, p.reason);
    const fresh = new Map<string, T>();
    for (const raw of list.items) {
      const key = keyOf(raw);
      const parsed = this.parse(raw);
      if (parsed instanceof Error) bad.set(key, parsed.message);
      else fresh.set(key, parsed);
    }
    this.bad = bad;
    // Deleting the entry being visited is safe in a Map's iteration (and copies nothing).
    for (const [key, old] of this.cache) {
      if (fresh.has(key)) continue;
      this.remove(key, old);
      this.notify((h) => h.onDelete?.(old));
    }
    for (const [key, obj] of fresh) {
      const old = this.cache.get(key);
      if (old && sameVersion(old, obj) && !(wentBack && JSON.stringify(old) !== JSON.stringify(obj))) continue;
      this.put(key, obj, old);
      if (old) this.notify((h) => h.onUpdate?.(old, obj));
      else this.notify((h) => h.onAdd?.(obj));
    }
  }

  private apply(ev: WatchEvent): void {
    const key = keyOf(ev.object);
    if (ev.type === 'DELETED') {
      this.bad.delete(key);
      const old = this.cache.get(key);
      if (!old) return;
      this.remove(key, old);
      this.notify((h) => h.onDelete?.(old));
      return;
    }
    const obj = this.parse(ev.object);
    if (obj instanceof Error) {
      this.markInvalid(key, obj.message);
      return;
    }
    this.bad.delete(key);
    const old = this.cache.get(key);
    if (old && sameVersion(old, obj)) return;
    this.put(key, obj, old);
    if (old) this.notify((h) => h.onUpdate?.(old, obj));
    else this.notify((h) => h.onAdd?.(obj));
  }

  private markInvalid(key: string, reason: string): void {
    this.bad.set(key, reason);
    const old = this.cache.get(key);
    if (!old) return;
    this.remove(key, old);
    this.notify((h) => h.onDelete?.(old));
  }

  private put(key: string, obj: T, old: T | undefined): void {
    for (const [name, fn] of this.indexFns) {
      const idx = this.indices.get(name)!;
      if (old) removeFromIndex(idx, key, this.values(fn, old));
      addToIndex(idx, key, this.values(fn, obj));
    }
    this.cache.set(key, obj);
  }

  private remove(key: string, old: T): void {
    for (const [name, fn] of this.indexFns) removeFromIndex(this.indices.get(name)!, key, this.values(fn, old));
    this.cache.delete(key);
  }

  private values(fn: IndexFunc<T>, obj: T): readonly string[] {
    try {
      return fn(obj);
    } catch (err) {
      this.report(wrap(`informer ${this.resource}: index of ${keyOf(obj)}`, err));
      return [];
    }
  }

  private notify(fn: (h: ResourceEventHandlers<T>) => void): void {
    for (const h of this.handlers) this.call(() => fn(h));
  }

  private call(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.report(wrap(`informer ${this.resource}: handler`, err));
    }
  }

  private report(err: Error): void {
    this.counters.lastError = errorMessage(err);
    this.opts.onError?.(err);
  }
}

function sameVersion(a: KubeObject, b: KubeObject): boolean {
  const [ra, rb] = [a.metadata.resourceVersion, b.metadata.resourceVersion];
  return ra !== undefined && rb !== undefined ? ra === rb : JSON.stringify(a) === JSON.stringify(b);
}

type IndexEntry = string | Set<string>;

function addToIndex(idx: Map<string, IndexEntry>, key: string, values: readonly string[]): void {
  for (const v of values) {
    const keys = idx.get(v);
    if (keys === undefined) idx.set(v, key);
    else if (typeof keys === 'string') {
      if (keys !== key) idx.set(v, new Set([keys, key]));
    } else keys.add(key);
  }
}

function removeFromIndex(idx: Map<string, IndexEntry>, key: string, values: readonly string[]): void {
  for (const v of values) {
    const keys = idx.get(v);
    if (keys === undefined) continue;
    if (typeof keys === 'string') {
      if (keys === key) idx.delete(v);
      continue;
    }
    keys.delete(key);
    if (keys.size === 1) idx.set(v, keys.values().next().value as string);
    else if (keys.size === 0) idx.delete(v);
  }
}

export interface InformerFactoryOptions {
  /** Passed to every informer that has no onError of its own. */
  readonly onError?: (err: Error) => void;
}

/**
 * One shared informer per resource for a whole process (an agent): controllers that watch the
 * same resource share one cache and one watch.
 */
export class InformerFactory {
  private readonly informers = new Map<string, Informer<KubeObject>>();
  private started = false;

  constructor(
    private readonly client: ClusterClient,
    private readonly opts: InformerFactoryOptions = {},
  ) {}

  /**
   * The informer of `resource`, made on first use. Later calls may add indexers; a different
   * parse function for the same resource throws (one resource, one validation). Informers made
   * after start() start at once.
   */
  informer<T extends KubeObject = KubeObject>(resource: string, opts: InformerOptions<T> = {}): Informer<T> {
    const have = this.informers.get(resource) as Informer<T> | undefined;
    if (have) {
      if (opts.parse && opts.parse !== have.opts.parse) throw new Error(`informer ${resource}: already made with another parse function`);
      if (opts.indexers) have.addIndexers(opts.indexers);
      return have;
    }
    const inf = new Informer<T>(this.client, resource, { onError: this.opts.onError, ...opts });
    this.informers.set(resource, inf as unknown as Informer<KubeObject>);
    if (this.started) void inf.start().catch(() => undefined);
    return inf;
  }

  /** Start every informer; resolves when all have synced. */
  async start(): Promise<void> {
    this.started = true;
    await Promise.all([...this.informers.values()].map((i) => i.start()));
  }

  hasSynced(): boolean {
    return [...this.informers.values()].every((i) => i.hasSynced());
  }

  stop(): void {
    for (const i of this.informers.values()) i.stop();
  }
}
