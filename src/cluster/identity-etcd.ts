/**
 * Identities in the lab store (etcd): the IdentityAllocator implementation, and the one-shot
 * functions the current reconciler still calls.
 *
 * Store layout (one record per identity, two keys written and deleted together in one transaction):
 *
 *   /registry/meshidentities/<id>                         MeshIdentity object (see identity.ts)
 *   /registry/meshctl/identities/by-labels/<labelsHash>   "<id>" (decimal)
 *   /registry/meshctl/identities/gc-leader                token of the allocator that collects
 *                                                         (bound to that allocator's lease)
 *
 * Allocation creates both keys in one transaction guarded by "neither exists", so two agents racing
 * for the same labels end with one number, and two racing for different labels never share one.
 * Re-using an existing identity rewrites its record (a touch) in a transaction guarded by both keys'
 * mod revisions. Holders touch their identities periodically. The collector (one allocator, while
 * it holds the GC lease) releases an identity whose record has not changed for the grace period,
 * in one transaction guarded by the record's and the by-labels entry's mod revisions and by its own
 * leadership, so any touch or allocation in between wins over the release.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { IKeyValue, Lease } from 'etcd3';
import { rangePrefix, type EtcdClusterClient } from './etcd-client.js';
import type { KubeObject } from './types.js';
import {
  checkClusterId,
  checkIdentityLabels,
  IDENTITY_LOCAL_MAX,
  IDENTITY_LOCAL_MIN,
  IDENTITY_RESOURCE,
  identityClusterId,
  identityObject,
  isClusterIdentity,
  makeIdentity,
  parseIdentity,
  reservedIdentityLabels,
  type IdentityAllocator,
} from './identity.js';
import { labelsHash, podIdentityLabels, sortLabels, type Labels } from '../agent/labels.js';
import { OperationError, wrap } from '../util/errors.js';

const BY_ID_PREFIX = `/registry/${IDENTITY_RESOURCE}/`;
const BY_LABELS_PREFIX = '/registry/meshctl/identities/by-labels/';
const GC_LEADER_KEY = '/registry/meshctl/identities/gc-leader';

/** Default of AllocateIdentityOptions.touchIntervalMs (the one-shot allocateIdentity). */
export const IDENTITY_TOUCH_INTERVAL_MS = 5_000;

/** Only the raw etcd client is needed (transactions). */
export type IdentityStore = Pick<EtcdClusterClient, 'etcd'>;

function byIdKey(id: number): string {
  return `${BY_ID_PREFIX}${id}`;
}

function byLabelsKey(hash: string): string {
  return `${BY_LABELS_PREFIX}${hash}`;
}

/** An identity record as read from the store. */
export interface IdentityRecord {
  readonly id: number;
  readonly labels: Labels;
  readonly labelsHash: string;
  /** Milliseconds since the epoch of the last allocation or touch. */
  readonly lastUsed: number;
  readonly creationTimestamp?: string;
  /** etcd mod revision of the record. */
  readonly modRevision: string;
}

/** Decode and check one record; a reason string when it is corrupt. */
function decodeRecord(kv: IKeyValue): IdentityRecord | string {
  const key = kv.key.toString();
  let raw: unknown;
  try {
    raw = JSON.parse(kv.value.toString('utf8'));
  } catch {
    return `key ${key}: not JSON`;
  }
  const o = raw as KubeObject | null;
  if (typeof o !== 'object' || o === null || typeof o.metadata !== 'object' || o.metadata === null) return `key ${key}: not an object with metadata`;
  if (o.metadata.name !== key.slice(BY_ID_PREFIX.length)) return `key ${key}: metadata.name does not match the key`;
  const p = parseIdentity(o);
  if (p instanceof Error) return `key ${key}: ${p.message}`;
  return { id: p.spec.id, labels: p.spec.labels, labelsHash: p.spec.labelsHash, lastUsed: Date.parse(p.status.lastUsed), creationTimestamp: p.metadata.creationTimestamp, modRevision: kv.mod_revision };
}

