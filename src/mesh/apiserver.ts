/**
 * The clustermesh-apiserver of a lab cluster (DESIGN §5): a second, TLS-only etcd in the cluster's
 * control-plane namespace (client port MESH_APISERVER_PORT on every address, peer port on
 * loopback), with client-certificate auth and etcd auth enabled. The user is the certificate's CN:
 * `root` (admin.crt; the export process and the CLI) and one `remote-<peer>` per connected peer,
 * holding only a read role on `mesh/v1/`. Both the etcd (`mesh-apiserver`) and the export process
 * (`mesh-export`) are kept alive by the cluster's supervisor.
 *
 * Locking: enableCluster and disableCluster take the lab lock. The other functions do not (the lock
 * is not reentrant), so `connect`/`disconnect` can call them while holding it.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { access, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ExponentialBackoff, noop, type IBackoff } from 'cockatiel';
import { Etcd3, EtcdRoleExistsError, EtcdRoleNotFoundError, EtcdUserExistsError, EtcdUserNotFoundError } from 'etcd3';
import { EtcdClusterClient } from '../cluster/etcd-client.js';
import {
  MESH_ADMIN_USER,
  MESH_APISERVER_PEER_PORT,
  MESH_APISERVER_PORT,
  MESH_APISERVER_READY_TIMEOUT_MS,
  MESH_PEER_USER_PREFIX,
} from '../defaults.js';
import { ensureSupervisor } from '../lab/processes.js';
import { readLabState, withLabLock, writeLabState, type ClusterState, type LabPaths } from '../lab/state.js';
import { procPid, removeProcSpec, writeProcSpec, type ProcSpec } from '../lab/supervisor.js';
import { NotFoundError, OperationError, ValidationError, errorMessage } from '../util/errors.js';
import { pidAlive, sleep } from '../util/exec.js';
import { MESHCTL_BIN } from '../util/self.js';
import { MESH_PREFIX } from './schema.js';
import { MESH_PEER_RESOURCE } from './peers.js';
import {
  bundle,
  caFingerprint,
  ensureClusterCa,
  issuePeerCertificate,
  peerCertBase,
  validateCa,
  verifyCertificate,
  writeIssued,
  writeSecretFile,
  type CertKeyPair,
} from './certs.js';

export const APISERVER_PROC = 'mesh-apiserver';
export const EXPORT_PROC = 'mesh-export';
/** Bundle the apiserver trusts when peers of another CA are connected (else ca.crt). */
const TRUSTED_BUNDLE = 'trusted-cas.crt';

export interface EnableOptions {
  /** Lab cluster name. */
  readonly context: string;
  /** The cluster's own CA instead of the lab's shared one (both or neither). */
  readonly caCertFile?: string;
  readonly caKeyFile?: string;
  /** Print what would be made, change nothing; default false. */
  readonly dryRun?: boolean;
  /** Progress lines. */
  readonly onStep?: (msg: string) => void;
}

export interface EnableResult {
  readonly cluster: string;
  /** The cluster was enabled before this run. */
  readonly alreadyEnabled: boolean;
  readonly dryRun: boolean;
  /** What this run created or repaired (with dryRun: what it would). */
  readonly actions: readonly string[];
  readonly endpoint: string;
  readonly internalEndpoint: string;
  readonly caFingerprint: string;
  /** The lab's shared CA (true) or the cluster's own (false); null on a dry run without a CA yet. */
  readonly caShared: boolean | null;
}

export interface DisableOptions {
  readonly context: string;
  /** Disable even while peers are connected; default false. */
  readonly force?: boolean;
}

export interface DisableResult {
  readonly cluster: string;
  /** The cluster was enabled (or had mesh leftovers) before this run. */
  readonly wasEnabled: boolean;
  /** Peers that were connected (only non-empty with force). */
  readonly peers: readonly string[];
}

export interface ApiserverHealth {
  readonly ok: boolean;
  readonly endpoint: string;
  readonly error?: string;
}

