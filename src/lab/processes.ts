/** Starting and stopping a cluster's supervisor, and the process specs of its parts. */
import { spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { STORE_CLIENT_PORT, STORE_PEER_PORT } from '../defaults.js';
import { OperationError } from '../util/errors.js';
import { pidAlive, sleep } from '../util/exec.js';
import { MESHCTL_BIN } from '../util/self.js';
import type { ClusterState, LabPaths, LabState, NodeState } from './state.js';
import { supervisorPid, type ProcSpec } from './supervisor.js';

/** Start the cluster's supervisor if it is not running; returns its pid. */
export async function ensureSupervisor(paths: LabPaths, cluster: string): Promise<number> {
  const running = supervisorPid(paths, cluster);
  if (running) return running;
  mkdirSync(paths.logsDir(cluster), { recursive: true });
  mkdirSync(paths.runDir(cluster), { recursive: true });
  const logFd = openSync(join(paths.logsDir(cluster), 'supervisor.log'), 'a');
  const child = spawn(process.execPath, [MESHCTL_BIN, 'lab', 'supervise', '--cluster', cluster], {
    detached: true,
    stdio: ['ignore', logFd, logFd],
    env: { ...process.env, MESHCTL_HOME: paths.home },
  });
  closeSync(logFd);
  child.unref();
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const pid = supervisorPid(paths, cluster);
    if (pid) return pid;
    if (child.exitCode !== null) break;
    await sleep(50);
  }
  throw new OperationError(`supervisor of cluster ${cluster} did not start; see ${join(paths.logsDir(cluster), 'supervisor.log')}`);
}

/** Stop a cluster's supervisor and every process it started (one process group). */
export async function stopSupervisor(paths: LabPaths, cluster: string): Promise<void> {
  const pid = supervisorPid(paths, cluster);
  if (!pid) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* group gone */
  }
  for (let i = 0; i < 40 && pidAlive(pid); i++) await sleep(25);
}

/** Store etcd auto-compaction: by age of the history (etcd's periodic mode), 5 minutes. */
export const STORE_AUTO_COMPACTION_MODE = 'periodic';
export const STORE_AUTO_COMPACTION_RETENTION = '5m';

export function storeProcSpec(paths: LabPaths, c: ClusterState): ProcSpec {
  const peer = `http://127.0.0.1:${STORE_PEER_PORT}`;
  return {
    name: 'store',
    netns: c.controlPlane.netns,
    argv: [
      'etcd',
      '--name', c.name,
      '--data-dir', paths.storeDir(c.name),
      '--listen-client-urls', `http://0.0.0.0:${STORE_CLIENT_PORT}`,
      '--advertise-client-urls', c.store.internalEndpoint,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `${c.name}=${peer}`,
      // Keep 5 minutes of history: enough for a watch that lags behind to catch up, while the
      // history of a churning store (pods, identity touches) stays bounded. An informer whose
      // watch falls further behind gets ExpiredError and lists again.
      '--auto-compaction-mode', STORE_AUTO_COMPACTION_MODE,
      '--auto-compaction-retention', STORE_AUTO_COMPACTION_RETENTION,
      '--logger', 'zap',
      '--log-level', 'warn',
    ],
  };
}

export function agentProcName(node: string): string {
  return `agent-${node}`;
}

export function agentProcSpec(paths: LabPaths, lab: LabState, c: ClusterState, n: NodeState): ProcSpec {
  return {
    name: agentProcName(n.name),
    netns: n.netns,
    argv: [
      process.execPath,
      MESHCTL_BIN,
      'agent',
      '--cluster', c.name,
      '--cluster-id', String(c.id),
      '--node', n.name,
      '--node-ip', n.ip,
      '--pod-cidr', n.podCidr,
      '--router-ip', n.routerIp,
      '--vpc', n.vpc,
      '--routing', c.routing,
      '--store', c.store.internalEndpoint,
      '--lab', lab.prefix,
      '--node-index', String(n.index),
      '--flows-socket', join(paths.runDir(c.name), `flows-${n.name}.sock`),
    ],
    env: { MESHCTL_HOME: paths.home },
  };
}
