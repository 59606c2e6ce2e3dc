/**
 * The export process of a clustermesh-apiserver (DESIGN §5): it mirrors this cluster's exportable
 * state from its store into the apiserver's etcd under `mesh/v1/` (keys and values of schema.ts).
 *
 * Controller shape (STYLE "Controllers"): informers on meshclusterconfigs, nodes, meshidentities
 * and meshendpoints enqueue apiserver keys on one work queue; reconcile(key) computes what that one
 * key wants from the caches (export-values.ts) and records the difference against what the
 * apiserver holds (a map of written values); after each batch the differences go out as etcd
 * transactions of many operations. A change costs one key's work; nothing lists the world per
 * change and nothing copies periodically.
 *
 * Verification: at start, and again whenever the apiserver failed a write (it restarted, lost its
 * data…), the exporter lists the keys it owns in the apiserver, takes that as the truth of what is
 * written, and reconciles every key of the caches and of the listing: unchanged keys are not
 * rewritten, stale ones are deleted. Once such a round is complete, missing sync markers are
 * written (present ones stay). The heartbeat beats every heartbeatMs with an increasing seq.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Etcd3, IRequestOp } from 'etcd3';
import type { ClusterClient } from '../cluster/client.js';
import { rangePrefix } from '../cluster/etcd-client.js';
import { IDENTITY_RESOURCE } from '../cluster/identity.js';
import { InformerFactory, type Informer } from '../cluster/informer.js';
import type { KubeObject } from '../cluster/types.js';
import { WorkQueue } from '../agent/workqueue.js';
import { errorMessage } from '../util/errors.js';
import { clusterConfigValue, endpointIp, ipEntryValue, remoteIdentityValue, remoteNodeValue } from './export-values.js';
import { HEARTBEAT_INTERVAL_MS, HeartbeatSchema, MESH_PREFIX, MESH_VERSION, meshKeys, parseMeshKey, SYNC_KINDS, SyncMarkerSchema, type SyncKind } from './schema.js';

export interface ExportOptions {
  /** This cluster's name: the `<c>` of every key written. */
  readonly cluster: string;
  /** The cluster's store (read only). Owned by the caller: not closed by stop(). */
  readonly store: ClusterClient;
  /** The clustermesh-apiserver's etcd. Owned by the caller: not closed by stop(). */
  readonly apiserver: Etcd3;
  /** One line per event worth telling (errors, skipped objects). Default: none. */
  readonly log?: (m: string) => void;
  /** Heartbeat period in ms. Default HEARTBEAT_INTERVAL_MS. */
  readonly heartbeatMs?: number;
  /** Most operations per apiserver transaction. Default 128 (etcd's default --max-txn-ops). */
  readonly txnOps?: number;
  /** Deadline of one apiserver call in ms. Default 5000. */
  readonly timeoutMs?: number;
}

/** Counters since start. */
export interface ExportStats {
  /** Keys put (data keys and sync markers; heartbeats not counted). */
  readonly written: number;
  /** Keys deleted. */
  readonly deleted: number;
  /** Store objects currently not exported because they are invalid. */
  readonly skipped: number;
  /** Kinds whose initial export completed (their sync marker is in the apiserver). */
  readonly synced: readonly SyncKind[];
  readonly heartbeats: number;
  /** Listings of the apiserver (the first one and one per recovery). */
  readonly verifications: number;
  /** Transactions committed. */
  readonly txns: number;
  /** Why objects are skipped, by apiserver key (or store key when the store value is unreadable). */
  readonly problems: ReadonlyArray<{ readonly key: string; readonly reason: string }>;
  readonly lastError: string;
}

export interface Exporter {
  /** Snapshot of the counters. */
  readonly stats: ExportStats;
  /** Resolves once every kind is synced (the first complete round). Rejects if stopped first. */
  synced(): Promise<void>;
  /** Stop informers, queue and heartbeat; waits for a transaction in flight. Idempotent. */
  stop(): Promise<void>;
}

/** Start exporting; returns at once (the first round runs in the background, see synced()). */
export async function runExport(opts: ExportOptions): Promise<Exporter> {
  const e = new ExportController(opts);
  e.start();
  return e;
}

/** Largest transaction payload; etcd rejects requests above 1.5 MiB by default. */
const TXN_MAX_BYTES = 512 * 1024;
/** Transactions in flight at once during a big round. */
const TXN_CONCURRENCY = 4;

