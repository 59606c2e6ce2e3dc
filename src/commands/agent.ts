/** `meshctl agent` (hidden): the node agent, started by the lab's supervisor inside a node's namespace. */
import { Command } from 'commander';
import { Agent } from '../agent/agent.js';
import { EtcdClusterClient } from '../cluster/etcd-client.js';
import { EtcdIdentityAllocator } from '../cluster/identity-etcd.js';

export function agentCommand(): Command {
  return new Command('agent')
    .description('Run the node agent (started by the lab)')
    .requiredOption('--cluster <name>')
    .requiredOption('--cluster-id <n>')
    .requiredOption('--node <name>')
    .requiredOption('--node-ip <ip>')
    .requiredOption('--pod-cidr <cidr>')
    .requiredOption('--router-ip <ip>')
    .requiredOption('--vpc <name>')
    .requiredOption('--routing <mode>')
    .requiredOption('--store <url>')
    .requiredOption('--lab <prefix>')
    .option('--node-index <n>', 'node number (datapath node id)', '0')
    .option('--flows-socket <path>', 'unix socket for the flow stream')
    .option('--no-datapath', 'do not program the eBPF datapath')
    .action(async (o: Record<string, string> & { datapath: boolean }) => {
      const client = new EtcdClusterClient({ endpoints: [o.store] });
      const log = (m: string): void => void process.stderr.write(`${new Date().toISOString()} ${m}\n`);
      const identities = new EtcdIdentityAllocator(client, { clusterId: Number(o.clusterId), holder: o.node, onError: (err) => log(`identities: ${err.message}`) });
      const agent = new Agent(
        {
          cluster: o.cluster,
          clusterId: Number(o.clusterId),
          node: o.node,
          nodeIp: o.nodeIp,
          podCidr: o.podCidr,
          routerIp: o.routerIp,
          vpc: o.vpc,
          routing: o.routing,
          lab: o.lab,
          nodeIndex: Number(o.nodeIndex),
          flowsSocket: o.flowsSocket,
          datapath: o.datapath,
        },
        client,
        identities,
        log,
      );
      agent.start();
      process.stderr.write(`${new Date().toISOString()} agent ${o.node} of ${o.cluster} started (pid ${process.pid})\n`);
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          void agent.stop().finally(resolve);
        };
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
    });
}
