/**
 * The lab's network: one underlay namespace holding a management bridge (joined by the one host
 * link) and a bridge per VPC, routing between VPCs; a control-plane namespace and node namespaces
 * per cluster, each with eth0 on its VPC bridge.
 *
 *   host ── mh<prefix> ═ host0 ─┐ mgmt0 (bridge, 198.18.k.0/24) ── m<h> ═ mgmt0 (control planes)
 *                underlay netns ┤ vpc<i> (bridge) ── n<h> ═ eth0 (nodes)
 *                               │   └ gwp<i> ═ gw<i> 172.31.i.1/24: the router's leg in VPC i
 *                               └ ip_forward=1: the router between VPCs
 */
import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { BPF_PIN_ROOT, MGMT_BASE, VPC_BASE } from '../defaults.js';
import { formatCidr, formatIp, parseCidr, parseIp, cidrsOverlap, subnetAt } from '../util/cidr.js';
import { ip, ipBatch } from '../util/exec.js';
import { OperationError } from '../util/errors.js';
import { addNetns, deleteNetns, deleteNetnsMany, linkExists, listNetns, netnsSysctl } from './netns.js';
import { labNetnsPrefix, shortHash, type LabState, type NodeState, type VpcState } from './state.js';
import type { HostRoute } from './validate.js';

export function hostLinkName(prefix: string): string {
  return `mh${prefix}`;
}

export function underlayNetnsName(prefix: string): string {
  return `${labNetnsPrefix(prefix)}underlay`;
}

/** Pick a free 198.18.k.0/24 for the management link: k from the prefix, skipping host routes. */
export function pickMgmtSubnet(prefix: string, routes: readonly HostRoute[]): string {
  const base = parseIp(MGMT_BASE)!;
  const start = parseInt(prefix.slice(0, 2), 16);
  for (let i = 0; i < 256; i++) {
    const k = (start + i) % 256;
    const c = { network: base + k * 256, prefix: 24 };
    if (!routes.some((r) => cidrsOverlap(r.dst, c))) return formatCidr(c);
  }
  throw new OperationError('no free /24 in 198.18.0.0/16 for the lab management link');
}

/** Create the underlay namespace, management bridge and host link. */
export async function createUnderlay(lab: LabState): Promise<void> {
  const u = lab.underlayNetns;
  await addNetns(u);
  await netnsSysctl(u, { 'net.ipv4.ip_forward': '1' });
  await ipBatch(['link add mgmt0 type bridge', 'link set mgmt0 up'], u);
  const mgmt = parseCidr(lab.mgmt.subnet)!;
  await ip(['link', 'add', lab.hostLink, 'type', 'veth', 'peer', 'name', 'host0', 'netns', u]);
  await ipBatch([`addr add ${lab.mgmt.hostIp}/${mgmt.prefix} dev ${lab.hostLink}`, `link set ${lab.hostLink} up`]);
  await ipBatch(['link set host0 master mgmt0', 'link set host0 up'], u);
}

/** Remove everything of a lab from the host: its namespaces (and processes in them), host link, pins. */
export async function sweepLab(prefix: string): Promise<void> {
  const all = await listNetns();
  // Pods first, then nodes and control planes, the underlay last: its links pair with theirs.
  const mine = all.filter((n) => n.startsWith(labNetnsPrefix(prefix)));
  const underlay = underlayNetnsName(prefix);
  const pod = (n: string): boolean => /\.p[0-9a-f]+$/.test(n);
  await deleteNetnsMany([...mine.filter((x) => x !== underlay && pod(x)), ...mine.filter((x) => x !== underlay && !pod(x))]);
  if (mine.includes(underlay)) await deleteNetns(underlay);
  if (await linkExists(hostLinkName(prefix))) await ip(['link', 'del', hostLinkName(prefix)], undefined, false);
  await rm(join(BPF_PIN_ROOT, prefix), { recursive: true, force: true });
}

/** Add a VPC bridge to the underlay; returns its state. */
export async function createVpc(lab: LabState, name: string): Promise<VpcState> {
  const used = new Set(Object.values(lab.vpcs).map((v) => v.index));
  let index = 1;
  while (used.has(index)) index++;
  if (index > 254) throw new OperationError('too many VPCs in this lab (254 at most)');
  const subnet = subnetAt(parseCidr(VPC_BASE)!, 24, index);
  const gateway = formatIp(subnet.network + 1);
  const bridge = `vpc${index}`;
  // The router's leg in a VPC is a veth (gw<i>) whose peer is a bridge port, not an address on
  // the bridge itself: a bridge device has no encapsulation offloads, so routing VXLAN traffic out
  // of it would segment every 64 KB GSO packet in software (half the cross-VPC tunnel throughput).
  await ipBatch(
    [
      `link add ${bridge} type bridge`,
      `link set ${bridge} up`,
      `link add gw${index} address ${labMac(`${lab.prefix}/gw${index}`)} type veth peer name gwp${index}`,
      `link set gwp${index} master ${bridge}`,
      `link set gwp${index} up`,
      `addr add ${gateway}/24 dev gw${index}`,
      `link set gw${index} up`,
    ],
    lab.underlayNetns,
  );
  const vpc: VpcState = { index, subnet: formatCidr(subnet), bridge, gateway, nextHost: 10 };
  lab.vpcs[name] = vpc;
  return vpc;
}

