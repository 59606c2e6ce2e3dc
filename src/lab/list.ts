/** `lab list`: clusters of this lab with nodes, VPCs, routing, store endpoint and live agents. */
import { EtcdClusterClient } from '../cluster/etcd-client.js';
import { errorMessage } from '../util/errors.js';
import { agentProcName } from './processes.js';
import { readLabState, type LabPaths } from './state.js';
import { procPid, supervisorPid } from './supervisor.js';

export interface NodeSummary {
  readonly name: string;
  readonly ip: string;
  readonly vpc: string;
  readonly podCidr: string;
  readonly agent: { readonly pid: number | null; readonly ready: boolean };
}

export interface ClusterSummary {
  readonly name: string;
  readonly id: number;
  readonly podCidrs: string[];
  readonly serviceCidr: string;
  readonly routing: string;
  readonly vpcs: string[];
  readonly store: { readonly endpoint: string; readonly pid: number | null; readonly ready: boolean; readonly error?: string };
  readonly supervisorPid: number | null;
  readonly nodes: NodeSummary[];
  readonly agentsReady: number;
}

export async function listClusters(paths: LabPaths): Promise<ClusterSummary[]> {
  const lab = await readLabState(paths);
  if (!lab) return [];
  const out: ClusterSummary[] = [];
  for (const c of Object.values(lab.clusters).sort((a, b) => a.name.localeCompare(b.name))) {
    let ready = new Set<string>();
    let storeReady = false;
    let error: string | undefined;
    const client = new EtcdClusterClient({ endpoints: [c.store.endpoint], timeoutMs: 2000 });
    try {
      const st = await client.list('meshnodestatuses');
      ready = new Set(st.items.map((i) => i.metadata.name));
      storeReady = true;
    } catch (err) {
      error = errorMessage(err);
    } finally {
      await client.close();
    }
    const nodes = c.nodes.map((n) => ({
      name: n.name,
      ip: n.ip,
      vpc: n.vpc,
      podCidr: n.podCidr,
      agent: { pid: procPid(paths, c.name, agentProcName(n.name)), ready: ready.has(n.name) },
    }));
    out.push({
      name: c.name,
      id: c.id,
      podCidrs: c.podCidrs,
      serviceCidr: c.serviceCidr,
      routing: c.routing,
      vpcs: c.vpcs,
      store: { endpoint: c.store.endpoint, pid: procPid(paths, c.name, 'store'), ready: storeReady, ...(error ? { error } : {}) },
      supervisorPid: supervisorPid(paths, c.name),
      nodes,
      agentsReady: nodes.filter((n) => n.agent.ready && n.agent.pid !== null).length,
    });
  }
  return out;
}
