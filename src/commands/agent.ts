/** `meshctl agent` (hidden): the node agent, started by the lab's supervisor inside a node's namespace. */
import { Command } from 'commander';
import { Agent } from '../agent/agent.js';
import { EtcdClusterClient } from '../cluster/etcd-client.js';

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
    .action(async (o: Record<string, string>) => {
      const client = new EtcdClusterClient({ endpoints: [o.store] });
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
        },
        client,
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
