/**
 * `meshctl connect` / `disconnect`: give one cluster's agents read access to another cluster's
 * clustermesh-apiserver, or take it away, per direction.
 *
 * A direction X → Y is made of two things: the user `remote-X` (read-only on mesh/v1/) in Y's
 * apiserver with its client certificate, and a MeshPeer object named Y in X's own store holding
 * Y's address, the CA(s) to trust and that certificate. X's agents watch MeshPeers and start a
 * remote client for Y without restarting.
 *
 * Connect gathers every fact first (lab state, the MeshPeers in the stores, cluster configs, CAs,
 * apiserver health, what each direction already holds) and runs the pre-flight on them; only then
 * does it write, direction by direction, and a failure undoes what this run made.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AlreadyExistsError } from '../cluster/client.js';
import { EtcdClusterClient } from '../cluster/etcd-client.js';
import type { KubeObject } from '../cluster/types.js';
import { MESH_PEER_USER_PREFIX } from '../defaults.js';
import { readLabState, type ClusterState, type LabPaths, type LabState } from '../lab/state.js';
import { NotFoundError, OperationError, errorMessage } from '../util/errors.js';
import { addPeerUser, apiserverHealth, listPeerUsers, removePeerUser, setTrustedCas } from './apiserver.js';
import { bundle, caFingerprint, verifyCertificate } from './certs.js';
import { MESH_PEER_RESOURCE, meshPeerObject, parseMeshPeer, type MeshPeerSpec } from './peers.js';
import {
  PreflightError,
  checkCas,
  checkMembers,
  directionState,
  formatDirection,
  meshComponent,
  parseConnectionMode,
  parseDestinations,
  planDirections,
  type ConnectionMode,
  type DesiredPeer,
  type Direction,
  type MemberFacts,
} from './preflight.js';

/** Store calls of the CLI: short, a lab store answers in milliseconds. */
const STORE_TIMEOUT_MS = 5000;
/** Test hook: fail after this many directions were made, to prove a failed connect leaves nothing. */
const FAIL_AFTER_ENV = 'MESHCTL_CONNECT_FAIL_AFTER';

export interface ConnectOptions {
  /** The source cluster (`--context`). */
  readonly context: string;
  /** `--destination-context`: one or more cluster names (a comma-separated string or a list). */
  readonly destinations: string | readonly string[];
  /** Default 'bidirectional'. */
  readonly mode?: ConnectionMode | string;
  /** Connect clusters whose mesh CAs differ, trusting both (default false: refused). */
  readonly allowMismatchingCa?: boolean;
  /** Print the plan only: nothing is written anywhere (default false). */
  readonly dryRun?: boolean;
  /** Called once per direction as it is made, found made, or planned (dry run). */
  readonly onDirection?: (d: DirectionResult) => void;
  /** Called for something worth saying that does not stop the run. */
  readonly onWarning?: (msg: string) => void;
}

/** One direction X → Y as connect sees it. */
export interface DirectionPlan extends Direction {
  /** The user X's agents authenticate as in Y's apiserver: `remote-X`. */
  readonly user: string;
  /** Y's apiserver as X's agents reach it (Y's internal endpoint, on its VPC). */
  readonly endpoint: string;
  /** The TLS server name X's agents expect (Y's VPC address). */
  readonly serverName: string;
  /** The CAs X's agents trust for Y: Y's, plus X's when they differ (--allow-mismatching-ca). */
  readonly caFingerprints: readonly string[];
  /** Where the MeshPeer goes: X's store. */
  readonly store: string;
  /** What is there now. */
  readonly state: 'connected' | 'absent' | 'stale';
}

export interface DirectionResult extends DirectionPlan {
  /** made: written by this run; already: was connected, left alone; planned: dry run. */
  readonly action: 'made' | 'already' | 'planned';
}

export interface ConnectResult {
  readonly mode: ConnectionMode;
  readonly dryRun: boolean;
  readonly directions: readonly DirectionResult[];
  /** Every cluster in the mesh after the change (sorted). */
  readonly mesh: readonly string[];
}

