import { parseCidr, parseIp } from '../../src/util/cidr.js';
import {
  classifyKey,
  validateClusterConfig,
  validateHeartbeat,
  validateIdentity,
  validateIp,
  validateNode,
  validateSyncMarker,
  type LocalView,
  type PeerIdentity,
} from '../../src/mesh/remote-validate.js';
import { remoteRoute } from '../../src/agent/controllers/remote.js';

const local: LocalView = { podCidrs: [parseCidr('10.1.0.0/16')!], isLocalNodeIp: (n) => n === parseIp('172.31.1.10') };
const peer: PeerIdentity = { name: 'c2', clusterId: 2, podCidrs: [parseCidr('10.2.0.0/16')!] };
const j = (v: unknown): string => JSON.stringify(v);
const reason = (v: unknown): string => ((v as { invalid?: string }).invalid ?? 'ok');

const config = { version: 1, name: 'c2', id: 2, podCidrs: ['10.2.0.0/16'], serviceCidr: '10.96.0.0/16', routing: 'tunnel', vpcs: ['a'], encryption: 'none', capabilities: { syncedMarkers: true, maxConnectedClusters: 255 } };
const node = { version: 1, cluster: 'c2', name: 'c2-n1', ip: '172.31.2.10', podCidrs: ['10.2.1.0/24'], vpc: 'b', nodeId: 1 };
const ident = { version: 1, cluster: 'c2', id: (2 << 16) | 300, labels: { app: 'x', 'io.cilium.k8s.policy.cluster': 'c2' } };
const ipEntry = { version: 1, cluster: 'c2', ip: '10.2.1.5', identity: (2 << 16) | 300, node: 'c2-n1' };

describe('classifyKey', () => {
  test.each([
    ['mesh/v1/ip/c2/10.2.1.5', 'ok'],
    ['mesh/v1/cluster-config/c2', 'ok'],
    ['mesh/v1/ip/c3/10.2.1.5', 'wrong-cluster'],
    ['mesh/v1/services/c2/ns/x', 'bad-key'],
    ['mesh/v1/bogus/c2/x', 'bad-key'],
    ['mesh/v1/ip/c2/', 'bad-key'],
    ['other/ip/c2/1.2.3.4', 'bad-key'],
  ])('%s → %s', (key, want) => {
    expect(reason(classifyKey('c2', key))).toBe(want);
  });
});

describe('validateClusterConfig', () => {
  test.each([
    ['valid', j(config), 'ok'],
    ['not JSON', '{nope', 'not-json'],
    ['version 2', j({ ...config, version: 2 }), 'schema'],
    ['missing field', j({ ...config, routing: undefined }), 'schema'],
    ['another name', j({ ...config, name: 'c3' }), 'config-mismatch'],
    ['another id', j({ ...config, id: 3 }), 'config-mismatch'],
    ['pod CIDR overlapping ours', j({ ...config, podCidrs: ['10.0.0.0/8'] }), 'config-mismatch'],
  ])('%s', (_n, raw, want) => {
    expect(reason(validateClusterConfig({ name: 'c2', clusterId: 2 }, raw, local))).toBe(want);
  });
});

describe('validateNode', () => {
  test.each([
    ['valid', 'c2-n1', j(node), 'ok'],
    ['not JSON', 'c2-n1', 'x', 'not-json'],
    ['schema', 'c2-n1', j({ ...node, ip: '300.1.1.1' }), 'schema'],
    ['value of another cluster', 'c2-n1', j({ ...node, cluster: 'c3' }), 'wrong-cluster'],
    ['key names another node', 'c2-n2', j(node), 'key-mismatch'],
    ['address of a local node', 'c2-n1', j({ ...node, ip: '172.31.1.10' }), 'local-address'],
    ['address in our pod CIDR', 'c2-n1', j({ ...node, ip: '10.1.0.7' }), 'local-address'],
    ['pod slice outside the peer CIDRs', 'c2-n1', j({ ...node, podCidrs: ['10.1.1.0/24'] }), 'ip-outside-pod-cidr'],
    ['pod slice larger than the peer CIDR', 'c2-n1', j({ ...node, podCidrs: ['10.0.0.0/8'] }), 'ip-outside-pod-cidr'],
  ])('%s', (_n, name, raw, want) => {
    expect(reason(validateNode(peer, name, raw, local))).toBe(want);
  });
});

