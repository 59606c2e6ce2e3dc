/**
 * `lab create`: a list of named steps sharing one context. When a step fails, the steps that
 * completed are undone in reverse order, so a failed create leaves nothing behind.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  AGENTS_READY_TIMEOUT_MS,
  BPF_PIN_ROOT,
  DEFAULT_NODES,
  DEFAULT_ROUTING,
  DEFAULT_SERVICE_PREFIX,
  DEFAULT_SERVICE_RANGE,
  STORE_CLIENT_PORT,
  STORE_READY_TIMEOUT_MS,
  type RoutingMode,
} from '../defaults.js';
import { EtcdClusterClient } from '../cluster/etcd-client.js';
import { cidrsOverlap, formatCidr, formatIp, parseCidr, subnetAt } from '../util/cidr.js';
import { OperationError, ValidationError, errorMessage } from '../util/errors.js';
import { sleep } from '../util/exec.js';
import { deleteNetns } from './netns.js';
import { agentProcSpec, ensureSupervisor, stopSupervisor, storeProcSpec } from './processes.js';
import {
  clusterNetnsPrefix,
  labPrefix,
  readLabState,
  withLabLock,
  writeLabState,
  type ClusterState,
  type LabPaths,
  type LabState,
  type NodeState,
} from './state.js';
import { writeProcSpec } from './supervisor.js';
import {
  allocMgmtIp,
  allocVpcIp,
  controlPlaneLinks,
  createControlPlane,
  createNode,
  createUnderlay,
  createVpc,
  deleteVpc,
  hostLinkName,
  nodeLinkName,
  pickMgmtSubnet,
  removeNodeRoute,
  sweepLab,
  underlayNetnsName,
} from './topology.js';
import {
  checkRangeFree,
  hostRoutes,
  validateClusterId,
  validateClusterName,
  validateNodeCount,
  validatePodCidr,
  validateRouting,
  validateVpcNames,
} from './validate.js';
import { initStore } from './store-init.js';

export interface CreateClusterOptions {
  readonly name: string;
  /** Cluster id, 1..255. */
  readonly id: string | number;
  readonly podCidr: string;
  /** Default: the id-th /20 of 10.96.0.0/12 (see defaultServiceCidr). */
  readonly serviceCidr?: string;
  /** Default 2. */
  readonly nodes?: string | number;
  /** VPC names; nodes are spread over them in turn. Default: one VPC named after the cluster. */
  readonly vpcs?: string;
  /** Default tunnel. */
  readonly routing?: string;
  /** Called with each warning (conflicts only a mesh would have). */
  readonly onWarning?: (msg: string) => void;
  /** Called once the input is valid, before anything is built. */
  readonly onStart?: () => void;
  /** Called when a step completes. */
  readonly onStep?: (name: string, ms: number) => void;
}

interface Step {
  readonly name: string;
  readonly run: () => Promise<void>;
  readonly undo: () => Promise<void>;
}

/** Test hook: fail right after the named step, to prove that a failed create leaves nothing. */
const FAIL_AFTER_ENV = 'MESHCTL_LAB_FAIL_AFTER';

/** A cluster's default service CIDR: its own /20 of 10.96.0.0/12, by id, so clusters of a mesh never share one. */
export function defaultServiceCidr(id: number): string {
  return formatCidr(subnetAt(parseCidr(DEFAULT_SERVICE_RANGE)!, DEFAULT_SERVICE_PREFIX, id));
}