const file = (paths: LabPaths, c: string, name: string): string => join(paths.meshDir(c), name);
const endpoints = (c: ClusterState): { endpoint: string; internalEndpoint: string } => ({
  endpoint: `https://${c.controlPlane.mgmtIp}:${MESH_APISERVER_PORT}`,
  internalEndpoint: `https://${c.controlPlane.vpcIp}:${MESH_APISERVER_PORT}`,
});
const logFile = (paths: LabPaths, c: string, proc: string): string => join(paths.logsDir(c), `${proc}.log`);

/** The CA file the apiserver trusts now and a hash of its content (a change restarts etcd). */
function currentTrust(paths: LabPaths, c: string): { file: string; hash: string } {
  const b = file(paths, c, TRUSTED_BUNDLE);
  const f = existsSync(b) ? b : file(paths, c, 'ca.crt');
  let text = '';
  try {
    text = readFileSync(f, 'utf8');
  } catch {
    /* made later in the same run */
  }
  return { file: f, hash: createHash('sha256').update(text).digest('hex').slice(0, 16) };
}

/** The supervisor's spec of the apiserver etcd. */
export function apiserverProcSpec(paths: LabPaths, c: ClusterState, trust = currentTrust(paths, c.name)): ProcSpec {
  const peer = `http://127.0.0.1:${MESH_APISERVER_PEER_PORT}`;
  const dir = paths.meshDir(c.name);
  return {
    name: APISERVER_PROC,
    netns: c.controlPlane.netns,
    argv: [
      'etcd',
      '--name', `${c.name}-mesh`,
      '--data-dir', join(dir, 'data'),
      '--listen-client-urls', `https://0.0.0.0:${MESH_APISERVER_PORT}`,
      '--advertise-client-urls', endpoints(c).internalEndpoint,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `${c.name}-mesh=${peer}`,
      '--cert-file', join(dir, 'server.crt'),
      '--key-file', join(dir, 'server.key'),
      '--client-cert-auth',
      '--trusted-ca-file', trust.file,
      // Heartbeats rewrite keys all the time: keep the history bounded, as the store does.
      '--auto-compaction-mode', 'periodic',
      '--auto-compaction-retention', '5m',
      '--logger', 'zap',
      '--log-level', 'warn',
    ],
    // Not read by etcd: a changed trust bundle changes the spec, so the supervisor restarts etcd.
    env: { MESHCTL_TRUSTED_CAS: trust.hash },
  };
}

/** The supervisor's spec of the export process (the `mesh-export` command). */
export function exportProcSpec(paths: LabPaths, c: ClusterState): ProcSpec {
  return {
    name: EXPORT_PROC,
    netns: c.controlPlane.netns,
    argv: [
      process.execPath,
      MESHCTL_BIN,
      'mesh-export',
      '--cluster', c.name,
      '--store', c.store.internalEndpoint,
      '--apiserver', `https://127.0.0.1:${MESH_APISERVER_PORT}`,
      '--cert-dir', paths.meshDir(c.name),
    ],
    env: { MESHCTL_HOME: paths.home },
  };
}

/**
 * An mTLS client of the cluster's apiserver as `root` (admin.crt), over the management endpoint
 * the CLI reaches from the host. Calls time out after 5 s. Call close().
 */
export function apiserverAdminClient(paths: LabPaths, cluster: ClusterState, timeoutMs = 5000): Etcd3 {
  const dir = paths.meshDir(cluster.name);
  return new Etcd3({
    hosts: [cluster.mesh?.endpoint ?? endpoints(cluster).endpoint],
    credentials: {
      rootCertificate: readFileSync(join(dir, 'ca.crt')),
      certChain: readFileSync(join(dir, 'admin.crt')),
      privateKey: readFileSync(join(dir, 'admin.key')),
    },
    faultHandling: { host: () => noop, global: noop, watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }) as unknown as IBackoff<unknown> },
    grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000 },
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
  });
}

