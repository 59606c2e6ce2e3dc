// PolicyEngine: a change costs work proportional to what it can affect (counted in selector
// evaluations, never timed), marks dirty only the endpoints it can change, and keeps CIDR
// identities for the ipcache.
import type { KubeObject } from '../../src/cluster/types.js';
import { LABEL_CLUSTER, LABEL_NAMESPACE } from '../../src/defaults.js';
import { IDENTITY_WORLD } from '../../src/agent/identity.js';
import type { Labels } from '../../src/agent/labels.js';
import { CIDR_IDENTITY_BASE, PolicyEngine, isCidrIdentity } from '../../src/agent/policy-engine.js';
import { formatRule } from '../../src/agent/policy.js';

const C = 'c1';
const lbl = (ns: string, extra: Labels, cluster = C): Labels => ({ ...extra, [LABEL_NAMESPACE]: ns, [LABEL_CLUSTER]: cluster });
const np = (name: string, ns: string, spec: unknown): KubeObject => ({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name, namespace: ns }, spec });
const mnp = (name: string, ns: string, spec: unknown): KubeObject => ({ apiVersion: 'meshctl.io/v1', kind: 'MeshNetworkPolicy', metadata: { name, namespace: ns }, spec });
const serverPolicy = (ns: string, from = 'client') =>
  np('p', ns, { podSelector: { matchLabels: { app: 'server' } }, ingress: [{ from: [{ podSelector: { matchLabels: { app: from } } }] }] });
const rules = (e: PolicyEngine, id: string, dir: 'ingress' | 'egress' = 'ingress') => {
  const d = e.endpointPolicy(id)[dir];
  return d.enforced ? d.rules.map(formatRule) : 'allow';
};

/** n namespaces, each with a client and a server identity, a local server endpoint and one policy. */
function cluster(n: number): PolicyEngine {
  const e = new PolicyEngine({ clusterName: C });
  for (let i = 0; i < n; i++) {
    const ns = `ns${i}`;
    e.upsertIdentity((1 << 16) | (2 * i + 1), lbl(ns, { app: 'client' }));
    e.upsertIdentity((1 << 16) | (2 * i + 2), lbl(ns, { app: 'server' }));
    e.upsertEndpoint({ id: `${ns}/server`, identity: (1 << 16) | (2 * i + 2), labels: lbl(ns, { app: 'server' }), namespace: ns });
    e.upsertPolicy(serverPolicy(ns));
  }
  e.takeDirty();
  return e;
}

