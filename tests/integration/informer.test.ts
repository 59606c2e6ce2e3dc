/**
 * Informers against a real etcd on loopback (no root needed): initial list and events in order,
 * no gap between list and watch, re-list after a compaction and after a store restart (also one
 * that lost its data) with exactly the real add/update/delete deltas, indexes, invalid values.
 */
import type { ClusterClient, Watch } from '../../src/cluster/client.js';
import { ExpiredError } from '../../src/cluster/client.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdClusterClient } from '../../src/cluster/etcd-client.js';
import { indexers, Informer, InformerFactory, keyOf, labelIndexValue } from '../../src/cluster/informer.js';
import type { KubeObject } from '../../src/cluster/types.js';
import { TestEtcd, until } from '../helpers/etcd.js';

let store: TestEtcd;
let client: EtcdClusterClient;
let resourceSeq = 0;
let resource = '';
const informers: Informer<KubeObject>[] = [];

beforeAll(async () => {
  store = await TestEtcd.start('informer-test');
  client = store.client();
});

afterAll(async () => {
  for (const i of informers) i.stop();
  await client?.close().catch(() => undefined);
  await store?.remove();
});

beforeEach(() => {
  // A resource of its own per test, so no test sees another's objects.
  resource = `pods${++resourceSeq}`;
});

afterEach(() => {
  for (const i of informers.splice(0)) i.stop();
});

function pod(name: string, node: string, ip: string, labels: Record<string, string> = {}, ns = 'demo'): KubeObject {
  return { apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: ns, labels }, spec: { nodeName: node }, status: { podIP: ip } };
}

/** An informer whose events are logged as `add demo/a@n1`, `update demo/a@n1->n2`, `delete demo/a`. */
function logged(c: ClusterClient = client, opts: ConstructorParameters<typeof Informer>[2] = {}): { inf: Informer; log: string[] } {
  const inf = new Informer(c, resource, { backoffInitialMs: 50, backoffMaxMs: 500, ...opts });
  informers.push(inf);
  const log: string[] = [];
  const node = (o: KubeObject) => (o.spec as { nodeName: string }).nodeName;
  inf.addEventHandler({
    onAdd: (o) => log.push(`add ${keyOf(o)}@${node(o)}`),
    onUpdate: (a, b) => log.push(`update ${keyOf(b)}@${node(a)}->${node(b)}`),
    onDelete: (o) => log.push(`delete ${keyOf(o)}`),
  });
  return { inf, log };
}

/** A client that can hold back list() calls and the first watch() until opened. */
function gatedClient(): { c: ClusterClient; holdLists(): void; openLists(): void; holdFirstWatch(): void; openWatch(): void; lists: number } {
  let listGate: Promise<void> = Promise.resolve();
  let openL = (): void => undefined;
  let watchGate: Promise<void> | null = null;
  let openW = (): void => undefined;
  const state = {
    lists: 0,
    c: {
      get: client.get.bind(client),
      create: client.create.bind(client),
      put: client.put.bind(client),
      delete: client.delete.bind(client),
      close: async () => undefined,
      list: async (r: string, ns?: string) => {
        await listGate;
        state.lists++;
        return client.list(r, ns);
      },
      watch: (r: string, rev: string, h: Parameters<ClusterClient['watch']>[2]): Watch => {
        const gate = watchGate;
        watchGate = null;
        if (!gate) return client.watch(r, rev, h);
        let inner: Watch | undefined;
        let closed = false;
        void gate.then(() => {
          if (!closed) inner = client.watch(r, rev, h);
        });
        return {
          close() {
            closed = true;
            inner?.close();
          },
        };
      },
    } as ClusterClient,
    holdLists() {
      listGate = new Promise((r) => (openL = r));
    },
    openLists() {
      openL();
    },
    holdFirstWatch() {
      watchGate = new Promise((r) => (openW = r));
    },
    openWatch() {
      openW();
    },
  };
  return state;
}