function decodeIdRef(kv: IKeyValue | undefined): number | undefined {
  const v = kv?.value.toString('utf8');
  if (v === undefined || !/^[1-9][0-9]*$/.test(v)) return undefined;
  const id = Number(v);
  return isClusterIdentity(id) ? id : undefined;
}

/** Result of one store step of allocation. */
interface Allocated {
  readonly id: number;
  /** Mod revision of the record after this allocation wrote it. */
  readonly modRevision: string;
  readonly creationTimestamp?: string;
}

/**
 * One allocation attempt loop: find or create the identity of `labels` and write its record.
 * `touchIfNewerThanMs` skips the write when the record was used that recently (one-shot callers);
 * undefined always writes (the allocator marks it touched).
 */
async function allocateInStore(store: IdentityStore, clusterId: number, labels: Labels, maxAttempts: number, touchIfNewerThanMs?: number): Promise<Allocated> {
  const sorted = sortLabels(labels);
  const hash = labelsHash(sorted);
  const lk = byLabelsKey(hash);
  const etcd = store.etcd;
  for (let attempt = 0; attempt < maxAttempts; attempt++) {
    if (attempt > 0) await sleep(Math.floor(Math.random() * Math.min(50, 2 * attempt)) + 1);
    const ref = (await etcd.get(lk).exec()).kvs[0];
    if (ref) {
      const id = decodeIdRef(ref);
      const recKv = id === undefined ? undefined : (await etcd.get(byIdKey(id)).exec()).kvs[0];
      const rec = recKv ? decodeRecord(recKv) : undefined;
      if (id !== undefined && typeof rec === 'object' && rec.labelsHash === hash && identityClusterId(id) === clusterId) {
        if (touchIfNewerThanMs !== undefined && Date.now() - rec.lastUsed < touchIfNewerThanMs) return { id, modRevision: rec.modRevision, creationTimestamp: rec.creationTimestamp };
        const obj = identityObject(id, rec.labels, new Date(), rec.creationTimestamp);
        const r = await etcd
          .if(lk, 'Mod', '==', ref.mod_revision)
          .and(byIdKey(id), 'Mod', '==', rec.modRevision)
          .then(etcd.put(byIdKey(id)).value(JSON.stringify(obj)))
          .commit();
        if (r.succeeded) return { id, modRevision: r.header.revision, creationTimestamp: rec.creationTimestamp };
        continue;
      }
      // Points nowhere valid (corrupt value, record gone or another label set's): drop it and retry.
      await etcd.if(lk, 'Mod', '==', ref.mod_revision).then(etcd.delete().key(lk)).commit();
      continue;
    }
    const id = await pickFreeIdentity(store, clusterId);
    const obj = identityObject(id, sorted, new Date());
    const r = await etcd
      .if(lk, 'Create', '==', 0)
      .and(byIdKey(id), 'Create', '==', 0)
      .then(etcd.put(lk).value(String(id)), etcd.put(byIdKey(id)).value(JSON.stringify(obj)))
      .commit();
    if (r.succeeded) return { id, modRevision: r.header.revision, creationTimestamp: obj.metadata.creationTimestamp };
  }
  throw new OperationError(`allocate identity for ${hash.slice(0, 12)} in cluster ${clusterId}: store kept conflicting after ${maxAttempts} attempts`);
}

/**
 * A local number not used by any record (corrupt ones included), chosen at random among the
 * lowest free ones so concurrent allocators for different labels rarely collide.
 */
