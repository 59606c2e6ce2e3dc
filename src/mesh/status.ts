/**
 * `meshctl status`: what a cluster's agents say about its peers, aggregated. The CLI reads only
 * lab.json (the apiserver's address), the apiserver's health, the MeshPeer objects (which peers are
 * configured) and the MeshNodeStatus objects the agents publish (`status.clustermesh.peers[]`). It
 * never judges a peer by its own connection to it.
 *
 * The aggregation (summarizeStatus, renderStatus, waitLine, parseDuration) is pure and table-tested;
 * gatherStatus and waitForStatus are the I/O edges.
 */
import { EtcdClusterClient } from '../cluster/etcd-client.js';
import { AGENT_STATUS_TTL_S, MESH_STATUS_WAIT_MS } from '../defaults.js';
import { readLabState, type ClusterState, type LabPaths } from '../lab/state.js';
import { EnvironmentError, NotFoundError, OperationError, ValidationError, errorMessage } from '../util/errors.js';
import { MESH_PEER_RESOURCE, type PeerStatus } from './peers.js';
import { SYNC_KINDS, type SyncKind } from './schema.js';

/** A status object older than this (by its updatedAt) does not count: its agent is not reporting. */
export const STATUS_FRESH_MS = AGENT_STATUS_TTL_S * 1000;
/** How often --wait polls, and how often at most it prints a ⌛ line. */
export const STATUS_POLL_MS = 500;
export const STATUS_WAIT_LINE_MS = 5000;

type ErrorKind = PeerStatus['lastErrorKind'];

/** One agent's published status, as read from the store. */
export interface NodeStatusInput {
  readonly node: string;
  /** ISO time the agent last wrote it. */
  readonly updatedAt: string;
  /** status.clustermesh.peers (absent when the agent publishes no mesh part). */
  readonly peers: readonly PeerStatus[];
}

/** Everything summarizeStatus needs, already read. */
export interface StatusInputs {
  readonly cluster: string;
  readonly apiserver: { readonly endpoint: string; readonly ready: boolean; readonly error: string };
  /** Nodes of the cluster (lab.json). */
  readonly nodes: readonly string[];
  /** Peers with a MeshPeer object in this cluster's store. */
  readonly peers: readonly string[];
  readonly statuses: readonly NodeStatusInput[];
  /** ms since epoch: the reader's clock, for freshness. */
  readonly now: number;
}

export interface Range {
  readonly min: number;
  readonly max: number;
}

export interface PeerSummary {
  readonly cluster: string;
  /** Nodes of this cluster (fresh status) that have / are connected to / synced with this peer. */
  readonly configured: number;
  readonly connected: number;
  readonly synced: number;
  readonly syncedKinds: Readonly<Record<SyncKind, number>>;
  readonly ready: number;
  readonly total: number;
  /** Entries held from the peer, over the nodes that have it configured. */
  readonly entries: Readonly<{ nodes: Range; identities: Range; ips: Range }>;
  /** Invalid objects by reason: the most any node counted (each node validates the same data). */
  readonly invalid: Readonly<Record<string, number>>;
  readonly invalidSamples: ReadonlyArray<{ readonly key: string; readonly reason: string }>;
  /** The last error of the first node (by name) that is not ready with this peer. */
  readonly lastError: string;
  readonly lastErrorKind: ErrorKind;
  readonly lastErrorNodes: readonly string[];
  readonly resyncs: number;
}

export interface StatusReport {
  readonly cluster: string;
  readonly apiserver: { readonly endpoint: string; readonly ready: boolean; readonly error: string };
  readonly nodes: { readonly total: number; readonly reporting: number; readonly notReporting: readonly string[] };
  readonly peers: readonly PeerSummary[];
  /** Connected peers per node (a node without a fresh status counts 0). */
  readonly summary: { readonly nodes: number; readonly connectedToAll: number; readonly min: number; readonly avg: number; readonly max: number };
  /** Apiserver ready and every node connected and synced with every configured peer. */
  readonly ready: boolean;
  /** What stands in the way (empty when ready): the reason --wait prints. */
  readonly waitingFor: string;
}

