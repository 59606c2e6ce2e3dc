/**
 * Identities against a real etcd on loopback (no root needed): the IdentityAllocator (touching,
 * one collector holding the GC lease, release only of what nobody touched, a re-use during GC
 * keeping its number, and a stress test of two agents racing), plus the one-shot functions the
 * current reconciler uses: concurrent allocation, release with a grace period, corrupt values.
 */
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdClusterClient } from '../../src/cluster/etcd-client.js';
import { LABEL_CLUSTER, LABEL_NAMESPACE } from '../../src/defaults.js';
import { IDENTITY_RESOURCE, identityClusterId, parseIdentity } from '../../src/cluster/identity.js';
import {
  allocateIdentity,
  EtcdIdentityAllocator,
  identitiesInUse,
  listIdentities,
  listIdentityIndex,
  lookupIdentity,
  lookupIdentityByLabels,
  releaseUnusedIdentities,
  type EtcdIdentityAllocatorOptions,
  type IdentityStore,
} from '../../src/cluster/identity-etcd.js';
import { Informer } from '../../src/cluster/informer.js';
import { labelsHash, podIdentityLabels, type Labels } from '../../src/agent/labels.js';
import { ValidationError } from '../../src/util/errors.js';
import { TestEtcd, until } from '../helpers/etcd.js';

const CLUSTER = 'c3';
const CLUSTER_ID = 3;

function podLabels(app: string, ns = 'demo'): Labels {
  return { app, [LABEL_NAMESPACE]: ns, [LABEL_CLUSTER]: CLUSTER };
}

let store: TestEtcd;
let clients: EtcdClusterClient[] = [];
const allocators: EtcdIdentityAllocator[] = [];

beforeAll(async () => {
  store = await TestEtcd.start('identity-test');
  clients = [0, 1, 2].map(() => store.client());
});

afterAll(async () => {
  for (const c of clients) await c.close().catch(() => undefined);
  await store?.remove();
});

afterEach(async () => {
  for (const a of allocators.splice(0)) await a.stop();
});

function allocator(client: IdentityStore, holder: string, opts: Partial<EtcdIdentityAllocatorOptions> = {}): EtcdIdentityAllocator {
  const a = new EtcdIdentityAllocator(client, { clusterId: CLUSTER_ID, holder, touchIntervalMs: 100, graceMs: 300, gcIntervalMs: 3_600_000, gcLeaseTtlSeconds: 2, ...opts });
  allocators.push(a);
  return a;
}

async function storeRevision(): Promise<string> {
  return (await clients[0].etcd.get('/').exec()).header.revision;
}

beforeEach(async () => {
  await clients[0].etcd.delete().prefix(`/registry/${IDENTITY_RESOURCE}/`).exec();
  await clients[0].etcd.delete().prefix('/registry/meshctl/identities/').exec();
});