async function pickFreeIdentity(store: IdentityStore, clusterId: number): Promise<number> {
  const used = new Set<number>();
  for (const kv of (await rangePrefix(store.etcd, BY_ID_PREFIX, { keysOnly: true })).kvs) {
    const n = Number(kv.key.toString().slice(BY_ID_PREFIX.length));
    if (Number.isInteger(n) && identityClusterId(n) === clusterId) used.add(n & 0xffff);
  }
  const free: number[] = [];
  for (let local = IDENTITY_LOCAL_MIN; local <= IDENTITY_LOCAL_MAX && free.length < 16; local++) {
    if (!used.has(local)) free.push(local);
  }
  if (free.length === 0) throw new OperationError(`allocate identity in cluster ${clusterId}: all ${IDENTITY_LOCAL_MAX} identities are in use`);
  return makeIdentity(clusterId, free[Math.floor(Math.random() * free.length)]);
}

// ---------------------------------------------------------------------------------------------
// The allocator

export interface EtcdIdentityAllocatorOptions {
  readonly clusterId: number;
  /** Who this allocator is (the node name), shown in the GC leader key. */
  readonly holder: string;
  /**
   * A held identity is touched again once its last touch is older than this (checked every half
   * interval). Default 30 s.
   */
  readonly touchIntervalMs?: number;
  /**
   * An identity whose record has not changed for this long, as seen by the collector on its own
   * clock, is released. Must exceed 1.5 × touchIntervalMs plus store latency (checked: at least
   * 2 × touchIntervalMs). Default 5 min.
   */
  readonly graceMs?: number;
  /** How often the collector looks, ms. Default 30 s. */
  readonly gcIntervalMs?: number;
  /** TTL of the GC lease; another allocator takes over this long after the collector goes. Default 15 s. */
  readonly gcLeaseTtlSeconds?: number;
  /** Give up one allocation after this many store conflicts; default 100. */
  readonly maxAttempts?: number;
  /** Store errors of the background work (touch, GC); they are retried on the next round. */
  readonly onError?: (err: Error) => void;
  /**
   * A held identity that can no longer be kept (its record was deleted and its labels or number
   * went to another record meanwhile): the caller must allocate again for its endpoints.
   */
  readonly onLost?: (id: number, labels: Labels) => void;
}

/** What one collector pass did. */
export interface GcResult {
  /** Identities released, ascending. */
  readonly released: number[];
  /** Records that are not yet old enough, or changed under the collector (not released). */
  readonly kept: number;
  /** by-labels entries deleted because their record was missing. */
  readonly orphans: number;
  /** Corrupt records skipped (left in place for inspection). */
  readonly invalid: number;
}

interface Held {
  readonly labels: Labels;
  readonly labelsHash: string;
  modRevision: string;
  creationTimestamp?: string;
  /** performance.now() of the last write (or observed write) of the record. */
  touchedAt: number;
}

/** IdentityAllocator on the lab store. See the file comment for the protocol. */
export class EtcdIdentityAllocator implements IdentityAllocator {
  private readonly heldIds = new Map<number, Held>();
  private readonly byHash = new Map<string, number>();
  private readonly touchInterval: number;
  private readonly grace: number;
  private readonly token = `${randomUUID()}`;
  private lease: Lease | null = null;
  private leader = false;
  /** Collector's view: record → mod revision and when (its clock) it first saw that revision. */
  private readonly seen = new Map<number, { modRevision: string; since: number }>();
  private timers: NodeJS.Timeout[] = [];
  private running = false;
  private touching: Promise<void> | null = null;
  private collecting: Promise<void> | null = null;

  constructor(
    private readonly store: IdentityStore,
    readonly opts: EtcdIdentityAllocatorOptions,
  ) {
    checkClusterId(opts.clusterId);
    this.touchInterval = opts.touchIntervalMs ?? 30_000;
    this.grace = opts.graceMs ?? 300_000;
    if (this.grace < 2 * this.touchInterval) {
      throw new OperationError(`identity allocator: graceMs ${this.grace} must be at least twice touchIntervalMs ${this.touchInterval}`);
    }
  }

