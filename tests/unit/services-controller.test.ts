/**
 * The services controller's cost per pod change: a pod change reads the selectors of its
 * namespace's services and the members of the services it belongs to, never the namespace's other
 * pods. Informers are real; the store under them is an in-memory ClusterClient (list + watch), and
 * the datapath a recorder of service writes (the controller's only datapath calls).
 */
import { describe, expect, test } from '@jest/globals';
import type { ClusterClient, ListResult, Watch, WatchHandlers } from '../../src/cluster/client.js';
import { Informer, indexers } from '../../src/cluster/informer.js';
import type { KubeObject } from '../../src/cluster/types.js';
import { compactMeshEndpoint, compactPod } from '../../src/agent/compact.js';
import { ServicesController } from '../../src/agent/controllers/services.js';
import { Index, type ControllerDeps } from '../../src/agent/controllers/shared.js';
import type { ServiceBackend } from '../../src/datapath/datapath.js';
import type { ServiceKey } from '../../src/datapath/codecs.js';

/** Objects per resource, with a revision counter; watchers get every later put and delete. */
class MemoryClient {
  private rev = 1;
  private readonly objects = new Map<string, Map<string, KubeObject>>();
  private readonly watchers = new Map<string, Set<WatchHandlers>>();

  async list(resource: string): Promise<ListResult> {
    return { items: [...(this.objects.get(resource)?.values() ?? [])], revision: String(this.rev), invalid: 0 };
  }

  watch(resource: string, _from: string, h: WatchHandlers): Watch {
    let set = this.watchers.get(resource);
    if (!set) this.watchers.set(resource, (set = new Set()));
    set.add(h);
    return { close: () => set!.delete(h) };
  }

  put(resource: string, obj: KubeObject): void {
    const revision = String(++this.rev);
    const o = { ...obj, metadata: { ...obj.metadata, resourceVersion: revision } };
    const m = this.objects.get(resource) ?? new Map<string, KubeObject>();
    this.objects.set(resource, m);
    const key = `${o.metadata.namespace}/${o.metadata.name}`;
    const type = m.has(key) ? 'MODIFIED' : 'ADDED';
    m.set(key, o);
    for (const h of this.watchers.get(resource) ?? []) h.onEvent({ type, object: o, revision });
  }

  delete(resource: string, ns: string, name: string): void {
    const revision = String(++this.rev);
    const m = this.objects.get(resource);
    const o = m?.get(`${ns}/${name}`);
    if (!o) return;
    m!.delete(`${ns}/${name}`);
    for (const h of this.watchers.get(resource) ?? []) h.onEvent({ type: 'DELETED', object: o, revision });
  }
}

const pod = (name: string, app: string, ip: string): KubeObject => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: 'big', labels: { app } },
  spec: { nodeName: 'n1', containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080 }] }] },
  status: { phase: 'Running', podIP: ip },
});
const endpoint = (name: string, ip: string): KubeObject => ({ apiVersion: 'meshctl.io/v1', kind: 'MeshEndpoint', metadata: { name, namespace: 'big' }, spec: { ip, identity: 1000, node: 'n1' } });
const service = (name: string, app: string, vip: string): KubeObject => ({
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name, namespace: 'big' },
  spec: { clusterIP: vip, selector: { app }, ports: [{ port: 80, targetPort: 'http' }] },
});
const ipOf = (i: number): string => `10.1.${i >> 8}.${i & 0xff}`;