function range(values: readonly number[]): Range {
  return values.length === 0 ? { min: 0, max: 0 } : { min: Math.min(...values), max: Math.max(...values) };
}

const byName = <T>(key: (t: T) => string) => (a: T, b: T): number => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0);

/** Aggregate the agents' per-peer statuses of one cluster. Pure. */
export function summarizeStatus(inp: StatusInputs): StatusReport {
  const nodeNames = [...new Set(inp.nodes)].sort();
  const fresh = new Map<string, NodeStatusInput>();
  for (const s of inp.statuses) {
    const t = Date.parse(s.updatedAt);
    if (!nodeNames.includes(s.node) || !Number.isFinite(t) || inp.now - t > STATUS_FRESH_MS) continue;
    fresh.set(s.node, s);
  }
  const notReporting = nodeNames.filter((n) => !fresh.has(n));
  const peerNames = [...new Set(inp.peers)].sort();

  const peerOf = (node: string, peer: string): PeerStatus | undefined => fresh.get(node)?.peers.find((p) => p.cluster === peer);
  const isReady = (p: PeerStatus | undefined): boolean => !!p && p.configured && p.connected && SYNC_KINDS.every((k) => p.synced?.[k] === true);

  const peers: PeerSummary[] = peerNames.map((peer) => {
    const held = nodeNames.map((n) => ({ node: n, p: peerOf(n, peer) })).filter((x): x is { node: string; p: PeerStatus } => !!x.p && x.p.configured);
    const syncedKinds = Object.fromEntries(SYNC_KINDS.map((k) => [k, held.filter((x) => x.p.connected && x.p.synced?.[k] === true).length])) as Record<SyncKind, number>;
    const invalid: Record<string, number> = {};
    const samples = new Map<string, string>();
    for (const { p } of held) {
      for (const [reason, n] of Object.entries(p.invalid ?? {})) invalid[reason] = Math.max(invalid[reason] ?? 0, n);
      for (const s of p.invalidSamples ?? []) if (!samples.has(s.key)) samples.set(s.key, s.reason);
    }
    // The error to show: from nodes not ready with this peer; one message, the nodes that report it.
    const notReady = nodeNames.filter((n) => !isReady(peerOf(n, peer)));
    let lastError = '';
    let lastErrorKind: ErrorKind = '';
    for (const n of notReady) {
      const p = peerOf(n, peer);
      if (p?.lastError) {
        lastError = p.lastError;
        lastErrorKind = p.lastErrorKind ?? 'other';
        break;
      }
    }
    const lastErrorNodes = lastError ? notReady.filter((n) => peerOf(n, peer)?.lastError === lastError) : [];
    return {
      cluster: peer,
      configured: held.length,
      connected: held.filter((x) => x.p.connected).length,
      synced: held.filter((x) => isReady(x.p)).length,
      syncedKinds,
      ready: held.filter((x) => x.p.ready).length,
      total: nodeNames.length,
      entries: {
        nodes: range(held.map((x) => x.p.entries?.nodes ?? 0)),
        identities: range(held.map((x) => x.p.entries?.identities ?? 0)),
        ips: range(held.map((x) => x.p.entries?.ips ?? 0)),
      },
      invalid,
      invalidSamples: [...samples].map(([key, reason]) => ({ key, reason })).sort(byName((s) => s.key)).slice(0, 5),
      lastError,
      lastErrorKind,
      lastErrorNodes,
      resyncs: Math.max(0, ...held.map((x) => x.p.resyncs ?? 0)),
    };
  });

  const perNode = nodeNames.map((n) => peerNames.filter((peer) => peerOf(n, peer)?.connected === true && peerOf(n, peer)?.configured === true).length);
  const connectedToAll = nodeNames.filter((n, i) => fresh.has(n) && perNode[i] === peerNames.length).length;
  const summary = {
    nodes: nodeNames.length,
    connectedToAll,
    min: perNode.length ? Math.min(...perNode) : 0,
    avg: perNode.length ? perNode.reduce((a, b) => a + b, 0) / perNode.length : 0,
    max: perNode.length ? Math.max(...perNode) : 0,
  };

  let waitingFor = '';
  if (!inp.apiserver.ready) waitingFor = `clustermesh-apiserver of ${inp.cluster} is not ready${inp.apiserver.error ? `: ${inp.apiserver.error}` : ''}`;
  else if (notReporting.length) waitingFor = `no fresh status from ${notReporting.join(', ')}`;
  else {
    for (const p of peers) {
      if (p.synced === p.total) continue;
      const what = p.configured < p.total ? 'configured' : p.connected < p.total ? 'connected' : 'synced';
      waitingFor = `${p.cluster}: ${p.total - (what === 'configured' ? p.configured : what === 'connected' ? p.connected : p.synced)} of ${p.total} nodes not ${what}${p.lastError ? `: ${p.lastError}` : ''}`;
      break;
    }
  }
  return {
    cluster: inp.cluster,
    apiserver: { ...inp.apiserver },
    nodes: { total: nodeNames.length, reporting: nodeNames.length - notReporting.length, notReporting },
    peers,
    summary,
    ready: waitingFor === '',
    waitingFor,
  };
}

