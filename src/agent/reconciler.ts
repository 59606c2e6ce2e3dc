/**
 * The agent's datapath loops (DESIGN §3, loops 2-4) for one node, level-based: every pass lists
 * the cluster's state, computes the wanted datapath state from scratch, and lets Datapath.sync()
 * write only the difference. Watches trigger passes (debounced); a periodic pass catches anything
 * a watch missed. A restarted agent runs the same pass against the pinned maps and so flushes
 * nothing that is still wanted.
 */
import type { ClusterClient, Watch } from '../cluster/client.js';
import type { EtcdClusterClient } from '../cluster/etcd-client.js';
import type { KubeObject } from '../cluster/types.js';
import { Direction, EndpointFlags, IpcacheFlags, NodeFlags, ReservedIdentity } from '../datapath/codecs.js';
import type { Datapath } from '../datapath/datapath.js';
import { ifindexOf } from '../datapath/addon.js';
import { parseCidr } from '../util/cidr.js';
import { errorMessage } from '../util/errors.js';
import { ip } from '../util/exec.js';
import { allocateIdentity, identitiesInUse, listIdentities, releaseUnusedIdentities } from './identity.js';
import { labelsHash, podIdentityLabels } from './labels.js';
import { compilePolicies, datapathRules, type EndpointPolicy, type PolicyEndpoint } from './policy.js';
import type { PolicyPeer } from './policy-engine.js';

export interface ReconcilerOptions {
  readonly cluster: string;
  readonly clusterId: number;
  readonly node: string;
  readonly nodeIp: string;
  readonly podCidr: string;
  readonly vpc: string;
  readonly routing: 'tunnel' | 'native' | 'hybrid';
}

export interface ReconcileStats {
  passes: number;
  lastPassMs: number;
  lastError: string;
  invalidObjects: number;
  endpoints: number;
  policyProblems: number;
}

const WATCHED = ['pods', 'nodes', 'services', 'networkpolicies', 'meshnetworkpolicies', 'namespaces', 'meshendpoints'];
const PROTO: Record<string, number> = { TCP: 6, UDP: 17, SCTP: 132 };

interface LocalEndpoint {
  readonly key: string;
  readonly pod: KubeObject;
  readonly ip: string;
  readonly identity: number;
  readonly endpointId: number;
  readonly lxc: string;
}

export class Reconciler {
  readonly stats: ReconcileStats = { passes: 0, lastPassMs: 0, lastError: '', invalidObjects: 0, endpoints: 0, policyProblems: 0 };
  private readonly watches: Watch[] = [];
  private pending: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  private readonly identityCache = new Map<string, number>();
  private readonly macCache = new Map<string, string>();
  private readonly attached = new Map<string, number>();
  private readonly kernelRoutes = new Map<string, string>();
  private lastGc = 0;

  constructor(
    readonly opts: ReconcilerOptions,
    private readonly client: ClusterClient & Pick<EtcdClusterClient, 'etcd'>,
    private readonly dp: Datapath,
    private readonly log: (msg: string) => void,
    private readonly onPass?: (ms: number) => void,
  ) {}

  /** Start watching and reconciling; resolves after the first pass. */
  async start(): Promise<void> {
    await this.pass();
    for (const r of WATCHED) {
      const rev = (await this.client.list(r).catch(() => ({ revision: '0' }))).revision;
      this.watches.push(this.client.watch(r, rev, { onEvent: () => this.trigger(), onError: (e) => this.note(`watch ${r}: ${e.message}`) }));
    }
    this.timer = setInterval(() => this.trigger(), 5000);
  }

  stop(): void {
    this.stopped = true;
    for (const w of this.watches.splice(0)) w.close();
    if (this.timer) clearInterval(this.timer);
    if (this.pending) clearTimeout(this.pending);
  }

  /** Ask for a pass soon (debounced). */
  trigger(): void {
    if (this.stopped || this.pending) return;
    this.pending = setTimeout(() => {
      this.pending = null;
      void this.pass();
    }, 20);
  }

