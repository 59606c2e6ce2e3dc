/** The pure half of the export process: store object → mesh/v1 value, or the Error that skips it. */
import { identityObject, makeIdentity } from '../../src/cluster/identity.js';
import type { KubeObject } from '../../src/cluster/types.js';
import { clusterConfigValue, endpointIp, ipEntryValue, remoteIdentityValue, remoteNodeValue } from '../../src/mesh/export-values.js';
import { meshExportArgs } from '../../src/mesh/export-proc.js';

const config = (spec: Record<string, unknown>, name = 'c1'): KubeObject => ({
  apiVersion: 'meshctl.io/v1',
  kind: 'MeshClusterConfig',
  metadata: { name },
  spec: { name: 'c1', id: 1, podCIDRs: ['10.1.0.0/16'], serviceCIDR: '10.96.0.0/16', routing: 'tunnel', vpcs: ['vpc-a'], ...spec },
});

function node(patch: (n: Record<string, any>) => void = () => undefined): KubeObject {
  const n: Record<string, any> = {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name: 'c1-n1', labels: { 'kubernetes.io/hostname': 'c1-n1', 'meshctl.io/vpc': 'vpc-a', 'meshctl.io/cluster': 'c1' } },
    spec: { podCIDR: '10.1.1.0/24', podCIDRs: ['10.1.1.0/24'] },
    status: { addresses: [{ type: 'InternalIP', address: '172.31.0.2' }, { type: 'Hostname', address: 'c1-n1' }], nodeInfo: { bootID: 'b' }, meshctl: { vpc: 'vpc-a', routerIP: '172.31.0.1', routing: 'tunnel', nodeId: 3 } },
  };
  patch(n);
  return n as KubeObject;
}

const endpoint = (spec: Record<string, unknown>): KubeObject => ({ apiVersion: 'meshctl.io/v1', kind: 'MeshEndpoint', metadata: { name: 'p', namespace: 'demo' }, spec: { ip: '10.1.1.5', identity: 65537, node: 'c1-n1', nodeIP: '172.31.0.2', endpointID: 7, ...spec } });

const msg = (v: unknown): unknown => (v instanceof Error ? `Error: ${v.message}` : v);

describe('clusterConfigValue', () => {
  const cases: Array<[string, KubeObject, unknown]> = [
    [
      'the lab store object',
      config({}),
      { version: 1, name: 'c1', id: 1, podCidrs: ['10.1.0.0/16'], serviceCidr: '10.96.0.0/16', routing: 'tunnel', vpcs: ['vpc-a'], encryption: 'none', capabilities: { syncedMarkers: true, maxConnectedClusters: 255 } },
    ],
    ['encryption from the spec', config({ encryption: 'wireguard' }), expect.objectContaining({ encryption: 'wireguard' })],
    ['another cluster', config({}, 'c2'), 'Error: meshclusterconfig c2: name is not the exported cluster c1'],
    ['spec.name differs', config({ name: 'c9' }), 'Error: meshclusterconfig c1: spec.name "c9" is not c1'],
    ['id out of range', config({ id: 256 }), 'Error: meshclusterconfig c1: id: Number must be less than or equal to 255'],
    ['no pod CIDR', config({ podCIDRs: [] }), 'Error: meshclusterconfig c1: podCidrs: Array must contain at least 1 element(s)'],
    ['bad routing', config({ routing: 'carrier-pigeon' }), expect.stringMatching(/^Error: meshclusterconfig c1: routing: Invalid enum value/)],
  ];
  test.each(cases)('%s', (_, obj, want) => expect(msg(clusterConfigValue(obj, 'c1'))).toEqual(want));
});