describe('cost of a change (selector evaluations) does not grow with the cluster', () => {
  const cost = (e: PolicyEngine, change: (e: PolicyEngine) => void) => {
    const before = e.stats().selectorEvaluations;
    change(e);
    return { evaluations: e.stats().selectorEvaluations - before, dirty: [...e.takeDirty()] };
  };

  test.each([20, 500])('with %d namespaces', (n) => {
    const e = cluster(n);
    // A new client identity in ns5: only ns5's selector is asked, only ns5's server is dirty.
    expect(cost(e, (x) => x.upsertIdentity((2 << 16) | 1, lbl('ns5', { app: 'client' }, 'c2')))).toEqual({ evaluations: 1, dirty: [] });
    expect(cost(e, (x) => x.upsertIdentity((1 << 16) | 60000, lbl('ns5', { app: 'client', v: '2' })))).toEqual({ evaluations: 1, dirty: ['ns5/server'] });
    expect(rules(e, 'ns5/server')).toEqual([`${(1 << 16) | 11}/ANY/0`, `${(1 << 16) | 60000}/ANY/0`]);
    // An identity in a namespace no selector names: nothing is evaluated.
    expect(cost(e, (x) => x.upsertIdentity((1 << 16) | 60001, lbl('elsewhere', { app: 'client' })))).toEqual({ evaluations: 0, dirty: [] });
    // Its deletion only touches the selectors that matched it.
    expect(cost(e, (x) => x.deleteIdentity((1 << 16) | 60000))).toEqual({ evaluations: 0, dirty: ['ns5/server'] });
    // A changed policy: its endpoint selector against its namespace's endpoints (1), its new
    // peer selector against its namespace's identities (2).
    expect(cost(e, (x) => x.upsertPolicy(serverPolicy('ns7', 'other')))).toEqual({ evaluations: 3, dirty: ['ns7/server'] });
    // A new endpoint: against its namespace's policies only.
    expect(cost(e, (x) => x.upsertEndpoint({ id: 'ns9/server-2', identity: (1 << 16) | 20, labels: lbl('ns9', { app: 'server' }), namespace: 'ns9' }))).toEqual({ evaluations: 1, dirty: ['ns9/server-2'] });
    // Re-stating what the engine holds costs nothing and dirties nothing.
    expect(cost(e, (x) => {
      x.upsertPolicy(serverPolicy('ns3'));
      x.upsertIdentity((1 << 16) | 7, lbl('ns3', { app: 'client' }));
      x.upsertEndpoint({ id: 'ns3/server', identity: (1 << 16) | 8, labels: lbl('ns3', { app: 'server' }), namespace: 'ns3' });
    })).toEqual({ evaluations: 0, dirty: [] });
  });

  test('equal selectors in many policies are one cache entry', () => {
    const e = new PolicyEngine({ clusterName: C });
    for (let i = 0; i < 50; i++) e.upsertPolicy(np(`p${i}`, 'shared', { podSelector: { matchLabels: { i: String(i) } }, ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' } } }] }] }));
    expect(e.stats().selectors).toBe(1);
    const before = e.stats().selectorEvaluations;
    e.upsertIdentity(70000, lbl('shared', { app: 'client' }));
    expect(e.stats().selectorEvaluations - before).toBe(1);
  });

  test('a namespace label change re-evaluates namespaceSelectors for that namespace only', () => {
    const e = cluster(10);
    e.upsertPolicy(np('from-prod', 'ns0', { podSelector: { matchLabels: { app: 'server' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { env: 'prod' } } }] }] }));
    e.takeDirty();
    expect(rules(e, 'ns0/server')).toEqual([`${(1 << 16) | 1}/ANY/0`]);
    const before = e.stats().selectorEvaluations;
    e.upsertNamespace({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ns4', labels: { env: 'prod' } } });
    expect(e.stats().selectorEvaluations - before).toBe(2);
    expect([...e.takeDirty()]).toEqual(['ns0/server']);
    expect(rules(e, 'ns0/server')).toEqual([(1 << 16) | 1, (1 << 16) | 9, (1 << 16) | 10].map((i) => `${i}/ANY/0`));
    e.deleteNamespace('ns4');
    expect([...e.takeDirty()]).toEqual(['ns0/server']);
    expect(rules(e, 'ns0/server')).toEqual([`${(1 << 16) | 1}/ANY/0`]);
  });
});

describe('dirty endpoints', () => {
  test('a changed policy marks the endpoints it selects before and after, no others', () => {
    const e = new PolicyEngine({ clusterName: C });
    for (const app of ['a', 'b', 'c']) e.upsertEndpoint({ id: app, identity: 70000 + app.charCodeAt(0), labels: lbl('x', { app }), namespace: 'x' });
    e.upsertPolicy(np('p', 'x', { podSelector: { matchLabels: { app: 'a' } }, policyTypes: ['Ingress'] }));
    expect([...e.takeDirty()]).toEqual(['a', 'b', 'c']);
    e.upsertPolicy(np('p', 'x', { podSelector: { matchLabels: { app: 'b' } }, policyTypes: ['Ingress'] }));
    expect([...e.takeDirty()]).toEqual(['a', 'b']);
    e.deletePolicy('NetworkPolicy', 'x', 'p');
    expect([...e.takeDirty()]).toEqual(['b']);
    expect(rules(e, 'b')).toBe('allow');
  });

  test('a deleted endpoint is not reported and cannot be read', () => {
    const e = new PolicyEngine({ clusterName: C });
    e.upsertEndpoint({ id: 'a', identity: 70000, labels: lbl('x', {}), namespace: 'x' });
    e.deleteEndpoint('a');
    expect([...e.takeDirty()]).toEqual([]);
    expect(e.hasEndpoint('a')).toBe(false);
    expect(() => e.endpointPolicy('a')).toThrow('policy engine: unknown endpoint a');
  });
});

describe('CIDR identities', () => {
  const cidrPolicy = (name: string, cidr: string, except: string[] = []) =>
    np(name, 'x', { podSelector: {}, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr, except } }] }] });

  test('one per CIDR and per except prefix, outside the cluster identity space, removed when unused', () => {
    const e = new PolicyEngine({ clusterName: C });
    e.upsertEndpoint({ id: 'a', identity: 70000, labels: lbl('x', {}), namespace: 'x' });
    e.upsertPolicy(cidrPolicy('p', '10.0.0.0/8', ['10.1.0.0/16']));
    const first = e.takeCidrChanges();
    expect(first).toEqual({ upsert: new Map([['10.0.0.0/8', CIDR_IDENTITY_BASE + 1], ['10.1.0.0/16', CIDR_IDENTITY_BASE + 2]]), remove: [] });
    for (const id of first.upsert.values()) {
      expect(isCidrIdentity(id)).toBe(true);
      expect(id).toBeGreaterThan(0xffffff);
    }
    // The rule admits the CIDR, not its except.
    expect(rules(e, 'a', 'egress')).toEqual([`${CIDR_IDENTITY_BASE + 1}/ANY/0`]);
    // A second policy sharing a prefix adds none for it; deleting the first keeps the shared one.
    e.upsertPolicy(cidrPolicy('q', '10.1.0.0/16'));
    expect(e.takeCidrChanges()).toEqual({ upsert: new Map(), remove: [] });
    e.deletePolicy('NetworkPolicy', 'x', 'p');
    expect(e.takeCidrChanges()).toEqual({ upsert: new Map(), remove: ['10.0.0.0/8'] });
    expect(rules(e, 'a', 'egress')).toEqual([`${CIDR_IDENTITY_BASE + 2}/ANY/0`]);
    e.deletePolicy('NetworkPolicy', 'x', 'q');
    expect(e.takeCidrChanges()).toEqual({ upsert: new Map(), remove: ['10.1.0.0/16'] });
    expect(e.stats().cidrIdentities).toBe(0);
  });

  test('a narrower prefix of another policy marks the broader rule dirty and is admitted by it', () => {
    const e = new PolicyEngine({ clusterName: C });
    e.upsertEndpoint({ id: 'a', identity: 70000, labels: lbl('x', {}), namespace: 'x' });
    e.upsertEndpoint({ id: 'other', identity: 70001, labels: lbl('y', {}), namespace: 'y' });
    e.upsertPolicy(cidrPolicy('p', '10.0.0.0/8'));
    e.takeDirty();
    e.upsertPolicy(np('narrow', 'y', { podSelector: {}, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: '10.2.0.0/16' } }] }] }));
    expect([...e.takeDirty()]).toEqual(['a', 'other']);
    expect(rules(e, 'a', 'egress')).toEqual([`${CIDR_IDENTITY_BASE + 1}/ANY/0`, `${CIDR_IDENTITY_BASE + 2}/ANY/0`]);
  });

  test('the world entity covers world and every CIDR identity', () => {
    const e = new PolicyEngine({ clusterName: C });
    e.upsertEndpoint({ id: 'a', identity: 70000, labels: lbl('x', {}), namespace: 'x' });
    e.upsertPolicy(mnp('w', 'x', { endpointSelector: {}, egress: [{ toEntities: ['world'] }] }));
    expect(rules(e, 'a', 'egress')).toEqual([`${IDENTITY_WORLD}/ANY/0`]);
    e.upsertPolicy(cidrPolicy('p', '192.0.2.0/24'));
    expect(rules(e, 'a', 'egress')).toEqual([`${IDENTITY_WORLD}/ANY/0`, `${CIDR_IDENTITY_BASE + 1}/ANY/0`]);
  });

  test('pods inside the CIDR by their IP: added, moved out, deleted', () => {
    const e = new PolicyEngine({ clusterName: C });
    e.upsertEndpoint({ id: 'a', identity: 70000, labels: lbl('x', {}), namespace: 'x' });
    e.upsertPolicy(cidrPolicy('p', '10.5.0.0/16', ['10.5.9.0/24']));
    e.upsertPeer('10.5.1.1', { identity: 70010, namedPorts: {} });
    e.upsertPeer('10.5.9.1', { identity: 70011, namedPorts: {} });
    e.upsertPeer('10.6.0.1', { identity: 70012, namedPorts: {} });
    e.takeDirty();
    expect(rules(e, 'a', 'egress')).toEqual(['70010/ANY/0', `${CIDR_IDENTITY_BASE + 1}/ANY/0`]);
    // The pod's identity is admitted while one of its pods is inside.
    e.upsertPeer('10.5.1.2', { identity: 70010, namedPorts: {} });
    e.deletePeer('10.5.1.1');
    expect([...e.takeDirty()]).toEqual([]);
    e.deletePeer('10.5.1.2');
    expect([...e.takeDirty()]).toEqual(['a']);
    expect(rules(e, 'a', 'egress')).toEqual([`${CIDR_IDENTITY_BASE + 1}/ANY/0`]);
  });

  test('after a restart, adopted numbers are kept and unused adopted prefixes removed', () => {
    const adopted = new Map([['10.0.0.0/8', CIDR_IDENTITY_BASE + 7], ['192.168.0.0/16', CIDR_IDENTITY_BASE + 9]]);
    const e = new PolicyEngine({ clusterName: C, cidrIdentities: adopted });
    e.upsertEndpoint({ id: 'a', identity: 70000, labels: lbl('x', {}), namespace: 'x' });
    e.upsertPolicy(cidrPolicy('p', '10.0.0.0/8', ['10.1.0.0/16']));
    expect(e.takeCidrChanges()).toEqual({ upsert: new Map([['10.1.0.0/16', CIDR_IDENTITY_BASE + 1]]), remove: ['192.168.0.0/16'] });
    expect(rules(e, 'a', 'egress')).toEqual([`${CIDR_IDENTITY_BASE + 7}/ANY/0`]);
  });
});

