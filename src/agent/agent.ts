/**
 * The node agent: one per node, inside the node's namespace. It talks to its cluster only through
 * a ClusterClient. Loops so far: publish this node (1) and a lease-bound status object (6).
 * The datapath loops (endpoints, cluster view, policy) attach here.
 */
import { readFileSync } from 'node:fs';
import { AGENT_STATUS_TTL_S } from '../defaults.js';
import type { ClusterClient } from '../cluster/client.js';
import { Datapath, nodePinDir } from '../datapath/datapath.js';
import { Observability } from './observability.js';
import { ControllerManager } from './controller-manager.js';
import { LabEndpointSource } from '../cluster/endpoint-source.js';
import type { IdentityAllocator } from '../cluster/identity.js';
import type { KubeObject } from '../cluster/types.js';
import { errorMessage } from '../util/errors.js';
import { sleep } from '../util/exec.js';

export interface AgentOptions {
  readonly cluster: string;
  readonly clusterId: number;
  readonly node: string;
  readonly nodeIp: string;
  /** This node's slice of the cluster's pod CIDR. */
  readonly podCidr: string;
  /** Address pods use as their gateway (on the node's lo). */
  readonly routerIp: string;
  readonly vpc: string;
  readonly routing: string;
  /** The lab prefix (for pinned map paths). */
  readonly lab: string;
  /** How often the status object is refreshed, ms; default 3000. */
  readonly statusIntervalMs?: number;
  /** Program the eBPF datapath; default true. */
  readonly datapath?: boolean;
  /** Unix socket for the flow stream; default none. */
  readonly flowsSocket?: string;
  /** Node number within the cluster (node id in the datapath). */
  readonly nodeIndex?: number;
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

export class Agent {
  private stopped = false;
  private lastError = '';
  private readonly startedAt = new Date().toISOString();
  private loops: Promise<void>[] = [];
  private dp: Datapath | null = null;
  private manager: ControllerManager | null = null;

  private readonly obs: Observability;

  constructor(
    readonly opts: AgentOptions,
    private readonly client: ClusterClient,
    /** Allocates this node's identities (the lab's is on its store; a Kubernetes one would use CRDs). */
    private readonly identities: IdentityAllocator,
    private readonly log: (msg: string) => void = (m) => process.stderr.write(`${new Date().toISOString()} ${m}\n`),
  ) {
    this.obs = new Observability(opts.node, () => this.manager?.stats ?? null);
  }

  start(): void {
    this.loops.push(this.nodeLoop(), this.statusLoop());
    if (this.opts.datapath !== false) this.loops.push(this.datapathLoop());
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.manager?.stop();
    await Promise.allSettled(this.loops);
    await this.identities.stop();
    this.obs.close();
    this.dp?.close();
    await this.client.close();
  }

  /** Open the datapath (retrying until it works) and run the reconcile loops on it. */
  private async datapathLoop(): Promise<void> {
    const o = this.opts;
    await this.obs.listenMetrics().catch((err) => this.noteError(`metrics: ${errorMessage(err)}`));
    if (o.flowsSocket) await this.obs.listenFlows(o.flowsSocket).catch((err) => this.noteError(`flows socket: ${errorMessage(err)}`));
    while (!this.stopped && !this.dp) {
      try {
        this.dp = await Datapath.open({
          pinDir: nodePinDir(o.lab, o.cluster, o.node),
          nodeIp: o.nodeIp,
          nodeId: o.nodeIndex ?? 0,
          clusterId: o.clusterId,
          routing: o.routing as 'tunnel' | 'native' | 'hybrid',
        });
        this.obs.attachDatapath(this.dp);
      } catch (err) {
        this.noteError(`datapath: ${errorMessage(err)}`);
        await this.pause(2000);
      }
    }
    if (this.stopped || !this.dp) return;
    while (!this.stopped) {
      const manager = new ControllerManager({
        self: { cluster: o.cluster, clusterId: o.clusterId, node: o.node, nodeIp: o.nodeIp, podCidr: o.podCidr, vpc: o.vpc, routing: o.routing as 'tunnel' | 'native' | 'hybrid' },
        client: this.client,
        dp: this.dp,
        identities: this.identities,
        endpointSource: new LabEndpointSource(),
        log: this.log,
        onRemoteStatus: () => {
          this.statusKick = true;
        },
      });
      try {
        await this.identities.start();
        await manager.start();
        this.manager = manager;
        this.statusKick = true;
        return;
      } catch (err) {
        manager.stop();
        this.noteError(`controllers: ${errorMessage(err)}`);
        await this.pause(1000);
      }
    }
  }