/** The 💡 hint for an error kind (chosen by type, never by message text). */
export function errorHint(kind: ErrorKind, cluster: string, peer: string): string {
  switch (kind) {
    case 'tls':
      return `${peer}'s server certificate is not trusted: check that both clusters share a CA, or connect with --allow-mismatching-ca (meshctl connect --context ${cluster} --destination-context ${peer} --allow-mismatching-ca)`;
    case 'auth':
      return `${peer}'s apiserver refused ${cluster}'s credentials (its peer user was revoked?): reconnect with meshctl connect --context ${cluster} --destination-context ${peer}`;
    case 'unreachable':
      return `is ${peer}'s clustermesh-apiserver running? check with meshctl status --context ${peer}; start it with meshctl enable --context ${peer}`;
    case 'heartbeat':
      return `${peer}'s apiserver answers but its heartbeat is stale: ${peer}'s export process stopped (meshctl enable --context ${peer} restarts it)`;
    case 'config':
      return `${peer}'s cluster config does not fit ${cluster}'s (name, id or pod CIDRs): check meshctl connect --context ${cluster} --destination-context ${peer} --dry-run`;
    default:
      return `see the agents' logs of ${cluster} (meshctl lab list --context ${cluster})`;
  }
}

function fmtRange(r: Range): string {
  return r.min === r.max ? String(r.max) : `${r.min}-${r.max}`;
}