  /** Run one pass; concurrent requests fold into one more pass. */
  async pass(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        const t0 = Date.now();
        try {
          await this.reconcile();
          this.stats.lastError = '';
        } catch (err) {
          this.note(`reconcile: ${errorMessage(err)}`);
        }
        this.stats.passes++;
        this.stats.lastPassMs = Date.now() - t0;
        this.onPass?.(this.stats.lastPassMs);
      } while (this.again && !this.stopped);
    })();
    try {
      await this.running;
    } finally {
      this.running = null;
    }
  }

  private note(msg: string): void {
    if (msg !== this.stats.lastError) this.log(msg);
    this.stats.lastError = msg;
  }

  private async reconcile(): Promise<void> {
    const o = this.opts;
    const [pods, nodes, services, netpols, mnps, namespaces, meshEps] = await Promise.all(
      ['pods', 'nodes', 'services', 'networkpolicies', 'meshnetworkpolicies', 'namespaces', 'meshendpoints'].map((r) => this.client.list(r)),
    );
    this.stats.invalidObjects = [pods, nodes, services, netpols, mnps, namespaces, meshEps].reduce((n, l) => n + l.invalid, 0);

    // Loop 2: local endpoints, each with an identity allocated from its labels.
    const local: LocalEndpoint[] = [];
    const slice = parseCidr(o.podCidr)!;
    for (const pod of pods.items) {
      const st = (pod.status ?? {}) as { podIP?: string; meshctl?: { lxc?: string; netns?: string } };
      if ((pod.spec as { nodeName?: string })?.nodeName !== o.node || !st.podIP || !st.meshctl?.lxc) continue;
      const labels = podIdentityLabels(pod, o.cluster);
      const h = labelsHash(labels);
      let identity = this.identityCache.get(h);
      if (identity === undefined) {
        identity = await allocateIdentity(this.client, o.clusterId, labels);
        this.identityCache.set(h, identity);
      }
      const ipNum = parseCidr(`${st.podIP}/32`)!.network;
      local.push({
        key: `${pod.metadata.namespace}/${pod.metadata.name}`,
        pod,
        ip: st.podIP,
        identity,
        endpointId: ipNum - slice.network,
        lxc: st.meshctl.lxc,
      });
    }
    this.stats.endpoints = local.length;

    // Loop 4: policy per local endpoint.
    const ids = await listIdentities(this.client);
    this.stats.invalidObjects += ids.invalid;
    const policyEps: PolicyEndpoint[] = local.map((e) => ({
      id: e.key,
      identity: e.identity,
      labels: podIdentityLabels(e.pod, o.cluster),
      namespace: e.pod.metadata.namespace ?? 'default',
      namedPorts: namedPorts(e.pod),
    }));
    const epIdentity = new Map<string, number>();
    for (const ep of meshEps.items) {
      const s = ep.spec as { ip?: string; identity?: number };
      if (s?.ip && typeof s.identity === 'number') epIdentity.set(s.ip, s.identity);
    }
    const byHash = new Map<string, number>();
    for (const r of ids.records) byHash.set(r.labelsHash, r.id);
    // Every pod of the cluster as a policy peer (ipBlock matching, egress named ports).
    const peers = new Map<string, PolicyPeer>();
    for (const pod of pods.items) {
      const ip = (pod.status as { podIP?: string } | undefined)?.podIP;
      if (!ip) continue;
      const identity = local.find((x) => x.ip === ip)?.identity ?? epIdentity.get(ip) ?? byHash.get(labelsHash(podIdentityLabels(pod, o.cluster)));
      if (identity !== undefined) peers.set(ip, { identity, namedPorts: namedPorts(pod) });
    }
    const compiled = compilePolicies({
      clusterName: o.cluster,
      policies: [...netpols.items, ...mnps.items],
      namespaces: namespaces.items,
      identities: ids.identities,
      endpoints: policyEps,
      peers,
    });
    this.stats.policyProblems = compiled.problems.length;

    for (const e of local) {
      let ifindex = this.attached.get(e.lxc);
      // A pod deleted and made again between two passes has a new lxc under the same name.
      let current: number | undefined;
      try {
        current = ifindexOf(e.lxc);
      } catch {
        current = undefined;
      }
      if (ifindex === undefined || ifindex !== current) {
        try {
          ifindex = this.dp.attachEndpoint(e.lxc);
        } catch (err) {
          this.note(`attach ${e.lxc} of ${e.key}: ${errorMessage(err)}`);
          continue;
        }
        this.attached.set(e.lxc, ifindex);
      }
      const pol = compiled.endpoints.get(e.key) as EndpointPolicy;
      const flags = (pol.ingress.enforced ? EndpointFlags.policyIngress : 0) | (pol.egress.enforced ? EndpointFlags.policyEgress : 0);
      const st = e.pod.status as { meshctl: { netns?: string } };
      this.dp.upsertEndpoint(e.ip, {
        ifindex,
        lxcMac: await this.mac(e.lxc),
        podMac: await this.mac('eth0', st.meshctl.netns),
        endpointId: e.endpointId,
        flags,
        identity: e.identity,
      });
      this.dp.setPolicy(e.endpointId, Direction.Ingress, datapathRules(pol.ingress.rules));
      this.dp.setPolicy(e.endpointId, Direction.Egress, datapathRules(pol.egress.rules));
    }
    const wantedIps = new Set(local.map((e) => e.ip));
    const wantedEpIds = new Set(local.map((e) => e.endpointId));
    for (const [lxc] of this.attached) if (!local.some((e) => e.lxc === lxc)) this.attached.delete(lxc);
    this.dropStaleEndpoints(wantedIps, wantedEpIds);

    // Loop 3: the cluster view: nodes, every pod's address, services.
    this.dp.clearIpcache();
    this.dp.clearNodes();
    // CIDR identities of ipBlock/CIDR rules first: a node's or pod's own entry of the same prefix replaces them.
    for (const [prefix, identity] of compiled.cidrIdentities) this.dp.upsertIpcache(prefix, { identity, tunnelIp: '0.0.0.0', nodeId: 0, flags: 0 });
    const nodeInfo = new Map<string, { ip: string; vpc: string; podCidr: string; index: number }>();
    nodes.items.forEach((n, i) => {
      const st = n.status as { addresses?: Array<{ type: string; address: string }>; meshctl?: { vpc?: string } };
      const addr = st?.addresses?.find((a) => a.type === 'InternalIP')?.address;
      if (addr) nodeInfo.set(n.metadata.name, { ip: addr, vpc: st.meshctl?.vpc ?? '', podCidr: (n.spec as { podCIDR?: string })?.podCIDR ?? '', index: i + 1 });
    });
    const wantRoutes = new Map<string, string>();
    for (const [name, n] of nodeInfo) {
      if (name === o.node) {
        this.dp.upsertIpcache(`${n.ip}/32`, { identity: ReservedIdentity.host, tunnelIp: '0.0.0.0', nodeId: n.index, flags: IpcacheFlags.node | IpcacheFlags.localNode });
        continue;
      }
      const direct = o.routing === 'native' || (o.routing === 'hybrid' && n.vpc === o.vpc);
      this.dp.upsertNode(n.ip, { nodeId: n.index, clusterId: o.clusterId, flags: direct ? NodeFlags.direct : 0 });
      this.dp.upsertIpcache(`${n.ip}/32`, { identity: ReservedIdentity.remoteNode, tunnelIp: '0.0.0.0', nodeId: n.index, flags: IpcacheFlags.node });
      if (direct && n.podCidr) wantRoutes.set(n.podCidr, n.vpc === o.vpc ? n.ip : 'gateway');
    }
    for (const pod of pods.items) {
      const st = (pod.status ?? {}) as { podIP?: string };
      const nodeName = (pod.spec as { nodeName?: string })?.nodeName;
      if (!st.podIP || !nodeName) continue;
      if (nodeName === o.node) {
        const e = local.find((x) => x.ip === st.podIP);
        if (e) this.dp.upsertIpcache(`${e.ip}/32`, { identity: e.identity, tunnelIp: '0.0.0.0', nodeId: 0, flags: 0 });
        continue;
      }
      const n = nodeInfo.get(nodeName);
      if (!n) continue;
      const identity = epIdentity.get(st.podIP) ?? byHash.get(labelsHash(podIdentityLabels(pod, o.cluster)));
      if (identity === undefined) continue; // its agent has not allocated it yet; a later pass will
      this.dp.upsertIpcache(`${st.podIP}/32`, { identity, tunnelIp: n.ip, nodeId: n.index, flags: 0 });
    }
    this.syncServices(services.items, pods.items);
    await this.syncRoutes(wantRoutes);

    const r = this.dp.sync();
    if (r.updated || r.deleted) this.log(`datapath: ${r.updated} entries written, ${r.deleted} removed`);

    // Publish this node's endpoints for the rest of the cluster (and, later, the mesh).
    for (const e of local) {
      const want = { ip: e.ip, identity: e.identity, node: o.node, nodeIP: o.nodeIp, endpointID: e.endpointId };
      const have = meshEps.items.find((x) => x.metadata.namespace === e.pod.metadata.namespace && x.metadata.name === e.pod.metadata.name);
      if (have && JSON.stringify(have.spec) === JSON.stringify(want)) continue;
      await this.client.put('meshendpoints', { apiVersion: 'meshctl.io/v1', kind: 'MeshEndpoint', metadata: { name: e.pod.metadata.name, namespace: e.pod.metadata.namespace }, spec: want });
    }
    for (const ep of meshEps.items) {
      if ((ep.spec as { node?: string })?.node !== o.node) continue;
      if (!local.some((e) => e.pod.metadata.name === ep.metadata.name && e.pod.metadata.namespace === ep.metadata.namespace)) {
        await this.client.delete('meshendpoints', ep.metadata.namespace, ep.metadata.name);
      }
    }

    // Identities nobody uses any more go after a grace period (any agent may do it; it is a txn).
    if (Date.now() - this.lastGc > 30_000) {
      this.lastGc = Date.now();
      const inUse = identitiesInUse(pods.items, o.cluster, ids.records);
      await releaseUnusedIdentities(this.client, inUse, 60_000).catch((err) => this.note(`identity gc: ${errorMessage(err)}`));
      for (const [h, id] of [...this.identityCache]) if (!inUse.has(id)) this.identityCache.delete(h);
    }
  }

  private dropStaleEndpoints(wantedIps: Set<string>, wantedEpIds: Set<number>): void {
    for (const key of this.dp.endpointIps()) if (!wantedIps.has(key)) this.dp.deleteEndpoint(key);
    for (const id of this.dp.policyEndpointIds()) if (!wantedEpIds.has(id)) this.dp.deletePolicy(id);
  }

  private syncServices(services: KubeObject[], pods: KubeObject[]): void {
    const wanted = new Set<string>();
    for (const svc of services) {
      const spec = svc.spec as { clusterIP?: string; selector?: Record<string, string>; ports?: Array<{ port: number; targetPort?: number | string; protocol?: string }> };
      if (!spec?.clusterIP || !spec.selector) continue;
      const backends = pods.filter((p) => {
        const st = p.status as { podIP?: string; phase?: string } | undefined;
        if (p.metadata.namespace !== svc.metadata.namespace || !st?.podIP || st.phase !== 'Running') return false;
        return Object.entries(spec.selector!).every(([k, v]) => p.metadata.labels?.[k] === v);
      });
      for (const port of spec.ports ?? []) {
        const proto = PROTO[port.protocol ?? 'TCP'] ?? 6;
        const key = { vip: spec.clusterIP, dport: port.port, proto };
        wanted.add(`${key.vip}:${key.dport}/${proto}`);
        this.dp.upsertService(
          key,
          backends.flatMap((b) => {
            const target = resolveTargetPort(b, port.targetPort ?? port.port);
            return target ? [{ ip: (b.status as { podIP: string }).podIP, port: target }] : [];
          }),
        );
      }
    }
    for (const k of this.dp.services()) if (!wanted.has(`${k.vip}:${k.dport}/${k.proto}`)) this.dp.deleteService(k);
  }

  /** Kernel routes for directly routed peers' pod slices (the FIB lookup of native routing uses them). */
  private async syncRoutes(want: Map<string, string>): Promise<void> {
    for (const [cidr, via] of want) {
      if (this.kernelRoutes.get(cidr) === via) continue;
      const args = via === 'gateway' ? ['route', 'replace', cidr, 'via', await this.gateway()] : ['route', 'replace', cidr, 'via', via];
      const r = await ip(args, undefined, false);
      if (r.exitCode === 0) this.kernelRoutes.set(cidr, via);
      else this.note(`route ${cidr}: ${r.stderr.trim()}`);
    }
    for (const [cidr] of [...this.kernelRoutes]) {
      if (want.has(cidr)) continue;
      await ip(['route', 'del', cidr], undefined, false);
      this.kernelRoutes.delete(cidr);
    }
  }

  private gw = '';
  private async gateway(): Promise<string> {
    if (!this.gw) {
      const r = await ip(['-j', 'route', 'show', 'default']);
      this.gw = (JSON.parse(r.stdout) as Array<{ gateway?: string }>)[0]?.gateway ?? '';
    }
    return this.gw;
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

function namedPorts(pod: KubeObject): Record<string, Array<{ port: number; protocol: number }>> {
  const out: Record<string, Array<{ port: number; protocol: number }>> = {};
  const containers = ((pod.spec as { containers?: Array<{ ports?: Array<{ name?: string; containerPort: number; protocol?: string }> }> })?.containers ?? []);
  for (const c of containers) {
    for (const p of c.ports ?? []) {
      if (p.name) (out[p.name] ??= []).push({ port: p.containerPort, protocol: PROTO[p.protocol ?? 'TCP'] ?? 6 });
    }
  }
  return out;
}

function resolveTargetPort(pod: KubeObject, target: number | string): number | null {
  if (typeof target === 'number') return target;
  if (/^\d+$/.test(target)) return Number(target);
  return namedPorts(pod)[target]?.[0]?.port ?? null;
}
