/**
 * Endpoints controller (key: namespace/name of a pod on this node): the pod's identity (allocated
 * from its labels), its programs on the lxc device, its endpoint entry and policy rules, and its
 * published MeshEndpoint. Rules and the endpoint entry whose flags turn them on are stated in the
 * same reconcile, and the datapath writes rules first, so a new pod under a policy is never briefly
 * denied. A pod that goes has its entries, conntrack state and identity reference dropped.
 */
import type { Pod } from '../../cluster/schemas.js';
import type { KubeObject } from '../../cluster/types.js';
import { ifindexOf } from '../../datapath/addon.js';
import { Direction, EndpointFlags } from '../../datapath/codecs.js';
import { parseCidr } from '../../util/cidr.js';
import { ip } from '../../util/exec.js';
import { podIdentityLabels } from '../labels.js';
import type { EndpointPolicy } from '../policy.js';
import { WorkQueue } from '../workqueue.js';
import { namedPorts, objKey, podIp, podNode, type Controller, type ControllerDeps } from './shared.js';

interface Programmed {
  readonly ip: string;
  readonly identity: number;
  readonly endpointId: number;
  readonly lxc: string;
  readonly ifindex: number;
}

export class EndpointsController implements Controller {
  readonly name = 'endpoints';
  readonly queue: WorkQueue;
  private readonly programmed = new Map<string, Programmed>();
  private readonly byIp = new Map<string, Programmed>();
  private readonly identityUsers = new Map<number, Set<string>>();
  private readonly macCache = new Map<string, string>();
  private readonly toPublish = new Map<string, { pod: KubeObject; e: Programmed }>();
  private readonly slice;

  constructor(
    private readonly d: ControllerDeps,
    private readonly hooks: {
      /** A local address's identity changed or went (the ipcache controller re-resolves it). */
      readonly onIdentityChange: (ipAddr: string) => void;
      /** Drop conntrack state of an address that no longer belongs to a pod here. */
      readonly flushConntrack: (ipAddr: string) => void;
    },
  ) {
    this.slice = parseCidr(d.self.podCidr)!;
    // The endpoints are published only once written: a MeshEndpoint tells every other node (and the
    // services of this one) that traffic to the pod can be delivered.
    this.queue = new WorkQueue({
      name: this.name,
      reconcile: (k) => this.reconcile(k),
      afterBatch: async () => {
        if (await d.flushNow()) await this.publishPending();
      },
    });
    const local = (p: KubeObject): string[] => (podNode(p) === d.self.node ? [objKey(p)] : []);
    d.informers.pods.addEventHandler({
      onAdd: (p) => local(p).forEach((k) => this.queue.add(k)),
      onUpdate: (a, b) => new Set([...local(a), ...local(b)]).forEach((k) => this.queue.add(k)),
      onDelete: (p) => local(p).forEach((k) => this.queue.add(k)),
    });
  }

  initialKeys(): Iterable<string> {
    return this.d.informers.pods.list().filter((p) => podNode(p) === this.d.self.node).map(objKey);
  }

  /** Identity of a local endpoint by address. */
  identityOf(ipAddr: string): number | undefined {
    return this.byIp.get(ipAddr)?.identity;
  }

  get count(): number {
    return this.programmed.size;
  }

  /** Local endpoint keys (the policy controller re-queues them). */
  keys(): string[] {
    return [...this.programmed.keys()];
  }

  private async reconcile(key: string): Promise<void> {
    const { dp, self, informers, policy } = this.d;
    const pod = informers.pods.get(key);
    const ep = pod && podNode(pod) === self.node ? this.d.endpointSource.endpointOf(pod as unknown as Pod) : null;
    const had = this.programmed.get(key);
    if (!pod || !ep || (had && had.ip !== ep.ip)) {
      if (had) await this.remove(key, had);
      if (!pod || !ep) return;
    }
    const labels = podIdentityLabels(pod, self.cluster);
    const bad = identityLabelProblem(labels);
    if (bad) throw new Error(`pod ${key}: no identity can be allocated: ${bad}`);
    const identity = await this.d.identities.allocate(labels);
    const ipNum = parseCidr(`${ep.ip}/32`)!.network;
    const endpointId = ipNum - this.slice.network;
    if (endpointId <= 0 || endpointId > 0xffff) throw new Error(`pod ${key}: address ${ep.ip} is outside this node's pod CIDR ${self.podCidr}`);

    let ifindex: number;
    try {
      ifindex = ifindexOf(ep.ifname);
    } catch (err) {
      throw new Error(`pod ${key}: device ${ep.ifname}: ${(err as Error).message}`);
    }
    // A pod deleted and made again under the same name has a new lxc with a new ifindex.
    if (!had || had.ifindex !== ifindex || had.lxc !== ep.ifname) {
      ifindex = dp.attachEndpoint(ep.ifname);
      this.macCache.delete(`/${ep.ifname}`);
      this.macCache.delete(`${ep.netns}/eth0`);
    }
    const lxcMac = await this.mac(ep.ifname);
    const podMac = await this.mac('eth0', ep.netns);

    policy.upsertEndpoint({ id: key, identity, labels, namespace: pod.metadata.namespace ?? 'default', namedPorts: namedPorts(pod) });
    const pol: EndpointPolicy = policy.endpointPolicy(key);
    const flags = (pol.ingress.enforced ? EndpointFlags.policyIngress : 0) | (pol.egress.enforced ? EndpointFlags.policyEgress : 0);
    dp.setPolicy(endpointId, Direction.Ingress, pol.ingress.rules.map((r) => ({ identity: r.identity, port: r.port, endPort: r.endPort, proto: r.protocol })));
    dp.setPolicy(endpointId, Direction.Egress, pol.egress.rules.map((r) => ({ identity: r.identity, port: r.port, endPort: r.endPort, proto: r.protocol })));
    dp.upsertEndpoint(ep.ip, { ifindex, lxcMac, podMac, endpointId, flags, identity });
    dp.upsertIpcache(`${ep.ip}/32`, { identity, tunnelIp: '0.0.0.0', nodeId: 0, flags: 0 });

    const now: Programmed = { ip: ep.ip, identity, endpointId, lxc: ep.ifname, ifindex };
    this.programmed.set(key, now);
    this.byIp.set(ep.ip, now);
    this.useIdentity(key, identity, had?.identity);
    if (!had || had.identity !== identity) this.hooks.onIdentityChange(ep.ip);
    this.toPublish.set(key, { pod, e: now });
  }

