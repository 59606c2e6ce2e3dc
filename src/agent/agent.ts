/**
 * The node agent: one per node, inside the node's namespace. It talks to its cluster only through
 * a ClusterClient. Loops so far: publish this node (1) and a lease-bound status object (6).
 * The datapath loops (endpoints, cluster view, policy) attach here.
 */
import { readFileSync } from 'node:fs';
import { AGENT_STATUS_TTL_S } from '../defaults.js';
import type { ClusterClient } from '../cluster/client.js';
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

  constructor(
    readonly opts: AgentOptions,
    private readonly client: ClusterClient,
    private readonly log: (msg: string) => void = (m) => process.stderr.write(`${new Date().toISOString()} ${m}\n`),
  ) {}

  start(): void {
    this.loops.push(this.nodeLoop(), this.statusLoop());
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.allSettled(this.loops);
    await this.client.close();
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
        meshctl: { vpc: o.vpc, routerIP: o.routerIp, routing: o.routing },
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
              lastError: this.lastError,
            },
          },
          { leaseTtlSeconds: AGENT_STATUS_TTL_S },
        );
      } catch (err) {
        this.noteError(`status: ${errorMessage(err)}`);
      }
      await this.pause(this.opts.statusIntervalMs ?? 3000);
    }
  }

  private noteError(msg: string): void {
    if (msg !== this.lastError) this.log(msg);
    this.lastError = msg;
  }

  private async pause(ms: number): Promise<void> {
    const until = Date.now() + ms;
    while (!this.stopped && Date.now() < until) await sleep(Math.min(200, until - Date.now()));
  }
}