  async allocate(labels: Labels): Promise<number> {
    checkIdentityLabels(labels);
    const sorted = sortLabels(labels);
    const hash = labelsHash(sorted);
    const known = this.byHash.get(hash);
    if (known !== undefined && performance.now() - this.heldIds.get(known)!.touchedAt < this.touchInterval) return known;
    const a = await allocateInStore(this.store, this.opts.clusterId, sorted, this.opts.maxAttempts ?? 100);
    const prev = this.byHash.get(hash);
    if (prev !== undefined && prev !== a.id) this.heldIds.delete(prev);
    this.heldIds.set(a.id, { labels: sorted, labelsHash: hash, modRevision: a.modRevision, creationTimestamp: a.creationTimestamp, touchedAt: performance.now() });
    this.byHash.set(hash, a.id);
    return a.id;
  }

  release(id: number): void {
    const h = this.heldIds.get(id);
    if (!h) return;
    this.heldIds.delete(id);
    if (this.byHash.get(h.labelsHash) === id) this.byHash.delete(h.labelsHash);
  }

  held(): ReadonlySet<number> {
    return new Set(this.heldIds.keys());
  }

  /** Does this allocator hold the GC lease right now (as far as it knows)? */
  isCollector(): boolean {
    return this.leader;
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    const every = (ms: number, fn: () => Promise<void>) => {
      const t = setInterval(() => void fn(), ms);
      t.unref();
      this.timers.push(t);
    };
    every(Math.max(1, Math.floor(this.touchInterval / 2)), () => this.touchRound());
    every(this.opts.gcIntervalMs ?? 30_000, () => this.gcRound());
    await this.gcRound();
  }

  async stop(): Promise<void> {
    this.running = false;
    for (const t of this.timers.splice(0)) clearInterval(t);
    await this.touching;
    await this.collecting;
    this.leader = false;
    const lease = this.lease;
    this.lease = null;
    // Revoking deletes the leader key, so another allocator takes over at once.
    if (lease) await lease.revoke().catch(() => undefined);
  }

  /** Touch every held identity whose last touch is older than the touch interval. */
  touchRound(): Promise<void> {
    if (this.touching) return this.touching;
    this.touching = (async () => {
      const due = [...this.heldIds].filter(([, h]) => performance.now() - h.touchedAt >= this.touchInterval);
      // A few at a time: a node with many identities should not flood the store.
      for (let i = 0; i < due.length; i += 16) {
        await Promise.all(
          due.slice(i, i + 16).map(([id, h]) =>
            this.touch(id, h).catch((err) => this.opts.onError?.(wrap(`touch identity ${id}`, err))),
          ),
        );
      }
    })().finally(() => {
      this.touching = null;
    });
    return this.touching;
  }

  private async touch(id: number, h: Held): Promise<void> {
    const etcd = this.store.etcd;
    const key = byIdKey(id);
    const started = performance.now();
    const obj = identityObject(id, h.labels, new Date(), h.creationTimestamp);
    const r = await etcd.if(key, 'Mod', '==', h.modRevision).then(etcd.put(key).value(JSON.stringify(obj))).commit();
    if (this.heldIds.get(id) !== h) return; // released meanwhile
    if (r.succeeded) {
      h.modRevision = r.header.revision;
      h.touchedAt = started;
      return;
    }
    // Changed since our last write: another holder touched it (which counts), or it is gone.
    const kv = (await etcd.get(key).exec()).kvs[0];
    const rec = kv ? decodeRecord(kv) : undefined;
    if (typeof rec === 'object' && rec.labelsHash === h.labelsHash) {
      h.modRevision = rec.modRevision;
      h.touchedAt = started;
      return;
    }
    if (!kv) {
      // Released or deleted by hand while we still program it: put it back if nobody took it.
      const lk = byLabelsKey(h.labelsHash);
      const back = await etcd
        .if(key, 'Create', '==', 0)
        .and(lk, 'Create', '==', 0)
        .then(etcd.put(lk).value(String(id)), etcd.put(key).value(JSON.stringify(obj)))
        .commit();
      if (back.succeeded) {
        h.modRevision = back.header.revision;
        h.touchedAt = started;
        this.opts.onError?.(new OperationError(`identity ${id} was missing from the store while held; restored`));
        return;
      }
    }
    this.release(id);
    this.opts.onLost?.(id, h.labels);
  }

