/** `meshctl lab …`: commander wiring only; each action calls one domain function. */
import { spawn } from 'node:child_process';
import { Command, Option } from 'commander';
import { DEFAULT_NODES, DEFAULT_ROUTING, ROUTING_MODES } from '../defaults.js';
import type { KubeObject } from '../cluster/types.js';
import { createCluster } from '../lab/create.js';
import { deleteAll, deleteCluster } from '../lab/delete.js';
import { listClusters } from '../lab/list.js';
import { LabPaths, stateHome } from '../lab/state.js';
import { runSupervisor } from '../lab/supervisor.js';
import { applyFile, getObjects, podTarget, removeFile } from '../lab/workloads.js';
import { ValidationError } from '../util/errors.js';
import { out, table } from '../util/output.js';
import { requireRoot } from './root.js';

/** Building this many pods takes long enough to say so first. */
const PROGRESS_MIN_PODS = 20;

function paths(): LabPaths {
  return new LabPaths(stateHome());
}

function outputOption(): Option {
  return new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table');
}

export function labCommand(): Command {
  const lab = new Command('lab').description('Build and use local lab clusters made of network namespaces');

  lab
    .command('create')
    .description('Create a lab cluster: nodes, store etcd, agents')
    .argument('<name>', 'cluster name (DNS label, 1-32 chars, not "default")')
    .requiredOption('--id <n>', 'cluster id, 1-255')
    .requiredOption('--pod-cidr <cidr>', 'pod CIDR, e.g. 10.1.0.0/16')
    .option('--service-cidr <cidr>', 'service CIDR (default: a /20 of 10.96.0.0/12 chosen by the cluster id, so clusters of a mesh never overlap)')
    .option('--nodes <k>', 'number of nodes', String(DEFAULT_NODES))
    .option('--vpc <names>', 'VPC(s) to put nodes in, comma-separated; nodes are spread over them (default: one named after the cluster)')
    .addOption(new Option('--routing <mode>', 'routing mode').choices([...ROUTING_MODES]).default(DEFAULT_ROUTING))
    .addHelpText('after', '\nExample:\n  meshctl lab create c1 --id 1 --pod-cidr 10.1.0.0/16 --nodes 2')
    .action(async (name: string, o: { id: string; podCidr: string; serviceCidr?: string; nodes: string; vpc?: string; routing: string }) => {
      requireRoot('lab create');
      const started = Date.now();
      const c = await createCluster(paths(), {
        onStart: () => out.wait(`Creating cluster ${name}…`),
        name,
        id: o.id,
        podCidr: o.podCidr,
        serviceCidr: o.serviceCidr,
        nodes: o.nodes,
        vpcs: o.vpc,
        routing: o.routing,
        onWarning: (m) => out.warn(m),
        onStep: (s, ms) => out.info(`   ${s} (${(ms / 1000).toFixed(1)}s)`),
      });
      out.ok(`Cluster ${c.name} (id ${c.id}, ${c.routing}) created with ${c.nodes.length} node(s) in ${((Date.now() - started) / 1000).toFixed(1)}s; store ${c.store.endpoint}`);
    });

  lab
    .command('delete')
    .description('Delete a lab cluster, or every cluster with --all')
    .argument('[name]', 'cluster name')
    .option('--all', 'delete every cluster of this lab and the lab itself')
    .addHelpText('after', '\nExamples:\n  meshctl lab delete c1\n  meshctl lab delete --all')
    .action(async (name: string | undefined, o: { all?: boolean }) => {
      requireRoot('lab delete');
      if (o.all && name) throw new ValidationError('name', 'exclusive', 'give a cluster name or --all, not both');
      if (o.all) {
        const gone = await deleteAll(paths());
        out.ok(gone.length ? `Deleted ${gone.join(', ')} and the lab` : 'Deleted the lab (no clusters were left)');
        return;
      }
      if (!name) throw new ValidationError('name', 'required', 'give a cluster name or --all');
      await deleteCluster(paths(), name);
      out.ok(`Deleted cluster ${name}`);
    });

  lab
    .command('list')
    .description('List the clusters of this lab')
    .addOption(outputOption())
    .addHelpText('after', '\nExample:\n  meshctl lab list -o json')
    .action(async (o: { output: string }) => {
      const clusters = await listClusters(paths());
      if (o.output === 'json') return out.data({ home: paths().home, clusters });
      if (clusters.length === 0) return out.info('No lab clusters. Create one: meshctl lab create c1 --id 1 --pod-cidr 10.1.0.0/16');
      out.text(
        table([
          ['NAME', 'ID', 'POD-CIDR', 'ROUTING', 'VPCS', 'NODES', 'AGENTS', 'STORE'],
          ...clusters.map((c) => [
            c.name,
            String(c.id),
            c.podCidrs.join(','),
            c.routing,
            c.vpcs.join(','),
            String(c.nodes.length),
            `${c.agentsReady}/${c.nodes.length}`,
            `${c.store.endpoint} (${c.store.ready ? 'ready' : 'down'})`,
          ]),
        ]),
      );
    });

  lab
    .command('apply')
    .description('Create or update objects from Kubernetes YAML (Namespace, Pod, Deployment, Service, NetworkPolicy, MeshNetworkPolicy)')
    .requiredOption('-f, --filename <file>', 'YAML file, or - for stdin')
    .option('--context <name>', 'lab cluster')
    .option('--timings', 'print how long each phase of building pods took')
    .addHelpText('after', '\nExample:\n  meshctl lab apply -f fixtures/echo-app.yaml --context c1')
    .action(async (o: { filename: string; context?: string; timings?: boolean }) => {
      requireRoot('lab apply');
      const r = await applyFile(paths(), o.context, o.filename, {
        onBuildPods: (n) => n >= PROGRESS_MIN_PODS && out.wait(`Building ${n} pods…`),
      });
      for (const l of r.lines) out.info(l);
      if (o.timings) {
        for (const [phase, ms] of Object.entries(r.timings)) out.info(`   ${phase} (${(ms / 1000).toFixed(2)}s)`);
      }
    });

  lab
    .command('remove')
    .description('Delete the objects a YAML file names')
    .requiredOption('-f, --filename <file>', 'YAML file, or - for stdin')
    .option('--context <name>', 'lab cluster')
    .addHelpText('after', '\nExample:\n  meshctl lab remove -f fixtures/echo-app.yaml --context c1')
    .action(async (o: { filename: string; context?: string }) => {
      requireRoot('lab remove');
      const r = await removeFile(paths(), o.context, o.filename);
      for (const l of r.lines) out.info(l);
    });

  lab
    .command('get')
    .description('List objects of a kind')
    .argument('<kind>', 'pods, services, deployments, namespaces, nodes, networkpolicies, meshnetworkpolicies')
    .option('-n, --namespace <ns>', 'namespace', 'default')
    .option('-A, --all-namespaces', 'all namespaces')
    .option('--context <name>', 'lab cluster')
    .addOption(outputOption())
    .addHelpText('after', '\nExample:\n  meshctl lab get pods -n demo -o json --context c1')
    .action(async (kindText: string, o: { namespace: string; allNamespaces?: boolean; context?: string; output: string }) => {
      const { kind, items } = await getObjects(paths(), o.context, { kind: kindText, namespace: o.namespace, allNamespaces: o.allNamespaces });
      if (o.output === 'json') return out.data({ apiVersion: 'v1', kind: 'List', items });
      if (items.length === 0) return out.info(`No ${kindText} found${o.allNamespaces ? '' : ` in namespace ${o.namespace}`}.`);
      out.text(table(renderRows(kind, items)));
    });

  lab
    .command('exec')
    .description('Run a command inside a pod (its network namespace)')
    .argument('<pod>', 'NAMESPACE/POD')
    .argument('<command...>', 'command and arguments (after --)')
    .option('--context <name>', 'lab cluster')
    .addHelpText('after', '\nExample:\n  meshctl lab exec --context c1 demo/client -- curl -s http://10.1.0.2:8080/')
    .action(async (ref: string, command: string[], o: { context?: string }) => {
      requireRoot('lab exec');
      const { netns } = await podTarget(paths(), o.context, ref);
      const child = spawn('ip', ['netns', 'exec', netns, ...command], { stdio: 'inherit' });
      process.exitCode = await new Promise<number>((resolve) => {
        child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 + 9 : 1)));
        child.on('error', () => resolve(127));
      });
    });

  lab
    .command('supervise', { hidden: true })
    .description('Keep a cluster’s processes alive (started by lab create)')
    .requiredOption('--cluster <name>')
    .action(async (o: { cluster: string }) => {
      await runSupervisor(paths(), o.cluster);
    });

  return lab;
}

