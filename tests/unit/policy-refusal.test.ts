// Fields the datapath cannot enforce: unsupportedPolicyField() names the first one, `lab apply`
// (parseManifests) refuses the policy with one line naming it.
import { unsupportedPolicyField } from '../../src/cluster/policy-schema.js';
import { parseManifests } from '../../src/lab/manifests.js';

const sel = { matchLabels: { app: 'b' } };

describe('unsupportedPolicyField', () => {
  test.each([
    ['NetworkPolicy with every supported field', 'NetworkPolicy', {
      podSelector: { matchLabels: { app: 'a' }, matchExpressions: [{ key: 'x', operator: 'Exists' }] },
      policyTypes: ['Ingress', 'Egress'],
      ingress: [{ from: [{ podSelector: sel, namespaceSelector: {} }, { ipBlock: { cidr: '10.0.0.0/8', except: ['10.1.0.0/16'] } }], ports: [{ port: 80, endPort: 90, protocol: 'TCP' }] }],
      egress: [{ to: [{ podSelector: sel }], ports: [{ port: 'http' }] }],
    }, null],
    ['MeshNetworkPolicy with every supported field', 'MeshNetworkPolicy', {
      endpointSelector: sel, description: 'd', labels: [], enableDefaultDeny: { ingress: true },
      ingress: [{ fromEndpoints: [sel], fromEntities: ['world'], fromCIDR: ['10.0.0.0/8'], fromCIDRSet: [{ cidr: '10.0.0.0/8', except: ['10.1.0.0/16'] }], toPorts: [{ ports: [{ port: '80', endPort: 90, protocol: 'TCP' }] }] }],
      egress: [{ toEndpoints: [sel], toEntities: ['cluster'], toCIDR: ['0.0.0.0/0'] }],
    }, null],
    ['ingressDeny', 'MeshNetworkPolicy', { endpointSelector: sel, ingressDeny: [{}] }, 'spec.ingressDeny'],
    ['egressDeny', 'MeshNetworkPolicy', { endpointSelector: sel, egressDeny: [{}] }, 'spec.egressDeny'],
    ['fromRequires', 'MeshNetworkPolicy', { endpointSelector: sel, ingress: [{ fromEndpoints: [sel] }, { fromRequires: [sel] }] }, 'spec.ingress[1].fromRequires'],
    ['toFQDNs', 'MeshNetworkPolicy', { endpointSelector: sel, egress: [{ toFQDNs: [{ matchName: 'x.com' }] }] }, 'spec.egress[0].toFQDNs'],
    ['toServices', 'MeshNetworkPolicy', { endpointSelector: sel, egress: [{ toServices: [{}] }] }, 'spec.egress[0].toServices'],
    ['toFQDNs is an egress field only', 'MeshNetworkPolicy', { endpointSelector: sel, ingress: [{ toFQDNs: [] }] }, 'spec.ingress[0].toFQDNs'],
    ['L7 rules', 'MeshNetworkPolicy', { endpointSelector: sel, ingress: [{ toPorts: [{ ports: [{ port: '80' }], rules: { http: [{}] } }] }] }, 'spec.ingress[0].toPorts[0].rules'],
    ['icmps', 'MeshNetworkPolicy', { endpointSelector: sel, egress: [{ icmps: [{}] }] }, 'spec.egress[0].icmps'],
    ['cidrGroupRef', 'MeshNetworkPolicy', { endpointSelector: sel, egress: [{ toCIDRSet: [{ cidrGroupRef: 'g' }] }] }, 'spec.egress[0].toCIDRSet[0].cidrGroupRef'],
    ['nodeSelector', 'MeshNetworkPolicy', { nodeSelector: sel }, 'spec.nodeSelector'],
    ['unknown top-level key', 'NetworkPolicy', { podSelector: {}, ingres: [] }, 'spec.ingres'],
    ['unknown key in a peer', 'NetworkPolicy', { podSelector: {}, ingress: [{ from: [{ podSelector: {}, serviceAccount: 'x' }] }] }, 'spec.ingress[0].from[0].serviceAccount'],
    ['unknown key in a selector', 'NetworkPolicy', { podSelector: { matchLabel: { a: 'b' } } }, 'spec.podSelector.matchLabel'],
    ['unknown key in a port', 'NetworkPolicy', { podSelector: {}, egress: [{ ports: [{ port: 80, portName: 'x' }] }] }, 'spec.egress[0].ports[0].portName'],
    ['first in key order', 'MeshNetworkPolicy', { endpointSelector: sel, ingressDeny: [{}], egressDeny: [{}] }, 'spec.egressDeny'],
  ] as const)('%s', (_name, kind, spec, want) => {
    expect(unsupportedPolicyField(kind, spec)).toBe(want);
  });
});

describe('lab apply refuses what cannot be enforced', () => {
  test.each([
    [
      'MeshNetworkPolicy with ingressDeny',
      'apiVersion: meshctl.io/v1\nkind: MeshNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  endpointSelector: {}\n  ingressDeny: [{}]\n',
      'unsupported field spec.ingressDeny in MeshNetworkPolicy p in f.yaml (document 1): the datapath cannot enforce it',
    ],
    [
      'MeshNetworkPolicy with toFQDNs',
      'apiVersion: meshctl.io/v1\nkind: MeshNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: example.com}]\n',
      'unsupported field spec.egress[0].toFQDNs in MeshNetworkPolicy p in f.yaml (document 1): the datapath cannot enforce it',
    ],
    [
      'NetworkPolicy with an unknown field',
      'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]\n    port: 80\n',
      'unsupported field spec.ingress[0].port in NetworkPolicy p in f.yaml (document 1): the datapath cannot enforce it',
    ],
  ])('%s', (_name, yaml, message) => {
    let err: unknown;
    try {
      parseManifests(yaml, 'f.yaml');
    } catch (e) {
      err = e;
    }
    expect((err as Error).message).toBe(message);
    expect((err as Error).message).not.toContain('\n');
    expect((err as { field?: string }).field).toBe(message.split(' ')[2]);
  });

  test('a policy with only supported fields is accepted (endPort, ipBlock except)', () => {
    const yaml =
      'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n    ports: [{port: 20000, endPort: 29999}]\n';
    expect(parseManifests(yaml, 'f.yaml')).toHaveLength(1);
  });
});