describe('remoteNodeValue', () => {
  const cases: Array<[string, KubeObject, unknown]> = [
    ['agent node object', node(), { version: 1, cluster: 'c1', name: 'c1-n1', ip: '172.31.0.2', podCidrs: ['10.1.1.0/24'], vpc: 'vpc-a', nodeId: 3 }],
    ['podCIDR only', node((n) => delete n.spec.podCIDRs), expect.objectContaining({ podCidrs: ['10.1.1.0/24'] })],
    ['no node id', node((n) => delete n.status.meshctl.nodeId), expect.objectContaining({ nodeId: 0 })],
    ['vpc from the label', node((n) => delete n.status.meshctl.vpc), expect.objectContaining({ vpc: 'vpc-a' })],
    ['wireguard key', node((n) => (n.status.meshctl.wireguardKey = 'k=')), expect.objectContaining({ wireguardKey: 'k=' })],
    ['no InternalIP', node((n) => (n.status.addresses = [])), 'Error: node c1-n1: status.addresses has no InternalIP'],
    ['bad InternalIP', node((n) => (n.status.addresses[0].address = '300.1.1.1')), 'Error: node c1-n1: ip: Invalid'],
    ['bad pod CIDR', node((n) => (n.spec.podCIDRs = ['10.1.1.0'])), 'Error: node c1-n1: podCidrs.0: Invalid'],
    ['node id too big', node((n) => (n.status.meshctl.nodeId = 70000)), 'Error: node c1-n1: nodeId: Number must be less than or equal to 65535'],
    ['no vpc at all', node((n) => { delete n.status.meshctl.vpc; delete n.metadata.labels['meshctl.io/vpc']; }), 'Error: node c1-n1: vpc: Required'],
    ['labelled with another cluster', node((n) => (n.metadata.labels['meshctl.io/cluster'] = 'c2')), 'Error: node c1-n1: label meshctl.io/cluster is c2, not c1'],
  ];
  test.each(cases)('%s', (_, obj, want) => expect(msg(remoteNodeValue(obj, 'c1'))).toEqual(want));
});

describe('remoteIdentityValue', () => {
  const now = new Date('2026-01-01T00:00:00Z');
  const ours = identityObject(makeIdentity(1, 7), { app: 'echo', 'io.kubernetes.pod.namespace': 'demo', 'io.cilium.k8s.policy.cluster': 'c1' }, now);
  const theirs = identityObject(makeIdentity(2, 7), { app: 'echo' }, now);
  const badHash = { ...ours, spec: { ...ours.spec, labelsHash: 'x' } } as KubeObject;
  const badLabel = identityObject(makeIdentity(1, 8), { [`a${'b'.repeat(400)}`]: 'v' }, now);
  const cases: Array<[string, KubeObject, unknown]> = [
    ['this cluster', ours, { version: 1, cluster: 'c1', id: 65543, labels: { app: 'echo', 'io.cilium.k8s.policy.cluster': 'c1', 'io.kubernetes.pod.namespace': 'demo' } }],
    ['another cluster id: not exported', theirs, null],
    ['corrupt record', badHash, 'Error: identity 65543: spec.labelsHash does not match spec.labels'],
    ['label key too long', badLabel, expect.stringMatching(/^Error: identity 65544: labels\.a+b+: String must contain at most 317/)],
  ];
  test.each(cases)('%s', (_, obj, want) => expect(msg(remoteIdentityValue(obj, 'c1', 1))).toEqual(want));
});

describe('ipEntryValue', () => {
  const cases: Array<[string, KubeObject, unknown]> = [
    ['agent endpoint', endpoint({}), { version: 1, cluster: 'c1', ip: '10.1.1.5', identity: 65537, node: 'c1-n1' }],
    ['no identity', endpoint({ identity: undefined }), 'Error: meshendpoint demo/p: identity: Required'],
    ['identity 0', endpoint({ identity: 0 }), 'Error: meshendpoint demo/p: identity: Number must be greater than or equal to 1'],
    ['IPv6', endpoint({ ip: 'fd00::1' }), 'Error: meshendpoint demo/p: ip: Invalid'],
    ['no node', endpoint({ node: '' }), 'Error: meshendpoint demo/p: node: String must contain at least 1 character(s)'],
  ];
  test.each(cases)('%s', (_, obj, want) => expect(msg(ipEntryValue(obj, 'c1'))).toEqual(want));

  test.each([
    ['10.1.1.5', '10.1.1.5'],
    ['', undefined],
    ['10.1.1.0/24', undefined],
    [7, undefined],
  ])('endpointIp(%p)', (ip, want) => expect(endpointIp(endpoint({ ip }))).toBe(want));
});

test('mesh-export argv', () => {
  expect(meshExportArgs({ cluster: 'c1', store: 'http://198.18.7.10:2379', apiserver: 'https://127.0.0.1:32379', certDir: '/h/clusters/c1/mesh' })).toEqual([
    'mesh-export', '--cluster', 'c1', '--store', 'http://198.18.7.10:2379', '--apiserver', 'https://127.0.0.1:32379', '--cert-dir', '/h/clusters/c1/mesh',
  ]);
});