async function setup(pods: number, members: number) {
  const store = new MemoryClient();
  const client = store as unknown as ClusterClient;
  for (let i = 0; i < pods; i++) {
    store.put('pods', pod(`p${i}`, i < members ? 'a' : 'other', ipOf(i)));
    store.put('meshendpoints', endpoint(`p${i}`, ipOf(i)));
  }
  store.put('services', service('a', 'a', '10.96.0.1'));
  store.put('services', service('b', 'b', '10.96.0.2'));
  const informers = {
    pods: new Informer(client, 'pods', { parse: (o) => compactPod(o), indexers: { [Index.podsByNamespace]: indexers.byNamespace } }),
    services: new Informer(client, 'services', { indexers: { [Index.servicesByNamespace]: indexers.byNamespace } }),
    meshEndpoints: new Informer(client, 'meshendpoints', { parse: compactMeshEndpoint }),
  };
  const written = new Map<string, ServiceBackend[]>();
  let upserts = 0;
  const dp = {
    upsertService: (k: ServiceKey, b: readonly ServiceBackend[]) => {
      upserts++;
      written.set(k.vip, [...b].sort((x, y) => x.ip.localeCompare(y.ip)));
    },
    deleteService: (k: ServiceKey) => written.delete(k.vip),
  };
  const c = new ServicesController({ informers, dp, requestFlush: () => undefined } as unknown as ControllerDeps);
  await Promise.all(Object.values(informers).map((i) => i.start()));
  for (const k of c.initialKeys()) c.queue.add(k);
  await c.queue.idle();
  return { store, c, written, upserts: () => upserts, stop: () => Object.values(informers).forEach((i) => i.stop()) };
}

describe('services controller', () => {
  test('one pod change examines the services it is in, not the pods of its namespace', async () => {
    const POD_COUNT = 2000;
    const MEMBERS = 5;
    const s = await setup(POD_COUNT, MEMBERS);
    try {
      expect(s.written.get('10.96.0.1')?.map((b) => b.ip)).toEqual([0, 1, 2, 3, 4].map(ipOf).sort());
      expect(s.written.get('10.96.0.2')).toEqual([]);

      const cases: Array<{ name: string; change: () => void; backends: number; reconciled: boolean }> = [
        { name: 'a new member pod', change: () => (s.store.put('pods', pod('new', 'a', ipOf(3000))), s.store.put('meshendpoints', endpoint('new', ipOf(3000)))), backends: MEMBERS + 1, reconciled: true },
        { name: 'a pod outside every selector', change: () => s.store.put('pods', pod('p100', 'other', ipOf(3001))), backends: MEMBERS + 1, reconciled: false },
        { name: 'a member pod leaves the selector', change: () => s.store.put('pods', pod('p0', 'other', ipOf(0))), backends: MEMBERS, reconciled: true },
        { name: 'a member pod is deleted', change: () => s.store.delete('pods', 'big', 'p1'), backends: MEMBERS - 1, reconciled: true },
        { name: 'a pod joins the selector', change: () => s.store.put('pods', pod('p200', 'a', ipOf(200))), backends: MEMBERS, reconciled: true },
      ];
      for (const k of cases) {
        const examined0 = s.c.podsExamined;
        const upserts0 = s.upserts();
        k.change();
        await s.c.queue.idle();
        const examined = s.c.podsExamined - examined0;
        expect({ name: k.name, backends: s.written.get('10.96.0.1')?.length, reconciled: s.upserts() > upserts0 }).toEqual({ name: k.name, backends: k.backends, reconciled: k.reconciled });
        // The changed pod (per event) and the members of its service: a few, never ~POD_COUNT.
        expect({ name: k.name, small: examined <= 2 * (MEMBERS + 3) }).toEqual({ name: k.name, small: true });
      }
      expect(s.written.get('10.96.0.1')?.map((b) => b.ip)).toEqual([2, 3, 4, 200, 3000].map(ipOf).sort());
    } finally {
      s.stop();
    }
  });

  test('a new or changed selector reads the namespace once, then only its members', async () => {
    const s = await setup(300, 3);
    try {
      const examined0 = s.c.podsExamined;
      s.store.put('services', service('b', 'other', '10.96.0.2'));
      await s.c.queue.idle();
      expect(s.written.get('10.96.0.2')?.length).toBe(297);
      expect(s.c.podsExamined - examined0).toBe(300 + 297);
      s.store.delete('services', 'big', 'b');
      await s.c.queue.idle();
      expect(s.written.has('10.96.0.2')).toBe(false);
    } finally {
      s.stop();
    }
  });
});
