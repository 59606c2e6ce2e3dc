/**
 * The agent's outputs for people and tools: Prometheus metrics over HTTP and a flow stream on a
 * local unix socket (one JSON object per line) that `meshctl observe` reads.
 */
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import client from 'prom-client';
import { Direction, Path, Verdict, dropReasonName, type FlowEvent } from '../datapath/codecs.js';
import type { RingBuffer } from '../datapath/addon.js';
import type { Datapath } from '../datapath/datapath.js';
import type { ManagerStats } from './controller-manager.js';

export const METRICS_PORT = 9962;

export interface FlowRecord {
  readonly time: string;
  readonly verdict: 'FORWARDED' | 'DROPPED';
  readonly dropReason?: string;
  readonly source: { ip: string; port: number; identity: number };
  readonly destination: { ip: string; port: number; identity: number };
  readonly protocol: number;
  readonly direction: 'ingress' | 'egress' | 'service';
  readonly path: string;
  readonly node: string;
  readonly length: number;
}

const directionName = (d: number): FlowRecord['direction'] => (d === Direction.Ingress ? 'ingress' : d === Direction.Egress ? 'egress' : 'service');
const PATH_NAMES: Record<number, string> = { [Path.None]: 'none', [Path.Local]: 'local', [Path.Tunnel]: 'tunnel', [Path.Native]: 'native', [Path.Stack]: 'stack' };

export function flowRecord(ev: FlowEvent, node: string, bootOffsetMs: number): FlowRecord {
  return {
    time: new Date(bootOffsetMs + Number(ev.tsNs / 1_000_000n)).toISOString(),
    verdict: ev.verdict === Verdict.Dropped ? 'DROPPED' : 'FORWARDED',
    ...(ev.verdict === Verdict.Dropped ? { dropReason: dropReasonName(ev.dropReason) } : {}),
    source: { ip: ev.saddr, port: ev.sport, identity: ev.srcIdentity },
    destination: { ip: ev.daddr, port: ev.dport, identity: ev.dstIdentity },
    protocol: ev.proto,
    direction: directionName(ev.direction),
    path: PATH_NAMES[ev.path] ?? String(ev.path),
    node,
    length: ev.pktLen,
  };
}

/** Wall-clock ms at CLOCK_MONOTONIC zero (flow timestamps are monotonic ns). */
export function monotonicOffsetMs(): number {
  return Date.now() - Number(process.hrtime.bigint() / 1_000_000n);
}

export class Observability {
  private readonly registry = new client.Registry();
  private http: Server | null = null;
  private flowServer: NetServer | null = null;
  private readonly subscribers = new Set<Socket>();
  readonly invalidObjects: client.Gauge;
  private dp: Datapath | null = null;
  private ring: RingBuffer | null = null;