export async function createCluster(paths: LabPaths, opts: CreateClusterOptions): Promise<ClusterState> {
  const name = validateClusterName(opts.name);
  const id = validateClusterId(opts.id);
  const pod = validatePodCidr(opts.podCidr);
  const svc = validatePodCidr(opts.serviceCidr ?? defaultServiceCidr(id), 'service CIDR');
  const nodeCount = validateNodeCount(opts.nodes ?? DEFAULT_NODES);
  const vpcNames = opts.vpcs ? validateVpcNames(opts.vpcs) : [name];
  const routing: RoutingMode = validateRouting(opts.routing ?? DEFAULT_ROUTING);
  if (cidrsOverlap(pod, svc)) {
    throw new ValidationError('cidr', 'overlap', `service CIDR ${formatCidr(svc)} overlaps pod CIDR ${formatCidr(pod)}`);
  }
  const slicePrefix = Math.max(24, pod.prefix + 4);
  if (nodeCount > 2 ** (slicePrefix - pod.prefix)) {
    throw new ValidationError('nodes', 'cidr-room', `pod CIDR ${formatCidr(pod)} has room for ${2 ** (slicePrefix - pod.prefix)} nodes, not ${nodeCount}`);
  }

  return withLabLock(paths, async () => {
    const existing = await readLabState(paths);
    const warn = opts.onWarning ?? (() => undefined);
    if (existing?.clusters[name]) {
      throw new ValidationError('name', 'unique', `cluster "${name}" already exists in this lab`);
    }
    const routes = (await hostRoutes()).filter((r) => !existing || !r.text.endsWith(`dev ${existing.hostLink}`));
    const labRanges = existing ? [parseCidr(existing.mgmt.subnet)!] : [];
    checkRangeFree(pod, 'pod CIDR', routes, labRanges);
    checkRangeFree(svc, 'service CIDR', routes, labRanges);
    for (const other of Object.values(existing?.clusters ?? {})) {
      if (other.id === id) warn(`cluster id ${id} is also used by cluster ${other.name}: the two cannot be connected in a mesh`);
      for (const oc of other.podCidrs) {
        if (!cidrsOverlap(pod, parseCidr(oc)!)) continue;
        if (routing === 'native' || other.routing === 'native') {
          throw new ValidationError(
            'cidr',
            'overlap-native',
            `pod CIDR ${formatCidr(pod)} overlaps ${oc} of cluster ${other.name}; not allowed when either uses native routing (the underlay would have to route both)`,
          );
        }
        warn(`pod CIDR ${formatCidr(pod)} overlaps ${oc} of cluster ${other.name}: the two cannot be connected in a mesh`);
      }
    }

    opts.onStart?.();
    const prefix = existing?.prefix ?? labPrefix(paths.home);
    const lab: LabState = existing ?? {
      version: 1,
      prefix,
      home: paths.home,
      underlayNetns: underlayNetnsName(prefix),
      hostLink: hostLinkName(prefix),
      mgmt: { subnet: pickMgmtSubnet(prefix, routes), hostIp: '', nextHost: 10 },
      vpcs: {},
      clusters: {},
    };
    if (!existing) lab.mgmt.hostIp = formatIp(parseCidr(lab.mgmt.subnet)!.network + 1);

    const nsPrefix = clusterNetnsPrefix(prefix, name);
    const createdVpcs: string[] = [];
    let cluster: ClusterState | undefined;
    const steps: Step[] = [
      {
        name: 'underlay',
        run: async () => {
          if (!existing) {
            await sweepLab(prefix); // leftovers of a crashed lab with this prefix
            await createUnderlay(lab);
          }
        },
        undo: async () => {
          if (!existing) await sweepLab(prefix);
        },
      },
      {
        name: 'vpcs',
        run: async () => {
          for (const v of vpcNames) {
            if (!lab.vpcs[v]) {
              await createVpc(lab, v);
              createdVpcs.push(v);
            }
          }
        },
        undo: async () => {
          for (const v of createdVpcs) await deleteVpc(lab, v);
        },
      },
      {
        name: 'control-plane',
        run: async () => {
          const cpVpc = lab.vpcs[vpcNames[0]];
          const vpcIp = allocVpcIp(cpVpc);
          const mgmtIp = allocMgmtIp(lab);
          const links = controlPlaneLinks(prefix, name);
          const nodes: NodeState[] = [];
          for (let i = 1; i <= nodeCount; i++) {
            const vpcName = vpcNames[(i - 1) % vpcNames.length];
            const nodeName = `${name}-n${i}`;
            const slice = subnetAt(pod, slicePrefix, i - 1);
            nodes.push({
              name: nodeName,
              index: i,
              netns: `${nsPrefix}n${i}`,
              vpc: vpcName,
              ip: allocVpcIp(lab.vpcs[vpcName]),
              podCidr: formatCidr(slice),
              routerIp: formatIp(slice.network + 1),
              link: nodeLinkName(prefix, name, nodeName),
            });
          }
          cluster = {
            name,
            id,
            podCidrs: [formatCidr(pod)],
            serviceCidr: formatCidr(svc),
            routing,
            vpcs: vpcNames,
            createdAt: new Date().toISOString(),
            controlPlane: { netns: `${nsPrefix}cp`, vpc: vpcNames[0], vpcIp, mgmtIp, ...links },
            nodes,
            store: {
              endpoint: `http://${mgmtIp}:${STORE_CLIENT_PORT}`,
              internalEndpoint: `http://${vpcIp}:${STORE_CLIENT_PORT}`,
            },
          };
          await createControlPlane(lab, cluster.controlPlane.netns, cpVpc, vpcIp, mgmtIp, links);
        },
        undo: async () => {
          if (cluster) await deleteNetns(cluster.controlPlane.netns);
        },
      },
      {
        name: 'nodes',
        run: async () => {
          for (const n of cluster!.nodes) await createNode(lab, n, routing === 'native');
        },
        undo: async () => {
          for (const n of cluster?.nodes ?? []) {
            await removeNodeRoute(lab, n);
            await deleteNetns(n.netns);
          }
        },
      },
      {
        name: 'store',
        run: async () => {
          const c = cluster!;
          await rm(paths.clusterDir(name), { recursive: true, force: true });
          await mkdir(paths.storeDir(name), { recursive: true, mode: 0o700 });
          writeProcSpec(paths, name, storeProcSpec(paths, c));
          await ensureSupervisor(paths, name);
          const client = new EtcdClusterClient({ endpoints: [c.store.endpoint] });
          try {
            await client.waitReady(STORE_READY_TIMEOUT_MS);
            await initStore(client, c);
          } finally {
            await client.close();
          }
        },
        undo: async () => {
          await stopSupervisor(paths, name);
          await rm(paths.clusterDir(name), { recursive: true, force: true });
        },
      },
      {
        name: 'state',
        run: async () => {
          lab.clusters[name] = cluster!;
          await writeLabState(paths, lab);
        },
        undo: async () => {
          delete lab.clusters[name];
          if (Object.keys(lab.clusters).length > 0) await writeLabState(paths, lab);
          else await rm(paths.stateFile, { force: true });
        },
      },
      {
        name: 'agents',
        run: async () => {
          const c = cluster!;
          for (const n of c.nodes) writeProcSpec(paths, name, agentProcSpec(paths, lab, c, n));
          await waitForAgents(c, AGENTS_READY_TIMEOUT_MS);
        },
        undo: async () => {
          // Agents report before their datapath has pinned its maps: stop them first, or a
          // load still under way pins again under the directory removed here.
          await stopSupervisor(paths, name);
          await rm(join(BPF_PIN_ROOT, prefix, name), { recursive: true, force: true });
        },
      },
    ];

    const done: Step[] = [];
    try {
      for (const s of steps) {
        const started = Date.now();
        await s.run();
        done.push(s);
        opts.onStep?.(s.name, Date.now() - started);
        if (process.env[FAIL_AFTER_ENV] === s.name) throw new OperationError(`injected failure after step ${s.name}`);
      }
    } catch (err) {
      for (const s of done.reverse()) {
        await s.undo().catch(() => undefined);
      }
      // The step that failed may have half-built its part: remove every namespace of this cluster.
      const { listNetns } = await import('./netns.js');
      for (const n of (await listNetns()).filter((x) => x.startsWith(nsPrefix))) await deleteNetns(n);
      if (!existing) await sweepLab(prefix);
      throw err instanceof OperationError || err instanceof ValidationError
        ? err
        : new OperationError(`create cluster ${name}: ${errorMessage(err)}`, { cause: err });
    }
    return cluster!;
  });
}

