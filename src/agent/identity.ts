/**
 * Security identities: allocation, lookup and release in a cluster's store.
 *
 * An identity is a 24-bit number `clusterId << 16 | local` (local 1..65535), allocated in the pod's
 * home cluster from its identity labels, so numbers never collide across a mesh. Numbers below 256
 * are reserved and carry no cluster bits.
 *
 * Store layout (one record per identity, two keys written and deleted together in one transaction):
 *
 *   /registry/meshidentities/<id>                         MeshIdentity object (ClusterClient-readable)
 *       { apiVersion: meshctl.io/v1, kind: MeshIdentity, metadata: { name: "<id>", creationTimestamp },
 *         spec: { id, clusterId, labels: {…sorted}, labelsHash }, status: { lastUsed } }
 *   /registry/meshctl/identities/by-labels/<labelsHash>   "<id>" (decimal)
 *
 * Allocation creates both keys in one transaction guarded by "neither exists", so two agents racing
 * for the same labels end with one number, and two racing for different labels never share one.
 * Release deletes both keys in one transaction guarded by the record's mod revision, so an agent
 * that re-used the identity in between (which bumps `status.lastUsed`) wins over the collector.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { IKeyValue } from 'etcd3';
import type { EtcdClusterClient } from '../cluster/etcd-client.js';
import type { KubeObject } from '../cluster/types.js';
import { OperationError, ValidationError } from '../util/errors.js';
import { isLabels, labelsHash, podIdentityLabels, sortLabels, type Labels } from './labels.js';

/** Reserved identities (no cluster bits), numbered as in Cilium. */
export const IDENTITY_HOST = 1;
export const IDENTITY_WORLD = 2;
export const IDENTITY_UNMANAGED = 3;
export const IDENTITY_HEALTH = 4;
export const IDENTITY_INIT = 5;
export const IDENTITY_REMOTE_NODE = 6;
export const IDENTITY_KUBE_APISERVER = 7;

/** Reserved identity → name (`reserved:<name>` is its only label). */
export const RESERVED_IDENTITIES: ReadonlyMap<number, string> = new Map([
  [IDENTITY_HOST, 'host'],
  [IDENTITY_WORLD, 'world'],
  [IDENTITY_UNMANAGED, 'unmanaged'],
  [IDENTITY_HEALTH, 'health'],
  [IDENTITY_INIT, 'init'],
  [IDENTITY_REMOTE_NODE, 'remote-node'],
  [IDENTITY_KUBE_APISERVER, 'kube-apiserver'],
]);

/** Identities below this are reserved and never allocated. */
export const IDENTITY_RESERVED_MAX = 255;
export const IDENTITY_LOCAL_MIN = 1;
export const IDENTITY_LOCAL_MAX = 0xffff;
export const CLUSTER_ID_MIN = 1;
export const CLUSTER_ID_MAX = 255;

/** ClusterClient resource of identity records. */
export const IDENTITY_RESOURCE = 'meshidentities';
export const IDENTITY_KIND = 'MeshIdentity';
export const IDENTITY_API_VERSION = 'meshctl.io/v1';
const BY_ID_PREFIX = `/registry/${IDENTITY_RESOURCE}/`;
const BY_LABELS_PREFIX = '/registry/meshctl/identities/by-labels/';

/** Default of AllocateIdentityOptions.touchIntervalMs. */
export const IDENTITY_TOUCH_INTERVAL_MS = 5_000;

/** Only the raw etcd client is needed (transactions). */
export type IdentityStore = Pick<EtcdClusterClient, 'etcd'>;

/** Labels of a reserved identity (`{ 'reserved:world': '' }`), or undefined for other numbers. */
export function reservedIdentityLabels(id: number): Labels | undefined {
  const name = RESERVED_IDENTITIES.get(id);
  return name === undefined ? undefined : { [`reserved:${name}`]: '' };
}

/** `clusterId << 16 | local`; throws ValidationError when either is out of range. */
export function makeIdentity(clusterId: number, local: number): number {
  checkClusterId(clusterId);
  if (!Number.isInteger(local) || local < IDENTITY_LOCAL_MIN || local > IDENTITY_LOCAL_MAX) {
    throw new ValidationError('identity', 'range', `local identity ${local} out of range ${IDENTITY_LOCAL_MIN}..${IDENTITY_LOCAL_MAX}`);
  }
  return ((clusterId << 16) | local) >>> 0;
}

/** Cluster id of an identity (0 for reserved ones). */
export function identityClusterId(id: number): number {
  return (id >>> 16) & 0xff;
}

/** Is id a number some cluster could have allocated (cluster bits 1..255, local part non-zero)? */
export function isClusterIdentity(id: number): boolean {
  return Number.isInteger(id) && id > 0 && id <= 0xffffff && identityClusterId(id) >= CLUSTER_ID_MIN && (id & 0xffff) >= IDENTITY_LOCAL_MIN;
}