  private leaderValue(): string {
    return `${this.opts.holder} ${this.token}`;
  }

  /** Take the GC lease if it is free; collect while holding it. */
  gcRound(): Promise<void> {
    if (this.collecting) return this.collecting;
    this.collecting = (async () => {
      try {
        // The key can vanish under a live lease (a store restored from backup): campaign again.
        if (this.leader && (await this.store.etcd.get(GC_LEADER_KEY).string()) !== this.leaderValue()) {
          this.leader = false;
          this.seen.clear();
        }
        if (!this.leader) await this.campaign();
        if (this.leader && this.running) await this.collect();
      } catch (err) {
        this.opts.onError?.(wrap('identity gc', err));
      }
    })().finally(() => {
      this.collecting = null;
    });
    return this.collecting;
  }

  private async campaign(): Promise<void> {
    const etcd = this.store.etcd;
    if (!this.lease || this.lease.revoked()) {
      const lease = etcd.lease(this.opts.gcLeaseTtlSeconds ?? 15, { autoKeepAlive: true });
      lease.on('lost', () => {
        if (this.lease !== lease) return;
        this.lease = null;
        this.leader = false;
        this.seen.clear();
      });
      this.lease = lease;
    }
    const leaseId = await this.lease.grant();
    const r = await etcd
      .if(GC_LEADER_KEY, 'Create', '==', 0)
      .then(etcd.put(GC_LEADER_KEY).value(this.leaderValue()).lease(leaseId))
      .commit();
    if (r.succeeded) {
      this.leader = true;
      this.seen.clear();
    }
  }

  /**
   * One collector pass. Records are judged by how long their mod revision has stayed the same on
   * this collector's clock, so clocks of other agents never matter; a new collector waits a full
   * grace period before it releases anything.
   */
  async collect(): Promise<GcResult> {
    const etcd = this.store.etcd;
    const leaderValue = this.leaderValue();
    const now = performance.now();
    const r = await rangePrefix(etcd, BY_ID_PREFIX);
    const records: IdentityRecord[] = [];
    let invalid = 0;
    for (const kv of r.kvs) {
      const rec = decodeRecord(kv);
      if (typeof rec === 'string') invalid++;
      else records.push(rec);
    }
    const live = new Set(records.map((x) => x.id));
    for (const id of [...this.seen.keys()]) if (!live.has(id)) this.seen.delete(id);
    const released: number[] = [];
    let kept = 0;
    for (const rec of records) {
      const s = this.seen.get(rec.id);
      if (!s || s.modRevision !== rec.modRevision) {
        this.seen.set(rec.id, { modRevision: rec.modRevision, since: now });
        kept++;
        continue;
      }
      if (now - s.since < this.grace || this.heldIds.has(rec.id)) {
        kept++;
        continue;
      }
      const lk = byLabelsKey(rec.labelsHash);
      const ref = (await etcd.get(lk).exec()).kvs[0];
      const txn = etcd.if(GC_LEADER_KEY, 'Value', '==', leaderValue).and(byIdKey(rec.id), 'Mod', '==', rec.modRevision);
      if (ref && decodeIdRef(ref) === rec.id) {
        txn.and(lk, 'Mod', '==', ref.mod_revision).then(etcd.delete().key(byIdKey(rec.id)), etcd.delete().key(lk));
      } else if (ref) {
        txn.and(lk, 'Mod', '==', ref.mod_revision).then(etcd.delete().key(byIdKey(rec.id)));
      } else {
        txn.and(lk, 'Create', '==', 0).then(etcd.delete().key(byIdKey(rec.id)));
      }
      const res = await txn.commit();
      if (res.succeeded) {
        released.push(rec.id);
        this.seen.delete(rec.id);
      } else kept++;
    }
    // by-labels entries whose record is gone (a half-written store, a manual delete): allocation only
    // ever writes both keys together, so an entry with no record is never about to gain one.
    let orphans = 0;
    const refs = await rangePrefix(etcd, BY_LABELS_PREFIX);
    for (const ref of refs.kvs) {
      const id = decodeIdRef(ref);
      if (id !== undefined && live.has(id)) continue;
      const txn = etcd.if(GC_LEADER_KEY, 'Value', '==', leaderValue).and(ref.key.toString(), 'Mod', '==', ref.mod_revision);
      if (id !== undefined) txn.and(byIdKey(id), 'Create', '==', 0);
      const res = await txn.then(etcd.delete().key(ref.key.toString())).commit();
      if (res.succeeded) orphans++;
    }
    return { released: released.sort((a, b) => a - b), kept, orphans, invalid };
  }
}

