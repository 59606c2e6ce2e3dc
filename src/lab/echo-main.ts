/** Entry point of a lab pod's workload (kept apart from the CLI so it starts fast and small). */
import { ECHO_HTTP_PORT, ECHO_TCP_PORT, ECHO_UDP_PORT } from '../defaults.js';
import { startEcho } from './echo.js';

const [cluster, node, namespace, pod, podIP] = process.argv.slice(2);
if (!cluster || !node || !namespace || !pod || !podIP) {
  process.stderr.write('usage: echo-main CLUSTER NODE NAMESPACE POD POD_IP\n');
  process.exit(2);
}
await startEcho({ cluster, node, namespace, pod, podIP }, { http: ECHO_HTTP_PORT, tcp: ECHO_TCP_PORT, udp: ECHO_UDP_PORT });
process.stderr.write(`echo ${namespace}/${pod} listening on ${podIP}\n`);
process.on('SIGTERM', () => process.exit(0));