describe('identity allocator (real etcd)', () => {
  test('equal labels share a number across allocators; a held, fresh identity costs no store write', async () => {
    const [a, b] = [allocator(clients[0], 'n1'), allocator(clients[1], 'n2')];
    const [x, y] = await Promise.all([a.allocate(podLabels('web')), b.allocate(podLabels('web'))]);
    expect(y).toBe(x);
    expect(identityClusterId(x)).toBe(CLUSTER_ID);
    const other = await a.allocate(podLabels('db'));
    expect(other).not.toBe(x);
    expect([...a.held()].sort()).toEqual([x, other].sort());
    const rev = await storeRevision();
    expect(await a.allocate({ [LABEL_CLUSTER]: CLUSTER, [LABEL_NAMESPACE]: 'demo', app: 'web' })).toBe(x);
    expect(await storeRevision()).toBe(rev);
    a.release(x);
    expect([...a.held()]).toEqual([other]);
    await expect(a.allocate({})).rejects.toThrow(new ValidationError('labels', 'non-empty', 'identity labels must be a non-empty set of string values'));
    expect(() => new EtcdIdentityAllocator(clients[0], { clusterId: CLUSTER_ID, holder: 'x', touchIntervalMs: 1000, graceMs: 1500 })).toThrow(
      'identity allocator: graceMs 1500 must be at least twice touchIntervalMs 1000',
    );
  });

  test('identity objects are read through an informer with parseIdentity', async () => {
    const a = allocator(clients[0], 'n1');
    const x = await a.allocate(podLabels('web'));
    await clients[0].etcd.put(`/registry/${IDENTITY_RESOURCE}/${(CLUSTER_ID << 16) | 999}`).value(JSON.stringify({ apiVersion: 'meshctl.io/v1', kind: 'MeshIdentity', metadata: { name: String((CLUSTER_ID << 16) | 999) }, spec: { id: (CLUSTER_ID << 16) | 999, labels: { app: 'x' }, labelsHash: 'wrong' }, status: { lastUsed: new Date().toISOString() } }));
    const inf = new Informer(clients[1], IDENTITY_RESOURCE, { parse: parseIdentity });
    await inf.start();
    try {
      expect(inf.list().map((o) => [o.spec.id, o.spec.labels])).toEqual([[x, podLabels('web')]]);
      expect([...inf.invalid()]).toEqual([[String((CLUSTER_ID << 16) | 999), 'spec.labelsHash does not match spec.labels']]);
      const y = await a.allocate(podLabels('db'));
      await until('the new identity in the informer', () => inf.get(String(y)) !== undefined);
      expect(inf.get(String(y))?.spec.labelsHash).toBe(labelsHash(podLabels('db')));
    } finally {
      inf.stop();
    }
  });

  test('one collector at a time: it holds the GC lease, another takes over when it stops or dies', async () => {
    // The first collector is another process, killed with SIGKILL: its lease must lapse by itself.
    const script = `
      const { EtcdClusterClient } = await import(${JSON.stringify(new URL('../../src/cluster/etcd-client.js', import.meta.url).href)});
      const { EtcdIdentityAllocator } = await import(${JSON.stringify(new URL('../../src/cluster/identity-etcd.js', import.meta.url).href)});
      const a = new EtcdIdentityAllocator(new EtcdClusterClient({ endpoints: [process.env.STORE] }), { clusterId: ${CLUSTER_ID}, holder: 'n1', touchIntervalMs: 100, graceMs: 300, gcIntervalMs: 100, gcLeaseTtlSeconds: 2 });
      await a.start();
      console.log(a.isCollector() ? 'collector' : 'not collector');
      setInterval(() => undefined, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, STORE: store.endpoint }, stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const first = await new Promise<string>((resolve) => child.stdout!.once('data', (b: Buffer) => resolve(b.toString().trim())));
      expect(first).toBe('collector');
      const b = allocator(clients[1], 'n2', { gcIntervalMs: 100 });
      const c = allocator(clients[2], 'n3', { gcIntervalMs: 100 });
      await b.start();
      await c.start();
      await sleep(3000); // longer than the lease TTL: the live collector keeps it
      expect([b.isCollector(), c.isCollector()]).toEqual([false, false]);
      expect(await clients[0].etcd.get('/registry/meshctl/identities/gc-leader').string()).toMatch(/^n1 /);
      child.kill('SIGKILL');
      await until('a new collector', () => b.isCollector() || c.isCollector(), 15_000);
      await sleep(300);
      expect([b.isCollector(), c.isCollector()].filter(Boolean)).toHaveLength(1);
      const next = b.isCollector() ? b : c;
      const rest = next === b ? c : b;
      // A clean stop gives the lease up at once.
      await next.stop();
      await until('the last one to collect', () => rest.isCollector(), 5_000);
    } finally {
      child.kill('SIGKILL');
    }
  }, 30_000);

  test('released only when nobody touched it for the grace period; held ones survive many', async () => {
    const gcErrors: string[] = [];
    const a = allocator(clients[0], 'n1', { gcIntervalMs: 50, onError: (e) => gcErrors.push(e.message) });
    const b = allocator(clients[1], 'n2', { gcIntervalMs: 50 });
    await a.start();
    await b.start();
    const held = await b.allocate(podLabels('held'));
    const both = await a.allocate(podLabels('both'));
    expect(await b.allocate(podLabels('both'))).toBe(both);
    const dropped = await b.allocate(podLabels('dropped'));
    b.release(dropped);
    a.release(both); // b still holds it
    await until('the dropped identity to go', async () => (await lookupIdentity(clients[2], dropped)) === null, 10_000);
    // Several grace periods later the held ones are still there, with their labels.
    await sleep(1000);
    expect(await lookupIdentity(clients[2], held)).toEqual(podLabels('held'));
    expect(await lookupIdentity(clients[2], both)).toEqual(podLabels('both'));
    expect(await lookupIdentityByLabels(clients[2], podLabels('dropped'))).toBeNull();
    expect(gcErrors).toEqual([]);
  });

  test('a pod re-created with the same labels while GC is deciding keeps its identity', async () => {
    const labels = podLabels('recreated');
    const agent = allocator(clients[1], 'n2');
    const id = await agent.allocate(labels);
    agent.release(id); // its pod was deleted
    // The collector's store: right before its release transaction (after it judged the identity
    // unused for the grace period), the pod comes back on the other agent.
    let armed = false;
    let raced = false;
    const real = clients[0].etcd;
    const racing: IdentityStore = {
      etcd: new Proxy(real, {
        get(target, prop) {
          if (prop === 'get') {
            return (key: string) => {
              const builder = target.get(key);
              if (!armed || raced || !key.includes('/by-labels/')) return builder;
              raced = true;
              return { exec: async () => (expect(await agent.allocate(labels)).toBe(id), builder.exec()) };
            };
          }
          const v = Reflect.get(target, prop, target) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      }),
    };
    const gc = allocator(racing, 'n1');
    await gc.start();
    expect(gc.isCollector()).toBe(true);
    await sleep(400); // > grace, nobody touching
    armed = true;
    expect(await gc.collect()).toEqual({ released: [], kept: 1, orphans: 0, invalid: 0 });
    expect(raced).toBe(true);
    expect(await lookupIdentityByLabels(clients[2], labels)).toBe(id);
    expect(agent.held()).toEqual(new Set([id]));
    // Once really unused for the grace period, it goes.
    agent.release(id);
    await gc.collect();
    await sleep(400);
    expect(await gc.collect()).toEqual({ released: [id], kept: 0, orphans: 0, invalid: 0 });
    expect(await lookupIdentity(clients[2], id)).toBeNull();
  });

  test('stress: two agents racing allocate / release / GC keep by-id and by-labels a bijection', async () => {
    const N = 40;
    const WINDOW = 15;
    const GRACE = 2000;
    const sets = Array.from({ length: N }, (_, i) => podLabels(`s${i}`));
    const hashes = sets.map((l) => labelsHash(l));
    const errors: string[] = [];
    const opts = { touchIntervalMs: 200, graceMs: GRACE, gcIntervalMs: 100, onError: (e: Error) => errors.push(e.message), onLost: (id: number) => errors.push(`lost ${id}`) };
    const agents = [allocator(clients[0], 'n1', opts), allocator(clients[1], 'n2', opts)];
    const mine = agents.map(() => new Map<number, number>()); // label set index -> id
    const lastFree = new Map<number, { id: number; at: number }>();
    const problems: string[] = [];
    let keptOnReuse = 0;
    let allocations = 0;
    let window = 0;
    const end = Date.now() + 10_000;
    for (const a of agents) await a.start();
    const leaderKey = '/registry/meshctl/identities/gc-leader';
    const leaderAtStart = await clients[2].etcd.get(leaderKey).string();

    const nobodyHolds = (i: number) => mine.every((m) => !m.has(i));
    const releaseOne = (k: number, i: number) => {
      const id = mine[k].get(i)!;
      mine[k].delete(i);
      agents[k].release(id);
      if (nobodyHolds(i)) lastFree.set(i, { id, at: Date.now() });
    };
    const agentLoop = async (k: number) => {
      while (Date.now() < end) {
        for (const i of [...mine[k].keys()]) if ((i - window + N) % N >= WINDOW) releaseOne(k, i);
        const i = (window + Math.floor(Math.random() * WINDOW)) % N;
        if (mine[k].has(i)) {
          if (Math.random() < 0.5) releaseOne(k, i);
        } else {
          const free = nobodyHolds(i) ? lastFree.get(i) : undefined;
          const askedAt = Date.now();
          const id = await agents[k].allocate(sets[i]);
          allocations++;
          const other = mine[1 - k].get(i);
          if (other !== undefined && other !== id) problems.push(`labels s${i}: agent ${k} got ${id}, the other holds ${other}`);
          // Re-created well within the grace period: same number.
          if (free && askedAt - free.at < GRACE / 2) {
            if (id !== free.id) problems.push(`labels s${i} re-created ${askedAt - free.at} ms after release got ${id}, not ${free.id}`);
            else keptOnReuse++;
          }
          mine[k].set(i, id);
        }
        await sleep(Math.floor(Math.random() * 15));
      }
    };
    let samples = 0;
    let releasedSeen = 0;
    let previous = new Set<number>();
    const sampler = async () => {
      while (Date.now() < end) {
        const held = mine.map((m) => new Map(m));
        // One range read: a consistent snapshot of records and index.
        const kvs = (await clients[2].etcd.getAll().prefix('/registry/').exec()).kvs;
        const byId = new Map<number, string>();
        const byLabels = new Map<string, number>();
        for (const kv of kvs) {
          const key = kv.key.toString();
          if (key.startsWith(`/registry/${IDENTITY_RESOURCE}/`)) {
            const o = parseIdentity(JSON.parse(kv.value.toString()));
            if (o instanceof Error) problems.push(`record ${key}: ${o.message}`);
            else byId.set(o.spec.id, o.spec.labelsHash);
          } else if (key.startsWith('/registry/meshctl/identities/by-labels/')) {
            byLabels.set(key.slice('/registry/meshctl/identities/by-labels/'.length), Number(kv.value.toString()));
          }
        }
        for (const [id, h] of byId) if (byLabels.get(h) !== id) problems.push(`record ${id} (${h.slice(0, 8)}) not indexed by its labels`);
        for (const [h, id] of byLabels) if (byId.get(id) !== h) problems.push(`index ${h.slice(0, 8)} -> ${id} has no matching record`);
        held.forEach((m, k) => {
          for (const [i, id] of m) if (byId.get(id) !== hashes[i]) problems.push(`agent ${k} holds ${id} for s${i}, store has ${byId.get(id)?.slice(0, 8) ?? 'nothing'}`);
        });
        for (const id of previous) if (!byId.has(id)) releasedSeen++;
        previous = new Set(byId.keys());
        samples++;
        await sleep(25);
      }
    };
    const mover = async () => {
      while (Date.now() < end) {
        await sleep(1500);
        window = (window + 5) % N;
      }
    };
    await Promise.all([agentLoop(0), agentLoop(1), sampler(), mover()]);
    expect(problems.slice(0, 10)).toEqual([]);
    expect(errors).toEqual([]);
    // The run exercised what it claims to.
    expect(samples).toBeGreaterThan(50);
    expect(allocations).toBeGreaterThan(100);
    expect(keptOnReuse).toBeGreaterThan(10);
    expect(releasedSeen).toBeGreaterThan(5);
    expect(agents.filter((a) => a.isCollector())).toHaveLength(1);
    // One collector for the whole run: its lease (TTL 2 s) was kept alive for 10 s.
    expect(await clients[2].etcd.get(leaderKey).string()).toBe(leaderAtStart);
    console.log(`identity stress: ${allocations} allocations, ${samples} samples, ${keptOnReuse} re-uses kept their id, ${releasedSeen} released by GC`);
  }, 30_000);
});

describe('one-shot identity functions (real etcd)', () => {
  test('20 concurrent allocations over 5 label sets from 3 clients: equal labels share, different never do', async () => {
    const sets = ['a', 'b', 'c', 'd', 'e'].map((app) => podLabels(app));
    const calls = Array.from({ length: 20 }, (_, i) => ({ labels: sets[i % 5], client: clients[i % 3] }));
    const ids = await Promise.all(calls.map((c) => allocateIdentity(c.client, CLUSTER_ID, c.labels)));
    const byLabels = new Map<string, Set<number>>();
    calls.forEach((c, i) => {
      const k = labelsHash(c.labels);
      byLabels.set(k, (byLabels.get(k) ?? new Set()).add(ids[i]));
    });
    expect([...byLabels.values()].map((s) => s.size)).toEqual([1, 1, 1, 1, 1]);
    const distinct = new Set(ids);
    expect(distinct.size).toBe(5);
    for (const id of distinct) {
      expect(identityClusterId(id)).toBe(CLUSTER_ID);
      expect(id & 0xffff).toBeGreaterThanOrEqual(1);
    }

    const list = await listIdentities(clients[1]);
    expect(list.invalid).toBe(0);
    expect([...list.identities.keys()]).toEqual([...distinct].sort((a, b) => a - b));
    for (const [i, c] of calls.entries()) expect(list.identities.get(ids[i])).toEqual(c.labels);

    // The record is a Kubernetes-shaped object other loops read through the ClusterClient.
    const obj = await clients[2].get(IDENTITY_RESOURCE, undefined, String(ids[0]));
    expect(obj).toMatchObject({ kind: 'MeshIdentity', metadata: { name: String(ids[0]) }, spec: { id: ids[0], clusterId: CLUSTER_ID, labels: sets[0] } });
    expect((await clients[2].list(IDENTITY_RESOURCE)).items).toHaveLength(5);
    expect(await lookupIdentity(clients[0], ids[1])).toEqual(sets[1]);
    expect(await lookupIdentityByLabels(clients[0], sets[2])).toBe(ids[2]);
    expect(await lookupIdentityByLabels(clients[0], podLabels('nobody'))).toBeNull();
  });

  test('60 concurrent allocations of distinct label sets get 60 distinct numbers', async () => {
    const sets = Array.from({ length: 60 }, (_, i) => podLabels(`app-${i}`));
    const ids = await Promise.all(sets.map((l, i) => allocateIdentity(clients[i % 3], CLUSTER_ID, l)));
    expect(new Set(ids).size).toBe(60);
    const list = await listIdentities(clients[0]);
    sets.forEach((l, i) => expect(list.identities.get(ids[i])).toEqual(l));
  });

  test('pod labels map to identity labels; label order and pod-template-hash do not matter', async () => {
    const pod = (labels: Labels) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', namespace: 'demo', labels } });
    const a = await allocateIdentity(clients[0], CLUSTER_ID, podIdentityLabels(pod({ app: 'x', tier: 'web', 'pod-template-hash': '111' }), CLUSTER));
    const b = await allocateIdentity(clients[1], CLUSTER_ID, podIdentityLabels(pod({ 'pod-template-hash': '222', tier: 'web', app: 'x' }), CLUSTER));
    expect(b).toBe(a);
    expect(await lookupIdentity(clients[2], a)).toEqual({ app: 'x', [LABEL_CLUSTER]: CLUSTER, [LABEL_NAMESPACE]: 'demo', tier: 'web' });
  });

  test('bad input is refused', async () => {
    await expect(allocateIdentity(clients[0], 0, podLabels('a'))).rejects.toThrow(new ValidationError('clusterId', 'range', 'cluster id 0 out of range 1..255'));
    await expect(allocateIdentity(clients[0], 256, podLabels('a'))).rejects.toBeInstanceOf(ValidationError);
    await expect(allocateIdentity(clients[0], CLUSTER_ID, {})).rejects.toThrow('identity labels must be a non-empty set of string values');
  });

  test('release: unused identities go after the grace period, used ones stay', async () => {
    const used = await allocateIdentity(clients[0], CLUSTER_ID, podLabels('used'));
    const unused = await allocateIdentity(clients[1], CLUSTER_ID, podLabels('unused'));
    const pods = [{ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p1', namespace: 'demo', labels: { app: 'used', 'pod-template-hash': 'x' } } }];
    const inUse = identitiesInUse(pods, CLUSTER, (await listIdentities(clients[0])).records);
    expect([...inUse]).toEqual([used]);

    expect(await releaseUnusedIdentities(clients[2], inUse, 60_000)).toEqual({ released: [], kept: 1, orphans: 0, invalid: 0 });
    const later = () => Date.now() + 120_000;
    expect(await releaseUnusedIdentities(clients[2], inUse, 60_000, { now: later })).toEqual({ released: [unused], kept: 0, orphans: 0, invalid: 0 });
    expect(await lookupIdentity(clients[0], unused)).toBeNull();
    expect(await lookupIdentityByLabels(clients[0], podLabels('unused'))).toBeNull();
    expect(await lookupIdentity(clients[0], used)).toEqual(podLabels('used'));

    // The labels can be allocated again afterwards.
    const again = await allocateIdentity(clients[0], CLUSTER_ID, podLabels('unused'));
    expect(await lookupIdentity(clients[1], again)).toEqual(podLabels('unused'));
  });

  test('release loses to an agent that re-uses the identity between read and delete', async () => {
    const labels = podLabels('racy');
    const id = await allocateIdentity(clients[0], CLUSTER_ID, labels);
    const before = (await listIdentities(clients[0])).records.find((r) => r.id === id)!;
    await new Promise((r) => setTimeout(r, 20));
    // The collector's store: right before it reads the by-labels entry (after it has judged the
    // record unused and old), another agent re-uses the identity.
    let raced = false;
    const real = clients[1].etcd;
    const racing: IdentityStore = {
      etcd: new Proxy(real, {
        get(target, prop) {
          if (prop === 'get') {
            return (key: string) => {
              const builder = target.get(key);
              if (raced || !key.includes('/by-labels/')) return builder;
              raced = true;
              return { exec: async () => (await allocateIdentity(clients[2], CLUSTER_ID, labels, { touchIntervalMs: 0 }), builder.exec()) };
            };
          }
          const v = Reflect.get(target, prop, target) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      }),
    };
    const r = await releaseUnusedIdentities(racing, new Set(), 0, { now: () => Date.now() + 60_000 });
    expect(raced).toBe(true);
    expect(r).toEqual({ released: [], kept: 1, orphans: 0, invalid: 0 });
    const after = (await listIdentities(clients[0])).records.find((x) => x.id === id);
    expect(after?.lastUsed).toBeGreaterThan(before.lastUsed);
    expect(await lookupIdentityByLabels(clients[0], labels)).toBe(id);
  });

  test('corrupt store values are skipped and counted, repaired where safe, never fatal', async () => {
    const good = await allocateIdentity(clients[0], CLUSTER_ID, podLabels('good'));
    const base = CLUSTER_ID << 16;
    const etcd = clients[0].etcd;
    await etcd.put(`/registry/${IDENTITY_RESOURCE}/${base | 100}`).value('{not json');
    await etcd.put(`/registry/${IDENTITY_RESOURCE}/${base | 101}`).value(
      JSON.stringify({ apiVersion: 'meshctl.io/v1', kind: 'MeshIdentity', metadata: { name: String(base | 101) }, spec: { id: base | 101, labels: { app: 'x' }, labelsHash: 'wrong' }, status: { lastUsed: new Date().toISOString() } }),
    );
    await etcd.put(`/registry/${IDENTITY_RESOURCE}/not-a-number`).value('{}');
    // by-labels entries: one garbage, one pointing at a record that does not exist.
    const garbled = podLabels('garbled');
    await etcd.put(`/registry/meshctl/identities/by-labels/${labelsHash(garbled)}`).value('banana');
    await etcd.put(`/registry/meshctl/identities/by-labels/${labelsHash(podLabels('orphan'))}`).value(String(base | 200));

    const list = await listIdentities(clients[1]);
    expect(list.invalid).toBe(3);
    expect(list.problems).toHaveLength(3);
    expect([...list.identities.keys()]).toEqual([good]);
    expect(await lookupIdentity(clients[1], base | 101)).toBeNull();

    // Allocation repairs the garbage entry and never hands out a number a corrupt record holds.
    const fixed = await allocateIdentity(clients[2], CLUSTER_ID, garbled);
    expect([good, base | 100, base | 101]).not.toContain(fixed);
    expect(await lookupIdentityByLabels(clients[0], garbled)).toBe(fixed);

    const r = await releaseUnusedIdentities(clients[0], new Set([good, fixed]), 0);
    expect(r).toEqual({ released: [], kept: 0, orphans: 1, invalid: 3 });
    expect((await etcd.get(`/registry/${IDENTITY_RESOURCE}/${base | 100}`).exec()).kvs).toHaveLength(1);
    expect(await lookupIdentity(clients[0], good)).toEqual(podLabels('good'));
  });
});