/** Wait until every node's agent has published its node and a live status object. */
export async function waitForAgents(c: ClusterState, timeoutMs: number): Promise<void> {
  const client = new EtcdClusterClient({ endpoints: [c.store.endpoint] });
  const deadline = Date.now() + timeoutMs;
  let missing: string[] = c.nodes.map((n) => n.name);
  let lastErr = '';
  try {
    while (Date.now() < deadline) {
      try {
        const statuses = await client.list('meshnodestatuses');
        // Ready = reporting, with the datapath programmed (or an agent that runs without one).
        const ready = new Set<string>();
        for (const s of statuses.items) {
          const st = (s.status ?? {}) as { datapath?: { ready?: boolean; disabled?: boolean }; lastError?: string };
          if (st.datapath?.ready || st.datapath?.disabled) ready.add(s.metadata.name);
          else if (st.lastError) lastErr = `${s.metadata.name}: ${st.lastError}`;
        }
        missing = c.nodes.map((n) => n.name).filter((n) => !ready.has(n));
        if (missing.length === 0) return;
      } catch (err) {
        lastErr = errorMessage(err);
      }
      await sleep(100);
    }
  } finally {
    await client.close();
  }
  throw new OperationError(
    `agents of ${missing.join(', ')} were not ready within ${timeoutMs / 1000}s${lastErr ? `: ${lastErr}` : ''}`,
  );
}
