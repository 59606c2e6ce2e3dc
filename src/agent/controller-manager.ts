/**
 * The agent's datapath side (DESIGN §3): shared informers → one controller per concern → the
 * datapath. It replaces the old level-based reconciler: nothing here lists the cluster or dumps a
 * map after start; every change costs work proportional to what it touches.
 *
 * Start-up order: informers list and watch; their initial objects collect in paused queues; then the
 * queues run in dependency order (policy inputs, nodes, endpoints, ipcache, services), the pending
 * deltas are written, and leftovers of an earlier run (routes, entries nobody wants, MeshEndpoints of
 * pods gone meanwhile) are removed. The node is ready once every key of that initial round has
 * succeeded; errors stay per key until that key succeeds.
 */
import type { ClusterClient } from '../cluster/client.js';
import type { EndpointSource } from '../cluster/endpoint-source.js';
import type { IdentityAllocator } from '../cluster/identity.js';
import { InformerFactory, indexers, type Informer } from '../cluster/informer.js';
import type { KubeObject } from '../cluster/types.js';
import type { Datapath } from '../datapath/datapath.js';
import { MapNames } from '../datapath/codecs.js';
import { flushConntrack, gcConntrack } from '../datapath/conntrack.js';
import { parseNamespace, parseNode, parsePod, parseService } from '../cluster/schemas.js';
import { parseIdentity } from '../cluster/identity.js';
import { POLICY_MAX_ENTRIES_PER_DIRECTION } from '../defaults.js';
import { errorMessage } from '../util/errors.js';
import { compactMeshEndpoint, compactPod } from './compact.js';
import { labelsHash, podIdentityLabels } from './labels.js';
import { CIDR_IDENTITY_BASE, PolicyEngine } from './policy-engine.js';
import { EndpointsController } from './controllers/endpoints.js';
import { IpcacheController } from './controllers/ipcache.js';
import { NodesController } from './controllers/nodes.js';
import { PolicyController } from './controllers/policy.js';
import { ServicesController } from './controllers/services.js';
import { RemoteController } from './controllers/remote.js';
import type { PeerStatus } from '../mesh/peers.js';
import { MESH_PEER_RESOURCE } from '../mesh/peers.js';
import { Index, type Controller, type ControllerDeps, type Informers, type NodeIdentity } from './controllers/shared.js';
import type { KeyError } from './workqueue.js';

export interface ControllerManagerOptions {
  readonly self: NodeIdentity;
  readonly client: ClusterClient;
  readonly dp: Datapath;
  readonly identities: IdentityAllocator;
  readonly endpointSource: EndpointSource;
  readonly log: (msg: string) => void;
  /** How often expired conntrack entries are collected, ms; default 15000. */
  readonly conntrackGcMs?: number;
  /** How often the datapath is compared with the kernel maps (drift repair), ms; default 300000. */
  readonly repairMs?: number;
  /** A remote peer's status changed (the agent publishes its status object soon). */
  readonly onRemoteStatus?: () => void;
}

export interface ControllerError extends KeyError {
  readonly controller: string;
}

export interface ManagerStats {
  ready: boolean;
  endpoints: number;
  /** Kernel map writes by the datapath since start, and by the first (initial) flush. */
  writes: { updates: number; deletes: number };
  initialWrites: { updates: number; deletes: number } | null;
  lastFlushMs: number;
  flushes: number;
  lastError: string;
  invalidObjects: number;
  invalid: Array<{ resource: string; key: string; reason: string }>;
  policyProblems: Array<{ policy: string; message: string }>;
  errors: ControllerError[];
  queueDepth: Record<string, number>;
  reconciled: Record<string, number>;
  removedStaleRoutes: number;
  /** Per remote peer (status.clustermesh.peers). */
  clustermesh: PeerStatus[];
}