function checkClusterId(clusterId: number): void {
  if (!Number.isInteger(clusterId) || clusterId < CLUSTER_ID_MIN || clusterId > CLUSTER_ID_MAX) {
    throw new ValidationError('clusterId', 'range', `cluster id ${clusterId} out of range ${CLUSTER_ID_MIN}..${CLUSTER_ID_MAX}`);
  }
}

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
  /** Milliseconds since the epoch of the last allocation that returned this identity. */
  readonly lastUsed: number;
  /** etcd mod revision of the record. */
  readonly modRevision: string;
}

/** The KubeObject stored for an identity (also what the cluster-mesh export reads). */
export function identityObject(id: number, labels: Labels, now: Date): KubeObject {
  const sorted = sortLabels(labels);
  return {
    apiVersion: IDENTITY_API_VERSION,
    kind: IDENTITY_KIND,
    metadata: { name: String(id), creationTimestamp: now.toISOString() },
    spec: { id, clusterId: identityClusterId(id), labels: sorted, labelsHash: labelsHash(sorted) },
    status: { lastUsed: now.toISOString() },
  };
}

/** Decode and check one record; a reason string when it is corrupt. */
function decodeRecord(kv: IKeyValue): IdentityRecord | string {
  const key = kv.key.toString();
  const name = key.slice(BY_ID_PREFIX.length);
  if (!/^[1-9][0-9]*$/.test(name)) return `key ${key}: name is not an identity number`;
  const id = Number(name);
  if (!isClusterIdentity(id)) return `key ${key}: ${id} is not a cluster identity`;
  let raw: unknown;
  try {
    raw = JSON.parse(kv.value.toString('utf8'));
  } catch {
    return `key ${key}: not JSON`;
  }
  const o = raw as { kind?: unknown; metadata?: { name?: unknown }; spec?: { id?: unknown; labels?: unknown; labelsHash?: unknown }; status?: { lastUsed?: unknown } } | null;
  if (typeof o !== 'object' || o === null || o.kind !== IDENTITY_KIND) return `key ${key}: not a ${IDENTITY_KIND}`;
  if (o.metadata?.name !== name || o.spec?.id !== id) return `key ${key}: name or spec.id does not match the key`;
  if (!isLabels(o.spec.labels) || Object.keys(o.spec.labels).length === 0) return `key ${key}: spec.labels is not a non-empty label set`;
  const hash = labelsHash(o.spec.labels);
  if (o.spec.labelsHash !== hash) return `key ${key}: spec.labelsHash does not match spec.labels`;
  const lastUsed = typeof o.status?.lastUsed === 'string' ? Date.parse(o.status.lastUsed) : NaN;
  if (Number.isNaN(lastUsed)) return `key ${key}: status.lastUsed is not a time`;
  return { id, labels: sortLabels(o.spec.labels), labelsHash: hash, lastUsed, modRevision: kv.mod_revision };
}

function decodeIdRef(kv: IKeyValue | undefined): number | undefined {
  const v = kv?.value.toString('utf8');
  if (v === undefined || !/^[1-9][0-9]*$/.test(v)) return undefined;
  const id = Number(v);
  return isClusterIdentity(id) ? id : undefined;
}

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
 * The identity of a label set in cluster `clusterId`, allocated if none exists yet.
 *
 * Safe with any number of agents allocating at once against one store: equal labels always get
 * one number; different labels never share one. Numbers carry the cluster bits. A stale or corrupt
 * by-labels entry (pointing at a missing or foreign record) is repaired. Throws ValidationError for
 * a bad cluster id or empty labels, OperationError when the cluster's 65535 numbers are used up or
 * the store keeps conflicting.
 */