// ---------------------------------------------------------------------------------------------
// One-shot functions (used by the current reconciler until it moves to EtcdIdentityAllocator)

export interface AllocateIdentityOptions {
  /**
   * Re-using an identity whose `status.lastUsed` is older than this refreshes it, which protects it
   * from a concurrent releaseUnusedIdentities. Keep it well below the release grace period.
   * Default IDENTITY_TOUCH_INTERVAL_MS (5 s).
   */
  readonly touchIntervalMs?: number;
  /** Give up after this many store conflicts; default 100. */
  readonly maxAttempts?: number;
}

/**
 * The identity of a label set in cluster `clusterId`, allocated if none exists yet. Equal labels
 * always get one number; different labels never share one. A stale or corrupt by-labels entry is
 * repaired. Throws ValidationError for a bad cluster id or empty labels, OperationError when the
 * cluster's 65535 numbers are used up or the store keeps conflicting.
 */
export async function allocateIdentity(store: IdentityStore, clusterId: number, labels: Labels, opts: AllocateIdentityOptions = {}): Promise<number> {
  checkClusterId(clusterId);
  checkIdentityLabels(labels);
  return (await allocateInStore(store, clusterId, labels, opts.maxAttempts ?? 100, opts.touchIntervalMs ?? IDENTITY_TOUCH_INTERVAL_MS)).id;
}

/** Labels of an allocated identity, or null when there is no valid record for it. */
export async function lookupIdentity(store: IdentityStore, id: number): Promise<Labels | null> {
  if (!isClusterIdentity(id)) return reservedIdentityLabels(id) ?? null;
  const kv = (await store.etcd.get(byIdKey(id)).exec()).kvs[0];
  if (!kv) return null;
  const rec = decodeRecord(kv);
  return typeof rec === 'object' ? rec.labels : null;
}

/** The identity of a label set if one is allocated (no allocation), else null. */
export async function lookupIdentityByLabels(store: IdentityStore, labels: Labels): Promise<number | null> {
  const hash = labelsHash(labels);
  const id = decodeIdRef((await store.etcd.get(byLabelsKey(hash)).exec()).kvs[0]);
  if (id === undefined) return null;
  const kv = (await store.etcd.get(byIdKey(id)).exec()).kvs[0];
  const rec = kv ? decodeRecord(kv) : undefined;
  return typeof rec === 'object' && rec.labelsHash === hash ? id : null;
}

export interface IdentityList {
  /** Identity → its labels (sorted), in ascending identity order. */
  readonly identities: Map<number, Labels>;
  readonly records: IdentityRecord[];
  /** Records that failed validation and were skipped. */
  readonly invalid: number;
  /** One line per skipped record (key and reason). */
  readonly problems: string[];
  /** Store revision of the read. */
  readonly revision: string;
}

