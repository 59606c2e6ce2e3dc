/** ClusterClient on a plain etcd (the lab's store), plus the raw key operations the lab's IPAM needs. */
import { ExponentialBackoff, noop, type IBackoff } from 'cockatiel';
import { Etcd3, type IKeyValue, type Lease } from 'etcd3';
import {
  AlreadyExistsError,
  ConflictError,
  type ClusterClient,
  type CreateOptions,
  type ListResult,
  type Watch,
  type WatchHandlers,
} from './client.js';
import { KubeObjectSchema, objectKey, type KubeObject } from './types.js';

export interface EtcdClusterClientOptions {
  /** Store URLs, e.g. http://198.18.7.10:2379. */
  readonly endpoints: readonly string[];
  /** Per-call timeout in ms; default 5000. */
  readonly timeoutMs?: number;
}

type Decoded = { ok: true; obj: KubeObject } | { ok: false; reason: string };

function decode(kv: IKeyValue): Decoded {
  let raw: unknown;
  try {
    raw = JSON.parse(kv.value.toString('utf8'));
  } catch {
    return { ok: false, reason: 'not JSON' };
  }
  const parsed = KubeObjectSchema.safeParse(raw);
  if (!parsed.success) return { ok: false, reason: parsed.error.issues[0]?.message ?? 'invalid' };
  const obj = parsed.data;
  obj.metadata.resourceVersion = kv.mod_revision;
  return { ok: true, obj };
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
      defaultCallOptions: () => ({ deadline: Date.now() + (opts.timeoutMs ?? 5000) }),
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
    const r = await this.etcd.getAll().prefix(prefix).exec();
    const items: KubeObject[] = [];
    let invalid = 0;
    for (const kv of r.kvs) {
      const d = decode(kv);
      if (d.ok) items.push(d.obj);
      else invalid++;
    }
    items.sort((a, b) => keyOf(resource, a).localeCompare(keyOf(resource, b)));
    return { items, revision: r.header.revision, invalid };
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
    let closed = false;
    let watcher: { cancel(): Promise<void> } | null = null;
    const last = new Map<string, KubeObject>();
    const start = String(BigInt(fromRevision) + 1n);
    this.etcd
      .watch()
      .prefix(`/registry/${resource}/`)
      .startRevision(start)
      .withPreviousKV()
      .create()
      .then((w) => {
        if (closed) {
          void w.cancel();
          return;
        }
        watcher = w;
        // A handler must never throw into the etcd client's stream (that would kill the process).
        const safe =
          <A extends unknown[]>(fn: (...a: A) => void) =>
          (...a: A): void => {
            try {
              fn(...a);
            } catch (err) {
              handlers.onError?.(err instanceof Error ? err : new Error(String(err)));
            }
          };
        w.on('put', safe((kv: IKeyValue, prev?: IKeyValue) => {
          const key = kv.key.toString();
          const d = decode(kv);
          if (!d.ok) {
            handlers.onInvalid?.(key, d.reason);
            return;
          }
          const existed = last.has(key) || (prev != null && prev.value.length > 0) || kv.version !== '1';
          last.set(key, d.obj);
          handlers.onEvent({ type: existed ? 'MODIFIED' : 'ADDED', object: d.obj });
        }));
        w.on('delete', safe((kv: IKeyValue, prev?: IKeyValue) => {
          const key = kv.key.toString();
          let obj = last.get(key);
          if (!obj && prev != null) {
            const d = decode(prev);
            if (d.ok) obj = d.obj;
          }
          last.delete(key);
          handlers.onEvent({ type: 'DELETED', object: obj ?? stubFromKey(key) });
        }));
        w.on('error', (err) => handlers.onError?.(err));
      })
      .catch((err: Error) => handlers.onError?.(err));
    return {
      close() {
        closed = true;
        if (watcher) void watcher.cancel();
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