export interface DisconnectOptions {
  readonly context: string;
  readonly destinations: string | readonly string[];
  /** Default 'bidirectional' (both ways); unicast removes only context → destination. */
  readonly mode?: ConnectionMode | string;
  readonly onDirection?: (d: DisconnectResult['directions'][number]) => void;
}

export interface DisconnectResult {
  readonly directions: ReadonlyArray<
    Direction & {
      /** removed: something was taken away; not-connected: nothing was there. */
      readonly action: 'removed' | 'not-connected';
      readonly removedPeer: boolean;
      readonly removedUser: boolean;
    }
  >;
}

export const peerUser = (cluster: string): string => `${MESH_PEER_USER_PREFIX}${cluster}`;

/** The cluster's mesh CA certificate (PEM). */
async function readCaCert(paths: LabPaths, c: ClusterState): Promise<string> {
  const file = join(paths.meshDir(c.name), 'ca.crt');
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new PreflightError('ca', `cannot read the mesh CA of ${c.name} (${file}): ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`, `meshctl enable --context ${c.name}`);
  }
}

/** Names → clusters of the lab; unknown names are refused with the list of known ones. */
function resolveClusters(lab: LabState | null, names: readonly string[]): Map<string, ClusterState> {
  const known = lab ? Object.keys(lab.clusters).sort() : [];
  const list = known.length ? known.join(', ') : '(none; create one with: meshctl lab create NAME --id N --pod-cidr CIDR)';
  const out = new Map<string, ClusterState>();
  for (const n of names) {
    const c = lab?.clusters[n];
    if (!c) throw new NotFoundError('context', `unknown context "${n}"; known clusters: ${list}`);
    out.set(n, c);
  }
  return out;
}

/** What the stores say: every MeshPeer per cluster, and each cluster's encryption. */
interface StoreFacts {
  readonly peers: Map<string, Map<string, KubeObject>>;
  readonly encryption: Map<string, string>;
}

/** Open one client per cluster; call closeAll(). */
class Stores {
  private readonly clients = new Map<string, EtcdClusterClient>();
  client(c: ClusterState): EtcdClusterClient {
    let cl = this.clients.get(c.name);
    if (!cl) {
      cl = new EtcdClusterClient({ endpoints: [c.store.endpoint], timeoutMs: STORE_TIMEOUT_MS });
      this.clients.set(c.name, cl);
    }
    return cl;
  }
  async closeAll(): Promise<void> {
    await Promise.all([...this.clients.values()].map((c) => c.close().catch(() => undefined)));
    this.clients.clear();
  }
}

async function readPeers(stores: Stores, c: ClusterState): Promise<Map<string, KubeObject>> {
  const r = await stores.client(c).list(MESH_PEER_RESOURCE);
  return new Map(r.items.map((o) => [o.metadata.name, o]));
}

/**
 * Read the MeshPeers of every lab cluster (links into the named clusters live in other clusters'
 * stores) and the cluster configs. A named cluster's store must answer; another one that does not
 * is warned about and its links are left out.
 */
async function readStores(stores: Stores, lab: LabState, named: ReadonlySet<string>, warn: (m: string) => void): Promise<StoreFacts> {
  const peers = new Map<string, Map<string, KubeObject>>();
  const encryption = new Map<string, string>();
  const clusters = Object.values(lab.clusters).sort((a, b) => a.name.localeCompare(b.name));
  const results = await Promise.all(
    clusters.map(async (c) => {
      try {
        const [p, cfg] = await Promise.all([readPeers(stores, c), stores.client(c).get('meshclusterconfigs', undefined, c.name)]);
        return { c, p, cfg, err: null };
      } catch (err) {
        return { c, p: null, cfg: null, err };
      }
    }),
  );
  for (const { c, p, cfg, err } of results) {
    if (err || !p) {
      const msg = `cannot read the store of ${c.name} (${c.store.endpoint}): ${errorMessage(err)}`;
      if (named.has(c.name)) throw new PreflightError('store', msg);
      warn(`${msg}; its MeshPeers are left out of the checks`);
      continue;
    }
    peers.set(c.name, p);
    const enc = (cfg?.spec as { encryption?: unknown } | undefined)?.encryption;
    encryption.set(c.name, typeof enc === 'string' ? enc : typeof enc === 'object' && enc !== null && typeof (enc as { mode?: unknown }).mode === 'string' ? String((enc as { mode: string }).mode) : 'none');
  }
  return { peers, encryption };
}