/** One TLS round trip as admin: the apiserver answers and the admin certificate is accepted. */
export async function apiserverHealth(paths: LabPaths, cluster: ClusterState): Promise<ApiserverHealth> {
  const endpoint = cluster.mesh?.endpoint ?? endpoints(cluster).endpoint;
  let client: Etcd3;
  try {
    client = apiserverAdminClient(paths, cluster, 3000);
  } catch (err) {
    return { ok: false, endpoint, error: `admin credentials: ${errorMessage(err)}` };
  }
  try {
    await client.maintenance.status();
    return { ok: true, endpoint };
  } catch (err) {
    return { ok: false, endpoint, error: errorMessage(err) };
  } finally {
    client.close();
  }
}

function prefixEnd(prefix: string): Buffer {
  const end = Buffer.from(prefix);
  end[end.length - 1]++;
  return end;
}

async function ignore<T>(p: Promise<T>, ...types: Array<new (...a: any[]) => Error>): Promise<T | undefined> {
  try {
    return await p;
  } catch (err) {
    if (types.some((t) => err instanceof t)) return undefined;
    throw err;
  }
}

/**
 * Give `peer`'s agents read access: role `remote-<peer>` (READ on mesh/v1/), user `remote-<peer>`
 * (no password; etcd takes the user from the certificate CN) and its client certificate, written to
 * clusters/<c>/mesh/remote-<peer>.crt/.key. Idempotent: an existing certificate is reissued.
 */
export async function addPeerUser(paths: LabPaths, cluster: ClusterState, peer: string): Promise<CertKeyPair> {
  const name = `${MESH_PEER_USER_PREFIX}${peer}`;
  const client = apiserverAdminClient(paths, cluster);
  try {
    await ignore(client.auth.roleAdd({ name }), EtcdRoleExistsError);
    await client.auth.roleGrantPermission({ name, perm: { permType: 'Read', key: Buffer.from(MESH_PREFIX), range_end: prefixEnd(MESH_PREFIX) } });
    await ignore(client.auth.userAdd({ name, options: { no_password: true } }), EtcdUserExistsError);
    await client.auth.userGrantRole({ user: name, role: name });
  } catch (err) {
    throw new OperationError(`add peer user ${name} on ${cluster.name}: ${errorMessage(err)}`, { cause: err });
  } finally {
    client.close();
  }
  return issuePeerCertificate(paths, cluster.name, peer);
}

/** Revoke `peer`: delete its user and role and its certificate files. Idempotent. */
export async function removePeerUser(paths: LabPaths, cluster: ClusterState, peer: string): Promise<void> {
  const name = `${MESH_PEER_USER_PREFIX}${peer}`;
  const client = apiserverAdminClient(paths, cluster);
  try {
    await ignore(client.auth.userDelete({ name }), EtcdUserNotFoundError);
    await ignore(client.auth.roleDelete({ role: name }), EtcdRoleNotFoundError);
  } catch (err) {
    throw new OperationError(`remove peer user ${name} on ${cluster.name}: ${errorMessage(err)}`, { cause: err });
  } finally {
    client.close();
  }
  const base = peerCertBase(peer);
  await rm(file(paths, cluster.name, `${base}.crt`), { force: true });
  await rm(file(paths, cluster.name, `${base}.key`), { force: true });
}

/** Peers with a user on this cluster's apiserver (cluster names, sorted). */
export async function listPeerUsers(paths: LabPaths, cluster: ClusterState): Promise<string[]> {
  const client = apiserverAdminClient(paths, cluster);
  try {
    const r = await client.auth.userList();
    return (r.users ?? [])
      .filter((u) => u.startsWith(MESH_PEER_USER_PREFIX))
      .map((u) => u.slice(MESH_PEER_USER_PREFIX.length))
      .sort();
  } finally {
    client.close();
  }
}

/**
 * Trust these CAs besides the cluster's own (peers whose agents present certificates of another
 * CA). Rewrites the bundle file and the proc spec; the supervisor restarts etcd when it changed.
 * An empty list goes back to ca.crt alone.
 */
