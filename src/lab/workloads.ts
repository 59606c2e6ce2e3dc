/** `lab apply`, `lab remove`, `lab get`, `lab exec`: the lab's stand-in for a Kubernetes API + kubelet. */
import { randomBytes, createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { AlreadyExistsError } from '../cluster/client.js';
import { EtcdClusterClient } from '../cluster/etcd-client.js';
import { RESOURCES, type Kind, type KubeObject } from '../cluster/types.js';
import { formatIp, parseCidr } from '../util/cidr.js';
import { NotFoundError, OperationError, ValidationError, errorMessage } from '../util/errors.js';
import { resolveContext } from './context.js';
import { parseManifests, type Manifest } from './manifests.js';
import { podMetadataUpdate } from './pod-update.js';
import { netnsExists } from './netns.js';
import { ensureSupervisor } from './processes.js';
import {
  PodIpAllocator,
  POD_CONCURRENCY,
  eachLimit,
  plumbPods,
  podLxcName,
  podNetns,
  startWorkloads,
  stopWorkload,
  timed,
  unplumbPods,
  type PhaseTimer,
  type PodPlumbing,
} from './pods.js';
import { withLabLock, type ClusterState, type LabPaths, type LabState, type NodeState } from './state.js';

export interface ApplyResult {
  readonly lines: string[];
  /** Milliseconds per phase of building pods (plan, netns, links, pod-config, workloads, store), when pods were made. */
  readonly timings: Record<string, number>;
}

interface Ctx {
  readonly paths: LabPaths;
  readonly lab: LabState;
  readonly c: ClusterState;
  readonly store: EtcdClusterClient;
  /** Undo actions of this apply, run in reverse on failure. */
  readonly undo: Array<() => Promise<void>>;
  readonly lines: string[];
  readonly ips: PodIpAllocator;
  /** Pods per node, read from the store once per command (pickNode keeps it current). */
  podCounts: Map<string, number> | null;
  podCountsLoad: Promise<void> | null;
  /** Pods planned by this apply, built together by realizePods. */
  readonly planned: PodPlan[];
  readonly timings: Record<string, number>;
  onBuildPods?: (count: number) => void;
}

/** A pod this apply will create: node and address chosen, object ready to write. */
interface PodPlan {
  readonly node: NodeState;
  readonly plumbing: PodPlumbing;
  readonly pod: KubeObject;
}

const APPLY_ORDER: Kind[] = ['Namespace', 'NetworkPolicy', 'MeshNetworkPolicy', 'Service', 'Deployment', 'Pod'];

async function readManifests(file: string): Promise<Manifest[]> {
  let text: string;
  try {
    text = file === '-' ? await readStdin() : await readFile(file, 'utf8');
  } catch (err) {
    throw new ValidationError('file', 'readable', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`);
  }
  const m = parseManifests(text, file);
  if (m.length === 0) throw new ValidationError('file', 'empty', `no objects in ${file}`);
  return m;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function withCluster<T>(paths: LabPaths, context: string | undefined, fn: (ctx: Ctx) => Promise<T>): Promise<T> {
  const { lab, cluster } = await resolveContext(paths, context);
  await ensureSupervisor(paths, cluster.name);
  const store = new EtcdClusterClient({ endpoints: [cluster.store.endpoint] });
  try {
    await store.waitReady(10_000);
    return await fn({ paths, lab, c: cluster, store, undo: [], lines: [], ips: new PodIpAllocator(store), podCounts: null, podCountsLoad: null, planned: [], timings: {} });
  } finally {
    await store.close();
  }
}

/** Apply a YAML file to a lab cluster. Everything is validated before anything is created. */
export interface ApplyOptions {
  /** Called before the pods this apply creates are built (long work for hundreds of pods). */
  readonly onBuildPods?: (count: number) => void;
}

export async function applyFile(paths: LabPaths, context: string | undefined, file: string, opts: ApplyOptions = {}): Promise<ApplyResult> {
  const manifests = await readManifests(file);
  return withLabLock(paths, () =>
    withCluster(paths, context, async (ctx) => {
      ctx.onBuildPods = opts.onBuildPods;
      const namespaces = new Set((await ctx.store.list('namespaces')).items.map((n) => n.metadata.name));
      for (const m of manifests) if (m.kind === 'Namespace') namespaces.add(m.name);
      for (const m of manifests) {
        if (m.namespace && !namespaces.has(m.namespace)) {
          throw new NotFoundError('namespace', `namespace "${m.namespace}" not found (${m.kind} ${m.name} in ${m.where}): apply a Namespace first`);
        }
        if (m.kind === 'Pod') {
          const nodeName = (m.object.spec as { nodeName?: string }).nodeName;
          if (nodeName && !ctx.c.nodes.some((n) => n.name === nodeName)) {
            throw new ValidationError('spec.nodeName', 'exists', `pod ${m.namespace}/${m.name}: node "${nodeName}" is not in cluster ${ctx.c.name}`);
          }
        }
      }
      const sorted = [...manifests].sort((a, b) => APPLY_ORDER.indexOf(a.kind) - APPLY_ORDER.indexOf(b.kind));
      try {
        for (const m of sorted) await applyOne(ctx, m);
        await realizePods(ctx);
      } catch (err) {
        for (const u of ctx.undo.reverse()) await u().catch(() => undefined);
        throw err;
      }
      return { lines: ctx.lines, timings: ctx.timings };
    }),
  );
}

function addTiming(ctx: Ctx): PhaseTimer {
  return (phase, ms) => void (ctx.timings[phase] = (ctx.timings[phase] ?? 0) + Math.round(ms));
}

function stamp(obj: KubeObject): KubeObject {
  return {
    ...obj,
    metadata: {
      ...obj.metadata,
      uid: obj.metadata.uid ?? randomUuid(),
      creationTimestamp: obj.metadata.creationTimestamp ?? new Date().toISOString(),
    },
  };
}

function randomUuid(): string {
  const h = randomBytes(16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function specEqual(a: KubeObject, b: KubeObject): boolean {
  return JSON.stringify([a.spec, a.metadata.labels ?? {}, a.metadata.annotations ?? {}]) === JSON.stringify([b.spec, b.metadata.labels ?? {}, b.metadata.annotations ?? {}]);
}

async function applyOne(ctx: Ctx, m: Manifest): Promise<void> {
  const label = `${m.kind.toLowerCase()}/${m.name}`;
  const existing = await ctx.store.get(m.resource, m.namespace, m.name);
  switch (m.kind) {
    case 'Pod': {
      if (existing) {
        const updated = podMetadataUpdate(existing, m.object);
        if (updated) {
          await ctx.store.put(m.resource, updated);
          ctx.undo.push(async () => void (await ctx.store.put(m.resource, existing)));
        }
        ctx.lines.push(`${label} ${updated ? 'configured' : 'unchanged'}`);
        return;
      }
      if (ctx.planned.some((p) => p.pod.metadata.namespace === m.namespace && p.pod.metadata.name === m.name)) {
        throw new ValidationError('metadata.name', 'unique', `pod ${m.namespace}/${m.name} is given twice in ${m.where}`);
      }
      await timed(addTiming(ctx), 'plan', () => planPod(ctx, m.object, (m.object.spec as { nodeName?: string }).nodeName));
      ctx.lines.push(`${label} created`);
      return;
    }
    case 'Deployment': {
      const obj = existing ? { ...stamp(m.object), metadata: { ...stamp(m.object).metadata, uid: existing.metadata.uid, creationTimestamp: existing.metadata.creationTimestamp } } : stamp(m.object);
      const changed = await reconcileDeployment(ctx, obj);
      if (!existing || !specEqual(existing, obj)) {
        await ctx.store.put(m.resource, { ...obj, status: { replicas: (obj.spec as { replicas?: number }).replicas ?? 1 } });
        if (!existing) ctx.undo.push(async () => void (await ctx.store.delete(m.resource, m.namespace, m.name)));
      }
      ctx.lines.push(`${label} ${!existing ? 'created' : changed || !specEqual(existing, obj) ? 'configured' : 'unchanged'}`);
      return;
    }
    case 'Service': {
      const spec = { ...(m.object.spec as Record<string, unknown>) };
      let clusterIP = (existing?.spec as { clusterIP?: string } | undefined)?.clusterIP;
      if (!clusterIP) {
        clusterIP = await allocateClusterIp(ctx, `${m.namespace}/${m.name}`);
        const allocated = clusterIP;
        ctx.undo.push(() => ctx.store.deleteKey(IPAM_SERVICES + allocated));
      }
      spec.clusterIP = clusterIP;
      spec.type = 'ClusterIP';
      const obj = stamp({ ...m.object, spec });
      if (existing && specEqual(existing, obj)) {
        ctx.lines.push(`${label} unchanged`);
        return;
      }
      await ctx.store.put(m.resource, existing ? { ...obj, metadata: { ...obj.metadata, uid: existing.metadata.uid, creationTimestamp: existing.metadata.creationTimestamp } } : obj);
      if (!existing) ctx.undo.push(async () => void (await ctx.store.delete(m.resource, m.namespace, m.name)));
      ctx.lines.push(`${label} ${existing ? 'configured' : 'created'} (clusterIP ${clusterIP})`);
      return;
    }
    default: {
      const obj = stamp(m.object);
      if (existing && specEqual(existing, obj)) {
        ctx.lines.push(`${label} unchanged`);
        return;
      }
      await ctx.store.put(m.resource, existing ? { ...obj, metadata: { ...obj.metadata, uid: existing.metadata.uid, creationTimestamp: existing.metadata.creationTimestamp } } : obj);
      if (!existing) ctx.undo.push(async () => void (await ctx.store.delete(m.resource, m.namespace, m.name)));
      ctx.lines.push(`${label} ${existing ? 'configured' : 'created'}`);
    }
  }
}

const IPAM_SERVICES = '/registry/meshctl/ipam/services/';

async function allocateClusterIp(ctx: Ctx, owner: string): Promise<string> {
  const cidr = parseCidr(ctx.c.serviceCidr)!;
  const used = new Set((await ctx.store.keys(IPAM_SERVICES)).map((k) => k.slice(IPAM_SERVICES.length)));
  for (let i = 10; i < 2 ** (32 - cidr.prefix) - 1; i++) {
    const addr = formatIp(cidr.network + i);
    if (!used.has(addr) && (await ctx.store.createKey(IPAM_SERVICES + addr, JSON.stringify({ owner })))) return addr;
  }
  throw new OperationError(`no free service address in ${ctx.c.serviceCidr}`);
}

/** Pick a node: the one asked for, else the one with the fewest pods (ties by index). */
async function pickNode(ctx: Ctx, wanted?: string): Promise<NodeState> {
  ctx.podCountsLoad ??= ctx.store.list('pods').then((r) => {
    const counts = new Map(ctx.c.nodes.map((n) => [n.name, 0]));
    for (const p of r.items) {
      const n = (p.spec as { nodeName?: string }).nodeName;
      if (n && counts.has(n)) counts.set(n, counts.get(n)! + 1);
    }
    ctx.podCounts = counts;
  });
  await ctx.podCountsLoad;
  const counts = ctx.podCounts!;
  const node = wanted
    ? ctx.c.nodes.find((n) => n.name === wanted)!
    : [...ctx.c.nodes].sort((a, b) => counts.get(a.name)! - counts.get(b.name)! || a.index - b.index)[0];
  counts.set(node.name, (counts.get(node.name) ?? 0) + 1);
  return node;
}

/** Choose a pod's node and address; realizePods builds it. */
async function planPod(ctx: Ctx, manifest: KubeObject, nodeName?: string): Promise<void> {
  const ns = manifest.metadata.namespace ?? 'default';
  const name = manifest.metadata.name;
  const node = await pickNode(ctx, nodeName);
  const podIp = await ctx.ips.allocate(node, `${ns}/${name}`);
  ctx.undo.push(() => ctx.ips.release(podIp));
  const plumbing: PodPlumbing = { netns: podNetns(ctx.lab, ctx.c.name, ns, name), lxc: podLxcName(ctx.c.name, ns, name), ip: podIp };
  const base = stamp(manifest);
  const pod: KubeObject = {
    ...base,
    spec: { ...(base.spec as object), nodeName: node.name },
    status: { phase: 'Pending', podIP: podIp, podIPs: [{ ip: podIp }], hostIP: node.ip, meshctl: { netns: plumbing.netns, lxc: plumbing.lxc } },
  };
  ctx.planned.push({ node, plumbing, pod });
}

/**
 * Build every planned pod: namespaces and links in bulk, workloads started together, and each
 * pod written to the store once, Running, when its workload listens (so agents never see a pod
 * whose lxc is not there yet).
 */
async function realizePods(ctx: Ctx): Promise<void> {
  const plans = ctx.planned.splice(0);
  if (plans.length === 0) return;
  ctx.onBuildPods?.(plans.length);
  const ref = (p: PodPlan) => ({ node: p.node, namespace: p.pod.metadata.namespace ?? 'default', pod: p.pod.metadata.name, plumbing: p.plumbing });
  ctx.undo.push(async () => {
    for (const p of plans) stopWorkload(ctx.paths, ctx.c.name, ref(p).namespace, ref(p).pod);
    await unplumbPods(plans);
  });
  const onPhase = addTiming(ctx);
  await plumbPods(plans, onPhase);
  await timed(onPhase, 'workloads', () => startWorkloads(ctx.paths, ctx.c, plans.map(ref)));
  const startTime = new Date().toISOString();
  await timed(onPhase, 'store', () => eachLimit(plans, POD_CONCURRENCY * 2, async (p) => {
    const running = { ...p.pod, status: { ...(p.pod.status as object), phase: 'Running', startTime } };
    try {
      await ctx.store.create('pods', running);
    } catch (err) {
      if (err instanceof AlreadyExistsError) throw new ValidationError('metadata.name', 'unique', `pod ${ref(p).namespace}/${ref(p).pod} already exists`);
      throw err;
    }
    ctx.undo.push(async () => void (await ctx.store.delete('pods', ref(p).namespace, ref(p).pod)));
  }));
}

/** Delete pods: workloads, namespaces and links in bulk, then addresses and objects. */
async function deletePods(ctx: Ctx, pods: readonly KubeObject[]): Promise<void> {
  if (pods.length === 0) return;
  const items = pods.map((pod) => {
    const ns = pod.metadata.namespace ?? 'default';
    const name = pod.metadata.name;
    const status = (pod.status ?? {}) as { podIP?: string; meshctl?: { netns?: string; lxc?: string } };
    const nodeName = (pod.spec as { nodeName?: string }).nodeName;
    return {
      ns,
      name,
      podIP: status.podIP,
      nodeName,
      node: ctx.c.nodes.find((n) => n.name === nodeName),
      plumbing: {
        netns: status.meshctl?.netns ?? podNetns(ctx.lab, ctx.c.name, ns, name),
        lxc: status.meshctl?.lxc ?? podLxcName(ctx.c.name, ns, name),
        ip: status.podIP ?? '',
      },
    };
  });
  for (const x of items) stopWorkload(ctx.paths, ctx.c.name, x.ns, x.name);
  await unplumbPods(items);
  await eachLimit(items, POD_CONCURRENCY * 2, async (x) => {
    if (x.podIP) await ctx.ips.release(x.podIP);
    await ctx.store.delete('pods', x.ns, x.name);
    if (x.nodeName && ctx.podCounts?.has(x.nodeName)) ctx.podCounts.set(x.nodeName, ctx.podCounts.get(x.nodeName)! - 1);
  });
}

function templateHash(template: unknown): string {
  return createHash('sha256').update(JSON.stringify(template)).digest('hex').slice(0, 10);
}

/** Bring a Deployment's pods to its replicas and template; returns whether pods changed. */
async function reconcileDeployment(ctx: Ctx, d: KubeObject): Promise<boolean> {
  const ns = d.metadata.namespace ?? 'default';
  const spec = d.spec as { replicas?: number; template: { metadata: { labels?: Record<string, string> }; spec: Record<string, unknown> } };
  const replicas = spec.replicas ?? 1;
  const hash = templateHash(spec.template);
  const owned = (await ctx.store.list('pods', ns)).items.filter((p) =>
    (p.metadata.ownerReferences ?? []).some((o) => o.kind === 'Deployment' && o.name === d.metadata.name),
  );
  let changed = false;
  const current = owned.filter((p) => p.metadata.labels?.['pod-template-hash'] === hash);
  const surplus = [...owned.filter((p) => !current.includes(p)), ...current.slice(replicas)];
  await deletePods(ctx, surplus);
  changed = surplus.length > 0;
  const names = new Set(owned.map((p) => p.metadata.name));
  const wanted: KubeObject[] = [];
  for (let i = current.length; i < replicas; i++) {
    let podName: string;
    do podName = `${d.metadata.name}-${hash}-${randomBytes(3).toString('hex').slice(0, 5)}`;
    while (names.has(podName));
    names.add(podName);
    wanted.push({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: podName,
        namespace: ns,
        labels: { ...(spec.template.metadata.labels ?? {}), 'pod-template-hash': hash },
        ownerReferences: [{ kind: 'Deployment', name: d.metadata.name, apiVersion: 'apps/v1' }],
      },
      spec: spec.template.spec,
    });
  }
  // Addresses are claimed concurrently: each allocation marks its pick used before its store round trip.
  await timed(addTiming(ctx), 'plan', () => eachLimit(wanted, POD_CONCURRENCY * 2, (m) => planPod(ctx, m)));
  return changed || wanted.length > 0;
}

/** Remove the objects a YAML file names (a Deployment takes its pods, a Namespace its contents). */
export async function removeFile(paths: LabPaths, context: string | undefined, file: string): Promise<ApplyResult> {
  const manifests = await readManifests(file);
  return withLabLock(paths, () =>
    withCluster(paths, context, async (ctx) => {
      const sorted = [...manifests].sort((a, b) => APPLY_ORDER.indexOf(b.kind) - APPLY_ORDER.indexOf(a.kind));
      for (const m of sorted) {
        const label = `${m.kind.toLowerCase()}/${m.name}`;
        const obj = await ctx.store.get(m.resource, m.namespace, m.name);
        if (!obj) {
          ctx.lines.push(`${label} not found`);
          continue;
        }
        await removeObject(ctx, m.kind, obj);
        ctx.lines.push(`${label} deleted`);
      }
      return { lines: ctx.lines, timings: ctx.timings };
    }),
  );
}

async function removeObject(ctx: Ctx, kind: Kind, obj: KubeObject): Promise<void> {
  const ns = obj.metadata.namespace;
  if (kind === 'Pod') return deletePods(ctx, [obj]);
  if (kind === 'Deployment') {
    await deletePods(
      ctx,
      (await ctx.store.list('pods', ns)).items.filter((p) => (p.metadata.ownerReferences ?? []).some((o) => o.kind === 'Deployment' && o.name === obj.metadata.name)),
    );
  }
  if (kind === 'Service') {
    const ip = (obj.spec as { clusterIP?: string }).clusterIP;
    if (ip) await ctx.store.deleteKey(IPAM_SERVICES + ip);
  }
  if (kind === 'Namespace') {
    await deletePods(ctx, (await ctx.store.list('pods', obj.metadata.name)).items);
    for (const k of ['Deployment', 'Service', 'NetworkPolicy', 'MeshNetworkPolicy'] as const) {
      for (const o of (await ctx.store.list(RESOURCES[k].resource, obj.metadata.name)).items) await removeObject(ctx, k, o);
    }
  }
  await ctx.store.delete(RESOURCES[kind].resource, ns, obj.metadata.name);
}

const KIND_ALIASES: Record<string, Kind> = {};
for (const [kind, aliases] of Object.entries({
  Pod: ['pod', 'pods', 'po'],
  Service: ['service', 'services', 'svc'],
  Deployment: ['deployment', 'deployments', 'deploy'],
  Namespace: ['namespace', 'namespaces', 'ns'],
  Node: ['node', 'nodes', 'no'],
  NetworkPolicy: ['networkpolicy', 'networkpolicies', 'netpol'],
  MeshNetworkPolicy: ['meshnetworkpolicy', 'meshnetworkpolicies', 'mnp'],
})) {
  for (const a of aliases) KIND_ALIASES[a] = kind as Kind;
}

export function resolveKind(text: string): Kind {
  const k = KIND_ALIASES[text.toLowerCase()];
  if (!k) {
    throw new ValidationError('kind', 'known', `unknown kind "${text}": use one of pods, services, deployments, namespaces, nodes, networkpolicies, meshnetworkpolicies`);
  }
  return k;
}

export interface GetOptions {
  readonly kind: string;
  /** Namespace; default "default". Ignored for cluster-scoped kinds. */
  readonly namespace?: string;
  /** All namespaces. */
  readonly allNamespaces?: boolean;
}

export async function getObjects(paths: LabPaths, context: string | undefined, opts: GetOptions): Promise<{ kind: Kind; items: KubeObject[] }> {
  const kind = resolveKind(opts.kind);
  const { cluster } = await resolveContext(paths, context);
  const store = new EtcdClusterClient({ endpoints: [cluster.store.endpoint], timeoutMs: 5000 });
  try {
    const ns = RESOURCES[kind].namespaced && !opts.allNamespaces ? (opts.namespace ?? 'default') : undefined;
    const r = await store.list(RESOURCES[kind].resource, ns);
    return { kind, items: r.items };
  } catch (err) {
    throw new OperationError(`read ${RESOURCES[kind].resource} from the store of ${cluster.name} (${cluster.store.endpoint}): ${errorMessage(err)}`);
  } finally {
    await store.close();
  }
}

/** Resolve NS/POD to its network namespace (for exec). */
export async function podTarget(paths: LabPaths, context: string | undefined, ref: string): Promise<{ netns: string; pod: KubeObject }> {
  const m = /^(?:([a-z0-9-]+)\/)?([a-z0-9.-]+)$/.exec(ref);
  if (!m) throw new ValidationError('pod', 'ref', `invalid pod "${ref}": use NAMESPACE/POD or POD`);
  const [ns, name] = [m[1] ?? 'default', m[2]];
  const { lab, cluster } = await resolveContext(paths, context);
  const store = new EtcdClusterClient({ endpoints: [cluster.store.endpoint], timeoutMs: 5000 });
  try {
    const pod = await store.get('pods', ns, name);
    if (!pod) throw new NotFoundError('pod', `pod ${ns}/${name} not found in cluster ${cluster.name}`);
    const netns = (pod.status as { meshctl?: { netns?: string } })?.meshctl?.netns ?? podNetns(lab, cluster.name, ns, name);
    if (!(await netnsExists(netns))) throw new OperationError(`pod ${ns}/${name} has no network namespace ${netns}`);
    return { netns, pod };
  } finally {
    await store.close();
  }
}