export class ControllerManager {
  readonly informers: Informers;
  private readonly factory: InformerFactory;
  private readonly policyEngine: PolicyEngine;
  private readonly nodes: NodesController;
  private readonly endpoints: EndpointsController;
  private readonly ipcache: IpcacheController;
  private readonly services: ServicesController;
  private readonly policy: PolicyController;
  private readonly order: Controller[];
  private flushPending = false;
  private flushEnabled = false;
  private flushing = false;
  private timers: NodeJS.Timeout[] = [];
  private initialKeys: Map<Controller, Set<string>> | null = null;
  private stopped = false;
  readonly stats: ManagerStats = {
    ready: false,
    endpoints: 0,
    writes: { updates: 0, deletes: 0 },
    initialWrites: null,
    lastFlushMs: 0,
    flushes: 0,
    lastError: '',
    invalidObjects: 0,
    invalid: [],
    policyProblems: [],
    errors: [],
    queueDepth: {},
    reconciled: {},
    removedStaleRoutes: 0,
    clustermesh: [],
  };
  readonly remote: RemoteController;

  constructor(private readonly o: ControllerManagerOptions) {
    const cluster = o.self.cluster;
    this.factory = new InformerFactory(o.client, { onError: (err) => this.note(`informer: ${errorMessage(err)}`) });
    const f = this.factory;
    const byIdentityLabels = (p: KubeObject): string[] => [labelsHash(podIdentityLabels(p, cluster))];
    // One validation (the schemas lab apply uses), then only the fields the controllers read.
    const typed =
      (parse: (o: KubeObject) => unknown, compact: (o: KubeObject) => KubeObject = (x) => x) =>
      (o: KubeObject): KubeObject | Error => {
        const v = parse(o);
        return v instanceof Error ? v : compact(v as KubeObject);
      };
    this.informers = {
      pods: f.informer('pods', { parse: typed(parsePod, compactPod), indexers: { [Index.podsByNode]: indexers.byNode, [Index.podsByIp]: indexers.byPodIP, [Index.podsByNamespace]: indexers.byNamespace, [Index.podsByIdentityLabels]: byIdentityLabels } }),
      nodes: f.informer('nodes', { parse: typed(parseNode) }),
      services: f.informer('services', { parse: typed(parseService), indexers: { [Index.servicesByNamespace]: indexers.byNamespace } }),
      namespaces: f.informer('namespaces', { parse: typed(parseNamespace) }),
      networkPolicies: f.informer('networkpolicies'),
      meshNetworkPolicies: f.informer('meshnetworkpolicies'),
      identities: f.informer('meshidentities', { parse: typed(parseIdentity), indexers: { [Index.identitiesByLabels]: (i: KubeObject) => [String((i.spec as { labelsHash?: string })?.labelsHash ?? '')] } }),
      meshEndpoints: f.informer('meshendpoints', { parse: compactMeshEndpoint, indexers: { [Index.meshEndpointsByIp]: (e: KubeObject) => [String((e.spec as { ip?: string })?.ip ?? '')] } }),
    };
    // CIDR identities a previous run put in the ipcache keep their numbers, so a restart rewrites nothing.
    const adopted = new Map<string, number>();
    for (const [prefix, info] of o.dp.realizedIpcache((i) => (i.identity & CIDR_IDENTITY_BASE) !== 0)) adopted.set(prefix, info.identity);
    this.policyEngine = new PolicyEngine({ clusterName: cluster, cidrIdentities: adopted, maxEntriesPerDirection: POLICY_MAX_ENTRIES_PER_DIRECTION });
    const deps: ControllerDeps = {
      self: o.self,
      informers: this.informers,
      dp: o.dp,
      client: o.client,
      identities: o.identities,
      endpointSource: o.endpointSource,
      policy: this.policyEngine,
      log: o.log,
      requestFlush: () => this.requestFlush(),
      flushNow: () => this.flushNow(),
    };
    this.nodes = new NodesController(deps);
    this.endpoints = new EndpointsController(deps, {
      onIdentityChange: (ip) => this.ipcache.requeue(ip),
      flushConntrack: (ip) => {
        try {
          flushConntrack(o.dp.rawMap(MapNames.conntrack), ip);
        } catch (err) {
          o.log(`conntrack flush ${ip}: ${errorMessage(err)}`);
        }
      },
    });
    this.ipcache = new IpcacheController(deps, this.nodes, (ip) => this.endpoints.identityOf(ip));
    this.nodes.onNodeMoved = (n) => this.ipcache.requeueNode(n);
    this.services = new ServicesController(deps);
    this.policy = new PolicyController(deps, (k) => this.endpoints.queue.add(k));
    this.order = [this.policy, this.nodes, this.ipcache, this.endpoints, this.services];
    // Not in `order`: a peer that is down never holds this node's readiness.
    this.remote = new RemoteController({
      self: o.self,
      dp: o.dp,
      meshPeers: f.informer(MESH_PEER_RESOURCE),
      clusterConfigs: f.informer('meshclusterconfigs'),
      nodes: this.informers.nodes,
      log: o.log,
      requestFlush: () => this.requestFlush(),
      onStatus: () => {
        this.stats.clustermesh = this.remote.statuses();
        o.onRemoteStatus?.();
      },
    });
    for (const c of this.order) c.queue.pause();
  }