export async function deleteVpc(lab: LabState, name: string): Promise<void> {
  const vpc = lab.vpcs[name];
  if (!vpc) return;
  await ip(['link', 'del', vpc.bridge], lab.underlayNetns, false);
  await ip(['link', 'del', `gw${vpc.index}`], lab.underlayNetns, false);
  delete lab.vpcs[name];
}

/** Next free host address in a VPC (recorded in lab state). */
export function allocVpcIp(vpc: VpcState): string {
  const subnet = parseCidr(vpc.subnet)!;
  if (vpc.nextHost > 254) throw new OperationError(`VPC subnet ${vpc.subnet} is full`);
  return formatIp(subnet.network + vpc.nextHost++);
}

export function allocMgmtIp(lab: LabState): string {
  const subnet = parseCidr(lab.mgmt.subnet)!;
  if (lab.mgmt.nextHost > 254) throw new OperationError(`management subnet ${lab.mgmt.subnet} is full`);
  return formatIp(subnet.network + lab.mgmt.nextHost++);
}

/** A stable, locally administered MAC for a lab interface, so a re-created one keeps its address. */
export function labMac(seed: string): string {
  const h = shortHash(seed, 10);
  return `02:${h.match(/../g)!.join(':')}`;
}

/**
 * Connect a namespace to a bridge of the underlay: `<uside>` there, `<inside>` in the namespace.
 * The address may have belonged to an earlier, deleted interface: forget any neighbour entry
 * for it in the underlay and on the host link, or traffic goes to the old MAC until it ages out.
 */
async function plug(lab: LabState, netns: string, bridge: string, uside: string, inside: string, addr: string): Promise<void> {
  const mac = labMac(`${lab.prefix}/${uside}/${inside}`);
  await ip(['link', 'add', uside, 'type', 'veth', 'peer', 'name', inside, 'address', mac, 'netns', netns], lab.underlayNetns);
  await ipBatch([`link set ${uside} master ${bridge}`, `link set ${uside} up`], lab.underlayNetns);
  await ipBatch([`addr add ${addr} dev ${inside}`, `link set ${inside} up`], netns);
  const hostAddr = addr.split('/')[0];
  await ip(['neigh', 'flush', 'to', hostAddr], lab.underlayNetns, false);
  if (bridge === 'mgmt0') await ip(['neigh', 'flush', 'to', hostAddr, 'dev', lab.hostLink], undefined, false);
}

export interface ControlPlaneLinks {
  readonly vpcLink: string;
  readonly mgmtLink: string;
}

export function controlPlaneLinks(prefix: string, cluster: string): ControlPlaneLinks {
  const h = shortHash(`${prefix}/${cluster}/cp`, 8);
  return { vpcLink: `c${h}`, mgmtLink: `m${h}` };
}

export async function createControlPlane(
  lab: LabState,
  netns: string,
  vpc: VpcState,
  vpcIp: string,
  mgmtIp: string,
  links: ControlPlaneLinks,
): Promise<void> {
  await addNetns(netns);
  await plug(lab, netns, vpc.bridge, links.vpcLink, 'eth0', `${vpcIp}/24`);
  await ip(['route', 'add', 'default', 'via', vpc.gateway], netns);
  const mgmtPrefix = parseCidr(lab.mgmt.subnet)!.prefix;
  await plug(lab, netns, 'mgmt0', links.mgmtLink, 'mgmt0', `${mgmtIp}/${mgmtPrefix}`);
}

export function nodeLinkName(prefix: string, cluster: string, node: string): string {
  return `n${shortHash(`${prefix}/${cluster}/${node}`, 8)}`;
}

/**
 * A node: eth0 on its VPC, default route to the VPC router, its router IP on lo, forwarding on.
 * With `routePodCidr` (native routing) the underlay router learns the node's pod slice, as a
 * cloud route table would; tunnel and hybrid clusters need no such route.
 */
export async function createNode(lab: LabState, node: NodeState, routePodCidr = false): Promise<void> {
  const vpc = lab.vpcs[node.vpc];
  await addNetns(node.netns);
  await plug(lab, node.netns, vpc.bridge, node.link, 'eth0', `${node.ip}/24`);
  await ipBatch([`route add default via ${vpc.gateway}`, `addr add ${node.routerIp}/32 dev lo`], node.netns);
  await netnsSysctl(node.netns, {
    'net.ipv4.ip_forward': '1',
    'net.ipv4.conf.all.rp_filter': '0',
    'net.ipv4.conf.default.rp_filter': '0',
  });
  if (routePodCidr) await ip(['route', 'replace', node.podCidr, 'via', node.ip], lab.underlayNetns);
}

/** Remove a node's pod-slice route from the underlay (if any). */
export async function removeNodeRoute(lab: LabState, node: NodeState): Promise<void> {
  await ip(['route', 'del', node.podCidr, 'via', node.ip], lab.underlayNetns, false);
}