/** The facts of each cluster the mesh would hold; a peer gone from the lab is known by its MeshPeers only. */
function memberFacts(component: readonly string[], lab: LabState, facts: StoreFacts, warn: (m: string) => void): MemberFacts[] {
  const out: MemberFacts[] = [];
  for (const name of component) {
    const c = lab.clusters[name];
    if (c) {
      out.push({ name, id: c.id, podCidrs: c.podCidrs, serviceCidr: c.serviceCidr, encryption: facts.encryption.get(name) });
      continue;
    }
    let id: number | undefined;
    for (const [holder, peers] of facts.peers) {
      const o = peers.get(name);
      if (!o) continue;
      const spec = parseMeshPeer(o);
      if (spec instanceof Error) warn(`MeshPeer ${name} in the store of ${holder} is invalid: ${spec.message}`);
      else id ??= spec.clusterId;
    }
    if (id === undefined) warn(`cluster ${name} is known only from invalid MeshPeers; its id is not checked`);
    else out.push({ name, id, podCidrs: [] });
  }
  return out;
}

async function checkHealth(paths: LabPaths, c: ClusterState): Promise<void> {
  let problem: string | null = null;
  try {
    const h = (await apiserverHealth(paths, c)) as unknown;
    if (h && typeof h === 'object') {
      const r = h as { ok?: boolean; healthy?: boolean; ready?: boolean; error?: string; message?: string };
      const bad = r.ok === false || r.healthy === false || r.ready === false;
      if (bad) problem = r.error ?? r.message ?? 'not ready';
    } else if (h === false) {
      problem = 'not ready';
    }
  } catch (err) {
    problem = errorMessage(err);
  }
  if (problem !== null) {
    throw new PreflightError(
      'health',
      `the clustermesh-apiserver of ${c.name} (${c.mesh?.endpoint}) is not healthy: ${problem}`,
      `meshctl status --context ${c.name}`,
    );
  }
}

function hasUser(users: readonly string[], from: string): boolean {
  return users.includes(peerUser(from));
}

function certValidFor(spec: MeshPeerSpec, from: string, caPem: string): boolean {
  try {
    verifyCertificate({ name: peerUser(from), certPem: spec.cert, caBundlePem: caPem, usage: 'client' });
    return true;
  } catch {
    return false;
  }
}

interface Prepared {
  readonly plan: DirectionPlan;
  readonly desired: DesiredPeer;
  /** The MeshPeer there now (to restore on undo), and whether the user existed. */
  readonly prevPeer: KubeObject | null;
  readonly prevUser: boolean;
  /** Y's extra trusted CAs (other CAs of the clusters that read it) before and after this run; null when unchanged. */
  readonly trust: { readonly before: string[]; readonly after: string[] } | null;
}

/**
 * The CAs other than its own that a cluster's apiserver must trust: those of the clusters that
 * read it (--allow-mismatching-ca), one per fingerprint, in reader name order.
 */
async function foreignReaderCas(paths: LabPaths, lab: LabState, yFingerprint: string, readers: Iterable<string>): Promise<string[]> {
  const out = new Map<string, string>();
  for (const r of [...new Set(readers)].sort()) {
    const c = lab.clusters[r];
    if (!c?.mesh) continue;
    const pem = await readFile(join(paths.meshDir(r), 'ca.crt'), 'utf8').catch(() => null);
    if (pem === null) continue;
    const fp = caFingerprint(pem);
    if (fp !== yFingerprint && !out.has(fp)) out.set(fp, pem);
  }
  return [...out.values()];
}

const samePems = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);

/** Clusters whose stores hold a MeshPeer named `y`. */
function readersOf(peers: ReadonlyMap<string, ReadonlyMap<string, KubeObject>>, y: string): string[] {
  return [...peers].filter(([, m]) => m.has(y)).map(([x]) => x);
}

