import type { KubeObject } from '../../src/cluster/types.js';
import { LABEL_CLUSTER, LABEL_NAMESPACE } from '../../src/defaults.js';
import { compilePolicies, diffPolicies, diffRules, formatRule, type CompilePoliciesInput, type EndpointPolicy, type PolicyEndpoint } from '../../src/agent/policy.js';
import type { Labels } from '../../src/agent/labels.js';
import { CIDR_IDENTITY_BASE } from '../../src/agent/policy-engine.js';

// Cluster c1 (id 1) is local; c2 (id 2) is a peer whose identities the agent has learned.
const C1 = 'c1';
const id = (cluster: number, local: number) => (cluster << 16) | local;
const labels = (cluster: string, ns: string, extra: Labels): Labels => ({ ...extra, [LABEL_NAMESPACE]: ns, [LABEL_CLUSTER]: cluster });

const CLIENT = id(1, 1);
const SERVER = id(1, 2);
const OTHER = id(1, 3);
const PROD_CLIENT = id(1, 4);
const REMOTE_CLIENT = id(2, 1);
const REMOTE_SERVER = id(2, 2);

const identities = new Map<number, Labels>([
  [CLIENT, labels('c1', 'demo', { app: 'client' })],
  [SERVER, labels('c1', 'demo', { app: 'server' })],
  [OTHER, labels('c1', 'demo', { app: 'other' })],
  [PROD_CLIENT, labels('c1', 'prod', { app: 'client' })],
  [REMOTE_CLIENT, labels('c2', 'demo', { app: 'client' })],
  [REMOTE_SERVER, labels('c2', 'demo', { app: 'server' })],
]);

const endpoints: PolicyEndpoint[] = [
  { id: 'server', identity: SERVER, labels: identities.get(SERVER)!, namespace: 'demo', namedPorts: { http: [{ port: 8080, protocol: 6 }] } },
  { id: 'client', identity: CLIENT, labels: identities.get(CLIENT)!, namespace: 'demo' },
  { id: 'prod-client', identity: PROD_CLIENT, labels: identities.get(PROD_CLIENT)!, namespace: 'prod' },
];

const namespaces: KubeObject[] = [
  { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { team: 'a' } } },
  { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'prod', labels: { env: 'prod' } } },
];

function np(name: string, spec: unknown, ns = 'demo'): KubeObject {
  return { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name, namespace: ns }, spec };
}

function mnp(name: string, spec: unknown, ns = 'demo'): KubeObject {
  return { apiVersion: 'meshctl.io/v1', kind: 'MeshNetworkPolicy', metadata: { name, namespace: ns }, spec };
}

function compile(policies: KubeObject[], extra: Partial<CompilePoliciesInput> = {}) {
  return compilePolicies({ clusterName: C1, policies, namespaces, identities, endpoints, ...extra });
}

/** 'allow' for an unenforced direction, else the allowed rules as `identity/PROTO/port`. */
type DirView = 'allow' | string[];
function view(p: EndpointPolicy | undefined): { ingress: DirView; egress: DirView } {
  if (!p) throw new Error('endpoint missing from the result');
  const dir = (d: EndpointPolicy['ingress']): DirView => (d.enforced ? d.rules.map(formatRule) : 'allow');
  return { ingress: dir(p.ingress), egress: dir(p.egress) };
}

const serverSel = { matchLabels: { app: 'server' } };

interface Case {
  readonly name: string;
  readonly policies: KubeObject[];
  readonly endpoint: string;
  readonly want: { ingress: DirView; egress: DirView };
}