class ExportController implements Exporter {
  private readonly c: string;
  private readonly log: (m: string) => void;
  private readonly factory: InformerFactory;
  private readonly inf: { config: Informer; nodes: Informer; identities: Informer; endpoints: Informer };
  private readonly queue: WorkQueue;
  /** What the apiserver holds, as far as this exporter knows: key → value. */
  private written = new Map<string, string>();
  /** Differences found by reconcile, written after the batch: key → value, or null to delete. */
  private readonly pending = new Map<string, string | null>();
  private readonly skips = new Map<string, string>();
  private readonly syncedKinds = new Set<SyncKind>();
  private clusterId: number | undefined;
  private down = true;
  private recovering = false;
  private stopped = false;
  private flushing: Promise<void> | null = null;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private beating: Promise<void> | null = null;
  private apiserverId: string | undefined;
  private lastRevision: bigint | undefined;
  private seq = 0;
  private counters = { written: 0, deleted: 0, heartbeats: 0, verifications: 0, txns: 0, lastError: '' };
  private readonly abort = new AbortController();
  private readonly startedAt = performance.now();
  private syncWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];

  constructor(private readonly opts: ExportOptions) {
    this.c = opts.cluster;
    this.log = opts.log ?? (() => undefined);
    this.factory = new InformerFactory(opts.store, { onError: (err) => this.error(`store: ${err.message}`) });
    this.inf = {
      config: this.factory.informer('meshclusterconfigs'),
      nodes: this.factory.informer('nodes'),
      identities: this.factory.informer(IDENTITY_RESOURCE),
      endpoints: this.factory.informer('meshendpoints', { indexers: { byIp: (o: KubeObject) => { const ip = endpointIp(o); return ip ? [ip] : []; } } }),
    };
    this.queue = new WorkQueue({ name: 'mesh-export', paused: true, reconcile: (k) => this.reconcile(k), afterBatch: () => this.afterBatch() });
    const c = this.c;
    const configKey = meshKeys.clusterConfig(c);
    this.inf.config.addEventHandler({
      onAdd: (o) => o.metadata.name === c && this.queue.add(configKey),
      onUpdate: (_, o) => o.metadata.name === c && this.queue.add(configKey),
      onDelete: (o) => o.metadata.name === c && this.queue.add(configKey),
    });
    const byName = (key: (o: KubeObject) => string) => ({
      onAdd: (o: KubeObject) => this.queue.add(key(o)),
      onUpdate: (_: KubeObject, o: KubeObject) => this.queue.add(key(o)),
      onDelete: (o: KubeObject) => this.queue.add(key(o)),
    });
    this.inf.nodes.addEventHandler(byName((o) => meshKeys.node(c, o.metadata.name)));
    this.inf.identities.addEventHandler(byName((o) => identityKey(c, o.metadata.name)));
    const addIp = (o: KubeObject): void => {
      const ip = endpointIp(o);
      if (ip) this.queue.add(meshKeys.ip(c, ip));
    };
    this.inf.endpoints.addEventHandler({
      onAdd: addIp,
      onUpdate: (old, o) => {
        addIp(old);
        addIp(o);
      },
      onDelete: addIp,
    });
  }

  start(): void {
    // The first listing of the apiserver runs while the informers list the store.
    const listing = this.listOwned();
    listing.catch(() => undefined);
    void this.factory
      .start()
      .then(() => this.recover(listing))
      .catch((err: unknown) => {
        if (!this.stopped) this.error(`start: ${errorMessage(err)}`);
      });
  }

  get stats(): ExportStats {
    const problems = [...this.skips].map(([key, reason]) => ({ key, reason }));
    for (const i of Object.values(this.inf)) for (const [key, reason] of i.invalid()) problems.push({ key: `${i.resource}/${key}`, reason });
    problems.sort((a, b) => a.key.localeCompare(b.key));
    return { ...this.counters, skipped: problems.length, synced: SYNC_KINDS.filter((k) => this.syncedKinds.has(k)), problems };
  }

  synced(): Promise<void> {
    if (this.syncedKinds.size === SYNC_KINDS.length) return Promise.resolve();
    if (this.stopped) return Promise.reject(new Error('mesh export stopped before it synced'));
    return new Promise((resolve, reject) => this.syncWaiters.push({ resolve, reject }));
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.abort.abort();
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.factory.stop();
    this.queue.stop();
    for (const w of this.syncWaiters.splice(0)) w.reject(new Error('mesh export stopped before it synced'));
    await Promise.all([this.flushing?.catch(() => undefined), this.beating]);
  }

  /** What `key` wants, compared with what is written; the difference is recorded in pending. */
  private reconcile(key: string): void {
    const p = parseMeshKey(key);
    if (!p) return;
    let want: string | null | undefined;
    switch (p.kind) {
      case 'cluster-config': {
        const obj = this.inf.config.get(this.c);
        const v = obj ? clusterConfigValue(obj, this.c) : null;
        want = this.decided(key, v);
        const id = v && !(v instanceof Error) ? v.id : undefined;
        if (id !== undefined && id !== this.clusterId) {
          this.clusterId = id;
          // The cluster id decides which identities are ours: look at every one again (rare).
          for (const name of this.inf.identities.keys()) this.queue.add(identityKey(this.c, name));
          for (const k of this.written.keys()) if (k.startsWith(meshKeys.identities(this.c))) this.queue.add(k);
        }
        break;
      }
      case 'nodes': {
        const obj = this.inf.nodes.get(p.rest);
        want = this.decided(key, obj ? remoteNodeValue(obj, this.c) : null);
        break;
      }
      case 'identities': {
        // Until the cluster id is known, an identity cannot be judged: leave its key as it is.
        if (this.clusterId === undefined) return;
        const obj = this.inf.identities.get(p.rest);
        want = this.decided(key, obj ? remoteIdentityValue(obj, this.c, this.clusterId) : null);
        break;
      }
      case 'ip':
        want = this.decided(key, this.ipValue(p.rest));
        break;
      default:
        return;
    }
    if (want === undefined) return;
    const cur = this.written.get(key) ?? null;
    if (want === cur) this.pending.delete(key);
    else this.pending.set(key, want);
  }

  /**
   * The value to write for a mapping result (null: nothing to export there). An invalid object is
   * skipped (logged once per reason) and its key holds nothing: never a half-made or stale value.
   */
  private decided(key: string, v: object | Error | null): string | null {
    if (v instanceof Error) {
      if (this.skips.get(key) !== v.message) this.log(`skip ${key}: ${v.message}`);
      this.skips.set(key, v.message);
      return null;
    }
    this.skips.delete(key);
    return v === null ? null : JSON.stringify(v);
  }

  /** The IpEntry of an address: of the valid endpoints claiming it, the newest. */
  private ipValue(ip: string): object | Error | null {
    let best: { rv: bigint; v: object } | undefined;
    let bad: Error | undefined;
    for (const ep of this.inf.endpoints.byIndex('byIp', ip)) {
      const v = ipEntryValue(ep, this.c);
      if (v instanceof Error) {
        bad ??= v;
        continue;
      }
      const rv = BigInt(ep.metadata.resourceVersion ?? '0');
      if (!best || rv > best.rv) best = { rv, v };
    }
    return best?.v ?? bad ?? null;
  }

  private afterBatch(): Promise<void> {
    const f = this.flush().finally(() => {
      if (this.flushing === f) this.flushing = null;
    });
    this.flushing = f;
    return f;
  }

  /** Write the pending differences in transactions; then, if the round is complete, the sync markers. */
  private async flush(): Promise<void> {
    if (this.down || this.stopped) return;
    const ops = [...this.pending];
    this.pending.clear();
    const chunks: Array<Array<[string, string | null]>> = [];
    let chunk: Array<[string, string | null]> = [];
    let bytes = 0;
    const maxOps = this.opts.txnOps ?? 128;
    for (const op of ops) {
      const size = op[0].length + (op[1]?.length ?? 0) + 16;
      if (chunk.length > 0 && (chunk.length >= maxOps || bytes + size > TXN_MAX_BYTES)) {
        chunks.push(chunk);
        chunk = [];
        bytes = 0;
      }
      chunk.push(op);
      bytes += size;
    }
    if (chunk.length > 0) chunks.push(chunk);
    let next = 0;
    let failure: Error | undefined;
    const worker = async (): Promise<void> => {
      while (next < chunks.length && !failure && !this.stopped) {
        const ch = chunks[next++];
        try {
          await this.commit(ch);
        } catch (err) {
          failure ??= err instanceof Error ? err : new Error(String(err));
          // Keep what did not go out (unless a newer difference was recorded meanwhile).
          for (const [k, v] of ch) if (!this.pending.has(k)) this.pending.set(k, v);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(TXN_CONCURRENCY, chunks.length) }, worker));
    if (failure) {
      for (const ch of chunks.slice(next)) for (const [k, v] of ch) if (!this.pending.has(k)) this.pending.set(k, v);
      this.markDown(`write: ${failure.message}`);
      return;
    }
    if (!this.stopped && this.queue.depth === 0 && this.pending.size === 0) await this.writeMarkers();
  }

  private async commit(ops: ReadonlyArray<[string, string | null]>): Promise<void> {
    const success: IRequestOp[] = ops.map(([k, v]) => (v === null ? { request_delete_range: { key: Buffer.from(k) } } : { request_put: { key: Buffer.from(k), value: Buffer.from(v) } }));
    await this.opts.apiserver.kv.txn({ success }, { deadline: this.deadline() });
    this.counters.txns++;
    for (const [k, v] of ops) {
      if (v === null) {
        if (this.written.delete(k)) this.counters.deleted++;
      } else {
        this.written.set(k, v);
        this.counters.written++;
      }
    }
  }

  /** After a complete round: the markers of kinds that are missing one (present markers stay). */
  private async writeMarkers(): Promise<void> {
    const missing: Array<[string, string | null]> = [];
    for (const kind of SYNC_KINDS) {
      if (kind === 'identities' && this.clusterId === undefined) continue;
      const key = meshKeys.synced(this.c, kind);
      if (this.written.has(key)) {
        this.syncedKinds.add(kind);
        continue;
      }
      missing.push([key, JSON.stringify(SyncMarkerSchema.parse({ version: MESH_VERSION, cluster: this.c, kind, at: new Date().toISOString() }))]);
    }
    if (missing.length > 0) {
      try {
        await this.commit(missing);
      } catch (err) {
        this.markDown(`write sync markers: ${errorMessage(err)}`);
        return;
      }
      for (const [key] of missing) this.syncedKinds.add(key.slice(key.lastIndexOf('/') + 1) as SyncKind);
      const s = this.counters;
      this.log(`synced ${missing.map(([k]) => k.slice(k.lastIndexOf('/') + 1)).join(', ')} (${s.written} written, ${s.deleted} deleted in ${s.txns} txns; ${Math.round(performance.now() - this.startedAt)} ms since start)`);
    }
    if (this.syncedKinds.size === SYNC_KINDS.length) for (const w of this.syncWaiters.splice(0)) w.resolve();
  }

  /** The apiserver failed: stop writing, and verify again once it answers. */
  private markDown(why: string): void {
    if (this.stopped) return;
    this.error(`apiserver: ${why}`);
    if (this.down) return;
    this.down = true;
    this.queue.pause();
    void this.recover();
  }

  /**
   * List what the apiserver holds under this cluster's keys (retrying with backoff until it
   * answers), take it as what is written, and reconcile every key of the caches and the listing.
   */
  private async recover(first?: ReturnType<ExportController['listOwned']>): Promise<void> {
    if (this.recovering) return;
    this.recovering = true;
    let delay = 100;
    try {
      while (!this.stopped) {
        try {
          const listing = first ?? this.listOwned();
          first = undefined;
          const { kvs, heartbeatSeq } = await listing;
          if (this.stopped) return;
          this.written = kvs;
          this.pending.clear();
          // A marker the apiserver lost (its data was wiped) is written again after this round.
          for (const kind of SYNC_KINDS) if (!kvs.has(meshKeys.synced(this.c, kind))) this.syncedKinds.delete(kind);
          this.counters.verifications++;
          if (heartbeatSeq !== undefined && heartbeatSeq >= this.seq) this.seq = heartbeatSeq + 1;
          this.log(`apiserver verified: ${kvs.size} keys of ${this.c} listed (${Math.round(performance.now() - this.startedAt)} ms since start)`);
          this.enqueueAll();
          this.down = false;
          this.queue.resume();
          this.startHeartbeat();
          return;
        } catch (err) {
          this.error(`apiserver: list ${MESH_PREFIX}*/${this.c}: ${errorMessage(err)}; retrying in ${delay} ms`);
          await sleep(delay, undefined, { signal: this.abort.signal }).catch(() => undefined);
          delay = Math.min(5000, delay * 2);
        }
      }
    } finally {
      this.recovering = false;
    }
  }

  private async listOwned(): Promise<{ kvs: Map<string, string>; heartbeatSeq?: number }> {
    const c = this.c;
    const kvs = new Map<string, string>();
    for (const prefix of [meshKeys.nodes(c), meshKeys.identities(c), meshKeys.ips(c), `${MESH_PREFIX}synced/${c}/`]) {
      for (const kv of (await rangePrefix(this.opts.apiserver, prefix)).kvs) kvs.set(kv.key.toString(), kv.value.toString());
    }
    const one = async (key: string): Promise<string | undefined> => (await this.opts.apiserver.kv.range({ key: Buffer.from(key) }, { deadline: this.deadline() })).kvs[0]?.value.toString();
    const config = await one(meshKeys.clusterConfig(c));
    if (config !== undefined) kvs.set(meshKeys.clusterConfig(c), config);
    const hb = await one(meshKeys.heartbeat(c));
    let heartbeatSeq: number | undefined;
    if (hb !== undefined) {
      try {
        const parsed = HeartbeatSchema.safeParse(JSON.parse(hb));
        if (parsed.success) heartbeatSeq = parsed.data.seq;
      } catch {
        // Not JSON: start the sequence over.
      }
    }
    return { kvs, heartbeatSeq };
  }

  /** Every key the caches or the apiserver know, config first (it decides the identities). */
  private enqueueAll(): void {
    const c = this.c;
    this.queue.add(meshKeys.clusterConfig(c));
    for (const name of this.inf.nodes.keys()) this.queue.add(meshKeys.node(c, name));
    if (this.clusterId !== undefined) for (const name of this.inf.identities.keys()) this.queue.add(identityKey(c, name));
    for (const ep of this.inf.endpoints.list()) {
      const ip = endpointIp(ep);
      if (ip) this.queue.add(meshKeys.ip(c, ip));
    }
    const synced = `${MESH_PREFIX}synced/`;
    for (const k of this.written.keys()) if (!k.startsWith(synced)) this.queue.add(k);
  }

  private startHeartbeat(): void {
    if (this.heartbeatTimer || this.stopped) return;
    const ms = this.opts.heartbeatMs ?? HEARTBEAT_INTERVAL_MS;
    this.heartbeatTimer = setInterval(() => void this.beat(), ms);
    void this.beat();
  }

  private beat(): Promise<void> {
    if (this.down || this.beating || this.stopped) return Promise.resolve();
    const b = this.beatOnce().finally(() => {
      this.beating = null;
    });
    this.beating = b;
    return b;
  }

  private async beatOnce(): Promise<void> {
    try {
      const seq = this.seq++;
      const v = HeartbeatSchema.parse({ version: MESH_VERSION, cluster: this.c, at: new Date().toISOString(), seq });
      const r = await this.opts.apiserver.kv.put({ key: Buffer.from(meshKeys.heartbeat(this.c)), value: Buffer.from(JSON.stringify(v)) }, { deadline: this.deadline() });
      this.counters.heartbeats++;
      // An apiserver recreated between two beats (new cluster id, or its revision went back) holds
      // none of what was written: verify again.
      const { cluster_id: id, revision } = r.header;
      const wentBack = this.lastRevision !== undefined && BigInt(revision) < this.lastRevision;
      const recreated = this.apiserverId !== undefined && id !== this.apiserverId;
      this.apiserverId = id;
      this.lastRevision = BigInt(revision);
      if (wentBack || recreated) this.markDown(`heartbeat: the apiserver was recreated (${recreated ? 'new cluster id' : 'revision went back'})`);
    } catch (err) {
      this.markDown(`heartbeat: ${errorMessage(err)}`);
    }
  }

  private deadline(): number {
    return Date.now() + (this.opts.timeoutMs ?? 5000);
  }

  private error(m: string): void {
    this.counters.lastError = m;
    this.log(m);
  }
}

/** The apiserver key of an identity object (its name is the number). */
function identityKey(c: string, name: string): string {
  return `${meshKeys.identities(c)}${name}`;
}
