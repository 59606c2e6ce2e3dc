/**
 * The remote client an agent runs per peer (DESIGN §5): one mTLS etcd connection to the peer's
 * clustermesh-apiserver, reading only that peer's `mesh/v1/…/<peer>` keys. A paged list at one
 * revision, then watches from the next revision; a lost watch, a failed list or a compacted
 * revision means a new list. Every value is validated (remote-validate.ts) before it reaches the
 * cache; a bad one is skipped and counted.
 *
 * The cache is compact (per remote address: one Map entry number → number, with node names
 * interned), and changes go to a {@link PeerSink} as deltas: one changed key, one call. Nothing is
 * handed to the sink until the peer's cluster config is valid, its sync markers for nodes,
 * identities and ip were seen and the initial list is in the cache. A re-list marks what was
 * learned stale (a generation), hands over what changed, and removes only what the list no longer
 * holds once it is complete, so a still-present entry never goes away during a resync.
 */
import { connect as tlsConnect } from 'node:tls';
import { ExponentialBackoff, noop, type IBackoff } from 'cockatiel';
import { Etcd3, EtcdAuthenticationFailedError, EtcdInvalidAuthTokenError, EtcdPermissionDeniedError, GRPCUnauthenticatedError, type IKeyValue, type Watcher } from 'etcd3';
import { formatIp, parseIp } from '../util/cidr.js';
import { errorMessage } from '../util/errors.js';
import type { MeshPeerSpec, PeerStatus } from './peers.js';
import { HEARTBEAT_TIMEOUT_MS, SYNC_KINDS, meshKeys, type ClusterConfig, type SyncKind } from './schema.js';
import {
  classifyKey,
  configPodCidrs,
  isInvalid,
  validateClusterConfig,
  validateHeartbeat,
  validateIdentity,
  validateIp,
  validateNode,
  validateSyncMarker,
  type Invalid,
  type LocalView,
  type PeerIdentity,
} from './remote-validate.js';

/** A peer's node as the sink gets it. */
export interface RemoteNodeView {
  readonly name: string;
  readonly ip: string;
  readonly nodeId: number;
  readonly vpc: string;
  readonly podCidrs: readonly string[];
}

/**
 * Where a client's deltas go (the agent: the datapath layer `remote:<peer>`). Calls are
 * synchronous and must be cheap; `batch` follows every group of changes (a list page, a watch
 * response).
 */
export interface PeerSink {
  /** A node appeared or changed (node), or went (null). */
  node(name: string, node: RemoteNodeView | null): void;
  /** An address is wanted with this identity on this node, or (null) no longer. */
  ip(ip: string, entry: { identity: number; node: RemoteNodeView } | null): void;
  /** A remote identity and its labels, or (null) gone. */
  identity(id: number, labels: Readonly<Record<string, string>> | null): void;
  batch(): void;
  /** The initial list (or a resync) has been handed over completely. */
  synced(first: boolean): void;
  /** Something in {@link RemoteClient.status} changed. */
  status(): void;
}

export type ErrorKind = PeerStatus['lastErrorKind'];

export interface RemoteClientOptions {
  readonly peer: MeshPeerSpec;
  readonly local: LocalView;
  readonly sink: PeerSink;
  readonly log?: (msg: string) => void;
  /** Without a heartbeat for this long the peer is disconnected; default HEARTBEAT_TIMEOUT_MS. */
  readonly heartbeatTimeoutMs?: number;
  /** Longest delay between connection attempts, ms; default 2000. */
  readonly retryMaxMs?: number;
}

const PAGE = 1000;
const MAX_SAMPLES = 10;
/** Invalid keys remembered one by one (beyond it only counted). */
const MAX_INVALID_KEYS = 10_000;