export async function setTrustedCas(paths: LabPaths, cluster: ClusterState | string, extraCaPems: readonly string[]): Promise<void> {
  const c = typeof cluster === 'string' ? await clusterState(paths, cluster) : cluster;
  const own = await readFile(file(paths, c.name, 'ca.crt'), 'utf8');
  const combined = bundle(own, ...extraCaPems);
  const b = file(paths, c.name, TRUSTED_BUNDLE);
  if (combined === bundle(own)) await rm(b, { force: true });
  else await writeSecretFile(b, combined, 0o644);
  writeProcSpec(paths, c.name, apiserverProcSpec(paths, c));
}

async function clusterState(paths: LabPaths, name: string): Promise<ClusterState> {
  const lab = await readLabState(paths);
  const c = lab?.clusters[name];
  if (!c) {
    const known = lab ? Object.keys(lab.clusters).sort() : [];
    throw new NotFoundError('context', `unknown context "${name}"; known clusters: ${known.length ? known.join(', ') : '(none)'}`);
  }
  return c;
}

const exists = (p: string): Promise<boolean> =>
  access(p).then(
    () => true,
    () => false,
  );

/** Wait until a supervised process is gone (its spec was removed). */
async function waitProcGone(paths: LabPaths, cluster: string, name: string, timeoutMs = 6000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let pid = procPid(paths, cluster, name);
  while (pid && Date.now() < deadline) {
    await sleep(50);
    pid = procPid(paths, cluster, name);
  }
  // No supervisor to stop it (or it missed it): stop it here.
  if (pid && pidAlive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    for (let i = 0; i < 40 && pidAlive(pid); i++) await sleep(25);
  }
  await rm(join(paths.runDir(cluster), `${name}.pid`), { force: true });
}

async function waitHealthy(paths: LabPaths, c: ClusterState, onWait?: (msg: string) => void): Promise<void> {
  const started = Date.now();
  const deadline = started + MESH_APISERVER_READY_TIMEOUT_MS;
  let lastSaid = started;
  let last = '';
  for (;;) {
    const h = await apiserverHealth(paths, c);
    if (h.ok) return;
    last = h.error ?? 'no answer';
    if (Date.now() > deadline) {
      throw new OperationError(
        `clustermesh-apiserver of ${c.name} did not answer on ${h.endpoint} within ${MESH_APISERVER_READY_TIMEOUT_MS / 1000}s: ${last}; see ${logFile(paths, c.name, APISERVER_PROC)}`,
      );
    }
    if (Date.now() - lastSaid > 3000) {
      lastSaid = Date.now();
      onWait?.(`⌛ Waiting (${Math.round((Date.now() - started) / 1000)}s) for the clustermesh-apiserver of ${c.name}: ${last}`);
    }
    await sleep(200);
  }
}

/** Users and roles: root (admin certificate CN) with the root role, then auth on. Idempotent. */
async function enableAuth(paths: LabPaths, c: ClusterState): Promise<boolean> {
  const client = apiserverAdminClient(paths, c);
  try {
    const status = await client.auth.userList().catch(() => ({ users: [] as string[] }));
    let changed = false;
    if (!(status.users ?? []).includes(MESH_ADMIN_USER)) {
      await ignore(client.auth.userAdd({ name: MESH_ADMIN_USER, options: { no_password: true } }), EtcdUserExistsError);
      changed = true;
    }
    await ignore(client.auth.roleAdd({ name: 'root' }), EtcdRoleExistsError);
    await client.auth.userGrantRole({ user: MESH_ADMIN_USER, role: 'root' });
    await client.auth.authEnable();
    return changed;
  } catch (err) {
    throw new OperationError(`enable auth on the clustermesh-apiserver of ${c.name}: ${errorMessage(err)}`, { cause: err });
  } finally {
    client.close();
  }
}

/** Certificates the apiserver uses, with what each must satisfy to be kept. */
function certPlan(c: ClusterState): Array<{ base: string; commonName: string; usage: 'server' | 'client'; ips: string[] }> {
  return [
    { base: 'server', commonName: 'clustermesh-apiserver', usage: 'server', ips: [c.controlPlane.vpcIp, c.controlPlane.mgmtIp, '127.0.0.1'] },
    { base: 'admin', commonName: MESH_ADMIN_USER, usage: 'client', ips: [] },
  ];
}