/**
 * Connect clusters. Runs the whole pre-flight before writing; throws PreflightError (nothing
 * written), NotFoundError for unknown contexts, ValidationError for bad input. On a failure while
 * writing, the directions this run made are undone before the error is thrown.
 */
export async function connectClusters(paths: LabPaths, opts: ConnectOptions): Promise<ConnectResult> {
  const warn = opts.onWarning ?? (() => undefined);
  const mode = parseConnectionMode(opts.mode);
  const dests = parseDestinations(opts.destinations);
  const lab = await readLabState(paths);
  const clusters = resolveClusters(lab, [opts.context, ...dests]);
  const directions = planDirections(opts.context, dests, mode);
  const involved = [...clusters.keys()];

  for (const name of involved) {
    if (!clusters.get(name)!.mesh) {
      throw new PreflightError('not-enabled', `cluster ${name} is not enabled for cluster mesh (no clustermesh-apiserver)`, `meshctl enable --context ${name}`);
    }
  }

  const stores = new Stores();
  try {
    const facts = await readStores(stores, lab!, new Set(involved), warn);
    const links: Direction[] = [];
    for (const [from, peers] of facts.peers) for (const to of peers.keys()) links.push({ from, to });
    const mesh = meshComponent(involved, [...links, ...directions]);
    checkMembers(memberFacts(mesh, lab!, facts, warn));

    const cas = new Map<string, string>();
    const fingerprints = new Map<string, string>();
    for (const name of involved) {
      const c = clusters.get(name)!;
      const pem = await readCaCert(paths, c);
      const fp = caFingerprint(pem);
      if (fp !== c.mesh!.caFingerprint) {
        throw new PreflightError(
          'ca',
          `the mesh CA of ${name} (${join(paths.meshDir(name), 'ca.crt')}, ${fp}) is not the one it was enabled with (${c.mesh!.caFingerprint})`,
          `meshctl disable --context ${name} && meshctl enable --context ${name}`,
        );
      }
      cas.set(name, pem);
      fingerprints.set(name, fp);
    }
    checkCas(directions, fingerprints, opts.allowMismatchingCa ?? false);

    for (const name of involved) await checkHealth(paths, clusters.get(name)!);
    const users = new Map<string, string[]>();
    for (const name of involved) users.set(name, await listPeerUsers(paths, clusters.get(name)!));

    const trust = new Map<string, { before: string[]; after: string[] } | null>();
    for (const y of new Set(directions.map((d) => d.to))) {
      const existing = readersOf(facts.peers, y);
      const fresh = directions.filter((d) => d.to === y).map((d) => d.from);
      const before = await foreignReaderCas(paths, lab!, fingerprints.get(y)!, existing);
      const after = await foreignReaderCas(paths, lab!, fingerprints.get(y)!, [...existing, ...fresh]);
      trust.set(y, samePems(before, after) ? null : { before, after });
    }

    const prepared: Prepared[] = directions.map((d) => {
      const x = clusters.get(d.from)!;
      const y = clusters.get(d.to)!;
      const same = fingerprints.get(d.from) === fingerprints.get(d.to);
      const desired: DesiredPeer = {
        cluster: y.name,
        clusterId: y.id,
        endpoints: [y.mesh!.internalEndpoint],
        caBundle: same ? cas.get(y.name)! : bundle(cas.get(y.name)!, cas.get(x.name)!),
        serverName: y.controlPlane.vpcIp,
      };
      const prevPeer = facts.peers.get(x.name)?.get(y.name) ?? null;
      const parsed = prevPeer ? parseMeshPeer(prevPeer) : null;
      const prevUser = hasUser(users.get(y.name)!, x.name);
      const certValid = parsed !== null && !(parsed instanceof Error) && certValidFor(parsed, x.name, cas.get(y.name)!);
      const state = directionState(desired, { peer: parsed, userExists: prevUser, certValid });
      const plan: DirectionPlan = {
        ...d,
        user: peerUser(x.name),
        endpoint: desired.endpoints[0],
        serverName: desired.serverName,
        caFingerprints: same ? [fingerprints.get(y.name)!] : [fingerprints.get(y.name)!, fingerprints.get(x.name)!],
        store: x.store.endpoint,
        state,
      };
      return { plan, desired, prevPeer, prevUser, trust: trust.get(y.name) ?? null };
    });

    const results: DirectionResult[] = [];
    if (opts.dryRun) {
      for (const p of prepared) {
        const r: DirectionResult = { ...p.plan, action: p.plan.state === 'connected' ? 'already' : 'planned' };
        results.push(r);
        opts.onDirection?.(r);
      }
      return { mode, dryRun: true, directions: results, mesh };
    }

    const undo: Array<() => Promise<void>> = [];
    const trusted = new Set<string>();
    const failAfter = process.env[FAIL_AFTER_ENV] ? Number(process.env[FAIL_AFTER_ENV]) : -1;
    let made = 0;
    let current: Direction | null = null;
    try {
      for (const p of prepared) {
        current = p.plan;
        if (p.plan.state === 'connected') {
          const r: DirectionResult = { ...p.plan, action: 'already' };
          results.push(r);
          opts.onDirection?.(r);
          continue;
        }
        if (made === failAfter) throw new OperationError(`${FAIL_AFTER_ENV}=${failAfter}: failing on purpose`);
        const y = clusters.get(p.plan.to)!;
        const t = p.trust;
        if (t && !trusted.has(y.name)) {
          trusted.add(y.name);
          await setTrustedCas(paths, y, t.after).catch((err) => {
            throw new OperationError(`trust the CAs of the clusters reading ${y.name} in its clustermesh-apiserver: ${errorMessage(err)}`, { cause: err });
          });
          undo.push(() => setTrustedCas(paths, y, t.before));
        }
        await makeDirection(paths, stores, clusters.get(p.plan.from)!, y, p, undo);
        made++;
        const r: DirectionResult = { ...p.plan, action: 'made' };
        results.push(r);
        opts.onDirection?.(r);
      }
    } catch (err) {
      const undoErrors: string[] = [];
      for (const u of undo.reverse()) {
        try {
          await u();
        } catch (e) {
          undoErrors.push(errorMessage(e));
        }
      }
      const undone = undoErrors.length === 0 ? `undid the ${made} direction(s) this run made` : `undoing failed: ${undoErrors.join('; ')}`;
      throw new OperationError(`connect ${current ? formatDirection(current) : ''}: ${errorMessage(err)}; ${undone}`, { cause: err });
    }
    return { mode, dryRun: false, directions: results, mesh };
  } finally {
    await stores.closeAll();
  }
}

