/**
 * Lab pods: what a kubelet and a CNI plugin would do. A pod is a network namespace whose eth0
 * pairs with an `lxc…` device in its node, with a /32 address from the node's slice of the pod
 * CIDR, a default route to the node's router IP, and the echo workload kept alive by the
 * cluster's supervisor.
 *
 *   pod netns:  eth0 10.1.0.7/32, default via 10.1.0.1 (onlink)
 *   node netns: lxc1a2b3c4d, route 10.1.0.7/32 dev lxc1a2b3c4d; 10.1.0.1/32 on lo
 */
import { ECHO_HTTP_PORT, POD_MTU, WORKLOAD_READY_TIMEOUT_MS } from '../defaults.js';
import type { EtcdClusterClient } from '../cluster/etcd-client.js';
import { formatIp, parseCidr } from '../util/cidr.js';
import { OperationError } from '../util/errors.js';
import { ip, ipBatch, run, sleep } from '../util/exec.js';
import { ECHO_MAIN } from '../util/self.js';
import { addNetns, deleteNetns } from './netns.js';
import { clusterNetnsPrefix, shortHash, type ClusterState, type LabPaths, type LabState, type NodeState } from './state.js';
import { removeProcSpec, writeProcSpec } from './supervisor.js';

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

/** Allocate the lowest free address of a node's slice (transactional create in the store). */
export async function allocatePodIp(store: EtcdClusterClient, node: NodeState, owner: string): Promise<string> {
  const slice = parseCidr(node.podCidr)!;
  const size = 2 ** (32 - slice.prefix);
  const used = new Set((await store.keys(IPAM_PODS)).map((k) => k.slice(IPAM_PODS.length)));
  // .0 network, .1 the node's router, last broadcast
  for (let i = 2; i < size - 1; i++) {
    const addr = formatIp(slice.network + i);
    if (used.has(addr)) continue;
    if (await store.createKey(IPAM_PODS + addr, JSON.stringify({ owner, node: node.name }))) return addr;
  }
  throw new OperationError(`no free pod address in ${node.podCidr} of node ${node.name}`);
}

export async function releasePodIp(store: EtcdClusterClient, addr: string): Promise<void> {
  await store.deleteKey(IPAM_PODS + addr);
}

export interface PodPlumbing {
  readonly netns: string;
  readonly lxc: string;
  readonly ip: string;
}

/** Build the pod's namespace and link into its node. */
export async function plumbPod(node: NodeState, p: PodPlumbing): Promise<void> {
  await addNetns(p.netns);
  await ip(['link', 'add', p.lxc, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', p.netns], node.netns);
  await ipBatch([`link set ${p.lxc} mtu ${POD_MTU}`, `link set ${p.lxc} up`, `route replace ${p.ip}/32 dev ${p.lxc} scope link`], node.netns);
  await ipBatch(
    [
      `link set eth0 mtu ${POD_MTU}`,
      `link set eth0 up`,
      `addr add ${p.ip}/32 dev eth0`,
      `route add ${node.routerIp} dev eth0 scope link`,
      `route add default via ${node.routerIp} dev eth0 mtu ${POD_MTU}`,
    ],
    p.netns,
  );
}

export async function unplumbPod(node: NodeState | undefined, p: PodPlumbing): Promise<void> {
  await deleteNetns(p.netns);
  if (node) await ip(['link', 'del', p.lxc], node.netns, false);
}

/** Start the pod's workload under the supervisor and wait until it listens. */
export async function startWorkload(
  paths: LabPaths,
  c: ClusterState,
  node: NodeState,
  namespace: string,
  pod: string,
  p: PodPlumbing,
): Promise<void> {
  writeProcSpec(paths, c.name, {
    name: podProcName(namespace, pod),
    netns: p.netns,
    argv: [process.execPath, ECHO_MAIN, c.name, node.name, namespace, pod, p.ip],
  });
  const deadline = Date.now() + WORKLOAD_READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const r = await run('ss', ['-Hltn', `sport = :${ECHO_HTTP_PORT}`], { netns: p.netns, check: false });
    if (r.exitCode === 0 && r.stdout.trim().length > 0) return;
    await sleep(50);
  }
  throw new OperationError(`workload of pod ${namespace}/${pod} did not start listening within ${WORKLOAD_READY_TIMEOUT_MS / 1000}s`);
}

export function stopWorkload(paths: LabPaths, cluster: string, namespace: string, pod: string): void {
  removeProcSpec(paths, cluster, podProcName(namespace, pod));
}
