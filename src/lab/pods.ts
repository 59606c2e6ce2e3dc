/**
 * Lab pods: what a kubelet and a CNI plugin would do. A pod is a network namespace whose eth0
 * pairs with an `lxc…` device in its node, with a /32 address from the node's slice of the pod
 * CIDR, a default route to the node's router IP, and the echo workload kept alive by the
 * cluster's supervisor.
 *
 *   pod netns:  eth0 10.1.0.7/32, default via 10.1.0.1 (onlink)
 *   node netns: lxc1a2b3c4d, route 10.1.0.7/32 dev lxc1a2b3c4d; 10.1.0.1/32 on lo
 *
 * Pods are built in bulk: one `ip -batch` makes every namespace, one per node makes all its
 * lxc pairs and routes, and one per pod sets up the inside (`ip -batch` cannot switch
 * namespaces per line). The workload says it listens by writing a ready file, so waiting for
 * hundreds of pods is a directory read, not a process per pod.
 */
import { existsSync, rmSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { POD_MTU, WORKLOAD_READY_TIMEOUT_MS } from '../defaults.js';
import type { EtcdClusterClient } from '../cluster/etcd-client.js';
import { formatIp, parseCidr } from '../util/cidr.js';
import { OperationError } from '../util/errors.js';
import { ipBatch, run, sleep } from '../util/exec.js';
import { ECHO_BIN } from './echo.js';
import { addNetnsMany, deleteNetnsMany } from './netns.js';
import { clusterNetnsPrefix, shortHash, type ClusterState, type LabPaths, type LabState, type NodeState } from './state.js';
import { removeProcSpec, writeProcSpec, type ProcSpec } from './supervisor.js';

/** Store round trips for pods in flight at once. */
export const POD_CONCURRENCY = 8;

/** `ip -batch` processes configuring the inside of pods side by side (one per core here). */
const POD_CONFIG_BATCHES = 2;

export function podNetns(lab: LabState, cluster: string, namespace: string, pod: string): string {
  return `${clusterNetnsPrefix(lab.prefix, cluster)}p${shortHash(`${namespace}/${pod}`, 10)}`;
}

export function podLxcName(cluster: string, namespace: string, pod: string): string {
  return `lxc${shortHash(`${cluster}/${namespace}/${pod}`, 8)}`;
}

export function podProcName(namespace: string, pod: string): string {
  return `pod-${namespace}-${pod}`;
}

const IPAM_PODS = '/registry/meshctl/ipam/pods/';

/**
 * Pod addresses for one apply: the used set is read from the store once, then each address is
 * claimed with a transactional create (a lost race marks it used and takes the next one).
 */
export class PodIpAllocator {
  private used: Set<string> | null = null;
  private loading: Promise<Set<string>> | null = null;

  constructor(private readonly store: EtcdClusterClient) {}

  /** Claim the lowest free address of a node's slice. Safe to call concurrently. */
  async allocate(node: NodeState, owner: string): Promise<string> {
    this.loading ??= this.store.keys(IPAM_PODS).then((keys) => (this.used = new Set(keys.map((k) => k.slice(IPAM_PODS.length)))));
    this.used ??= await this.loading;
    const slice = parseCidr(node.podCidr)!;
    const size = 2 ** (32 - slice.prefix);
    // .0 network, .1 the node's router, last broadcast
    for (let i = 2; i < size - 1; i++) {
      const addr = formatIp(slice.network + i);
      if (this.used.has(addr)) continue;
      this.used.add(addr);
      if (await this.store.createKey(IPAM_PODS + addr, JSON.stringify({ owner, node: node.name }))) return addr;
    }
    throw new OperationError(`no free pod address in ${node.podCidr} of node ${node.name}`);
  }

  async release(addr: string): Promise<void> {
    await this.store.deleteKey(IPAM_PODS + addr);
    this.used?.delete(addr);
  }
}

/** Allocate the lowest free address of a node's slice (transactional create in the store). */
export async function allocatePodIp(store: EtcdClusterClient, node: NodeState, owner: string): Promise<string> {
  return new PodIpAllocator(store).allocate(node, owner);
}

export async function releasePodIp(store: EtcdClusterClient, addr: string): Promise<void> {
  await store.deleteKey(IPAM_PODS + addr);
}

export interface PodPlumbing {
  readonly netns: string;
  readonly lxc: string;
  readonly ip: string;
}

export interface NodePod {
  readonly node: NodeState;
  readonly plumbing: PodPlumbing;
}

/** Run fn over items, at most `limit` at a time; the first failure rejects (after the rest settle). */
export async function eachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown = null;
  const worker = async (): Promise<void> => {
    while (next < items.length && failure === null) {
      const item = items[next++];
      try {
        await fn(item);
      } catch (err) {
        failure ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== null) throw failure;
}

/** Called with the time each phase of a bulk operation took. */
export type PhaseTimer = (phase: string, ms: number) => void;

async function timed<T>(onPhase: PhaseTimer | undefined, phase: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    onPhase?.(phase, performance.now() - t0);
  }
}

/** Build the pods' namespaces and links into their nodes. Phases: netns, links, pod-config. */
export async function plumbPods(pods: readonly NodePod[], onPhase?: PhaseTimer): Promise<void> {
  if (pods.length === 0) return;
  await timed(onPhase, 'netns', () => addNetnsMany(pods.map((x) => x.plumbing.netns)));
  const byNode = new Map<string, NodePod[]>();
  for (const x of pods) byNode.set(x.node.netns, [...(byNode.get(x.node.netns) ?? []), x]);
  await timed(onPhase, 'links', () => Promise.all(
    [...byNode.entries()].map(([nodeNetns, list]) =>
      ipBatch(
        list.flatMap(({ plumbing: p }) => [
          `link add ${p.lxc} mtu ${POD_MTU} type veth peer name eth0 mtu ${POD_MTU} netns ${p.netns}`,
          `link set ${p.lxc} up`,
          `route replace ${p.ip}/32 dev ${p.lxc} scope link`,
        ]),
        nodeNetns,
      ),
    ),
  ));
  // Inside each pod: `ip -batch` cannot switch namespaces per line, but it can run
  // `netns exec POD ip -batch FILE`, a fork in C rather than a process spawned from here.
  await timed(onPhase, 'pod-config', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'meshctl-pods-'));
    try {
      const lines = await Promise.all(
        pods.map(async ({ node, plumbing: p }, i) => {
          const file = join(dir, `${i}.batch`);
          await writeFile(
            file,
            [
              'link set lo up',
              'link set eth0 up',
              `addr add ${p.ip}/32 dev eth0`,
              `route add ${node.routerIp} dev eth0 scope link`,
              `route add default via ${node.routerIp} dev eth0 mtu ${POD_MTU}`,
            ].join('\n') + '\n',
          );
          return `netns exec ${p.netns} ip -batch ${file}`;
        }),
      );
      const per = Math.ceil(lines.length / POD_CONFIG_BATCHES);
      const chunks = Array.from({ length: Math.ceil(lines.length / per) }, (_, k) => lines.slice(k * per, (k + 1) * per));
      await Promise.all(chunks.map((chunk) => run('ip', ['-batch', '-'], { input: chunk.join('\n') + '\n', timeoutMs: 120_000 })));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}

/** Build one pod's namespace and link into its node. */
export async function plumbPod(node: NodeState, p: PodPlumbing): Promise<void> {
  await plumbPods([{ node, plumbing: p }]);
}

/**
 * Remove pods' namespaces (killing what runs in them). Deleting a namespace deletes its end of
 * the veth and so the lxc end in the node; an lxc left over from a half-built pod goes too.
 */
export async function unplumbPods(pods: ReadonlyArray<{ readonly node: NodeState | undefined; readonly plumbing: PodPlumbing }>): Promise<void> {
  await deleteNetnsMany(pods.map((x) => x.plumbing.netns));
  const byNode = new Map<string, string[]>();
  for (const { node, plumbing } of pods) if (node) byNode.set(node.netns, [...(byNode.get(node.netns) ?? []), plumbing.lxc]);
  await Promise.all(
    [...byNode.entries()].map(async ([nodeNetns, lxcs]) => {
      const r = await run('ip', ['-n', nodeNetns, '-o', 'link', 'show', 'type', 'veth'], { check: false });
      const left = lxcs.filter((l) => r.stdout.includes(`: ${l}@`) || r.stdout.includes(`: ${l}:`));
      if (left.length > 0) await run('ip', ['-n', nodeNetns, '-force', '-batch', '-'], { input: left.map((l) => `link del ${l}`).join('\n') + '\n', check: false });
    }),
  );
}

export async function unplumbPod(node: NodeState | undefined, p: PodPlumbing): Promise<void> {
  await unplumbPods([{ node, plumbing: p }]);
}

export interface WorkloadRef {
  readonly node: NodeState;
  readonly namespace: string;
  readonly pod: string;
  readonly plumbing: PodPlumbing;
}

/** The ready file a pod's workload writes once it listens (in the cluster's run dir). */
export function workloadReadyFile(paths: LabPaths, cluster: string, namespace: string, pod: string): string {
  return join(paths.runDir(cluster), `${podProcName(namespace, pod)}.ready`);
}

export function workloadProcSpec(paths: LabPaths, c: ClusterState, w: WorkloadRef): ProcSpec {
  return {
    name: podProcName(w.namespace, w.pod),
    netns: w.plumbing.netns,
    argv: [ECHO_BIN, c.name, w.node.name, w.namespace, w.pod, w.plumbing.ip, '--ready-file', workloadReadyFile(paths, c.name, w.namespace, w.pod)],
  };
}

export { timed };

/** Start the pods' workloads under the supervisor and wait until every one listens. */
export async function startWorkloads(paths: LabPaths, c: ClusterState, pods: readonly WorkloadRef[], timeoutMs = WORKLOAD_READY_TIMEOUT_MS): Promise<void> {
  if (pods.length === 0) return;
  if (!existsSync(ECHO_BIN)) throw new OperationError(`the pod workload ${ECHO_BIN} is missing: run 'make build'`);
  const waiting = new Map<string, WorkloadRef>();
  for (const w of pods) {
    const ready = `${podProcName(w.namespace, w.pod)}.ready`;
    await rm(join(paths.runDir(c.name), ready), { force: true });
    waiting.set(ready, w);
  }
  for (const w of pods) writeProcSpec(paths, c.name, workloadProcSpec(paths, c, w));
  // The supervisor starts them one after another, slowly on a busy machine: give up only when
  // none became ready for timeoutMs, not after a fixed time for the lot.
  let progressAt = Date.now();
  while (Date.now() - progressAt < timeoutMs) {
    const before = waiting.size;
    for (const f of await readdir(paths.runDir(c.name)).catch(() => [] as string[])) waiting.delete(f);
    if (waiting.size === 0) return;
    if (waiting.size < before) progressAt = Date.now();
    await sleep(25);
  }
  const late = [...waiting.values()].map((w) => `${w.namespace}/${w.pod}`);
  throw new OperationError(
    `workload of pod${late.length > 1 ? 's' : ''} ${late.slice(0, 3).join(', ')}${late.length > 3 ? ` and ${late.length - 3} more` : ''} did not start listening ` +
      `(${pods.length - late.length} of ${pods.length} did; none more for ${Math.round(timeoutMs / 1000)}s); see ${paths.logsDir(c.name)}`,
  );
}

/** Start one pod's workload under the supervisor and wait until it listens. */
export async function startWorkload(paths: LabPaths, c: ClusterState, node: NodeState, namespace: string, pod: string, p: PodPlumbing): Promise<void> {
  await startWorkloads(paths, c, [{ node, namespace, pod, plumbing: p }]);
}

export function stopWorkload(paths: LabPaths, cluster: string, namespace: string, pod: string): void {
  removeProcSpec(paths, cluster, podProcName(namespace, pod));
  rmSync(workloadReadyFile(paths, cluster, namespace, pod), { force: true });
}