const cases: Case[] = [
  { name: 'no policy: allowed both ways', policies: [], endpoint: 'server', want: { ingress: 'allow', egress: 'allow' } },
  {
    name: 'endpoint not selected stays allowed',
    policies: [np('p', { podSelector: serverSel, ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' } } }] }] })],
    endpoint: 'client',
    want: { ingress: 'allow', egress: 'allow' },
  },
  {
    name: 'ingress from app=client only (local cluster, same namespace)',
    policies: [np('p', { podSelector: serverSel, ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' } } }] }] })],
    endpoint: 'server',
    want: { ingress: [`${CLIENT}/ANY/0`], egress: 'allow' },
  },
  {
    name: 'ingress with no rules denies all',
    policies: [np('p', { podSelector: serverSel, policyTypes: ['Ingress'] })],
    endpoint: 'server',
    want: { ingress: [], egress: 'allow' },
  },
  {
    name: 'empty from allows any identity on the listed ports',
    policies: [np('p', { podSelector: serverSel, ingress: [{ ports: [{ port: 80 }, { port: 53, protocol: 'UDP' }, { protocol: 'SCTP' }] }] })],
    endpoint: 'server',
    want: { ingress: ['0/TCP/80', '0/UDP/53', '0/SCTP/0'], egress: 'allow' },
  },
  {
    name: 'rule {} allows everything',
    policies: [np('p', { podSelector: serverSel, ingress: [{}] })],
    endpoint: 'server',
    want: { ingress: ['0/ANY/0'], egress: 'allow' },
  },
  {
    name: 'ports and protocols: endPort range, named port from the endpoint',
    policies: [
      np('p', {
        podSelector: serverSel,
        ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' } } }], ports: [{ port: 9000, endPort: 9002, protocol: 'TCP' }, { port: 'http' }] }],
      }),
    ],
    endpoint: 'server',
    want: { ingress: [`${CLIENT}/TCP/8080`, `${CLIENT}/TCP/9000-9002`], egress: 'allow' },
  },
  {
    name: 'egress rules turn on Egress by default',
    policies: [np('p', { podSelector: { matchLabels: { app: 'client' } }, egress: [{ to: [{ podSelector: serverSel }], ports: [{ port: 8080 }] }] })],
    endpoint: 'client',
    want: { ingress: [], egress: [`${SERVER}/TCP/8080`] },
  },
  {
    name: 'policyTypes Egress only leaves ingress allowed and ignores ingress rules',
    policies: [np('p', { podSelector: {}, policyTypes: ['Egress'], ingress: [{}], egress: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }] }] })],
    endpoint: 'client',
    want: { ingress: 'allow', egress: ['2/ANY/0', `${CIDR_IDENTITY_BASE + 1}/ANY/0`] },
  },
  {
    name: 'namespaceSelector matches namespace labels (local cluster)',
    policies: [np('p', { podSelector: serverSel, ingress: [{ from: [{ namespaceSelector: { matchLabels: { env: 'prod' } } }] }] })],
    endpoint: 'server',
    want: { ingress: [`${PROD_CLIENT}/ANY/0`], egress: 'allow' },
  },
  {
    name: 'namespaceSelector {} with podSelector: that app in every namespace of this cluster',
    policies: [np('p', { podSelector: serverSel, ingress: [{ from: [{ namespaceSelector: {}, podSelector: { matchLabels: { app: 'client' } } }] }] })],
    endpoint: 'server',
    want: { ingress: [`${CLIENT}/ANY/0`, `${PROD_CLIENT}/ANY/0`], egress: 'allow' },
  },
  {
    name: 'namespaceSelector by kubernetes.io/metadata.name',
    policies: [np('p', { podSelector: serverSel, ingress: [{ from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'demo' } } }] }] })],
    endpoint: 'server',
    want: { ingress: [`${CLIENT}/ANY/0`, `${SERVER}/ANY/0`, `${OTHER}/ANY/0`], egress: 'allow' },
  },
  {
    name: 'cross-cluster: cluster label in the namespaceSelector admits that cluster only',
    policies: [
      np('p', {
        podSelector: serverSel,
        ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' } }, namespaceSelector: { matchLabels: { [LABEL_CLUSTER]: 'c2', 'kubernetes.io/metadata.name': 'demo' } } }] }],
      }),
    ],
    endpoint: 'server',
    want: { ingress: [`${REMOTE_CLIENT}/ANY/0`], egress: 'allow' },
  },
  {
    name: 'cross-cluster: cluster Exists in the podSelector admits every cluster',
    policies: [np('p', { podSelector: serverSel, ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' }, matchExpressions: [{ key: LABEL_CLUSTER, operator: 'Exists' }] } }] }] })],
    endpoint: 'server',
    want: { ingress: [`${CLIENT}/ANY/0`, `${REMOTE_CLIENT}/ANY/0`], egress: 'allow' },
  },
  {
    name: 'MeshNetworkPolicy fromEndpoints without cluster label: local cluster only',
    policies: [mnp('m', { endpointSelector: serverSel, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] })],
    endpoint: 'server',
    want: { ingress: [`${CLIENT}/TCP/8080`], egress: 'allow' },
  },
  {
    name: 'MeshNetworkPolicy fromEndpoints naming the cluster (k8s: prefix)',
    policies: [mnp('m', { endpointSelector: serverSel, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client', [`k8s:${LABEL_CLUSTER}`]: 'c2' } }] }] })],
    endpoint: 'server',
    want: { ingress: [`${REMOTE_CLIENT}/ANY/0`], egress: 'allow' },
  },
  {
    name: 'MeshNetworkPolicy fromEndpoints [{}]: every endpoint of the namespace in this cluster',
    policies: [mnp('m', { endpointSelector: serverSel, ingress: [{ fromEndpoints: [{}] }] })],
    endpoint: 'server',
    want: { ingress: [`${CLIENT}/ANY/0`, `${SERVER}/ANY/0`, `${OTHER}/ANY/0`], egress: 'allow' },
  },
  {
    name: 'MeshNetworkPolicy naming the namespace label reaches other namespaces',
    policies: [mnp('m', { endpointSelector: serverSel, ingress: [{ fromEndpoints: [{ matchLabels: { [LABEL_NAMESPACE]: 'prod' } }] }] })],
    endpoint: 'server',
    want: { ingress: [`${PROD_CLIENT}/ANY/0`], egress: 'allow' },
  },
  {
    name: 'MeshNetworkPolicy toPorts without peers: any identity; ANY protocol expands',
    policies: [mnp('m', { endpointSelector: serverSel, ingress: [{ toPorts: [{ ports: [{ port: '53' }] }] }] })],
    endpoint: 'server',
    want: { ingress: ['0/TCP/53', '0/UDP/53', '0/SCTP/53'], egress: 'allow' },
  },
  {
    name: 'MeshNetworkPolicy ingress [{}] is deny-all',
    policies: [mnp('m', { endpointSelector: serverSel, ingress: [{}] })],
    endpoint: 'server',
    want: { ingress: [], egress: 'allow' },
  },
  {
    name: 'MeshNetworkPolicy egress toEndpoints and toEntities',
    policies: [mnp('m', { endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ toEndpoints: [{ matchLabels: { app: 'server' } }] }, { toEntities: ['world', 'host'], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }] }] })],
    endpoint: 'client',
    want: { ingress: 'allow', egress: ['1/TCP/443', '2/TCP/443', `${SERVER}/ANY/0`] },
  },
  {
    name: 'MeshNetworkPolicy enableDefaultDeny false adds rules without enforcing',
    policies: [mnp('m', { endpointSelector: serverSel, enableDefaultDeny: { ingress: false }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }] }] })],
    endpoint: 'server',
    want: { ingress: 'allow', egress: 'allow' },
  },
  {
    name: 'two policies add up; covered rules are dropped',
    policies: [
      np('a', { podSelector: serverSel, ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' } } }], ports: [{ port: 80 }] }] }),
      mnp('b', { endpointSelector: serverSel, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }] }, { fromEndpoints: [{ matchLabels: { app: 'other' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] }),
    ],
    endpoint: 'server',
    want: { ingress: [`${CLIENT}/ANY/0`, `${OTHER}/TCP/80`], egress: 'allow' },
  },
  {
    name: 'a policy of another namespace does not select',
    policies: [np('p', { podSelector: {}, policyTypes: ['Ingress', 'Egress'] }, 'prod')],
    endpoint: 'server',
    want: { ingress: 'allow', egress: 'allow' },
  },
];

describe('compilePolicies', () => {
  test.each(cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const r = compile(c.policies);
    expect(r.problems.filter((p) => p.severity === 'denied')).toEqual([]);
    expect(view(r.endpoints.get(c.endpoint))).toEqual(c.want);
  });

  test('every endpoint is in the result', () => {
    expect([...compile([]).endpoints.keys()]).toEqual(['client', 'prod-client', 'server']);
  });

  const denyIn = '; the endpoints it selects deny all ingress';
  const denyNs = '; its endpoints cannot be told, so every endpoint of namespace demo denies all ingress and egress';
  test.each([
    ['bad selector operator', np('bad', { podSelector: { matchExpressions: [{ key: 'app', operator: 'Is' }] } }), 'denied', `spec.podSelector.matchExpressions[0].operator: must be one of In, NotIn, Exists, DoesNotExist${denyNs}`, 'deny', 'deny'],
    ['unreadable selector field', np('bad', { podSelector: { app: 'server' }, ingress: [{}] }), 'denied', `spec.podSelector.app: unknown selector field${denyNs}`, 'deny', 'deny'],
    ['missing podSelector', np('bad', { ingress: [{}] }), 'denied', `spec.podSelector: required${denyNs}`, 'deny', 'deny'],
    ['spec not an object', np('bad', 'nope'), 'denied', `spec: must be an object${denyNs}`, 'deny', 'deny'],
    ['In without values', np('bad', { podSelector: {}, ingress: [{ from: [{ podSelector: { matchExpressions: [{ key: 'app', operator: 'In' }] } }] }] }), 'denied', `spec.ingress[0].from[0].podSelector.matchExpressions[0].values: In needs at least one value${denyIn}`, 'deny', 'allow'],
    ['port out of range', np('bad', { podSelector: {}, ingress: [{ ports: [{ port: 70000 }] }] }), 'denied', `spec.ingress[0].ports[0].port: port must be 1..65535${denyIn}`, 'deny', 'allow'],
    ['unknown protocol', np('bad', { podSelector: {}, ingress: [{ ports: [{ port: 80, protocol: 'ICMP' }] }] }), 'denied', `spec.ingress[0].ports[0].protocol: protocol must be TCP, UDP, SCTP or ANY${denyIn}`, 'deny', 'allow'],
    ['empty peer', np('bad', { podSelector: {}, ingress: [{ from: [{}] }] }), 'denied', `spec.ingress[0].from[0]: needs podSelector, namespaceSelector or ipBlock${denyIn}`, 'deny', 'allow'],
    ['unknown field', np('bad', { podSelector: {}, ingres: [] }), 'denied', 'spec.ingres: not supported; the endpoints it selects deny all ingress and egress', 'deny', 'deny'],
    ['deny rules are not supported', mnp('bad', { endpointSelector: {}, ingressDeny: [{}] }), 'denied', `spec.ingressDeny: not supported${denyIn}`, 'deny', 'allow'],
    ['fromRequires is not supported', mnp('bad', { endpointSelector: {}, ingress: [{ fromRequires: [{}] }] }), 'denied', `spec.ingress[0].fromRequires: not supported${denyIn}`, 'deny', 'allow'],
    ['toFQDNs is not supported', mnp('bad', { endpointSelector: {}, egress: [{ toFQDNs: [{ matchName: 'x' }] }] }), 'denied', 'spec.egress[0].toFQDNs: not supported; the endpoints it selects deny all egress', 'allow', 'deny'],
    ['L7 rules are not supported', mnp('bad', { endpointSelector: {}, ingress: [{ toPorts: [{ ports: [{ port: '80' }], rules: { http: [{}] } }] }] }), 'denied', `spec.ingress[0].toPorts[0].rules: not supported${denyIn}`, 'deny', 'allow'],
    ['unknown entity', mnp('bad', { endpointSelector: {}, ingress: [{ fromEntities: ['moon'] }] }), 'denied', `spec.ingress[0].fromEntities[0]: unknown entity "moon"${denyIn}`, 'deny', 'allow'],
  ] as const)('malformed or unenforceable policy fails closed: %s', (_name, policy, severity, message, clientIn, clientOut) => {
    const good = np('good', { podSelector: serverSel, ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' } } }] }] });
    const r = compile([policy, good]);
    expect(r.problems).toEqual([{ policy: `${policy.kind} demo/bad`, severity, message }]);
    expect(r.applied).toEqual(['NetworkPolicy demo/good']);
    // The good policy's rules still apply; the bad one adds enforcement with no rules.
    expect(view(r.endpoints.get('server')).ingress).toEqual([`${CLIENT}/ANY/0`]);
    const dir = (v: 'allow' | 'deny') => (v === 'allow' ? 'allow' : []);
    expect(view(r.endpoints.get('client'))).toEqual({ ingress: dir(clientIn), egress: dir(clientOut) });
    // Another namespace is untouched.
    expect(view(r.endpoints.get('prod-client'))).toEqual({ ingress: 'allow', egress: 'allow' });
  });

  test('unresolvable named ports (ingress: the endpoint has none; egress: no destination pod has one): warnings, nothing allowed', () => {
    const r = compile([
      np('named', { podSelector: {}, ingress: [{ ports: [{ port: 'grpc' }] }], egress: [{ ports: [{ port: 'http' }] }] }),
    ]);
    expect(r.problems).toEqual([
      { policy: 'NetworkPolicy demo/named', severity: 'warning', message: 'named port "grpc" is not a port of endpoint client, it allows nothing there' },
      { policy: 'NetworkPolicy demo/named', severity: 'warning', message: 'named port "grpc" is not a port of endpoint server, it allows nothing there' },
      { policy: 'NetworkPolicy demo/named', severity: 'warning', message: 'named port "http" is not a port of any destination pod, it allows nothing' },
    ]);
    expect(view(r.endpoints.get('server'))).toEqual({ ingress: [], egress: [] });
  });

  test('deterministic: input order does not change the output', () => {
    const policies = [
      np('a', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: {} }], ports: [{ port: 443 }, { port: 80 }] }] }),
      mnp('b', { endpointSelector: {}, egress: [{ toEndpoints: [{ matchExpressions: [{ key: LABEL_CLUSTER, operator: 'In', values: ['c1', 'c2'] }] }] }] }),
    ];
    const shuffled = new Map([...identities].reverse());
    const a = compile(policies);
    const b = compile([...policies].reverse(), { identities: shuffled, endpoints: [...endpoints].reverse() });
    expect(JSON.stringify([...b.endpoints])).toEqual(JSON.stringify([...a.endpoints]));
    expect(view(a.endpoints.get('client')).egress).toEqual([CLIENT, SERVER, OTHER, REMOTE_CLIENT, REMOTE_SERVER].map((i) => `${i}/ANY/0`));
    expect(diffPolicies(a.endpoints, b.endpoints)).toEqual({ changed: [], removed: [] });
  });

  test('diffPolicies names endpoints whose policy changed, appeared or went away', () => {
    const before = compile([np('p', { podSelector: serverSel, ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' } } }] }] })]);
    const after = compile([np('p', { podSelector: serverSel, ingress: [{ from: [{ podSelector: { matchLabels: { app: 'other' } } }] }] })], {
      endpoints: [...endpoints.filter((e) => e.id !== 'prod-client'), { id: 'new', identity: OTHER, labels: identities.get(OTHER)!, namespace: 'demo' }],
    });
    expect(diffPolicies(before.endpoints, after.endpoints)).toEqual({ changed: ['new', 'server'], removed: ['prod-client'] });
    const d = diffRules(before.endpoints.get('server')!.ingress.rules, after.endpoints.get('server')!.ingress.rules);
    expect({ add: d.add.map(formatRule), remove: d.remove.map(formatRule) }).toEqual({ add: [`${OTHER}/ANY/0`], remove: [`${CLIENT}/ANY/0`] });
  });

  test('a newly learned remote identity shows up once a selector admits its cluster', () => {
    const policy = mnp('m', { endpointSelector: serverSel, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' }, matchExpressions: [{ key: LABEL_CLUSTER, operator: 'Exists' }] }] }] });
    const withNew = new Map(identities).set(id(3, 7), labels('c3', 'demo', { app: 'client' }));
    expect(view(compile([policy], { identities: withNew }).endpoints.get('server')).ingress).toEqual([`${CLIENT}/ANY/0`, `${REMOTE_CLIENT}/ANY/0`, `${id(3, 7)}/ANY/0`]);
  });
});