  /** Sync informers, run the initial round, write it, and clean up what an earlier run left. */
  async start(): Promise<void> {
    await this.nodes.adoptRoutes();
    await this.factory.start();
    this.remote.start();
    this.initialKeys = new Map(this.order.map((c) => [c, new Set(c.initialKeys())]));
    for (const c of this.order) {
      for (const k of this.initialKeys.get(c)!) c.queue.add(k);
      c.queue.resume();
      await c.queue.idle();
      this.policy.drain();
    }
    // Keys re-queued by later queues (local identities → peers → endpoint policy) settle before the
    // first write, so a restarted agent writes its final state once.
    await this.settle();
    this.flushEnabled = true;
    // Everything the pinned maps held that this round did not state again is stale now.
    // Remote peers' entries stay until each peer has resynced.
    this.o.dp.pruneAdopted(this.remote.holdAdopted());
    await this.flushNow();
    await this.endpoints.publishPending();
    this.stats.initialWrites = { ...this.stats.writes };
    this.stats.removedStaleRoutes = await this.nodes.removeLeftoverRoutes((dst) => this.remote.adoptLeftoverRoute(dst));
    await this.removeOrphanEndpoints();
    this.updateReady();
    const gcMs = this.o.conntrackGcMs ?? 15_000;
    this.timers.push(
      setInterval(() => {
        try {
          gcConntrack(this.o.dp.rawMap(MapNames.conntrack));
        } catch (err) {
          this.note(`conntrack gc: ${errorMessage(err)}`);
        }
      }, gcMs),
      setInterval(() => {
        try {
          const r = this.o.dp.repair();
          if (r.updated || r.deleted) this.o.log(`drift repair: ${r.updated} entries rewritten, ${r.deleted} removed`);
        } catch (err) {
          this.note(`drift repair: ${errorMessage(err)}`);
        }
      }, this.o.repairMs ?? 300_000),
      setInterval(() => this.refreshStats(), 1000),
    );
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers.splice(0)) clearInterval(t);
    for (const c of this.order) c.queue.stop();
    this.remote.stop();
    this.factory.stop();
  }

  /** Resolves once no controller has work queued or running (tests and benchmarks). */
  async idle(): Promise<void> {
    await this.settle();
    await this.flushNow();
  }

  private async settle(): Promise<void> {
    for (let round = 0; round < 20; round++) {
      for (const c of this.order) await c.queue.idle();
      this.policy.drain();
      if (this.order.every((c) => c.queue.depth === 0 || c.queue.errors().length === c.queue.depth)) return;
    }
  }

  private requestFlush(): void {
    if (this.flushPending || this.stopped || !this.flushEnabled) return;
    this.flushPending = true;
    setImmediate(() => {
      this.flushPending = false;
      void this.flushNow();
    });
  }

  /** Write the pending deltas now; false while the initial round has not ended (nothing written). */
  private async flushNow(): Promise<boolean> {
    if (!this.flushEnabled || this.stopped) return false;
    if (this.flushing) {
      this.requestFlush();
      return false;
    }
    this.flushing = true;
    const t0 = performance.now();
    try {
      this.policy.drain();
      const r = this.o.dp.flush();
      this.stats.writes = { ...this.o.dp.writes };
      this.stats.flushes++;
      if (r.updated || r.deleted) this.o.log(`datapath: ${r.updated} entries written, ${r.deleted} removed`);
      if (r.errors?.length) this.note(`datapath flush: ${r.errors.length} write(s) failed, first ${r.errors[0].map} ${r.errors[0].op}: ${errorMessage(r.errors[0].error)} (retried at the next flush)`);
      else if (this.stats.lastError.startsWith('datapath flush:')) this.stats.lastError = '';
    } catch (err) {
      this.note(`datapath flush: ${errorMessage(err)}`);
    } finally {
      this.stats.lastFlushMs = performance.now() - t0;
      this.flushing = false;
    }
    this.refreshStats();
    return true;
  }

  /** MeshEndpoints this node published for pods that went while the agent was away. */
  private async removeOrphanEndpoints(): Promise<void> {
    for (const ep of this.informers.meshEndpoints.list()) {
      if ((ep.spec as { node?: string })?.node !== this.o.self.node) continue;
      const key = `${ep.metadata.namespace}/${ep.metadata.name}`;
      const pod = this.informers.pods.get(key);
      if (pod && (pod.spec as { nodeName?: string })?.nodeName === this.o.self.node) continue;
      await this.o.client.delete('meshendpoints', ep.metadata.namespace, ep.metadata.name).catch((err) => this.note(`remove MeshEndpoint ${key}: ${errorMessage(err)}`));
    }
  }

  private updateReady(): void {
    if (this.stats.ready || !this.initialKeys) return;
    for (const [c, keys] of this.initialKeys) {
      for (const e of c.queue.errors()) if (keys.has(e.key)) return;
    }
    if (this.stats.lastError.startsWith('datapath flush:')) return;
    this.stats.ready = true;
    this.initialKeys = new Map();
    this.o.log(`datapath ready: ${this.endpoints.count} endpoint(s)`);
  }

  private refreshStats(): void {
    try {
      this.collectStats();
    } catch (err) {
      this.note(`stats: ${errorMessage(err)}`);
    }
  }

  private collectStats(): void {
    const s = this.stats;
    s.endpoints = this.endpoints.count;
    s.errors = this.order.flatMap((c) => c.queue.errors().map((e) => ({ ...e, controller: c.name })));
    s.queueDepth = Object.fromEntries(this.order.map((c) => [c.name, c.queue.depth]));
    s.reconciled = Object.fromEntries(this.order.map((c) => [c.name, c.queue.reconciled]));
    const invalid: ManagerStats['invalid'] = [];
    for (const [resource, inf] of Object.entries(this.informers) as Array<[string, Informer]>) {
      for (const [key, reason] of inf.invalid()) invalid.push({ resource, key, reason });
    }
    s.invalid = invalid;
    s.invalidObjects = invalid.length;
    s.clustermesh = this.remote.statuses();
    s.policyProblems = this.policyEngine.problems().map((p) => ({ policy: p.policy, message: p.message }));
    if (!s.ready && this.initialKeys && this.initialKeys.size) this.updateReady();
  }

  private note(msg: string): void {
    if (msg !== this.stats.lastError) this.o.log(msg);
    this.stats.lastError = msg;
  }
}
