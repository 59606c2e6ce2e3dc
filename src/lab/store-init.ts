/** Objects every new lab cluster's store starts with. */
import type { ClusterClient } from '../cluster/client.js';
import { AlreadyExistsError } from '../cluster/client.js';
import type { KubeObject } from '../cluster/types.js';
import type { ClusterState } from './state.js';

export async function initStore(client: ClusterClient, c: ClusterState): Promise<void> {
  const now = new Date().toISOString();
  const objects: Array<[string, KubeObject]> = [
    ['namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'default', creationTimestamp: now } }],
    [
      'meshclusterconfigs',
      {
        apiVersion: 'meshctl.io/v1',
        kind: 'MeshClusterConfig',
        metadata: { name: c.name, creationTimestamp: now },
        spec: { name: c.name, id: c.id, podCIDRs: c.podCidrs, serviceCIDR: c.serviceCidr, routing: c.routing, vpcs: c.vpcs },
      },
    ],
  ];
  for (const [resource, obj] of objects) {
    try {
      await client.create(resource, obj);
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err;
    }
  }
}
