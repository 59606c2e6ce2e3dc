/**
 * A lab's state lives in its state dir ($MESHCTL_HOME, default ~/.meshctl):
 *
 *   lab.json                       prefix, management link, VPCs, clusters (this file's schema)
 *   lab.lock                       held while a command changes lab.json or the topology
 *   clusters/<c>/store/            the cluster's etcd data
 *   clusters/<c>/procs/<p>.json    processes the cluster's supervisor keeps alive
 *   clusters/<c>/run/<p>.pid       their pids;  clusters/<c>/logs/<p>.log  their output
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { DEFAULT_HOME_DIR, LAB_PREFIX_LENGTH, NETNS_PREFIX, ROUTING_MODES } from '../defaults.js';
import { OperationError } from '../util/errors.js';
import { withLock } from '../util/lock.js';

const NodeStateSchema = z.object({
  name: z.string(),
  index: z.number().int(),
  netns: z.string(),
  vpc: z.string(),
  ip: z.string(),
  podCidr: z.string(),
  routerIp: z.string(),
  link: z.string(),
});
export type NodeState = z.infer<typeof NodeStateSchema>;

const ClusterStateSchema = z.object({
  name: z.string(),
  id: z.number().int(),
  podCidrs: z.array(z.string()).min(1),
  serviceCidr: z.string(),
  routing: z.enum(ROUTING_MODES),
  vpcs: z.array(z.string()).min(1),
  createdAt: z.string(),
  controlPlane: z.object({
    netns: z.string(),
    vpc: z.string(),
    vpcIp: z.string(),
    mgmtIp: z.string(),
    vpcLink: z.string(),
    mgmtLink: z.string(),
  }),
  nodes: z.array(NodeStateSchema),
  /** Store URL the CLI uses (management network) and the one agents use (VPC). */
  store: z.object({ endpoint: z.string(), internalEndpoint: z.string() }),
  /**
   * Set by `meshctl enable`: the clustermesh-apiserver's URLs for the CLI (management network)
   * and for other clusters' agents (VPC), and the SHA-256 fingerprint of the cluster's mesh CA.
   */
  mesh: z
    .object({
      endpoint: z.string(),
      internalEndpoint: z.string(),
      caFingerprint: z.string(),
      enabledAt: z.string(),
    })
    .optional(),
});
export type ClusterState = z.infer<typeof ClusterStateSchema>;

const VpcStateSchema = z.object({
  index: z.number().int(),
  subnet: z.string(),
  bridge: z.string(),
  gateway: z.string(),
  nextHost: z.number().int(),
});
export type VpcState = z.infer<typeof VpcStateSchema>;

const LabStateSchema = z.object({
  version: z.literal(1),
  prefix: z.string(),
  home: z.string(),
  underlayNetns: z.string(),
  hostLink: z.string(),
  mgmt: z.object({ subnet: z.string(), hostIp: z.string(), nextHost: z.number().int() }),
  vpcs: z.record(VpcStateSchema),
  clusters: z.record(ClusterStateSchema),
});
export type LabState = z.infer<typeof LabStateSchema>;

/** Resolve the state dir: $MESHCTL_HOME or ~/.meshctl. */
export function stateHome(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(env.MESHCTL_HOME && env.MESHCTL_HOME.length > 0 ? env.MESHCTL_HOME : join(homedir(), DEFAULT_HOME_DIR));
}

/** A lab's short prefix: a hash of its state dir, so two state dirs give two labs that share nothing. */
export function labPrefix(home: string): string {
  return createHash('sha256').update(resolve(home)).digest('hex').slice(0, LAB_PREFIX_LENGTH);
}

/** Paths of one lab. */
export class LabPaths {
  constructor(readonly home: string) {}
  get stateFile(): string {
    return join(this.home, 'lab.json');
  }
  get lockFile(): string {
    return join(this.home, 'lab.lock');
  }
  clusterDir(c: string): string {
    return join(this.home, 'clusters', c);
  }
  storeDir(c: string): string {
    return join(this.clusterDir(c), 'store');
  }
  procsDir(c: string): string {
    return join(this.clusterDir(c), 'procs');
  }
  runDir(c: string): string {
    return join(this.clusterDir(c), 'run');
  }
  logsDir(c: string): string {
    return join(this.clusterDir(c), 'logs');
  }
  /** The cluster's mesh files: ca.crt/ca.key, server.*, admin.*, remote-<peer>.*, apiserver data. */
  meshDir(c: string): string {
    return join(this.clusterDir(c), 'mesh');
  }
  /** The lab's shared mesh CA (made on first `enable` unless a cluster brings its own). */
  get meshCaDir(): string {
    return join(this.home, 'mesh-ca');
  }
  supervisorPidFile(c: string): string {
    return join(this.runDir(c), 'supervisor.pid');
  }
}

/** Every namespace of a lab starts with this. */
export function labNetnsPrefix(prefix: string): string {
  return `${NETNS_PREFIX}${prefix}-`;
}

/** Every namespace of one cluster starts with this ('.' cannot occur in cluster names). */
export function clusterNetnsPrefix(prefix: string, cluster: string): string {
  return `${labNetnsPrefix(prefix)}${cluster}.`;
}

export function shortHash(text: string, len = 8): string {
  return createHash('sha256').update(text).digest('hex').slice(0, len);
}

/** Read lab.json; null when there is no lab in this state dir. A corrupt file is an error. */
export async function readLabState(paths: LabPaths): Promise<LabState | null> {
  let text: string;
  try {
    text = await readFile(paths.stateFile, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new OperationError(`lab state ${paths.stateFile} is not valid JSON; run 'meshctl lab delete --all' to start over`);
  }
  const parsed = LabStateSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new OperationError(`lab state ${paths.stateFile} is invalid at ${issue.path.join('.')}: ${issue.message}`);
  }
  return parsed.data;
}

/** Write lab.json atomically (temp file + rename). */
export async function writeLabState(paths: LabPaths, state: LabState): Promise<void> {
  await mkdir(paths.home, { recursive: true });
  const tmp = `${paths.stateFile}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(state, null, 2) + '\n');
  await rename(tmp, paths.stateFile);
}

/** Run fn holding the lab lock. */
export function withLabLock<T>(paths: LabPaths, fn: () => Promise<T>): Promise<T> {
  return withLock(paths.lockFile, fn);
}
