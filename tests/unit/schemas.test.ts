import type { ClusterClient } from '../../src/cluster/client.js';
import { LabEndpointSource } from '../../src/cluster/endpoint-source.js';
import { Informer } from '../../src/cluster/informer.js';
import { nodeInternalIP, parseDeployment, parseNamespace, parseNode, parsePod, parseService, type Pod } from '../../src/cluster/schemas.js';
import { parseManifests } from '../../src/lab/manifests.js';
import { ValidationError } from '../../src/util/errors.js';

/** A pod as `lab apply` stores it. */
function storedPod(): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'echo-1', namespace: 'demo', labels: { app: 'echo' }, resourceVersion: '42', uid: 'u1', extra: 'dropped' },
    spec: { nodeName: 'c1-n1', containers: [{ name: 'echo', image: 'x', command: ['sh'], ports: [{ containerPort: 8080, name: 'http' }] }] },
    status: { phase: 'Running', podIP: '10.1.0.5', podIPs: [{ ip: '10.1.0.5' }], hostIP: '172.31.0.2', meshctl: { netns: 'meshab12-c1-p1', lxc: 'lxc1234abcd', later: 1 } },
  };
}

function service(spec: Record<string, unknown>): Record<string, unknown> {
  return { apiVersion: 'v1', kind: 'Service', metadata: { name: 's', namespace: 'demo' }, spec: { clusterIP: '10.96.0.10', selector: { app: 'echo' }, ports: [{ port: 80 }], ...spec } };
}

function with_(obj: Record<string, unknown>, path: string[], value: unknown): Record<string, unknown> {
  const copy = structuredClone(obj);
  let o = copy as Record<string, unknown>;
  for (const k of path.slice(0, -1)) o = o[k] as Record<string, unknown>;
  o[path[path.length - 1]] = value;
  return copy;
}

function errorOf(r: unknown): string {
  expect(r).toBeInstanceOf(ValidationError);
  return (r as ValidationError).message;
}