export async function allocateIdentity(store: IdentityStore, clusterId: number, labels: Labels, opts: AllocateIdentityOptions = {}): Promise<number> {
  checkClusterId(clusterId);
  if (!isLabels(labels) || Object.keys(labels).length === 0) throw new ValidationError('labels', 'non-empty', 'identity labels must be a non-empty set of string values');
  const sorted = sortLabels(labels);
  const hash = labelsHash(sorted);
  const lk = byLabelsKey(hash);
  const touchInterval = opts.touchIntervalMs ?? IDENTITY_TOUCH_INTERVAL_MS;
  const maxAttempts = opts.maxAttempts ?? 100;
  const etcd = store.etcd;
  for (let attempt = 0; attempt < maxAttempts; attempt++) {
    if (attempt > 0) await sleep(Math.floor(Math.random() * Math.min(50, 2 * attempt)) + 1);
    const ref = (await etcd.get(lk).exec()).kvs[0];
    if (ref) {
      const id = decodeIdRef(ref);
      const recKv = id === undefined ? undefined : (await etcd.get(byIdKey(id)).exec()).kvs[0];
      const rec = recKv ? decodeRecord(recKv) : undefined;
      if (id !== undefined && typeof rec === 'object' && rec.labelsHash === hash && identityClusterId(id) === clusterId) {
        if (Date.now() - rec.lastUsed < touchInterval) return id;
        const obj = identityObject(id, rec.labels, new Date());
        const current = JSON.parse(recKv!.value.toString('utf8')) as KubeObject;
        obj.metadata.creationTimestamp = current.metadata.creationTimestamp;
        const r = await etcd
          .if(lk, 'Mod', '==', ref.mod_revision)
          .and(byIdKey(id), 'Mod', '==', rec.modRevision)
          .then(etcd.put(byIdKey(id)).value(JSON.stringify(obj)))
          .commit();
        if (r.succeeded) return id;
        continue;
      }
      // Points nowhere valid (corrupt value, record gone or another label set's): drop it and retry.
      await etcd.if(lk, 'Mod', '==', ref.mod_revision).then(etcd.delete().key(lk)).commit();
      continue;
    }
    const id = await pickFreeIdentity(store, clusterId);
    const r = await etcd
      .if(lk, 'Create', '==', 0)
      .and(byIdKey(id), 'Create', '==', 0)
      .then(etcd.put(lk).value(String(id)), etcd.put(byIdKey(id)).value(JSON.stringify(identityObject(id, sorted, new Date()))))
      .commit();
    if (r.succeeded) return id;
  }
  throw new OperationError(`allocate identity for ${hash.slice(0, 12)} in cluster ${clusterId}: store kept conflicting after ${maxAttempts} attempts`);
}

/**
 * A local number not used by any record (corrupt ones included), chosen at random among the
 * lowest free ones so concurrent allocators for different labels rarely collide.
 */
async function pickFreeIdentity(store: IdentityStore, clusterId: number): Promise<number> {
  const used = new Set<number>();
  for (const k of await store.etcd.getAll().prefix(BY_ID_PREFIX).keys()) {
    const n = Number(k.slice(BY_ID_PREFIX.length));
    if (Number.isInteger(n) && identityClusterId(n) === clusterId) used.add(n & 0xffff);
  }
  const free: number[] = [];
  for (let local = IDENTITY_LOCAL_MIN; local <= IDENTITY_LOCAL_MAX && free.length < 16; local++) {
    if (!used.has(local)) free.push(local);
  }
  if (free.length === 0) throw new OperationError(`allocate identity in cluster ${clusterId}: all ${IDENTITY_LOCAL_MAX} identities are in use`);
  return makeIdentity(clusterId, free[Math.floor(Math.random() * free.length)]);
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
  const r = await store.etcd.getAll().prefix(BY_ID_PREFIX).exec();
  const records: IdentityRecord[] = [];
  const problems: string[] = [];
  for (const kv of r.kvs) {
    const rec = decodeRecord(kv);
    if (typeof rec === 'string') problems.push(rec);
    else records.push(rec);
  }
  records.sort((a, b) => a.id - b.id);
  return { identities: new Map(records.map((x) => [x.id, x.labels])), records, invalid: problems.length, problems, revision: r.header.revision };
}

/**
 * Identities in use by pods: those whose labels equal some pod's identity labels in `cluster`.
 * Feed it a pod list read before listIdentities' records are judged.
 */
export function identitiesInUse(pods: readonly KubeObject[], cluster: string, records: readonly IdentityRecord[]): Set<number> {
  const hashes = new Set(pods.map((p) => labelsHash(podIdentityLabels(p, cluster))));
  return new Set(records.filter((r) => hashes.has(r.labelsHash)).map((r) => r.id));
}

export interface ReleaseResult {
  /** Identities deleted, ascending. */
  readonly released: number[];
  /** Unused identities kept because they were used within the grace period or changed meanwhile. */
  readonly kept: number;
  /** by-labels entries deleted because their record was missing. */
  readonly orphans: number;
  /** Corrupt records skipped (left in place for inspection). */
  readonly invalid: number;
}

export interface ReleaseOptions {
  /** Clock, for tests; default Date.now. */
  readonly now?: () => number;
}

/**
 * Delete identities not in `inUse` whose last allocation is older than `graceMs`.
 *
 * Correct with agents allocating concurrently: each delete is a transaction on the record's mod
 * revision (and on the by-labels entry still pointing at it), so an identity re-used after it was
 * read survives. An identity re-used before it was read has a fresh `status.lastUsed` and is kept,
 * provided `graceMs` exceeds the allocators' touch interval plus the age of `inUse` (compute it from
 * a pod list read just before this call). Corrupt records are counted and left in place; by-labels
 * entries whose record is gone are deleted (`orphans`).
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
  // by-labels entries whose record is gone (a half-written store, a manual delete): allocation only
  // ever writes both keys together, so an entry with no record is never about to gain one.
  let orphans = 0;
  const refs = await etcd.getAll().prefix(BY_LABELS_PREFIX).exec();
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