function renderRows(kind: string, items: KubeObject[]): string[][] {
  const age = (o: KubeObject): string => {
    const t = o.metadata.creationTimestamp ? Date.parse(o.metadata.creationTimestamp) : NaN;
    if (Number.isNaN(t)) return '-';
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
  };
  const ns = (o: KubeObject): string => o.metadata.namespace ?? '';
  switch (kind) {
    case 'Pod':
      return [
        ['NAMESPACE', 'NAME', 'STATUS', 'IP', 'NODE', 'AGE'],
        ...items.map((p) => {
          const s = (p.status ?? {}) as { phase?: string; podIP?: string };
          return [ns(p), p.metadata.name, s.phase ?? '-', s.podIP ?? '-', (p.spec as { nodeName?: string }).nodeName ?? '-', age(p)];
        }),
      ];
    case 'Service':
      return [
        ['NAMESPACE', 'NAME', 'CLUSTER-IP', 'PORTS', 'GLOBAL', 'AGE'],
        ...items.map((s) => {
          const spec = s.spec as { clusterIP?: string; ports?: Array<{ port: number; protocol?: string }> };
          const ann = s.metadata.annotations ?? {};
          const global = ann['service.cilium.io/global'] === 'true' || ann['io.cilium/global-service'] === 'true';
          return [ns(s), s.metadata.name, spec.clusterIP ?? '-', (spec.ports ?? []).map((p) => `${p.port}/${p.protocol ?? 'TCP'}`).join(','), global ? 'yes' : 'no', age(s)];
        }),
      ];
    case 'Deployment':
      return [['NAMESPACE', 'NAME', 'REPLICAS', 'AGE'], ...items.map((d) => [ns(d), d.metadata.name, String((d.spec as { replicas?: number }).replicas ?? 1), age(d)])];
    case 'Node':
      return [
        ['NAME', 'INTERNAL-IP', 'POD-CIDR', 'VPC', 'AGE'],
        ...items.map((n) => {
          const st = n.status as { addresses?: Array<{ type: string; address: string }>; meshctl?: { vpc?: string } };
          return [n.metadata.name, st.addresses?.find((a) => a.type === 'InternalIP')?.address ?? '-', (n.spec as { podCIDR?: string }).podCIDR ?? '-', st.meshctl?.vpc ?? '-', age(n)];
        }),
      ];
    case 'Namespace':
      return [['NAME', 'AGE'], ...items.map((n) => [n.metadata.name, age(n)])];
    default:
      return [['NAMESPACE', 'NAME', 'AGE'], ...items.map((o) => [ns(o), o.metadata.name, age(o)])];
  }
}