// An address entry packs identity (24 bits), node index (16 bits) and list generation (8 bits).
const pack = (identity: number, node: number, gen: number): number => (identity * 0x10000 + node) * 0x100 + gen;
const genOf = (v: number): number => v % 0x100;
const nodeOf = (v: number): number => Math.floor(v / 0x100) % 0x10000;
const identityOf = (v: number): number => Math.floor(v / 0x1000000);

interface NodeRec {
  view: RemoteNodeView;
  gen: number;
}

/** Classify by error type: etcd auth errors, TLS errors (node's codes), network errors. */
export function errorKind(err: unknown): ErrorKind {
  if (err instanceof EtcdPermissionDeniedError || err instanceof EtcdAuthenticationFailedError || err instanceof EtcdInvalidAuthTokenError || err instanceof GRPCUnauthenticatedError) return 'auth';
  const code = (err as { code?: unknown })?.code;
  if (typeof code === 'string') {
    if (/^(ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|ECONNRESET|EPIPE|ENOTFOUND|EAI_AGAIN)$/.test(code)) return 'unreachable';
    if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/.test(code)) return 'tls';
  }
  return 'other';
}

/**
 * Why a peer's address cannot be used, from a TLS handshake of our own with the same
 * credentials (gRPC reports every transport failure as UNAVAILABLE, whatever its cause).
 */