  nodeObject(): KubeObject {
    const o = this.opts;
    return {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name: o.node,
        labels: { 'kubernetes.io/hostname': o.node, 'meshctl.io/vpc': o.vpc, [`meshctl.io/cluster`]: o.cluster },
      },
      spec: { podCIDR: o.podCidr, podCIDRs: [o.podCidr] },
      status: {
        addresses: [
          { type: 'InternalIP', address: o.nodeIp },
          { type: 'Hostname', address: o.node },
        ],
        nodeInfo: { bootID: bootId() },
        meshctl: { vpc: o.vpc, routerIP: o.routerIp, routing: o.routing, nodeId: o.nodeIndex ?? 0 },
      },
    };
  }

  /** Publish the node object, and again whenever it is missing or differs (e.g. after a store restore). */
  private async nodeLoop(): Promise<void> {
    const want = this.nodeObject();
    while (!this.stopped) {
      try {
        const have = await this.client.get('nodes', undefined, this.opts.node);
        if (!have || JSON.stringify({ ...have, metadata: { ...have.metadata, resourceVersion: undefined } }) !== JSON.stringify({ ...want, metadata: { ...want.metadata, resourceVersion: undefined } })) {
          await this.client.put('nodes', want);
          this.log(`published node ${this.opts.node}`);
        }
      } catch (err) {
        this.noteError(`publish node: ${errorMessage(err)}`);
      }
      await this.pause(5000);
    }
  }

  /** A status object bound to a lease: it disappears by itself when the agent stops refreshing it. */
  private async statusLoop(): Promise<void> {
    while (!this.stopped) {
      this.statusKick = false;
      try {
        await this.client.put(
          'meshnodestatuses',
          {
            apiVersion: 'meshctl.io/v1',
            kind: 'MeshNodeStatus',
            metadata: { name: this.opts.node },
            status: {
              cluster: this.opts.cluster,
              node: this.opts.node,
              pid: process.pid,
              startedAt: this.startedAt,
              updatedAt: new Date().toISOString(),
              lastError: this.manager?.stats.lastError || this.lastError,
              datapath: this.datapathStatus(),
              clustermesh: { peers: this.manager?.stats.clustermesh ?? [] },
            },
          },
          { leaseTtlSeconds: AGENT_STATUS_TTL_S },
        );
      } catch (err) {
        this.noteError(`status: ${errorMessage(err)}`);
      }
      await this.pause(this.opts.statusIntervalMs ?? 3000, true);
    }
  }

  /** The datapath part of the status object: ready, counts, and every per-item error. */
  private datapathStatus(): Record<string, unknown> {
    if (this.opts.datapath === false) return { ready: false, disabled: true };
    const s = this.manager?.stats;
    if (!s) return { ready: false };
    return {
      ready: s.ready,
      endpoints: s.endpoints,
      invalidObjects: s.invalidObjects,
      invalid: s.invalid.slice(0, 20),
      errors: s.errors.slice(0, 50).map((e) => ({ controller: e.controller, key: e.key, message: e.message, attempts: e.attempts, since: e.since })),
      policyProblems: s.policyProblems.slice(0, 50),
      writes: s.writes,
      initialWrites: s.initialWrites,
      removedStaleRoutes: s.removedStaleRoutes,
    };
  }

  private noteError(msg: string): void {
    if (msg !== this.lastError) this.log(msg);
    this.lastError = msg;
  }

  /** Set to publish the status object now rather than at the next interval. */
  private statusKick = false;

  private async pause(ms: number, kickable = false): Promise<void> {
    const until = Date.now() + ms;
    while (!this.stopped && !(kickable && this.statusKick) && Date.now() < until) await sleep(Math.min(100, until - Date.now()));
  }
}