describe('informer (real etcd)', () => {
  test('initial list as adds, then every change once and in store order', async () => {
    await client.put(resource, pod('b', 'n1', '10.0.0.2'));
    await client.put(resource, pod('a', 'n1', '10.0.0.1'));
    const { inf, log } = logged();
    await inf.start();
    expect(inf.hasSynced()).toBe(true);
    expect(log).toEqual(['add demo/a@n1', 'add demo/b@n1']);

    await client.put(resource, pod('c', 'n2', '10.0.0.3'));
    await client.put(resource, pod('a', 'n2', '10.0.0.1'));
    await client.delete(resource, 'demo', 'b');
    await client.put(resource, pod('b', 'n3', '10.0.0.2'));
    await client.delete(resource, 'demo', 'c');
    await until('5 events', () => log.length === 7);
    expect(log.slice(2)).toEqual(['add demo/c@n2', 'update demo/a@n1->n2', 'delete demo/b', 'add demo/b@n3', 'delete demo/c']);
    expect(inf.list().map(keyOf).sort()).toEqual(['demo/a', 'demo/b']);
    expect(inf.get('demo/a')?.metadata.resourceVersion).toBe((await client.get(resource, 'demo', 'a'))?.metadata.resourceVersion);
    expect(inf.stats().lists).toBe(1);
  });

  test('a watch outlives the client call timeout: no re-list while nothing fails', async () => {
    const short = new EtcdClusterClient({ endpoints: [store.endpoint], timeoutMs: 300 });
    try {
      const { inf, log } = logged(short);
      await inf.start();
      await sleep(1200);
      await client.put(resource, pod('late', 'n1', '10.0.0.1'));
      await until('the late add', () => log.length === 1);
      expect(inf.stats()).toMatchObject({ lists: 1, failures: 0, expired: 0 });
    } finally {
      await short.close();
    }
  });

  test('no gap between list and watch: changes made right after the list arrive through the watch', async () => {
    await client.put(resource, pod('a', 'n1', '10.0.0.1'));
    const g = gatedClient();
    let wrote = false;
    const realList = g.c.list;
    // Write after the list has been read and before the informer can start its watch.
    g.c.list = async (r, ns) => {
      const l = await realList(r, ns);
      if (!wrote) {
        wrote = true;
        await client.put(resource, pod('a', 'n2', '10.0.0.1'));
        await client.put(resource, pod('x', 'n1', '10.0.0.9'));
        await client.delete(resource, 'demo', 'x');
        await client.put(resource, pod('y', 'n1', '10.0.0.8'));
      }
      return l;
    };
    const { inf, log } = logged(g.c);
    await inf.start();
    await until('the writes made during start', () => log.length === 5);
    expect(log).toEqual(['add demo/a@n1', 'update demo/a@n1->n2', 'add demo/x@n1', 'delete demo/x', 'add demo/y@n1']);
    expect(g.lists).toBe(1);
  });

  test('the client reports a watch from a compacted revision as ExpiredError', async () => {
    await client.put(resource, pod('a', 'n1', '10.0.0.1'));
    const rev = (await client.list(resource)).revision;
    await client.put(resource, pod('a', 'n2', '10.0.0.1'));
    await store.compact();
    const err = await new Promise<Error>((resolve) => {
      client.watch(resource, String(BigInt(rev) - 1n), { onEvent: () => undefined, onError: resolve });
    });
    expect(err).toBeInstanceOf(ExpiredError);
    expect(err.message).toMatch(new RegExp(`^watch ${resource} from revision ${rev}: history compacted, list again$`));
  });

  test('re-list after a compaction delivers exactly the changes it missed', async () => {
    await client.put(resource, pod('a', 'n1', '10.0.0.1'));
    await client.put(resource, pod('b', 'n1', '10.0.0.2'));
    await client.put(resource, pod('keep', 'n1', '10.0.0.3'));
    const g = gatedClient();
    g.holdFirstWatch();
    const { inf, log } = logged(g.c);
    await inf.start();
    // While its watch is not yet running: change, then compact the history away.
    await client.put(resource, pod('a', 'n2', '10.0.0.1'));
    await client.delete(resource, 'demo', 'b');
    await client.put(resource, pod('c', 'n2', '10.0.0.4'));
    await client.put(resource, pod('c', 'n3', '10.0.0.4'));
    await store.compact();
    g.openWatch();
    await until('a re-list after the expired watch', () => inf.stats().expired === 1 && inf.stats().lists === 2);
    await until('the deltas', () => log.length === 6);
    expect(log.slice(3).sort()).toEqual(['add demo/c@n3', 'delete demo/b', 'update demo/a@n1->n2']);
    // Deletes first, so a reused address or name is freed before it is claimed again.
    expect(log[3]).toBe('delete demo/b');
    // And the new watch works.
    await client.put(resource, pod('d', 'n1', '10.0.0.5'));
    await until('a watched add', () => log.length === 7);
    expect(log[6]).toBe('add demo/d@n1');
  });

  test('re-list after a store restart: exact deltas for what changed while it was away', async () => {
    await client.put(resource, pod('a', 'n1', '10.0.0.1'));
    await client.put(resource, pod('b', 'n1', '10.0.0.2'));
    await client.put(resource, pod('keep', 'n1', '10.0.0.3'));
    const g = gatedClient();
    const { inf, log } = logged(g.c);
    await inf.start();
    g.holdLists();
    await store.restart();
    await until('the watch to notice the restart', () => inf.stats().failures >= 1, 20_000);
    // The informer cannot list yet: these changes reach it only through the re-list.
    await client.put(resource, pod('a', 'n2', '10.0.0.1'));
    await client.delete(resource, 'demo', 'b');
    await client.put(resource, pod('c', 'n2', '10.0.0.4'));
    g.openLists();
    await until('the re-list deltas', () => log.length === 6, 20_000);
    expect(log.slice(3)).toEqual(['delete demo/b', 'update demo/a@n1->n2', 'add demo/c@n2']);
    await client.put(resource, pod('keep', 'n9', '10.0.0.3'));
    await until('a watched update after the restart', () => log.length === 7, 20_000);
    expect(log[6]).toBe('update demo/keep@n1->n9');
    expect(inf.list().map(keyOf).sort()).toEqual(['demo/a', 'demo/c', 'demo/keep']);
  });

  test('a store that came back empty: its reused revisions do not hide changed objects', async () => {
    await client.put(resource, pod('a', 'n1', '10.0.0.1'));
    const rvA = (await client.get(resource, 'demo', 'a'))!.metadata.resourceVersion!;
    await client.put(resource, pod('b', 'n1', '10.0.0.2'));
    await client.put(resource, pod('c', 'n1', '10.0.0.3'));
    const g = gatedClient();
    const { inf, log } = logged(g.c);
    await inf.start();
    g.holdLists();
    await store.restart({ wipe: true });
    await until('the watch to notice the restart', () => inf.stats().failures >= 1, 20_000);
    // Fill the new store up to the old revision of a, so a's new value gets the same one.
    while (BigInt((await client.etcd.put('/filler').value('x').exec()).header.revision) < BigInt(rvA) - 1n);
    const a = await client.put(resource, pod('a', 'n7', '10.0.0.1'));
    expect(a.metadata.resourceVersion).toBe(rvA);
    g.openLists();
    await until('the re-list deltas', () => log.length === 6, 20_000);
    expect(log.slice(3)).toEqual(['delete demo/b', 'delete demo/c', 'update demo/a@n1->n7']);
  });

  test('indexes follow adds, updates, deletes and re-lists', async () => {
    await client.put(resource, pod('a', 'n1', '10.0.0.1', { app: 'web' }));
    await client.put(resource, pod('b', 'n1', '10.0.0.2', { app: 'db' }));
    await client.put(resource, pod('c', 'n2', '10.0.0.3', { app: 'web' }, 'other'));
    const g = gatedClient();
    const { inf } = logged(g.c, { indexers: { node: indexers.byNode, ip: indexers.byPodIP, label: indexers.byLabel, ns: indexers.byNamespace } });
    await inf.start();
    const keys = (index: string, value: string) => inf.indexKeys(index, value).sort();
    expect(keys('node', 'n1')).toEqual(['demo/a', 'demo/b']);
    expect(keys('ip', '10.0.0.3')).toEqual(['other/c']);
    expect(keys('label', labelIndexValue('app', 'web'))).toEqual(['demo/a', 'other/c']);
    expect(keys('ns', 'demo')).toEqual(['demo/a', 'demo/b']);

    await client.put(resource, pod('a', 'n2', '10.0.0.9', { app: 'db' }));
    await client.delete(resource, 'other', 'c');
    await until('the watched changes', () => inf.size === 2 && inf.get('demo/a')?.spec.nodeName === 'n2');
    expect(keys('node', 'n1')).toEqual(['demo/b']);
    expect(keys('node', 'n2')).toEqual(['demo/a']);
    expect(keys('ip', '10.0.0.1')).toEqual([]);
    expect(keys('ip', '10.0.0.9')).toEqual(['demo/a']);
    expect(keys('label', 'app=web')).toEqual([]);
    expect(keys('label', 'app=db')).toEqual(['demo/a', 'demo/b']);
    expect(inf.byIndex('ip', '10.0.0.2').map(keyOf)).toEqual(['demo/b']);

    // Changes seen only through a re-list keep the indexes right too.
    g.holdLists();
    await store.restart();
    await until('the watch to notice the restart', () => inf.stats().failures >= 1, 20_000);
    await client.put(resource, pod('b', 'n3', '10.0.0.1', { app: 'web' }));
    await client.put(resource, pod('d', 'n1', '10.0.0.4', {}, 'other'));
    g.openLists();
    await until('the re-list', () => inf.size === 3, 20_000);
    expect(keys('node', 'n1')).toEqual(['other/d']);
    expect(keys('node', 'n3')).toEqual(['demo/b']);
    expect(keys('ip', '10.0.0.1')).toEqual(['demo/b']);
    expect(keys('ip', '10.0.0.2')).toEqual([]);
    expect(keys('label', 'app=web')).toEqual(['demo/b']);
    expect(keys('ns', 'other')).toEqual(['other/d']);
    expect(() => inf.byIndex('nope', 'x')).toThrow(`informer ${resource}: no index nope`);
  });

  test('invalid values are skipped and listed; one that turns invalid leaves the cache', async () => {
    await client.put(resource, pod('a', 'n1', '10.0.0.1'));
    await client.etcd.put(`/registry/${resource}/demo/junk`).value('{not json');
    await client.put(resource, pod('nonode', '', '10.0.0.2'));
    await client.etcd.put(`/registry/${resource}/demo/numlabel`).value(JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'numlabel', namespace: 'demo', labels: { a: 1 } } }));
    await client.etcd.put(`/registry/${resource}/demo/noname`).value(JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { namespace: 'demo' } }));
    const parse = (o: KubeObject): KubeObject | Error => ((o.spec as { nodeName?: string }).nodeName ? o : new Error('spec.nodeName: required'));
    const { inf, log } = logged(client, { parse });
    await inf.start();
    expect(log).toEqual(['add demo/a@n1']);
    expect([...inf.invalid()].sort()).toEqual([
      ['demo/junk', 'not JSON'],
      ['demo/noname', 'Required'],
      ['demo/nonode', 'spec.nodeName: required'],
      ['demo/numlabel', 'Expected string, received number'],
    ]);
    await client.etcd.delete().key(`/registry/${resource}/demo/numlabel`).exec();
    await client.etcd.delete().key(`/registry/${resource}/demo/noname`).exec();
    await until('the deletes of invalid keys', () => inf.invalid().size === 2);

    await client.put(resource, pod('a', '', '10.0.0.1'));
    await until('a to turn invalid', () => inf.invalid().has('demo/a'));
    expect(log).toEqual(['add demo/a@n1', 'delete demo/a']);
    await client.put(resource, pod('nonode', 'n2', '10.0.0.2'));
    await client.etcd.put(`/registry/${resource}/demo/a`).value('[]');
    await client.delete(resource, 'demo', 'junk');
    await until('the fixes', () => log.length === 3 && !inf.invalid().has('demo/junk'));
    expect(log[2]).toBe('add demo/nonode@n2');
    expect([...inf.invalid().keys()]).toEqual(['demo/a']);
    expect(inf.invalid().get('demo/a')).toMatch(/expected object/i);
  });

  test('a late handler gets the cache as adds; a throwing handler does not stop the others', async () => {
    await client.put(resource, pod('a', 'n1', '10.0.0.1'));
    const errors: string[] = [];
    const { inf, log } = logged(client, { onError: (e) => errors.push(e.message) });
    inf.addEventHandler({
      onAdd: () => {
        throw new Error('boom');
      },
    });
    await inf.start();
    const late: string[] = [];
    inf.addEventHandler({ onAdd: (o) => late.push(keyOf(o)) });
    expect(late).toEqual(['demo/a']);
    await client.put(resource, pod('b', 'n1', '10.0.0.2'));
    await until('b', () => late.length === 2);
    expect(log).toEqual(['add demo/a@n1', 'add demo/b@n1']);
    expect(errors).toEqual([`informer ${resource}: handler: boom`, `informer ${resource}: handler: boom`]);
  });

  test('a list larger than one gRPC message (4 MiB) is read in pages, at one revision', async () => {
    const big = 'x'.repeat(2500);
    const N = 2200;
    for (let i = 0; i < N; i += 200) {
      await Promise.all(Array.from({ length: Math.min(200, N - i) }, (_, k) => client.put(resource, { ...pod(`p${i + k}`, 'n1', '10.0.0.1'), metadata: { name: `p${i + k}`, namespace: 'demo', annotations: { big } } })));
    }
    const { inf, log } = logged();
    await inf.start();
    expect(log).toHaveLength(N);
    expect(inf.size).toBe(N);
    expect(inf.stats().failures).toBe(0);
  }, 60_000);

  test('factory: one informer per resource, shared; start waits for all', async () => {
    await client.put(resource, pod('a', 'n1', '10.0.0.1'));
    const f = new InformerFactory(client);
    const parse = (o: KubeObject) => o;
    const one = f.informer(resource, { parse, indexers: { node: indexers.byNode } });
    const two = f.informer(resource, { indexers: { ip: indexers.byPodIP } });
    expect(two).toBe(one);
    expect(() => f.informer(resource, { parse: (o) => o })).toThrow(`informer ${resource}: already made with another parse function`);
    const other = f.informer('nodes-none');
    expect(f.hasSynced()).toBe(false);
    await f.start();
    expect(f.hasSynced()).toBe(true);
    expect(one.indexKeys('ip', '10.0.0.1')).toEqual(['demo/a']);
    expect(other.list()).toEqual([]);
    f.stop();
    // stop() before a sync rejects start().
    const never = new Informer(client, 'x');
    const p = never.start();
    never.stop();
    await expect(p).rejects.toThrow('informer x stopped before it synced');
  });
});