describe('validateIdentity', () => {
  test.each([
    ['valid', String(ident.id), j(ident), 'ok'],
    ['reserved', '6', j({ ...ident, id: 6 }), 'reserved-identity'],
    ['another cluster id in bits 16-23', String((3 << 16) | 300), j({ ...ident, id: (3 << 16) | 300 }), 'identity-cluster'],
    ['no cluster bits', '300', j({ ...ident, id: 300 }), 'identity-cluster'],
    ['cluster label of another cluster', String(ident.id), j({ ...ident, labels: { 'io.cilium.k8s.policy.cluster': 'c1' } }), 'wrong-cluster'],
    ['key id differs', '131373', j(ident), 'key-mismatch'],
    ['not JSON', String(ident.id), '', 'not-json'],
    ['schema', String(ident.id), j({ ...ident, labels: 'x' }), 'schema'],
  ])('%s', (_n, id, raw, want) => {
    expect(reason(validateIdentity(peer, id, raw))).toBe(want);
  });
});

describe('validateIp', () => {
  test.each([
    ['valid', '10.2.1.5', j(ipEntry), 'ok'],
    ['outside the peer pod CIDRs', '10.3.0.1', j({ ...ipEntry, ip: '10.3.0.1' }), 'ip-outside-pod-cidr'],
    ['inside our pod CIDRs', '10.1.0.9', j({ ...ipEntry, ip: '10.1.0.9' }), 'local-address'],
    ['a local node address', '172.31.1.10', j({ ...ipEntry, ip: '172.31.1.10' }), 'local-address'],
    ['identity of another cluster', '10.2.1.5', j({ ...ipEntry, identity: (1 << 16) | 300 }), 'identity-cluster'],
    ['reserved identity', '10.2.1.5', j({ ...ipEntry, identity: 1 }), 'reserved-identity'],
    ['value of another cluster', '10.2.1.5', j({ ...ipEntry, cluster: 'c1' }), 'wrong-cluster'],
    ['key address differs', '10.2.1.6', j(ipEntry), 'key-mismatch'],
    ['not JSON', '10.2.1.5', 'garbage', 'not-json'],
    ['version 2', '10.2.1.5', j({ ...ipEntry, version: 2 }), 'schema'],
  ])('%s', (_n, ip, raw, want) => {
    expect(reason(validateIp(peer, ip, raw, local))).toBe(want);
  });
});

describe('markers and heartbeat', () => {
  test.each([
    ['marker valid', () => validateSyncMarker(peer, 'ip', j({ version: 1, cluster: 'c2', kind: 'ip', at: 'now' })), 'ok'],
    ['marker kind differs from key', () => validateSyncMarker(peer, 'nodes', j({ version: 1, cluster: 'c2', kind: 'ip', at: 'now' })), 'key-mismatch'],
    ['marker of another cluster', () => validateSyncMarker(peer, 'ip', j({ version: 1, cluster: 'c3', kind: 'ip', at: 'now' })), 'wrong-cluster'],
    ['heartbeat valid', () => validateHeartbeat(peer, j({ version: 1, cluster: 'c2', at: 'now', seq: 3 })), 'ok'],
    ['heartbeat schema', () => validateHeartbeat(peer, j({ version: 1, cluster: 'c2', at: 'now', seq: -1 })), 'schema'],
  ])('%s', (_n, fn, want) => {
    expect(reason(fn())).toBe(want);
  });
});

describe('remoteRoute', () => {
  test.each([
    ['tunnel here', 'tunnel', 'native', 'a', 'a', false],
    ['tunnel there', 'native', 'tunnel', 'a', 'a', false],
    ['hybrid both, same VPC', 'hybrid', 'hybrid', 'a', 'a', true],
    ['hybrid both, other VPC', 'hybrid', 'hybrid', 'a', 'b', false],
    ['native both, other VPC', 'native', 'native', 'a', 'b', true],
    ['native and hybrid, other VPC', 'native', 'hybrid', 'a', 'b', false],
  ] as const)('%s', (_n, mine, theirs, vpc, nodeVpc, direct) => {
    expect(remoteRoute({ routing: mine, vpc }, theirs, nodeVpc).direct).toBe(direct);
  });
});