describe('schemas', () => {
  test('a stored pod parses to the fields meshctl reads; status.meshctl is kept whole', () => {
    const p = parsePod(storedPod());
    if (p instanceof Error) throw p;
    expect(p.metadata).toEqual({ name: 'echo-1', namespace: 'demo', labels: { app: 'echo' }, resourceVersion: '42', uid: 'u1' });
    expect(p.spec.containers[0]).toEqual({ name: 'echo', image: 'x', ports: [{ containerPort: 8080, name: 'http' }] });
    expect(p.status?.meshctl).toEqual({ netns: 'meshab12-c1-p1', lxc: 'lxc1234abcd', later: 1 });
  });

  test.each([
    ['no namespace', ['metadata', 'namespace'], undefined, 'metadata.namespace: Required'],
    ['hostNetwork', ['spec', 'hostNetwork'], true, 'spec.hostNetwork: hostNetwork pods are not supported: the datapath only enforces pod-network endpoints'],
    ['no containers', ['spec', 'containers'], [], 'spec.containers: Array must contain at least 1 element(s)'],
    ['bad pod IP', ['status', 'podIP'], '10.1.0.300', 'status.podIP: must be an IPv4 address'],
    ['long lxc name', ['status', 'meshctl', 'lxc'], 'lxc0123456789abc', 'status.meshctl.lxc: String must contain at most 15 character(s)'],
    ['wrong kind', ['kind'], 'Service', 'kind: Invalid literal value, expected "Pod"'],
    ['port name', ['spec', 'containers'], [{ name: 'a', image: 'b', ports: [{ containerPort: 80, name: 'HTTP' }] }], 'spec.containers.0.ports.0.name: must be at most 15 characters of a-z, 0-9 and - (not at either end)'],
    ['port range', ['spec', 'containers'], [{ name: 'a', image: 'b', ports: [{ containerPort: 0 }] }], 'spec.containers.0.ports.0.containerPort: Number must be greater than or equal to 1'],
  ])('pod: %s', (_name, path, value, want) => {
    expect(errorOf(parsePod(with_(storedPod(), path, value)))).toBe(want);
  });

  test('ValidationError names the field', () => {
    const e = parsePod(with_(storedPod(), ['status', 'podIP'], 'x')) as ValidationError;
    expect([e.field, e.rule]).toEqual(['status.podIP', 'schema']);
  });

  test.each([
    ['ClusterIP', { type: 'ClusterIP' }, null],
    ['named target port', { ports: [{ name: 'http', port: 80, targetPort: 'http' }, { name: 'dns', port: 53, protocol: 'UDP' }] }, null],
    ['NodePort', { type: 'NodePort' }, 'spec.type: only ClusterIP services are supported (the datapath has no NodePort, LoadBalancer or ExternalName)'],
    ['LoadBalancer', { type: 'LoadBalancer' }, 'spec.type: only ClusterIP services are supported (the datapath has no NodePort, LoadBalancer or ExternalName)'],
    ['ClientIP affinity', { sessionAffinity: 'ClientIP' }, 'spec.sessionAffinity: only sessionAffinity None is supported'],
    ['externalIPs', { externalIPs: ['1.2.3.4'] }, 'spec.externalIPs: externalIPs are not supported'],
    ['local traffic policy', { internalTrafficPolicy: 'Local' }, 'spec.internalTrafficPolicy: only internalTrafficPolicy Cluster is supported'],
    ['IPv6', { ipFamilies: ['IPv6'] }, 'spec.ipFamilies: only IPv4 is supported'],
    ['SCTP', { ports: [{ port: 80, protocol: 'SCTP' }] }, 'spec.ports.0.protocol: must be TCP or UDP (the datapath balances no other protocol)'],
    ['unnamed ports', { ports: [{ port: 80 }, { port: 81 }] }, 'spec.ports.0.name: is required when a service has more than one port'],
    ['duplicate port', { ports: [{ name: 'a', port: 80 }, { name: 'b', port: 80 }] }, 'spec.ports.1.port: duplicate port 80/TCP'],
    ['duplicate name', { ports: [{ name: 'a', port: 80 }, { name: 'a', port: 81 }] }, 'spec.ports.1.name: duplicate port name "a"'],
    ['bad target port name', { ports: [{ port: 80, targetPort: 'no_way' }] }, /^spec\.ports\.0\.targetPort: /],
    ['no ports', { ports: [] }, 'spec.ports: Array must contain at least 1 element(s)'],
    ['bad cluster IP', { clusterIP: 'None' }, 'spec.clusterIP: must be an IPv4 address'],
  ])('service: %s', (_name, spec, want) => {
    const r = parseService(service(spec));
    if (want === null) expect(r).not.toBeInstanceOf(Error);
    else if (typeof want === 'string') expect(errorOf(r)).toBe(want);
    else expect(errorOf(r)).toMatch(want);
  });

  test('node: the object an agent publishes', () => {
    const node = {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: { name: 'c1-n1', labels: { 'kubernetes.io/hostname': 'c1-n1' } },
      spec: { podCIDR: '10.1.0.0/24', podCIDRs: ['10.1.0.0/24'] },
      status: { addresses: [{ type: 'InternalIP', address: '172.31.0.2' }], nodeInfo: { bootID: 'b' }, meshctl: { vpc: 'a', routerIP: '172.31.0.1', routing: 'tunnel', nodeId: 3 } },
    };
    const n = parseNode(node);
    if (n instanceof Error) throw n;
    expect(nodeInternalIP(n)).toBe('172.31.0.2');
    expect(n.status.meshctl).toEqual({ vpc: 'a', routerIP: '172.31.0.1', routing: 'tunnel', nodeId: 3 });
    expect(errorOf(parseNode(with_(node, ['spec', 'podCIDR'], '10.1.0.0/33')))).toBe('spec.podCIDR: must be an IPv4 CIDR');
    expect(errorOf(parseNode(with_(node, ['status', 'meshctl', 'routing'], 'magic')))).toMatch(/^status\.meshctl\.routing: Invalid enum value/);
    const bare = parseNode({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'n' } });
    expect(bare).toMatchObject({ spec: {}, status: {} });
  });

  test('namespace and deployment', () => {
    expect(parseNamespace({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { team: 'a' } } })).toEqual({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { team: 'a' } } });
    expect(errorOf(parseNamespace({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', namespace: 'x' } }))).toBe('metadata: a Namespace has no namespace');
    const d = { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'd', namespace: 'demo' }, spec: { replicas: 2, selector: { matchLabels: { app: 'a' } }, template: { metadata: { labels: { app: 'a' } }, spec: { containers: [{ name: 'a', image: 'b' }] } } } };
    expect(parseDeployment(d)).not.toBeInstanceOf(Error);
    expect(errorOf(parseDeployment(with_(d, ['spec', 'replicas'], 101)))).toBe('spec.replicas: Number must be less than or equal to 100');
    expect(errorOf(parseDeployment(with_(d, ['spec', 'template', 'spec', 'hostNetwork'], true)))).toMatch(/^spec\.template\.spec\.hostNetwork: hostNetwork pods are not supported/);
  });

  test('lab apply refuses what the agent would skip, with one line naming the field', () => {
    const yaml = 'apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: NodePort, ports: [{port: 80}]}\n';
    expect(() => parseManifests(yaml, 'f.yaml')).toThrow(
      new ValidationError('spec.type', 'schema', 'invalid Service s in f.yaml (document 1): spec.type: only ClusterIP services are supported (the datapath has no NodePort, LoadBalancer or ExternalName)'),
    );
    const pod = 'apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostNetwork: true, containers: [{name: a, image: b}]}\n';
    expect(() => parseManifests(pod, 'f.yaml')).toThrow(/^invalid Pod p in f\.yaml \(document 1\): spec\.hostNetwork: hostNetwork pods are not supported/);
  });

  test('the lab endpoint source reads the wiring lab apply recorded', () => {
    const src = new LabEndpointSource();
    const p = parsePod(storedPod()) as Pod;
    expect(src.endpointOf(p)).toEqual({ ip: '10.1.0.5', ifname: 'lxc1234abcd', netns: 'meshab12-c1-p1' });
    const pending = parsePod(with_(storedPod(), ['status'], { phase: 'Pending' })) as Pod;
    expect(src.endpointOf(pending)).toBeNull();
    expect(src.endpointOf(parsePod(with_(storedPod(), ['status', 'podIP'], undefined)) as Pod)).toBeNull();
  });

  test('parsed kinds plug into an informer', () => {
    // Compile-time: Pod fits Informer's KubeObject bound and parsePod its parse option.
    const make = (c: ClusterClient) => new Informer<Pod>(c, 'pods', { parse: parsePod });
    expect(typeof make).toBe('function');
  });
});