/** Is an existing cert/key pair still good for its role (CA, usage, SANs, validity)? */
async function certUsable(paths: LabPaths, c: string, base: string, usage: 'server' | 'client', ips: string[], caPem: string): Promise<boolean> {
  try {
    const certPem = await readFile(file(paths, c, `${base}.crt`), 'utf8');
    await readFile(file(paths, c, `${base}.key`), 'utf8');
    for (const address of ips.length ? ips : [undefined]) verifyCertificate({ name: `${base}.crt`, certPem, caBundlePem: caPem, usage, address });
    return true;
  } catch {
    return false;
  }
}

/**
 * Enable the cluster mesh on a lab cluster: CA, server and admin certificates, the apiserver etcd
 * with auth, the export process, and ClusterState.mesh in lab.json. Idempotent: a second run keeps
 * the CA and repairs only what is missing. On failure it undoes what this run made.
 */
export async function enableCluster(paths: LabPaths, opts: EnableOptions): Promise<EnableResult> {
  if (Boolean(opts.caCertFile) !== Boolean(opts.caKeyFile)) {
    throw new ValidationError('ca-key', 'together', '--ca-cert and --ca-key go together: give both or neither');
  }
  const own = opts.caCertFile && opts.caKeyFile ? { certFile: opts.caCertFile, keyFile: opts.caKeyFile } : undefined;
  const step = opts.onStep ?? (() => {});
  return withLabLock(paths, async () => {
    const c = await clusterState(paths, opts.context);
    const dir = paths.meshDir(c.name);
    const ep = endpoints(c);
    const alreadyEnabled = c.mesh !== undefined;
    if (opts.dryRun) return planEnable(paths, c, own, alreadyEnabled);

    const actions: string[] = [];
    const hadDir = await exists(dir);
    const hadLabCa = await exists(join(paths.meshCaDir, 'ca.crt'));
    const made: string[] = [];
    const wroteProcs: string[] = [];
    try {
      const hadCa = await exists(join(dir, 'ca.crt'));
      const ca = await ensureClusterCa(paths, c.name, own);
      if (!hadCa) {
        actions.push(`CA ${ca.shared ? 'lab shared' : own!.certFile} (sha256 ${ca.fingerprint.slice(0, 16)}…)`);
        made.push(join(dir, 'ca.crt'), join(dir, 'ca.key'));
        step(`✅ Mesh CA: ${ca.shared ? 'the lab CA' : own!.certFile} (sha256 ${ca.fingerprint.slice(0, 16)}…)`);
      }
      if (alreadyEnabled && c.mesh!.caFingerprint !== ca.fingerprint) {
        throw new OperationError(`cluster ${c.name} was enabled with CA ${c.mesh!.caFingerprint.slice(0, 16)}… but ${join(dir, 'ca.crt')} is ${ca.fingerprint.slice(0, 16)}…; run 'meshctl disable --context ${c.name} --force' and enable again`);
      }
      for (const p of certPlan(c)) {
        if (await certUsable(paths, c.name, p.base, p.usage, p.ips, ca.certPem)) continue;
        await writeIssued(paths, c.name, p.base, { commonName: p.commonName, usage: p.usage, ips: p.ips });
        made.push(file(paths, c.name, `${p.base}.crt`), file(paths, c.name, `${p.base}.key`));
        actions.push(`certificate ${p.base}.crt (CN ${p.commonName})`);
        step(`✅ Certificate ${p.base}.crt (CN ${p.commonName}${p.ips.length ? `, SANs ${p.ips.join(', ')}` : ''})`);
      }
      if (!(await exists(join(dir, 'data')))) {
        await mkdir(join(dir, 'data'), { recursive: true, mode: 0o700 });
        actions.push('apiserver data dir');
      }
      await ensureSupervisor(paths, c.name);
      const spec = apiserverProcSpec(paths, c);
      if (!(await sameSpec(paths, c.name, spec))) {
        writeProcSpec(paths, c.name, spec);
        wroteProcs.push(APISERVER_PROC);
        actions.push(`process ${APISERVER_PROC}`);
      }
      step(`⌛ Waiting for the clustermesh-apiserver on ${ep.endpoint}…`);
      await waitHealthy(paths, c, step);
      if (await enableAuth(paths, c)) actions.push('etcd auth (user root)');
      const exp = exportProcSpec(paths, c);
      if (!(await sameSpec(paths, c.name, exp))) {
        writeProcSpec(paths, c.name, exp);
        wroteProcs.push(EXPORT_PROC);
        actions.push(`process ${EXPORT_PROC}`);
      }
      const lab = await readLabState(paths);
      if (!lab?.clusters[c.name]) throw new NotFoundError('context', `cluster ${c.name} disappeared from ${paths.stateFile}`);
      const mesh = { ...ep, caFingerprint: ca.fingerprint, enabledAt: c.mesh?.enabledAt ?? new Date().toISOString() };
      if (JSON.stringify(lab.clusters[c.name].mesh) !== JSON.stringify(mesh)) {
        lab.clusters[c.name].mesh = mesh;
        await writeLabState(paths, lab);
        if (!alreadyEnabled) actions.push('lab.json mesh');
      }
      return { cluster: c.name, alreadyEnabled, dryRun: false, actions, ...ep, caFingerprint: ca.fingerprint, caShared: ca.shared };
    } catch (err) {
      // Undo this run only: what was there before stays.
      for (const p of wroteProcs.reverse()) removeProcSpec(paths, c.name, p);
      for (const p of wroteProcs) await waitProcGone(paths, c.name, p);
      if (!hadDir) await rm(dir, { recursive: true, force: true });
      else for (const f of made) await rm(f, { force: true });
      if (!hadLabCa) await rm(paths.meshCaDir, { recursive: true, force: true });
      throw err;
    }
  });
}