/** Every valid identity record in the store. Corrupt records are skipped and counted, never fatal. */
export async function listIdentities(store: IdentityStore): Promise<IdentityList> {
  const r = await rangePrefix(store.etcd, BY_ID_PREFIX);
  const records: IdentityRecord[] = [];
  const problems: string[] = [];
  for (const kv of r.kvs) {
    const rec = decodeRecord(kv);
    if (typeof rec === 'string') problems.push(rec);
    else records.push(rec);
  }
  records.sort((a, b) => a.id - b.id);
  return { identities: new Map(records.map((x) => [x.id, x.labels])), records, invalid: problems.length, problems, revision: r.revision };
}

/**
 * The by-labels index as stored: labels hash → id, for every entry whose value is a number (for
 * consistency checks; the allocator never needs it).
 */
export async function listIdentityIndex(store: IdentityStore): Promise<Map<string, number>> {
  const r = await rangePrefix(store.etcd, BY_LABELS_PREFIX);
  const out = new Map<string, number>();
  for (const kv of r.kvs) {
    const id = decodeIdRef(kv);
    if (id !== undefined) out.set(kv.key.toString().slice(BY_LABELS_PREFIX.length), id);
  }
  return out;
}

/**
 * Identities in use by pods: those whose labels equal some pod's identity labels in `cluster`.
 * Feed it a pod list read before listIdentities' records are judged.
 */
export function identitiesInUse(pods: readonly KubeObject[], cluster: string, records: readonly IdentityRecord[]): Set<number> {
  const hashes = new Set(pods.map((p) => labelsHash(podIdentityLabels(p, cluster))));
  return new Set(records.filter((r) => hashes.has(r.labelsHash)).map((r) => r.id));
}

export type ReleaseResult = GcResult;

export interface ReleaseOptions {
  /** Clock, for tests; default Date.now. */
  readonly now?: () => number;
}

/**
 * Delete identities not in `inUse` whose last allocation is older than `graceMs` (the current
 * reconciler's collector; EtcdIdentityAllocator replaces it). Each delete is a transaction on the
 * record's mod revision and on the by-labels entry, so an identity re-used after it was read
 * survives. Corrupt records are counted and left in place; orphaned by-labels entries deleted.
 */
export async function releaseUnusedIdentities(store: IdentityStore, inUse: ReadonlySet<number>, graceMs: number, opts: ReleaseOptions = {}): Promise<ReleaseResult> {
  const now = (opts.now ?? Date.now)();
  const etcd = store.etcd;
  const list = await listIdentities(store);
  const released: number[] = [];
  let kept = 0;
  for (const rec of list.records) {
    if (inUse.has(rec.id)) continue;
    if (now - rec.lastUsed < graceMs) {
      kept++;
      continue;
    }
    const lk = byLabelsKey(rec.labelsHash);
    const ref = (await etcd.get(lk).exec()).kvs[0];
    const txn = etcd.if(byIdKey(rec.id), 'Mod', '==', rec.modRevision);
    if (ref && decodeIdRef(ref) === rec.id) {
      txn.and(lk, 'Mod', '==', ref.mod_revision).then(etcd.delete().key(byIdKey(rec.id)), etcd.delete().key(lk));
    } else if (ref) {
      txn.and(lk, 'Mod', '==', ref.mod_revision).then(etcd.delete().key(byIdKey(rec.id)));
    } else {
      txn.and(lk, 'Create', '==', 0).then(etcd.delete().key(byIdKey(rec.id)));
    }
    const r = await txn.commit();
    if (r.succeeded) released.push(rec.id);
    else kept++;
  }
  let orphans = 0;
  const refs = await rangePrefix(etcd, BY_LABELS_PREFIX);
  for (const ref of refs.kvs) {
    const id = decodeIdRef(ref);
    if (id !== undefined && list.identities.has(id)) continue;
    const txn = etcd.if(ref.key.toString(), 'Mod', '==', ref.mod_revision);
    if (id !== undefined) txn.and(byIdKey(id), 'Create', '==', 0);
    const r = await txn.then(etcd.delete().key(ref.key.toString())).commit();
    if (r.succeeded) orphans++;
  }
  return { released, kept, orphans, invalid: list.invalid };
}