/** Make one direction X → Y, pushing its undo steps (run in reverse on a later failure). */
async function makeDirection(paths: LabPaths, stores: Stores, x: ClusterState, y: ClusterState, p: Prepared, undo: Array<() => Promise<void>>): Promise<void> {
  const issued = await addPeerUser(paths, y, x.name).catch((err) => {
    throw new OperationError(`add user ${peerUser(x.name)} to the clustermesh-apiserver of ${y.name}: ${errorMessage(err)}`, { cause: err });
  });
  if (!p.prevUser) undo.push(() => removePeerUser(paths, y, x.name));
  const obj = meshPeerObject({
    cluster: p.desired.cluster,
    clusterId: p.desired.clusterId,
    endpoints: [...p.desired.endpoints],
    caBundle: p.desired.caBundle,
    cert: issued.certPem,
    key: issued.keyPem,
    serverName: p.desired.serverName,
  });
  const store = stores.client(x);
  try {
    if (p.prevPeer) {
      // only if unchanged since the pre-flight read it
      await store.put(MESH_PEER_RESOURCE, { ...obj, metadata: { ...obj.metadata, resourceVersion: p.prevPeer.metadata.resourceVersion } });
    } else {
      await store.create(MESH_PEER_RESOURCE, obj);
    }
  } catch (err) {
    const why = err instanceof AlreadyExistsError ? 'it appeared since the pre-flight read the store' : errorMessage(err);
    throw new OperationError(`write MeshPeer ${y.name} to the store of ${x.name}: ${why}`, { cause: err });
  }
  const prev = p.prevPeer;
  undo.push(async () => {
    if (prev) {
      const { resourceVersion: _rv, ...meta } = prev.metadata;
      await store.put(MESH_PEER_RESOURCE, { ...prev, metadata: meta });
    } else {
      await store.delete(MESH_PEER_RESOURCE, undefined, y.name);
    }
  });
}