export function probeTls(url: string, peer: MeshPeerSpec, timeoutMs = 2000): Promise<Error | null> {
  const u = new URL(url);
  return new Promise((resolve) => {
    let done = false;
    const finish = (e: Error | null): void => {
      if (done) return;
      done = true;
      clearTimeout(t);
      sock.destroy();
      resolve(e);
    };
    const sock = tlsConnect({ host: u.hostname, port: Number(u.port), ca: peer.caBundle, cert: peer.cert, key: peer.key, servername: peer.serverName ?? (parseIp(u.hostname) === null ? u.hostname : undefined), ALPNProtocols: ['h2'] });
    // TLS 1.3: a server that refuses our certificate says so just after our side's handshake.
    sock.once('secureConnect', () => setTimeout(() => finish(null), 300));
    sock.once('error', (e) => finish(e));
    const t = setTimeout(() => finish(Object.assign(new Error(`${url}: no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })), timeoutMs);
  });
}

export class RemoteClient {
  readonly peer: MeshPeerSpec;
  private etcd: Etcd3 | null = null;
  private watchers: Watcher[] = [];
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  private hbTimer: NodeJS.Timeout | null = null;
  private delay = 100;
  private epoch = 0;

  private config: ClusterConfig | null = null;
  private ident: PeerIdentity;
  private markers = new Set<SyncKind>();
  /** Entries are handed to the sink (config valid, markers seen, initial list done). */
  private applying = false;
  private everSynced = false;
  private gen = 0;
  private listing = false;
  /** A re-list found the export incomplete (no markers): what is gone is removed by the next complete one. */
  private sweepPending = false;

  private readonly nodes = new Map<string, NodeRec>();
  private readonly nodeNames: string[] = [];
  private readonly nodeIndex = new Map<string, number>();
  /** Address (number) → packed identity, node index, generation. */
  private readonly ips = new Map<number, number>();
  /** Node index → its addresses (to re-point them when the node changes or goes). */
  private readonly ipsByNode = new Map<number, Set<number>>();
  private readonly identities = new Map<number, { labels: Readonly<Record<string, string>>; gen: number }>();

  private readonly invalidKeys = new Map<string, string>();
  private invalidOverflow = 0;

  private transportOk = false;
  private lastBeat = 0;
  private beatStale = false;
  private lastError = '';
  private lastErrorKind: ErrorKind = '';
  private readySince = '';
  private resyncs = 0;
  private lists = 0;

  constructor(private readonly o: RemoteClientOptions) {
    this.peer = o.peer;
    this.ident = { name: o.peer.cluster, clusterId: o.peer.clusterId, podCidrs: [] };
  }

  /** Connect and keep the cache current until stop(). */
  start(): void {
    const p = this.peer;
    this.etcd = new Etcd3({
      hosts: [...p.endpoints],
      credentials: { rootCertificate: Buffer.from(p.caBundle), certChain: Buffer.from(p.cert), privateKey: Buffer.from(p.key) },
      // Callers (this client) retry: no circuit breaker holding a restarted peer off for seconds.
      faultHandling: { host: () => noop, global: noop, watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }) as unknown as IBackoff<unknown> },
      grpcOptions: {
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
        'grpc.keepalive_time_ms': 5000,
        'grpc.keepalive_timeout_ms': 3000,
        ...(p.serverName ? { 'grpc.ssl_target_name_override': p.serverName, 'grpc.default_authority': p.serverName } : {}),
      },
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 5000 }),
    });
    this.hbTimer = setInterval(() => this.checkHeartbeat(), 250);
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    this.epoch++;
    if (this.timer) clearTimeout(this.timer);
    if (this.hbTimer) clearInterval(this.hbTimer);
    this.closeWatchers();
    this.etcd?.close();
    this.etcd = null;
  }

  /** Drop the connection and list again (tests; a peer whose config changed). */
  resync(): void {
    this.closeWatchers();
    this.schedule(0);
  }

  /** Entries held now. */
  counts(): { nodes: number; identities: number; ips: number; pending: number } {
    let pending = 0;
    for (const [idx, set] of this.ipsByNode) if (!this.nodes.has(this.nodeNames[idx])) pending += set.size;
    return { nodes: this.nodes.size, identities: this.identities.size, ips: this.ips.size - pending, pending };
  }

  /** Whether the cache holds this pod address (applied or pending). */
  holdsIp(ip: string): boolean {
    const n = parseIp(ip);
    return n !== null && this.ips.has(n);
  }

  /** Whether a node of the peer has this address. */
  holdsNodeIp(ip: string): boolean {
    for (const n of this.nodes.values()) if (n.view.ip === ip) return true;
    return false;
  }

  /** Labels of a remote identity this peer holds. */
  identityLabels(id: number): Readonly<Record<string, string>> | undefined {
    return this.identities.get(id)?.labels;
  }

  /** Every remote identity this peer holds (for the policy engine). */
  identityIds(): IterableIterator<number> {
    return this.identities.keys();
  }

  /** The peer's accepted cluster config. */
  clusterConfig(): ClusterConfig | null {
    return this.config;
  }

  /** Invalid values now, by reason. */
  invalidByReason(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const r of this.invalidKeys.values()) out[r] = (out[r] ?? 0) + 1;
    if (this.invalidOverflow) out.overflow = this.invalidOverflow;
    return out;
  }

  get synced(): boolean {
    return this.applying;
  }

  status(): PeerStatus {
    const c = this.counts();
    const connected = this.transportOk && !this.beatStale && this.lastBeat > 0;
    const synced = { nodes: this.applying, identities: this.applying, ip: this.applying };
    const samples: Array<{ key: string; reason: string }> = [];
    for (const [key, reason] of this.invalidKeys) {
      if (samples.length >= MAX_SAMPLES) break;
      samples.push({ key, reason });
    }
    let lastError = this.lastError;
    let kind = this.lastErrorKind;
    if (this.transportOk && this.beatStale && !lastError) {
      lastError = `no heartbeat from ${this.peer.cluster} for ${Math.round((Date.now() - this.lastBeat) / 1000)}s`;
      kind = 'heartbeat';
    }
    return {
      cluster: this.peer.cluster,
      configured: true,
      connected,
      synced,
      ready: connected && this.config !== null && this.applying,
      entries: { nodes: c.nodes, identities: c.identities, ips: c.ips },
      invalid: this.invalidByReason(),
      invalidSamples: samples,
      lastError,
      lastErrorKind: kind,
      lastHeartbeat: this.lastBeat ? new Date(this.lastBeat).toISOString() : '',
      readySince: this.readySince,
      resyncs: this.resyncs,
    };
  }

  // --- connection -----------------------------------------------------------------------------

  private schedule(ms: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.connect();
    }, ms);
  }

  private async connect(): Promise<void> {
    if (this.stopped || this.listing) return;
    const epoch = ++this.epoch;
    this.listing = true;
    try {
      const rev = await this.list(epoch);
      if (epoch !== this.epoch) return;
      this.watch(epoch, rev);
      this.transportOk = true;
      this.delay = 100;
      if (this.lastErrorKind !== 'config') this.setError('', '');
      this.o.sink.status();
    } catch (err) {
      if (epoch !== this.epoch || this.stopped) return;
      await this.failed(err);
    } finally {
      this.listing = false;
    }
  }

  private async failed(err: unknown): Promise<void> {
    this.closeWatchers();
    const wasOk = this.transportOk;
    this.transportOk = false;
    let kind = errorKind(err);
    let msg = errorMessage(err);
    if (kind === 'other') {
      const probe = await probeTls(this.peer.endpoints[0], this.peer);
      if (probe) {
        kind = errorKind(probe);
        msg = `${this.peer.endpoints[0]}: ${errorMessage(probe)}`;
      }
      if (kind === 'other' && /UNAVAILABLE|No connection established|Deadline/.test(msg)) kind = 'unreachable';
    }
    this.setError(msg, kind);
    if (wasOk) this.o.log?.(`remote ${this.peer.cluster}: ${msg}`);
    this.o.sink.status();
    this.schedule(this.delay);
    this.delay = Math.min(this.delay * 2, this.o.retryMaxMs ?? 2000);
  }

  private setError(msg: string, kind: ErrorKind): void {
    this.lastError = msg;
    this.lastErrorKind = kind;
  }

  private closeWatchers(): void {
    for (const w of this.watchers.splice(0)) {
      w.removeAllListeners();
      w.on('error', () => undefined);
      void w.cancel().catch(() => undefined);
    }
  }

  private checkHeartbeat(): void {
    const stale = this.lastBeat > 0 && Date.now() - this.lastBeat > (this.o.heartbeatTimeoutMs ?? HEARTBEAT_TIMEOUT_MS);
    if (stale !== this.beatStale) {
      this.beatStale = stale;
      if (stale) this.o.log?.(`remote ${this.peer.cluster}: heartbeat stale`);
      this.o.sink.status();
    }
  }

  // --- list and watch -------------------------------------------------------------------------

  /** Reads every key of the peer at one revision, page by page into the cache; returns the revision. */
  private async list(epoch: number): Promise<string> {
    const etcd = this.etcd!;
    const p = this.peer.cluster;
    this.gen = (this.gen + 1) % 0x100;
    const gen = this.gen;
    let revision: string | undefined;
    const range = async (key: string, prefix: boolean): Promise<void> => {
      const start = Buffer.from(key);
      let end: Buffer | undefined;
      if (prefix) {
        end = Buffer.from(start);
        end[end.length - 1]++;
      }
      let from = start;
      for (;;) {
        const r = await etcd.kv.range({ key: from, ...(end ? { range_end: end } : {}), limit: PAGE, revision: revision ?? 0 });
        if (epoch !== this.epoch) throw new Error('superseded');
        revision ??= r.header.revision;
        for (const kv of r.kvs) this.put(kv.key.toString(), kv.value, true);
        if (this.applying) this.o.sink.batch();
        if (!prefix || !r.more || r.kvs.length === 0) return;
        from = Buffer.concat([r.kvs[r.kvs.length - 1].key, Buffer.from([0])]);
      }
    };
    const hadConfig = this.config;
    this.markers.clear();
    // The config first: nothing else validates without the peer's pod CIDRs.
    await range(meshKeys.clusterConfig(p), false);
    if (!this.config) {
      if (hadConfig) this.resetAll();
      if (!this.lastError) this.setError(`no cluster config at ${meshKeys.clusterConfig(p)}`, 'config');
    }
    await range(`mesh/v1/synced/${p}/`, true);
    await range(meshKeys.heartbeat(p), false);
    if (this.config) {
      await range(meshKeys.nodes(p), true);
      await range(meshKeys.identities(p), true);
      await range(meshKeys.ips(p), true);
    }
    this.lists++;
    const complete = this.config !== null && SYNC_KINDS.every((k) => this.markers.has(k));
    // Only a complete export says what is really gone.
    if (complete) this.sweep(gen);
    this.sweepPending = !complete && this.applying;
    if (complete && !this.applying) {
      this.applying = true;
      this.applyAll();
    }
    if (complete) {
      this.readySince ||= new Date().toISOString();
      if (this.everSynced) this.resyncs++;
      this.o.sink.batch();
      this.o.sink.synced(!this.everSynced);
      this.everSynced = true;
    }
    return revision ?? '0';
  }

  private watch(epoch: number, revision: string): void {
    const etcd = this.etcd!;
    const p = this.peer.cluster;
    const next = String(BigInt(revision) + 1n);
    const lost = (err: Error): void => {
      if (epoch !== this.epoch || this.stopped) return;
      this.epoch++;
      void this.failed(err);
    };
    const add = (b: ReturnType<Etcd3['watch']>): void => {
      const w = b.startRevision(next).watcher();
      w.on('put', (kv: IKeyValue) => this.put(kv.key.toString(), kv.value, false));
      w.on('delete', (kv: IKeyValue) => this.del(kv.key.toString()));
      w.on('data', () => {
        if (this.applying) this.o.sink.batch();
      });
      // A lost stream, a cancel (compaction included): list again.
      w.on('disconnected', lost);
      w.on('error', lost);
      this.watchers.push(w);
    };
    add(etcd.watch().key(meshKeys.clusterConfig(p)));
    add(etcd.watch().key(meshKeys.heartbeat(p)));
    add(etcd.watch().prefix(`mesh/v1/synced/${p}/`));
    add(etcd.watch().prefix(meshKeys.nodes(p)));
    add(etcd.watch().prefix(meshKeys.identities(p)));
    add(etcd.watch().prefix(meshKeys.ips(p)));
  }

  // --- cache ----------------------------------------------------------------------------------

  private noteInvalid(key: string, v: Invalid): void {
    const had = this.invalidKeys.get(key);
    if (had === v.invalid) return;
    if (had === undefined && this.invalidKeys.size >= MAX_INVALID_KEYS) {
      this.invalidOverflow++;
      return;
    }
    this.invalidKeys.set(key, v.invalid);
    this.o.sink.status();
  }

  private clearInvalid(key: string): void {
    if (this.invalidKeys.delete(key)) this.o.sink.status();
  }

  private put(key: string, value: Buffer, listing: boolean): void {
    const k = classifyKey(this.peer.cluster, key);
    if (isInvalid(k)) return this.noteInvalid(key, k);
    switch (k.kind) {
      case 'cluster-config': {
        const v = validateClusterConfig({ name: this.peer.cluster, clusterId: this.peer.clusterId }, value, this.o.local);
        if (isInvalid(v)) {
          this.noteInvalid(key, v);
          this.setError(`cluster config: ${v.detail}`, 'config');
          this.config = null;
          this.ident = { ...this.ident, podCidrs: [] };
          if (!listing) this.resetAll();
          this.o.sink.status();
          return;
        }
        this.clearInvalid(key);
        const changed = JSON.stringify(v) !== JSON.stringify(this.config);
        this.config = v;
        this.ident = { name: this.peer.cluster, clusterId: this.peer.clusterId, podCidrs: configPodCidrs(v) };
        if (this.lastErrorKind === 'config') this.setError('', '');
        // A changed config changes what is valid: read everything again.
        if (changed && !listing) this.resync();
        return;
      }
      case 'heartbeat': {
        const v = validateHeartbeat({ name: this.peer.cluster }, value);
        if (isInvalid(v)) return this.noteInvalid(key, v);
        this.clearInvalid(key);
        this.lastBeat = Date.now();
        if (this.beatStale) this.checkHeartbeat();
        return;
      }
      case 'synced': {
        const v = validateSyncMarker({ name: this.peer.cluster }, k.rest, value);
        if (isInvalid(v)) return this.noteInvalid(key, v);
        this.clearInvalid(key);
        if (v.kind === 'services') return;
        this.markers.add(v.kind);
        // Markers that complete after the list: list again to apply (and sweep) a complete export.
        if (!listing && (!this.applying || this.sweepPending) && this.config && SYNC_KINDS.every((x) => this.markers.has(x))) this.resync();
        return;
      }
      case 'nodes':
        if (!this.config) return;
        return this.putNode(key, k.rest, value);
      case 'identities':
        if (!this.config) return;
        return this.putIdentity(key, k.rest, value);
      case 'ip':
        if (!this.config) return;
        return this.putIp(key, k.rest, value);
    }
  }

  private del(key: string): void {
    const k = classifyKey(this.peer.cluster, key);
    this.clearInvalid(key);
    if (isInvalid(k)) return;
    switch (k.kind) {
      case 'cluster-config':
        this.config = null;
        this.setError(`cluster config ${key} was deleted`, 'config');
        this.resetAll();
        this.o.sink.status();
        return;
      case 'synced':
        return;
      case 'heartbeat':
        return;
      case 'nodes':
        return this.removeNode(k.rest);
      case 'identities':
        return this.removeIdentity(Number(k.rest));
      case 'ip': {
        const n = parseIp(k.rest);
        if (n !== null) this.removeIp(n);
        return;
      }
    }
  }

  private internNode(name: string): number {
    let i = this.nodeIndex.get(name);
    if (i === undefined) {
      if (this.nodeNames.length >= 0x10000) return -1;
      i = this.nodeNames.length;
      this.nodeNames.push(name);
      this.nodeIndex.set(name, i);
    }
    return i;
  }

  private putNode(key: string, name: string, value: Buffer): void {
    const v = validateNode(this.ident, name, value, this.o.local);
    if (isInvalid(v)) {
      this.noteInvalid(key, v);
      // A node that was valid and is no more goes (its addresses wait for a valid one).
      if (this.nodes.has(name)) this.removeNode(name);
      return;
    }
    this.clearInvalid(key);
    const view: RemoteNodeView = { name, ip: v.ip, nodeId: v.nodeId, vpc: v.vpc, podCidrs: v.podCidrs };
    const had = this.nodes.get(name);
    const idx = this.internNode(name);
    if (idx < 0) return this.noteInvalid(key, { invalid: 'schema', detail: 'more than 65536 node names' });
    this.nodes.set(name, { view, gen: this.gen });
    if (had && JSON.stringify(had.view) === JSON.stringify(view)) return;
    if (!this.applying) return;
    this.o.sink.node(name, view);
    // Its addresses (pending until now, or pointing at its old address) follow.
    for (const ip of this.ipsByNode.get(idx) ?? []) this.emitIp(ip, this.ips.get(ip)!);
  }

  private removeNode(name: string): void {
    const had = this.nodes.get(name);
    if (!had) return;
    this.nodes.delete(name);
    if (!this.applying) return;
    const idx = this.nodeIndex.get(name)!;
    for (const ip of this.ipsByNode.get(idx) ?? []) this.o.sink.ip(formatIp(ip), null);
    this.o.sink.node(name, null);
  }

  private putIdentity(key: string, idText: string, value: Buffer): void {
    const v = validateIdentity(this.ident, idText, value);
    if (isInvalid(v)) {
      this.noteInvalid(key, v);
      this.removeIdentity(Number(idText));
      return;
    }
    this.clearInvalid(key);
    const had = this.identities.get(v.id);
    this.identities.set(v.id, { labels: v.labels, gen: this.gen });
    if (this.applying && (!had || JSON.stringify(had.labels) !== JSON.stringify(v.labels))) this.o.sink.identity(v.id, v.labels);
  }

  private removeIdentity(id: number): void {
    if (!this.identities.delete(id)) return;
    if (this.applying) this.o.sink.identity(id, null);
  }

  private putIp(key: string, ipText: string, value: Buffer): void {
    const v = validateIp(this.ident, ipText, value, this.o.local);
    const n = parseIp(ipText);
    if (isInvalid(v)) {
      this.noteInvalid(key, v);
      if (n !== null) this.removeIp(n);
      return;
    }
    this.clearInvalid(key);
    const idx = this.internNode(v.node);
    if (idx < 0) return this.noteInvalid(key, { invalid: 'schema', detail: 'more than 65536 node names' });
    const packed = pack(v.identity, idx, this.gen);
    const had = this.ips.get(n!);
    this.ips.set(n!, packed);
    if (had !== undefined && had - genOf(had) === packed - genOf(packed)) return;
    if (had !== undefined && nodeOf(had) !== idx) this.ipsByNode.get(nodeOf(had))?.delete(n!);
    let set = this.ipsByNode.get(idx);
    if (!set) {
      set = new Set();
      this.ipsByNode.set(idx, set);
    }
    set.add(n!);
    if (!this.applying) return;
    if (had !== undefined && nodeOf(had) !== idx && !this.nodes.has(this.nodeNames[idx])) this.o.sink.ip(ipText, null);
    this.emitIp(n!, packed);
  }

  private removeIp(n: number): void {
    const had = this.ips.get(n);
    if (had === undefined) return;
    this.ips.delete(n);
    this.ipsByNode.get(nodeOf(had))?.delete(n);
    if (this.applying && this.nodes.has(this.nodeNames[nodeOf(had)])) this.o.sink.ip(formatIp(n), null);
  }

  /** Hand an address to the sink if its node is known (else it is pending). */
  private emitIp(n: number, packed: number): void {
    const node = this.nodes.get(this.nodeNames[nodeOf(packed)]);
    if (!node) return;
    this.o.sink.ip(formatIp(n), { identity: identityOf(packed), node: node.view });
  }

  /** After a complete list: what it did not hold again is gone. */
  private sweep(gen: number): void {
    for (const [n, v] of this.ips) if (genOf(v) !== gen) this.removeIp(n);
    for (const [id, rec] of this.identities) if (rec.gen !== gen) this.removeIdentity(id);
    for (const [name, rec] of this.nodes) if (rec.gen !== gen) this.removeNode(name);
  }

  /** The first hand-over: everything in the cache. */
  private applyAll(): void {
    for (const [id, rec] of this.identities) this.o.sink.identity(id, rec.labels);
    for (const [name, rec] of this.nodes) this.o.sink.node(name, rec.view);
    let i = 0;
    for (const [n, v] of this.ips) {
      this.emitIp(n, v);
      if (++i % 5000 === 0) this.o.sink.batch();
    }
  }

  /** Forget everything (the peer's config went or is invalid): the sink drops it all. */
  private resetAll(): void {
    if (this.applying) {
      for (const [n, v] of this.ips) if (this.nodes.has(this.nodeNames[nodeOf(v)])) this.o.sink.ip(formatIp(n), null);
      for (const name of this.nodes.keys()) this.o.sink.node(name, null);
      for (const id of this.identities.keys()) this.o.sink.identity(id, null);
      this.o.sink.batch();
    }
    this.applying = false;
    this.readySince = '';
    this.ips.clear();
    this.ipsByNode.clear();
    this.nodes.clear();
    this.identities.clear();
  }
}