/** Human lines (for stderr), in Cilium's words where Cilium has them. Pure. */
export function renderStatus(r: StatusReport): string[] {
  const lines: string[] = [];
  if (r.apiserver.ready) lines.push(`✅ clustermesh-apiserver of ${r.cluster} is ready at ${r.apiserver.endpoint}`);
  else lines.push(`❌ clustermesh-apiserver of ${r.cluster} at ${r.apiserver.endpoint} is not ready${r.apiserver.error ? `: ${r.apiserver.error}` : ''}`);
  if (r.nodes.notReporting.length) {
    lines.push(`⚠️  ${r.nodes.notReporting.length} of ${r.nodes.total} nodes have no fresh status: ${r.nodes.notReporting.join(', ')}`);
    lines.push(`💡 is their agent running? meshctl lab list --context ${r.cluster}`);
  }
  const s = r.summary;
  const mm = `[min:${s.min} / avg:${s.avg.toFixed(1)} / max:${s.max}]`;
  if (r.peers.length === 0) {
    lines.push(`⚠️  No clusters configured for ${r.cluster}`);
    lines.push(`💡 connect one with: meshctl connect --context ${r.cluster} --destination-context OTHER`);
    return lines;
  }
  if (s.connectedToAll === s.nodes) lines.push(`✅ All ${s.nodes} nodes are connected to all clusters ${mm}`);
  else lines.push(`⚠️  ${s.nodes - s.connectedToAll} of ${s.nodes} nodes are not connected to all clusters ${mm}`);
  lines.push('🔌 Cluster Connections:');
  for (const p of r.peers) {
    const ok = p.synced === p.total;
    const kinds = SYNC_KINDS.map((k) => `${k} ${p.syncedKinds[k]}/${p.total}`).join(', ');
    lines.push(
      `${ok ? '✅' : p.connected > 0 ? '⚠️ ' : '❌'} ${p.cluster}: ${p.configured}/${p.total} configured, ${p.connected}/${p.total} connected, ${p.synced}/${p.total} synced (${kinds})`,
    );
    if (p.configured > 0) {
      lines.push(`   entries: nodes ${fmtRange(p.entries.nodes)}, identities ${fmtRange(p.entries.identities)}, ips ${fmtRange(p.entries.ips)}${p.resyncs ? `; resyncs ${p.resyncs}` : ''}`);
    }
    const reasons = Object.keys(p.invalid).sort();
    if (reasons.length) {
      const total = reasons.reduce((a, k) => a + p.invalid[k], 0);
      lines.push(`⚠️  ${p.cluster}: ${total} invalid objects skipped (${reasons.map((k) => `${k} ${p.invalid[k]}`).join(', ')})`);
      for (const smp of p.invalidSamples) lines.push(`   - ${smp.key}: ${smp.reason}`);
    }
    if (p.lastError) {
      lines.push(`❌ ${p.cluster}: ${p.lastErrorNodes.join(', ')}: ${p.lastError}`);
      lines.push(`💡 ${errorHint(p.lastErrorKind, r.cluster, p.cluster)}`);
    }
  }
  return lines;
}

/** The ⌛ line --wait prints. Pure. */
export function waitLine(cluster: string, elapsedMs: number, waitingFor: string): string {
  return `⌛ Waiting (${Math.round(elapsedMs / 1000)}s) for ${cluster}'s nodes to connect and sync with all clusters${waitingFor ? `: ${waitingFor}` : ''}`;
}

/** The -o json shape: the report with keys sorted at every level (rows are sorted already). */
export function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v as Record<string, unknown>).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
  }
  return v;
}

/** `500ms`, `30s`, `2m`, `1h` (or a plain number of ms for MESH_STATUS_WAIT_MS) → ms; ValidationError otherwise. */
export function parseDuration(text: string, field = 'wait-duration', plainMs = false): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  const unit = m?.[2] ?? (plainMs ? 'ms' : undefined);
  if (!m || !unit) throw new ValidationError(field, 'duration', `invalid ${field} "${text}": must be a duration such as 500ms, 30s, 2m or 1h`);
  const ms = Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit as 'ms' | 's' | 'm' | 'h'];
  if (!(ms > 0) || !Number.isFinite(ms)) throw new ValidationError(field, 'duration', `invalid ${field} "${text}": must be greater than 0`);
  return Math.round(ms);
}

/** --wait-duration, else MESH_STATUS_WAIT_MS (ms or a duration), else the default 5m. */
export function waitDuration(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): number {
  if (flag !== undefined) return parseDuration(flag);
  const e = env.MESH_STATUS_WAIT_MS;
  if (e !== undefined && e !== '') return parseDuration(e, 'MESH_STATUS_WAIT_MS', true);
  return MESH_STATUS_WAIT_MS;
}