  /** Publish the endpoints written since the last call; one that fails is reconciled again. */
  async publishPending(): Promise<void> {
    const batch = [...this.toPublish];
    this.toPublish.clear();
    for (const [key, { pod, e }] of batch) {
      if (this.programmed.get(key) !== e) continue;
      try {
        await this.publish(pod, e);
      } catch {
        this.queue.add(key);
      }
    }
  }

  private async remove(key: string, had: Programmed): Promise<void> {
    const { dp, policy } = this.d;
    dp.deleteEndpoint(had.ip);
    dp.deletePolicy(had.endpointId);
    dp.deleteIpcache(`${had.ip}/32`);
    policy.deleteEndpoint(key);
    this.hooks.flushConntrack(had.ip);
    this.programmed.delete(key);
    this.toPublish.delete(key);
    if (this.byIp.get(had.ip) === had) this.byIp.delete(had.ip);
    this.useIdentity(key, undefined, had.identity);
    this.hooks.onIdentityChange(had.ip);
    const [ns, name] = key.split('/');
    const ep = this.d.informers.meshEndpoints.get(key);
    if (ep && (ep.spec as { node?: string })?.node === this.d.self.node) await this.d.client.delete('meshendpoints', ns, name);
  }

  private useIdentity(key: string, now: number | undefined, before: number | undefined): void {
    if (before !== undefined && before !== now) {
      const users = this.identityUsers.get(before);
      users?.delete(key);
      if (users && users.size === 0) {
        this.identityUsers.delete(before);
        this.d.identities.release(before);
      }
    }
    if (now !== undefined) {
      let users = this.identityUsers.get(now);
      if (!users) this.identityUsers.set(now, (users = new Set()));
      users.add(key);
    }
  }

  /** Publish this endpoint for the rest of the cluster (and, later, the mesh), when it differs. */
  private async publish(pod: KubeObject, e: Programmed): Promise<void> {
    const { self, informers, client } = this.d;
    const want = { ip: e.ip, identity: e.identity, node: self.node, nodeIP: self.nodeIp, endpointID: e.endpointId };
    const have = informers.meshEndpoints.get(objKey(pod));
    if (have && JSON.stringify(have.spec) === JSON.stringify(want)) return;
    await client.put('meshendpoints', { apiVersion: 'meshctl.io/v1', kind: 'MeshEndpoint', metadata: { name: pod.metadata.name, namespace: pod.metadata.namespace }, spec: want });
  }

  private async mac(dev: string, netns?: string): Promise<string> {
    const k = `${netns ?? ''}/${dev}`;
    let m = this.macCache.get(k);
    if (!m) {
      const r = await ip([...(netns ? ['-n', netns] : []), '-j', 'link', 'show', 'dev', dev]);
      m = (JSON.parse(r.stdout) as Array<{ address: string }>)[0].address;
      this.macCache.set(k, m);
    }
    return m;
  }
}


const LABEL_NAME = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$/;
const LABEL_PREFIX = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;

/**
 * What makes a label set unusable as identity labels (Kubernetes label syntax: an optional DNS
 * prefix, a name of at most 63 characters, a value of at most 63), or null. Objects written
 * straight into the store never met the API's checks, so the agent makes them here.
 */
export function identityLabelProblem(labels: Record<string, string>): string | null {
  for (const [k, v] of Object.entries(labels)) {
    const slash = k.lastIndexOf('/');
    const prefix = slash >= 0 ? k.slice(0, slash) : '';
    const name = slash >= 0 ? k.slice(slash + 1) : k;
    if ((slash >= 0 && !LABEL_PREFIX.test(prefix)) || !LABEL_NAME.test(name)) return `label key "${k}" is not a valid label key`;
    if (v !== '' && !LABEL_NAME.test(v)) return `label ${k}: value "${v.length > 20 ? `${v.slice(0, 20)}…` : v}" is not a valid label value (at most 63 characters of A-Z, a-z, 0-9, '-', '_', '.', alphanumeric at both ends)`;
  }
  return null;
}
