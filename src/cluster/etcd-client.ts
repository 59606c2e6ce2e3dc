/** ClusterClient on a plain etcd (the lab's store), plus the raw key operations the lab's IPAM needs. */
import { ExponentialBackoff, noop, type IBackoff } from 'cockatiel';
import { Etcd3, type IKeyValue, type Lease } from 'etcd3';
import {
  AlreadyExistsError,
  ConflictError,
  ExpiredError,
  type ClusterClient,
  type CreateOptions,
  type ListResult,
  type Watch,
  type WatchEvent,
  type WatchHandlers,
} from './client.js';
import { KubeObjectSchema, objectKey, type KubeObject } from './types.js';
import { wrap } from '../util/errors.js';

export interface EtcdClusterClientOptions {
  /** Store URLs, e.g. http://198.18.7.10:2379. */
  readonly endpoints: readonly string[];
  /** Per-call timeout in ms (not for watches and lease keep-alives); default 5000. */
  readonly timeoutMs?: number;
}

/** Keys per page of rangePrefix: about 1 MB of typical objects, well under gRPC's 4 MiB message limit. */
const RANGE_PAGE = 1000;

/**
 * Every key under `prefix`, read in pages at one revision (a consistent snapshot of any size; one
 * unpaged range of a large prefix would exceed the client's gRPC message limit).
 */
export async function rangePrefix(etcd: Etcd3, prefix: string, opts: { keysOnly?: boolean } = {}): Promise<{ kvs: IKeyValue[]; revision: string }> {
  const start = Buffer.from(prefix);
  const end = Buffer.from(start);
  end[end.length - 1]++;
  const kvs: IKeyValue[] = [];
  let revision: string | undefined;
  let from = start;
  for (;;) {
    const r = await etcd.kv.range({ key: from, range_end: end, limit: RANGE_PAGE, revision: revision ?? 0, keys_only: opts.keysOnly ?? false });
    revision ??= r.header.revision;
    for (const kv of r.kvs) kvs.push(kv);
    if (!r.more || r.kvs.length === 0) return { kvs, revision };
    from = Buffer.concat([r.kvs[r.kvs.length - 1].key, Buffer.from([0])]);
  }
}

type Decoded = { ok: true; obj: KubeObject } | { ok: false; reason: string };