/** apiserverHealth's answer (void, a boolean or an object with ok/healthy/ready/error) → ready + error. */
export function interpretHealth(h: unknown): { ready: boolean; error: string } {
  if (h === false) return { ready: false, error: 'not ready' };
  if (h && typeof h === 'object') {
    const r = h as { ok?: boolean; healthy?: boolean; ready?: boolean; error?: string; message?: string };
    if (r.ok === false || r.healthy === false || r.ready === false) return { ready: false, error: r.error ?? r.message ?? 'not ready' };
  }
  return { ready: true, error: '' };
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** status.clustermesh.peers of a MeshNodeStatus object; entries without a cluster name are dropped. */
export function peersOfStatus(status: unknown): PeerStatus[] {
  const cm = isRecord(status) ? status.clustermesh : undefined;
  const peers = isRecord(cm) && Array.isArray(cm.peers) ? cm.peers : [];
  return peers.filter((p): p is PeerStatus => isRecord(p) && typeof p.cluster === 'string');
}

/** Reads what status needs; injected so the wait loop can be driven in tests. */
export type HealthProbe = (paths: LabPaths, cluster: ClusterState) => Promise<unknown>;

/** Read the inputs of one cluster's status once. Throws NotFoundError / EnvironmentError (not enabled). */
export async function gatherStatus(paths: LabPaths, name: string, health: HealthProbe, now: () => number = Date.now): Promise<StatusReport> {
  const lab = await readLabState(paths);
  const c = lab?.clusters[name];
  if (!lab || !c) {
    const known = lab ? Object.keys(lab.clusters).sort().join(', ') : '';
    throw new NotFoundError('context', `unknown context "${name}"; known clusters: ${known || '(none)'}`);
  }
  if (!c.mesh) throw new EnvironmentError(`cluster mesh is not enabled on ${name}`, `enable it with: meshctl enable --context ${name}`);
  let apiserver: { ready: boolean; error: string };
  try {
    apiserver = interpretHealth(await health(paths, c));
  } catch (err) {
    apiserver = { ready: false, error: errorMessage(err) };
  }
  const client = new EtcdClusterClient({ endpoints: [c.store.endpoint], timeoutMs: 3000 });
  try {
    const [peers, statuses] = await Promise.all([client.list(MESH_PEER_RESOURCE), client.list('meshnodestatuses')]);
    return summarizeStatus({
      cluster: name,
      apiserver: { endpoint: c.mesh.endpoint, ...apiserver },
      nodes: c.nodes.map((n) => n.name),
      peers: peers.items.map((o) => o.metadata.name),
      statuses: statuses.items.map((o) => {
        const st = isRecord(o.status) ? o.status : {};
        return { node: o.metadata.name, updatedAt: typeof st.updatedAt === 'string' ? st.updatedAt : '', peers: peersOfStatus(st) };
      }),
      now: now(),
    });
  } finally {
    await client.close();
  }
}

export interface WaitForStatusOptions {
  /** Give up after this many ms (default MESH_STATUS_WAIT_MS). */
  readonly timeoutMs?: number;
  /** Called with each ⌛ line (at most every STATUS_WAIT_LINE_MS). */
  readonly onWait?: (line: string) => void;
}

/**
 * Poll gatherStatus every STATUS_POLL_MS until the report is ready or the timeout passes; returns
 * the last report either way (the caller decides the exit code). Store errors are retried and become
 * the last error.
 */
export async function waitForStatus(paths: LabPaths, name: string, health: HealthProbe, opts: WaitForStatusOptions = {}): Promise<StatusReport> {
  const timeoutMs = opts.timeoutMs ?? MESH_STATUS_WAIT_MS;
  const started = Date.now();
  let lastLine = started;
  let last: StatusReport | null = null;
  let lastErr = '';
  for (;;) {
    try {
      last = await gatherStatus(paths, name, health);
      if (last.ready) return last;
      lastErr = last.waitingFor;
    } catch (err) {
      if (err instanceof NotFoundError || err instanceof EnvironmentError) throw err;
      lastErr = `read status of ${name}: ${errorMessage(err)}`;
    }
    const now = Date.now();
    if (now - started >= timeoutMs) break;
    if (now - lastLine >= STATUS_WAIT_LINE_MS) {
      lastLine = now;
      opts.onWait?.(waitLine(name, now - started, lastErr));
    }
    await new Promise((r) => setTimeout(r, Math.min(STATUS_POLL_MS, Math.max(0, timeoutMs - (now - started)))));
  }
  if (last) return { ...last, waitingFor: lastErr || last.waitingFor };
  throw new OperationError(`status of ${name} not read within ${Math.round(timeoutMs / 1000)}s: ${lastErr}`);
}