async function sameSpec(paths: LabPaths, c: string, spec: ProcSpec): Promise<boolean> {
  try {
    return (await readFile(join(paths.procsDir(c), `${spec.name}.json`), 'utf8')) === JSON.stringify(spec);
  } catch {
    return false;
  }
}

/** What enable would do, changing nothing (validates --ca-cert/--ca-key the same way). */
async function planEnable(paths: LabPaths, c: ClusterState, own: { certFile: string; keyFile: string } | undefined, alreadyEnabled: boolean): Promise<EnableResult> {
  const dir = paths.meshDir(c.name);
  const ep = endpoints(c);
  const actions: string[] = [];
  let fingerprint = '';
  let shared: boolean | null = null;
  let caPem: string | null = await readFile(join(dir, 'ca.crt'), 'utf8').catch(() => null);
  if (own) {
    const certPem = await readFile(own.certFile, 'utf8').catch((err) => {
      throw new OperationError(`certificate ${own.certFile}: cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
    });
    const keyPem = await readFile(own.keyFile, 'utf8').catch((err) => {
      throw new OperationError(`certificate ${own.keyFile}: cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
    });
    validateCa(own.certFile, certPem, own.keyFile, keyPem);
    if (caPem && caFingerprint(caPem) !== caFingerprint(certPem)) {
      throw new OperationError(`cluster ${c.name} already uses mesh CA ${caFingerprint(caPem).slice(0, 16)}…; --ca-cert ${own.certFile} is CA ${caFingerprint(certPem).slice(0, 16)}…; run 'meshctl disable --context ${c.name}' first to change it`);
    }
  }
  if (caPem) {
    fingerprint = caFingerprint(caPem);
    const lab = await readFile(join(paths.meshCaDir, 'ca.crt'), 'utf8').catch(() => null);
    shared = lab !== null && caFingerprint(lab) === fingerprint;
  } else if (own) {
    const certPem = await readFile(own.certFile, 'utf8');
    caPem = certPem;
    fingerprint = caFingerprint(certPem);
    shared = false;
    actions.push(`copy CA ${own.certFile} to ${join(dir, 'ca.crt')}`);
  } else {
    const lab = await readFile(join(paths.meshCaDir, 'ca.crt'), 'utf8').catch(() => null);
    if (lab) fingerprint = caFingerprint(lab);
    else actions.push(`create the lab CA in ${paths.meshCaDir}`);
    actions.push(`copy the lab CA to ${join(dir, 'ca.crt')}`);
    shared = true;
  }
  for (const p of certPlan(c)) {
    if (caPem && (await certUsable(paths, c.name, p.base, p.usage, p.ips, caPem))) continue;
    actions.push(`issue ${join(dir, `${p.base}.crt`)} (CN ${p.commonName}${p.ips.length ? `, SANs ${p.ips.join(', ')}` : ''})`);
  }
  if (!(await exists(join(dir, 'data')))) actions.push(`create ${join(dir, 'data')}`);
  const spec = apiserverProcSpec(paths, c, caPem ? undefined : { file: join(dir, 'ca.crt'), hash: '' });
  if (!(await sameSpec(paths, c.name, spec))) actions.push(`start ${APISERVER_PROC}: ${spec.argv.join(' ')}`);
  if (!alreadyEnabled) actions.push(`enable etcd auth (user ${MESH_ADMIN_USER}, role root)`);
  const exp = exportProcSpec(paths, c);
  if (!(await sameSpec(paths, c.name, exp))) actions.push(`start ${EXPORT_PROC}: ${exp.argv.slice(2).join(' ')}`);
  if (!alreadyEnabled) actions.push(`record mesh endpoint ${ep.endpoint} in ${paths.stateFile}`);
  return { cluster: c.name, alreadyEnabled, dryRun: true, actions, ...ep, caFingerprint: fingerprint, caShared: shared };
}

/** Peers connected to this cluster: users on its apiserver (or their certificate files) and MeshPeer objects in its store. */
async function connectedPeers(paths: LabPaths, c: ClusterState): Promise<string[]> {
  const peers = new Set<string>();
  const files = await readdir(paths.meshDir(c.name)).catch(() => [] as string[]);
  for (const f of files) {
    const m = new RegExp(`^${MESH_PEER_USER_PREFIX}(.+)\\.crt$`).exec(f);
    if (m) peers.add(m[1]);
  }
  if ((await apiserverHealth(paths, c)).ok) for (const p of await listPeerUsers(paths, c)) peers.add(p);
  const store = new EtcdClusterClient({ endpoints: [c.store.endpoint], timeoutMs: 3000 });
  try {
    for (const o of (await store.list(MESH_PEER_RESOURCE)).items) peers.add(o.metadata.name);
  } catch {
    /* store down: users and files decide */
  } finally {
    await store.close();
  }
  return [...peers].sort();
}

/**
 * Disable the cluster mesh: stop the apiserver and the export process, remove clusters/<c>/mesh/ and
 * ClusterState.mesh. Refuses while peers are connected unless force. Idempotent.
 */
export async function disableCluster(paths: LabPaths, opts: DisableOptions): Promise<DisableResult> {
  return withLabLock(paths, async () => {
    const c = await clusterState(paths, opts.context);
    const dir = paths.meshDir(c.name);
    const hasSpecs = (await exists(join(paths.procsDir(c.name), `${APISERVER_PROC}.json`))) || (await exists(join(paths.procsDir(c.name), `${EXPORT_PROC}.json`)));
    const wasEnabled = c.mesh !== undefined || (await exists(dir)) || hasSpecs;
    if (!wasEnabled) return { cluster: c.name, wasEnabled, peers: [] };
    const peers = await connectedPeers(paths, c);
    if (peers.length > 0 && !opts.force) {
      throw new OperationError(`cluster ${c.name} has connected peers (${peers.join(', ')}): disconnect them first, or use --force`);
    }
    removeProcSpec(paths, c.name, EXPORT_PROC);
    removeProcSpec(paths, c.name, APISERVER_PROC);
    await waitProcGone(paths, c.name, EXPORT_PROC);
    await waitProcGone(paths, c.name, APISERVER_PROC);
    await rm(dir, { recursive: true, force: true });
    const lab = await readLabState(paths);
    if (lab?.clusters[c.name]?.mesh) {
      delete lab.clusters[c.name].mesh;
      await writeLabState(paths, lab);
    }
    return { cluster: c.name, wasEnabled, peers };
  });
}