function decode(kv: IKeyValue): Decoded {
  let raw: unknown;
  try {
    raw = JSON.parse(kv.value.toString('utf8'));
  } catch {
    return { ok: false, reason: 'not JSON' };
  }
  let obj: KubeObject;
  if (looksLikeKubeObject(raw)) {
    obj = raw;
  } else {
    // The schema only to say what is wrong (it costs as much as the rest of a list).
    const parsed = KubeObjectSchema.safeParse(raw);
    if (!parsed.success) return { ok: false, reason: parsed.error.issues[0]?.message ?? 'invalid' };
    obj = parsed.data;
  }
  obj.metadata.resourceVersion = kv.mod_revision;
  return { ok: true, obj };
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isStringMap = (v: unknown): boolean => v === undefined || (isRecord(v) && Object.values(v).every((x) => typeof x === 'string'));
const isOptString = (v: unknown): boolean => v === undefined || typeof v === 'string';

/** The checks of KubeObjectSchema, without its copy of every object. */
function looksLikeKubeObject(raw: unknown): raw is KubeObject {
  if (!isRecord(raw) || typeof raw.apiVersion !== 'string' || typeof raw.kind !== 'string' || !isRecord(raw.metadata)) return false;
  const m = raw.metadata;
  if (typeof m.name !== 'string' || !isOptString(m.namespace) || !isOptString(m.uid) || !isOptString(m.resourceVersion) || !isOptString(m.creationTimestamp)) return false;
  if (!isStringMap(m.labels) || !isStringMap(m.annotations)) return false;
  const owners = m.ownerReferences;
  return owners === undefined || (Array.isArray(owners) && owners.every((o) => isRecord(o) && typeof o.kind === 'string' && typeof o.name === 'string'));
}

function encode(obj: KubeObject): string {
  const copy = { ...obj, metadata: { ...obj.metadata } };
  delete copy.metadata.resourceVersion;
  return JSON.stringify(copy);
}

export class EtcdClusterClient implements ClusterClient {
  readonly etcd: Etcd3;
  private readonly leases = new Map<number, Lease>();

  constructor(readonly opts: EtcdClusterClientOptions) {
    this.etcd = new Etcd3({
      hosts: [...opts.endpoints],
      // One store per client: no circuit breaker (it would hold a restarted store off for seconds),
      // callers retry; reconnect fast after a store restart.
      faultHandling: { host: () => noop, global: noop, watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }) as unknown as IBackoff<unknown> },
      grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000 },
      // Per call, never on streams: a deadline would end every watch and lease keep-alive with it.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + (opts.timeoutMs ?? 5000) }),
    });
  }

  async get(resource: string, namespace: string | undefined, name: string): Promise<KubeObject | null> {
    const r = await this.etcd.get(objectKey(resource, namespace, name)).exec();
    const kv = r.kvs[0];
    if (!kv) return null;
    const d = decode(kv);
    return d.ok ? d.obj : null;
  }

  async list(resource: string, namespace?: string): Promise<ListResult> {
    const prefix = namespace ? `/registry/${resource}/${namespace}/` : `/registry/${resource}/`;
    const r = await rangePrefix(this.etcd, prefix);
    const items: KubeObject[] = [];
    const problems: Array<{ key: string; reason: string }> = [];
    const base = `/registry/${resource}/`.length;
    for (const kv of r.kvs) {
      const d = decode(kv);
      if (d.ok) items.push(d.obj);
      else problems.push({ key: kv.key.toString().slice(base), reason: d.reason });
    }
    // etcd returns a range in key (byte) order already: no sort (a locale sort of 50k keys costs seconds).
    return { items, revision: r.revision, invalid: problems.length, problems };
  }

  async create(resource: string, obj: KubeObject, opts: CreateOptions = {}): Promise<KubeObject> {
    const key = keyOf(resource, obj);
    const put = this.etcd.put(key).value(encode(obj));
    if (opts.leaseTtlSeconds) put.lease(await this.leaseId(opts.leaseTtlSeconds));
    const r = await this.etcd.if(key, 'Create', '==', 0).then(put).commit();
    if (!r.succeeded) throw new AlreadyExistsError(key);
    return { ...obj, metadata: { ...obj.metadata, resourceVersion: r.header.revision } };
  }

  async put(resource: string, obj: KubeObject, opts: CreateOptions = {}): Promise<KubeObject> {
    const key = keyOf(resource, obj);
    const put = this.etcd.put(key).value(encode(obj));
    if (opts.leaseTtlSeconds) put.lease(await this.leaseId(opts.leaseTtlSeconds));
    const rv = obj.metadata.resourceVersion;
    if (!rv) {
      const r = await put.exec();
      return { ...obj, metadata: { ...obj.metadata, resourceVersion: r.header.revision } };
    }
    const r = await this.etcd.if(key, 'Mod', '==', rv).then(put).commit();
    if (!r.succeeded) throw new ConflictError(key);
    return { ...obj, metadata: { ...obj.metadata, resourceVersion: r.header.revision } };
  }

  async delete(resource: string, namespace: string | undefined, name: string): Promise<boolean> {
    const r = await this.etcd.delete().key(objectKey(resource, namespace, name)).exec();
    return Number(r.deleted) > 0;
  }

  watch(resource: string, fromRevision: string, handlers: WatchHandlers): Watch {
    const prefix = `/registry/${resource}/`;
    // First revision not yet delivered; advanced by events and progress notifications only (a
    // response header's revision can run ahead of events still to come while etcd catches up).
    let next = BigInt(fromRevision) + 1n;
    let ended = false;
    const watcher = this.etcd.watch().prefix(prefix).startRevision(String(next)).withPreviousKV().watcher();
    // Drop our listeners, but keep one for 'error': a late cancel response would otherwise throw
    // from the client's stream handler.
    const quiet = (): void => {
      watcher.removeAllListeners();
      watcher.on('error', () => undefined);
    };
    const end = (err: Error, cancel: boolean): void => {
      if (ended) return;
      ended = true;
      quiet();
      // The library would re-attach a disconnected watcher from a revision of its own choosing.
      if (cancel) void watcher.cancel().catch(() => undefined);
      handlers.onError?.(err);
    };
    // A handler must never throw into the etcd client's stream (that would kill the process).
    const deliver = (ev: WatchEvent): void => {
      if (ended) return;
      try {
        handlers.onEvent(ev);
      } catch (err) {
        end(wrap(`watch ${resource}: event handler`, err), true);
      }
    };
    watcher.on('put', (kv: IKeyValue) => {
      if (ended) return;
      const rev = BigInt(kv.mod_revision);
      if (rev >= next) next = rev + 1n;
      const d = decode(kv);
      if (!d.ok) {
        handlers.onInvalid?.(kv.key.toString().slice(prefix.length), d.reason);
        return;
      }
      deliver({ type: kv.version === '1' ? 'ADDED' : 'MODIFIED', object: d.obj, revision: kv.mod_revision });
    });
    watcher.on('delete', (kv: IKeyValue, prev?: IKeyValue) => {
      if (ended) return;
      const rev = BigInt(kv.mod_revision);
      if (rev >= next) next = rev + 1n;
      const d = prev && prev.value.length > 0 ? decode(prev) : undefined;
      const key = kv.key.toString();
      deliver({ type: 'DELETED', object: d?.ok ? d.obj : stubFromKey(key), revision: kv.mod_revision });
    });
    watcher.on('data', (res: { events: unknown[]; header: { revision: string } }) => {
      // A progress notification (no events) means every change up to its revision was sent.
      if (res.events.length === 0 && BigInt(res.header.revision) >= next) next = BigInt(res.header.revision) + 1n;
    });
    watcher.on('disconnected', (err: Error) => end(wrap(`watch ${resource}`, err), true));
    // The server cancelled the watch; it gives no reason for a compaction, so ask for the revision.
    watcher.on('error', (err: Error) => {
      if (ended) return;
      const from = String(next);
      void this.etcd.kv
        .range({ key: Buffer.from(prefix), limit: 1, keys_only: true, revision: from })
        .then(
          () => end(wrap(`watch ${resource}`, err), false),
          (probe: Error) => end(/compacted/.test(probe.message) ? new ExpiredError(resource, from) : wrap(`watch ${resource}`, err), false),
        );
    });
    return {
      close() {
        if (ended) return;
        ended = true;
        quiet();
        void watcher.cancel().catch(() => undefined);
      },
    };
  }

  /** Raw: create a key only if absent. */
  async createKey(key: string, value: string): Promise<boolean> {
    const r = await this.etcd.if(key, 'Create', '==', 0).then(this.etcd.put(key).value(value)).commit();
    return r.succeeded;
  }

  /** Raw: all keys under a prefix. */
  async keys(prefix: string): Promise<string[]> {
    return this.etcd.getAll().prefix(prefix).keys();
  }

  /** Raw: delete one key. */
  async deleteKey(key: string): Promise<void> {
    await this.etcd.delete().key(key).exec();
  }

  /** Wait until the store answers, or throw after timeoutMs with the last error. */
  async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < deadline) {
      try {
        await this.etcd.maintenance.status();
        return;
      } catch (err) {
        last = err instanceof Error ? err.message : String(err);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`store ${this.opts.endpoints.join(',')} not ready after ${timeoutMs / 1000}s: ${last}`);
  }

  private async leaseId(ttl: number): Promise<string> {
    let lease = this.leases.get(ttl);
    if (!lease || lease.revoked()) {
      lease = this.etcd.lease(ttl, { autoKeepAlive: true });
      lease.on('lost', () => this.leases.delete(ttl));
      this.leases.set(ttl, lease);
    }
    return lease.grant();
  }

  async close(): Promise<void> {
    for (const l of this.leases.values()) await l.revoke().catch(() => undefined);
    this.leases.clear();
    this.etcd.close();
  }
}

function keyOf(resource: string, obj: KubeObject): string {
  return objectKey(resource, obj.metadata.namespace, obj.metadata.name);
}

function stubFromKey(key: string): KubeObject {
  const parts = key.split('/').filter(Boolean);
  const name = parts[parts.length - 1] ?? '';
  const namespace = parts.length === 4 ? parts[2] : undefined;
  return { apiVersion: 'v1', kind: 'Unknown', metadata: { name, namespace } };
}