/**
 * Disconnect clusters: per direction X → Y, delete MeshPeer Y from X's store (X's agents drain what
 * they learned from Y) and remove user remote-X from Y's apiserver (X's old certificate reads
 * nothing). A direction with nothing there is reported as not connected. Unknown contexts throw
 * NotFoundError before anything changes; a direction that fails is reported and the rest still run,
 * then an OperationError names the failed ones.
 */
export async function disconnectClusters(paths: LabPaths, opts: DisconnectOptions): Promise<DisconnectResult> {
  const mode = parseConnectionMode(opts.mode);
  const dests = parseDestinations(opts.destinations);
  const lab = await readLabState(paths);
  const clusters = resolveClusters(lab, [opts.context, ...dests]);
  const directions = planDirections(opts.context, dests, mode);
  const stores = new Stores();
  const results: Array<DisconnectResult['directions'][number]> = [];
  const failed: string[] = [];
  try {
    const users = new Map<string, string[] | Error>();
    for (const d of directions) {
      const x = clusters.get(d.from)!;
      const y = clusters.get(d.to)!;
      try {
        if (!users.has(y.name)) users.set(y.name, y.mesh ? await listPeerUsers(paths, y).catch((e) => e as Error) : []);
        const yUsers = users.get(y.name)!;
        if (yUsers instanceof Error) throw new OperationError(`list users of the clustermesh-apiserver of ${y.name}: ${yUsers.message}`);
        const store = stores.client(x);
        const removedPeer = await store.delete(MESH_PEER_RESOURCE, undefined, y.name).catch((err) => {
          throw new OperationError(`delete MeshPeer ${y.name} from the store of ${x.name}: ${errorMessage(err)}`, { cause: err });
        });
        let removedUser = false;
        if (hasUser(yUsers, x.name)) {
          await removePeerUser(paths, y, x.name).catch((err) => {
            throw new OperationError(`remove user ${peerUser(x.name)} from the clustermesh-apiserver of ${y.name}: ${errorMessage(err)}`, { cause: err });
          });
          removedUser = true;
        }
        const r = { ...d, action: removedPeer || removedUser ? ('removed' as const) : ('not-connected' as const), removedPeer, removedUser };
        results.push(r);
        opts.onDirection?.(r);
      } catch (err) {
        failed.push(`${formatDirection(d)}: ${errorMessage(err)}`);
      }
    }
    // A reader of another CA that is gone no longer needs its CA trusted by the apiserver it read.
    const retrust = new Set<string>();
    for (const r of results) {
      const x = clusters.get(r.from)!;
      const y = clusters.get(r.to)!;
      if (r.action === 'removed' && x.mesh && y.mesh && x.mesh.caFingerprint !== y.mesh.caFingerprint) retrust.add(y.name);
    }
    if (retrust.size > 0) {
      const peers = new Map<string, Map<string, KubeObject>>();
      for (const c of Object.values(lab!.clusters)) {
        const p = await readPeers(stores, c).catch(() => null);
        if (p) peers.set(c.name, p);
      }
      for (const yName of [...retrust].sort()) {
        const y = clusters.get(yName)!;
        try {
          await setTrustedCas(paths, y, await foreignReaderCas(paths, lab!, y.mesh!.caFingerprint, readersOf(peers, yName)));
        } catch (err) {
          failed.push(`trust of ${yName}'s clustermesh-apiserver: ${errorMessage(err)}`);
        }
      }
    }
  } finally {
    await stores.closeAll();
  }
  if (failed.length > 0) throw new OperationError(`disconnect ${failed.join('; ')}`);
  return { directions: results };
}