describe('fail closed and limits', () => {
  test('an unsupported field written straight into the store: its endpoints deny in that direction, other rules stay', () => {
    const e = new PolicyEngine({ clusterName: C });
    e.upsertEndpoint({ id: 'a', identity: 70000, labels: lbl('x', { app: 'a' }), namespace: 'x' });
    e.upsertEndpoint({ id: 'b', identity: 70001, labels: lbl('x', { app: 'b' }), namespace: 'x' });
    e.upsertPolicy(mnp('deny', 'x', { endpointSelector: { matchLabels: { app: 'a' } }, ingressDeny: [{ fromEntities: ['world'] }], egress: [{ toEntities: ['all'] }] }));
    expect(rules(e, 'a')).toEqual([]);
    expect(rules(e, 'a', 'egress')).toEqual(['0/ANY/0']);
    expect(rules(e, 'b')).toBe('allow');
    expect(e.problems()).toEqual([{ policy: 'MeshNetworkPolicy x/deny', severity: 'denied', message: 'spec.ingressDeny: not supported; the endpoints it selects deny all ingress' }]);
    expect(e.applied()).toEqual([]);
    // Fixed in place: the endpoints open up as the policy says.
    e.upsertPolicy(mnp('deny', 'x', { endpointSelector: { matchLabels: { app: 'a' } }, egress: [{ toEntities: ['all'] }] }));
    expect(rules(e, 'a')).toBe('allow');
    expect(e.problems()).toEqual([]);
  });

  test('more map entries than allowed: that direction denies all and is reported', () => {
    const e = new PolicyEngine({ clusterName: C, maxEntriesPerDirection: 4 });
    e.upsertEndpoint({ id: 'a', identity: 70000, labels: lbl('x', {}), namespace: 'x' });
    e.upsertPolicy(np('big', 'x', { podSelector: {}, ingress: [{ ports: [{ port: 1001, endPort: 60000 }] }] }));
    expect(rules(e, 'a')).toEqual([]);
    expect(e.problems()).toEqual([{ policy: 'NetworkPolicy x/big', severity: 'denied', message: 'endpoint a: ingress needs 16 policy map entries, more than 4; it denies all ingress' }]);
  });
});

describe('a policy updated in place', () => {
  test('keeps the selectors its new version still has, and its endpoints get the new rules', () => {
    const e = cluster(1);
    expect(rules(e, 'ns0/server')).toEqual([expect.stringContaining(String((1 << 16) | 1))]);
    // Same name, same peer selector, narrowed to one port (this released the shared selector once).
    e.upsertPolicy(np('p', 'ns0', { podSelector: { matchLabels: { app: 'server' } }, ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' } } }], ports: [{ port: 9000 }] }] }));
    expect([...e.takeDirty()]).toEqual(['ns0/server']);
    const now = rules(e, 'ns0/server');
    expect(now).toHaveLength(1);
    expect(now[0]).toContain('9000');
    expect(() => e.problems()).not.toThrow();
    // A later identity of the selected labels still reaches the rule through the kept selector.
    e.upsertIdentity((1 << 16) | 99, lbl('ns0', { app: 'client', v: '2' }));
    expect(rules(e, 'ns0/server')).toHaveLength(2);
  });
});