  constructor(
    private readonly node: string,
    private readonly stats: () => ManagerStats | null,
  ) {
    const reg = this.registry;
    const self = this;
    new client.Gauge({
      name: 'meshctl_datapath_packets',
      help: 'Packets seen by the datapath by verdict, drop reason and direction',
      labelNames: ['verdict', 'reason', 'direction'],
      registers: [reg],
      collect() {
        this.reset();
        for (const m of self.dp?.metrics() ?? []) {
          const labels = { verdict: m.reason === 0 ? 'forwarded' : 'dropped', reason: dropReasonName(m.reason), direction: directionName(m.direction) };
          this.set(labels, Number(m.packets));
        }
      },
    });
    new client.Gauge({
      name: 'meshctl_datapath_map_entries',
      help: 'Entries in each map the agent programs',
      labelNames: ['map'],
      registers: [reg],
      collect() {
        this.reset();
        for (const [map, n] of Object.entries(self.dp?.mapFill() ?? {})) this.set({ map }, n);
      },
    });
    new client.Gauge({
      name: 'meshctl_agent_flush_duration_seconds',
      help: 'Duration of the last write of datapath deltas',
      registers: [reg],
      collect() {
        this.set((self.stats()?.lastFlushMs ?? 0) / 1000);
      },
    });
    new client.Gauge({
      name: 'meshctl_agent_ready',
      help: '1 once the initial sync of every controller succeeded',
      registers: [reg],
      collect() {
        this.set(self.stats()?.ready ? 1 : 0);
      },
    });
    new client.Gauge({
      name: 'meshctl_agent_item_errors',
      help: 'Keys whose last reconcile failed, by controller',
      labelNames: ['controller'],
      registers: [reg],
      collect() {
        this.reset();
        const by = new Map<string, number>();
        for (const e of self.stats()?.errors ?? []) by.set(e.controller, (by.get(e.controller) ?? 0) + 1);
        for (const c of Object.keys(self.stats()?.queueDepth ?? {})) this.set({ controller: c }, by.get(c) ?? 0);
      },
    });
    new client.Gauge({
      name: 'meshctl_agent_queue_depth',
      help: 'Keys queued, running or waiting for a retry, by controller',
      labelNames: ['controller'],
      registers: [reg],
      collect() {
        this.reset();
        for (const [c, n] of Object.entries(self.stats()?.queueDepth ?? {})) this.set({ controller: c }, n);
      },
    });
    new client.Gauge({
      name: 'meshctl_agent_policy_problems',
      help: 'Policies (or parts) that cannot be enforced as written; the endpoints they select deny in that direction',
      registers: [reg],
      collect() {
        this.set(self.stats()?.policyProblems.length ?? 0);
      },
    });
    new client.Gauge({
      name: 'meshctl_datapath_map_writes',
      help: 'Kernel map writes by the agent since start',
      labelNames: ['op'],
      registers: [reg],
      collect() {
        const w = self.stats()?.writes;
        this.set({ op: 'update' }, w?.updates ?? 0);
        this.set({ op: 'delete' }, w?.deletes ?? 0);
      },
    });
    new client.Gauge({
      name: 'meshctl_agent_endpoints',
      help: 'Local endpoints programmed',
      registers: [reg],
      collect() {
        this.set(self.stats()?.endpoints ?? 0);
      },
    });
    new client.Gauge({
      name: 'meshctl_remote_invalid_objects',
      help: 'Values read from a remote peer that failed validation (skipped), by peer and reason',
      labelNames: ['peer', 'reason'],
      registers: [reg],
      collect() {
        this.reset();
        for (const p of self.stats()?.clustermesh ?? []) for (const [reason, n] of Object.entries(p.invalid)) this.set({ peer: p.cluster, reason }, n);
      },
    });
    new client.Gauge({
      name: 'meshctl_remote_peer_connected',
      help: '1 while the remote peer is reachable and its heartbeat fresh',
      labelNames: ['peer'],
      registers: [reg],
      collect() {
        this.reset();
        for (const p of self.stats()?.clustermesh ?? []) this.set({ peer: p.cluster }, p.connected ? 1 : 0);
      },
    });
    new client.Gauge({
      name: 'meshctl_remote_entries',
      help: 'Entries held from a remote peer, by kind',
      labelNames: ['peer', 'kind'],
      registers: [reg],
      collect() {
        this.reset();
        for (const p of self.stats()?.clustermesh ?? []) for (const [kind, n] of Object.entries(p.entries)) this.set({ peer: p.cluster, kind }, n);
      },
    });
    this.invalidObjects = new client.Gauge({
      name: 'meshctl_agent_invalid_objects',
      help: 'Store values skipped because they failed validation',
      registers: [reg],
      collect() {
        this.set(self.stats()?.invalidObjects ?? 0);
      },
    });
  }

  attachDatapath(dp: Datapath): void {
    this.dp = dp;
    if (this.subscribers.size > 0) this.startFlows();
  }

  /**
   * Flow events cost a ring-buffer record per packet and a consumer here, so they run only while
   * someone subscribes. Records already in the ring from an earlier subscription are skipped.
   */
  private startFlows(): void {
    if (!this.dp || this.ring) return;
    const offset = monotonicOffsetMs();
    const since = process.hrtime.bigint();
    this.dp.setFlowEvents(true);
    this.ring = this.dp.flows((ev) => {
      if (ev.tsNs < since || this.subscribers.size === 0) return;
      const line = JSON.stringify(flowRecord(ev, this.node, offset)) + '\n';
      for (const s of this.subscribers) s.write(line);
    });
  }

  private stopFlows(): void {
    if (!this.ring) return;
    this.dp?.setFlowEvents(false);
    this.ring.close();
    this.ring = null;
  }

  private unsubscribe(sock: Socket): void {
    this.subscribers.delete(sock);
    if (this.subscribers.size === 0) this.stopFlows();
  }

  /** Serve /metrics on the node's address (inside its namespace). */
  async listenMetrics(port = METRICS_PORT): Promise<void> {
    this.http = createHttpServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      this.registry
        .metrics()
        .then((body) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(body))
        .catch((err: Error) => res.writeHead(500).end(err.message));
    });
    await new Promise<void>((resolve, reject) => this.http!.once('error', reject).listen(port, '0.0.0.0', () => resolve()));
  }

  /** Stream flows to every client of a unix socket. */
  async listenFlows(path: string): Promise<void> {
    rmSync(path, { force: true });
    this.flowServer = createNetServer((sock) => {
      this.subscribers.add(sock);
      this.startFlows();
      sock.on('close', () => this.unsubscribe(sock));
      sock.on('error', () => this.unsubscribe(sock));
    });
    await new Promise<void>((resolve, reject) => this.flowServer!.once('error', reject).listen(path, () => resolve()));
  }

  close(): void {
    this.http?.close();
    this.flowServer?.close();
    for (const s of this.subscribers) s.destroy();
  }
}
