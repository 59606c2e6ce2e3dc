// NetworkPolicy against the upstream Kubernetes e2e model: namespaces x, y, z, each with pods a, b
// and c, every pod serving `serve-80-tcp` (80/TCP) and `serve-81-udp` (81/UDP). The PolicyEngine
// computes every pod's policy; a connection passes when the source's egress and the destination's
// ingress both allow it, the way the datapath judges it. Each case states the full reachability
// matrix it expects (rows: from, columns: to; `.` allowed, `X` denied), as the e2e suite does.
import type { KubeObject } from '../../src/cluster/types.js';
import { LABEL_CLUSTER, LABEL_NAMESPACE } from '../../src/defaults.js';
import { parseCidr, parseIp, cidrContains } from '../../src/util/cidr.js';
import { IDENTITY_WORLD } from '../../src/agent/identity.js';
import type { Labels } from '../../src/agent/labels.js';
import { PolicyEngine } from '../../src/agent/policy-engine.js';
import type { DirectionPolicy, NamedPort } from '../../src/agent/policy.js';

const CLUSTER = 'c1';
const NAMESPACES = ['x', 'y', 'z'];
const PODS = ['a', 'b', 'c'];
const TCP = 6;
const UDP = 17;

interface ModelPod {
  readonly key: string;
  readonly ns: string;
  readonly ip: string;
  labels: Record<string, string>;
  identity: number;
  namedPorts: Record<string, NamedPort[]>;
}

/** The model cluster, fed to one engine as identities, peers and (all pods) local endpoints. */
class Model {
  readonly engine = new PolicyEngine({ clusterName: CLUSTER });
  readonly pods = new Map<string, ModelPod>();
  private readonly ids = new Map<string, number>();
  private nextId = 1;

  constructor(tweak: (p: ModelPod) => void = () => {}) {
    NAMESPACES.forEach((ns, i) => {
      this.engine.upsertNamespace({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: { ns } } });
      PODS.forEach((name, j) => {
        const p: ModelPod = {
          key: `${ns}/${name}`,
          ns,
          ip: `10.1.${i}.${10 + j}`,
          labels: { pod: name },
          identity: 0,
          namedPorts: { 'serve-80-tcp': [{ port: 80, protocol: TCP }], 'serve-81-udp': [{ port: 81, protocol: UDP }] },
        };
        tweak(p);
        this.pods.set(p.key, p);
        this.sync(p);
      });
    });
  }

  /** Identity labels → identity, as the allocator hands them out (same labels, same number). */
  private identityOf(labels: Labels): number {
    const k = JSON.stringify(Object.entries(labels).sort());
    let id = this.ids.get(k);
    if (id === undefined) {
      id = (1 << 16) | this.nextId++;
      this.ids.set(k, id);
      this.engine.upsertIdentity(id, labels);
    }
    return id;
  }

  /** Tell the engine about a pod (new or changed), as the agent's controllers would. */
  sync(p: ModelPod): void {
    const labels: Labels = { ...p.labels, [LABEL_NAMESPACE]: p.ns, [LABEL_CLUSTER]: CLUSTER };
    p.identity = this.identityOf(labels);
    this.engine.upsertPeer(p.ip, { identity: p.identity, namedPorts: p.namedPorts });
    this.engine.upsertEndpoint({ id: p.key, identity: p.identity, labels, namespace: p.ns, namedPorts: p.namedPorts });
  }

  relabel(key: string, labels: Record<string, string>): void {
    const p = this.pods.get(key)!;
    p.labels = labels;
    this.sync(p);
  }

  apply(...policies: KubeObject[]): this {
    for (const p of policies) this.engine.upsertPolicy(p);
    return this;
  }

  /** Identity the datapath sees for an address: the longest ipcache prefix (pods /32, CIDR identities), else world. */
  identityOfIp(ip: string): number {
    const n = parseIp(ip)!;
    let best = { len: -1, id: IDENTITY_WORLD };
    for (const p of this.pods.values()) if (p.ip === ip) best = { len: 32, id: p.identity };
    for (const [prefix, id] of this.engine.cidrIdentities()) {
      const c = parseCidr(prefix)!;
      if (cidrContains(c, n) && c.prefix > best.len) best = { len: c.prefix, id };
    }
    return best.id;
  }

  /** May `from` (a pod) open a connection to `to` (a pod or an outside address) on port/proto? */
  reach(from: string, to: string, port: number, proto: number): boolean {
    const src = this.pods.get(from)!;
    const dst = this.pods.get(to);
    const dstId = dst ? dst.identity : this.identityOfIp(to);
    if (!allows(this.engine.endpointPolicy(from).egress, dstId, proto, port)) return false;
    return !dst || allows(this.engine.endpointPolicy(to).ingress, src.identity, proto, port);
  }

  matrix(port: number, proto: number): string {
    const keys = [...this.pods.keys()];
    const rows = keys.map((f) => `${f} ${keys.map((t) => (this.reach(f, t, port, proto) ? '.' : 'X')).join(' ')}`);
    return [`    ${keys.map((k) => k.replace('/', '')).join(' ')}`, ...rows].join('\n');
  }
}

function allows(d: DirectionPolicy, identity: number, proto: number, port: number): boolean {
  if (!d.enforced) return true;
  return d.rules.some(
    (r) => (r.identity === 0 || r.identity === identity) && (r.protocol === 0 || (r.protocol === proto && (r.port === 0 || (port >= r.port && port <= (r.endPort ?? r.port))))),
  );
}

/** A matrix from row strings of 9 marks each (x/a..z/c in order). */
function expectMatrix(rows: string[]): string {
  const keys = NAMESPACES.flatMap((ns) => PODS.map((p) => `${ns}/${p}`));
  return [`    ${keys.map((k) => k.replace('/', '')).join(' ')}`, ...rows.map((r, i) => `${keys[i]} ${r.replace(/\s+/g, '').split('').join(' ')}`)].join('\n');
}

const ALL = '.........';
const np = (name: string, ns: string, spec: unknown): KubeObject => ({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name, namespace: ns }, spec });
const nsSel = (ns: string) => ({ matchLabels: { 'kubernetes.io/metadata.name': ns } });

describe('e2e model: egress to a named port', () => {
  // z/c serves its serve-80-tcp on 8080: egress by name must follow each destination's own port.
  const model = () =>
    new Model((p) => {
      if (p.key === 'z/c') p.namedPorts = { ...p.namedPorts, 'serve-80-tcp': [{ port: 8080, protocol: TCP }] };
    });
  const policy = np('allow-egress-named', 'x', { podSelector: { matchLabels: { pod: 'a' } }, policyTypes: ['Egress'], egress: [{ ports: [{ port: 'serve-80-tcp' }] }] });

  const onlyXa = (row: string) => [row, ALL, ALL, ALL, ALL, ALL, ALL, ALL, ALL];
  test.each([
    [80, TCP, onlyXa('........X')],
    [8080, TCP, onlyXa('XXXXXXXX.')],
    [81, UDP, onlyXa('XXXXXXXXX')],
  ])('port %d/%d', (port, proto, rows) => {
    expect(model().apply(policy).matrix(port, proto)).toBe(expectMatrix(rows));
  });

  test('named port with a peer selector: only y/b, on its port, nothing else', () => {
    const m = model().apply(
      np('p', 'x', { podSelector: { matchLabels: { pod: 'a' } }, policyTypes: ['Egress'], egress: [{ to: [{ namespaceSelector: nsSel('y'), podSelector: { matchLabels: { pod: 'b' } } }], ports: [{ port: 'serve-81-udp', protocol: 'UDP' }] }] }),
    );
    expect(m.matrix(81, UDP)).toBe(expectMatrix(['XXXX.XXXX', ALL, ALL, ALL, ALL, ALL, ALL, ALL, ALL]));
    expect(m.matrix(80, TCP)).toBe(expectMatrix(['XXXXXXXXX', ALL, ALL, ALL, ALL, ALL, ALL, ALL, ALL]));
    expect(m.engine.problems()).toEqual([]);
  });

  test('a destination pod that gains the named port becomes reachable', () => {
    const m = new Model((p) => {
      if (p.key === 'y/c') p.namedPorts = {};
    }).apply(policy);
    expect(m.reach('x/a', 'y/c', 80, TCP)).toBe(false);
    m.engine.takeDirty();
    const p = m.pods.get('y/c')!;
    p.namedPorts = { 'serve-80-tcp': [{ port: 80, protocol: TCP }] };
    m.sync(p);
    // y/c's own endpoint changed, and x/a (whose egress names the port): nobody else.
    expect([...m.engine.takeDirty()]).toEqual(['x/a', 'y/c']);
    expect(m.reach('x/a', 'y/c', 80, TCP)).toBe(true);
  });
});

describe('e2e model: ipBlock admits exactly its CIDR minus except', () => {
  // y's pods are 10.1.1.10-12; y/b is 10.1.1.11.
  const egress = np('egress-cidr', 'x', {
    podSelector: { matchLabels: { pod: 'a' } },
    policyTypes: ['Egress'],
    egress: [{ to: [{ ipBlock: { cidr: '10.1.1.0/24', except: ['10.1.1.11/32'] } }] }],
  });

  test('pods: inside the CIDR and not excepted (y/a, y/c) only', () => {
    expect(new Model().apply(egress).matrix(80, TCP)).toBe(expectMatrix(['XXX.X.XXX', ALL, ALL, ALL, ALL, ALL, ALL, ALL, ALL]));
  });

  test('addresses outside the mesh: inside the CIDR yes, in except or outside no (not all of world)', () => {
    const m = new Model().apply(egress);
    expect(['10.1.1.200', '10.1.1.11', '10.1.2.200', '192.0.2.1', '8.8.8.8'].map((ip) => [ip, m.reach('x/a', ip, 80, TCP)])).toEqual([
      ['10.1.1.200', true],
      ['10.1.1.11', false],
      ['10.1.2.200', false],
      ['192.0.2.1', false],
      ['8.8.8.8', false],
    ]);
    // One CIDR identity per prefix, for the ipcache.
    expect([...m.engine.takeCidrChanges().upsert.keys()]).toEqual(['10.1.1.0/24', '10.1.1.11/32']);
  });

  test('ingress from an ipBlock: z pods and addresses in 10.1.2.0/24 reach x/b', () => {
    const m = new Model().apply(np('ingress-cidr', 'x', { podSelector: { matchLabels: { pod: 'b' } }, ingress: [{ from: [{ ipBlock: { cidr: '10.1.2.0/24' } }] }] }));
    const col = (rowIndex: number) => (rowIndex >= 6 ? ALL : '.X.......');
    expect(m.matrix(80, TCP)).toBe(expectMatrix([0, 1, 2, 3, 4, 5, 6, 7, 8].map(col)));
    const xb = m.engine.endpointPolicy('x/b').ingress;
    expect(allows(xb, m.identityOfIp('10.1.2.99'), TCP, 80)).toBe(true);
    expect(allows(xb, m.identityOfIp('10.1.3.99'), TCP, 80)).toBe(false);
    expect(allows(xb, IDENTITY_WORLD, TCP, 80)).toBe(false);
  });

  test('a second policy with a narrower CIDR inside: the broader rule still covers it', () => {
    const m = new Model().apply(egress, np('narrow', 'y', { podSelector: {}, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: '10.1.1.128/25' } }] }] }));
    // 10.1.1.200 now resolves to the /25's identity; x/a's /24 rule must admit it too.
    expect(m.reach('x/a', '10.1.1.200', 80, TCP)).toBe(true);
    expect(m.reach('y/a', '10.1.1.200', 80, TCP)).toBe(true);
    expect(m.reach('y/a', '10.1.1.100', 80, TCP)).toBe(false);
  });
});

describe('e2e model: endPort range of 10,000 ports', () => {
  const policy = np('range', 'x', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ ports: [{ port: 20000, endPort: 29999, protocol: 'TCP' }] }] });

  test.each([
    [19999, TCP, false],
    [20000, TCP, true],
    [25000, TCP, true],
    [29999, TCP, true],
    [30000, TCP, false],
    [80, TCP, false],
    [25000, UDP, false],
  ])('into x/a on %d/%d: %s', (port, proto, open) => {
    const rows = [0, 1, 2, 3, 4, 5, 6, 7, 8].map(() => (open ? ALL : 'X........'));
    expect(new Model().apply(policy).matrix(port, proto)).toBe(expectMatrix(rows));
  });

  test('one rule, not 10,000', () => {
    expect(new Model().apply(policy).engine.endpointPolicy('x/a').ingress.rules).toEqual([{ identity: 0, port: 20000, endPort: 29999, protocol: TCP }]);
  });
});

describe('e2e model: a pod relabelled in place moves in and out of selections', () => {
  const policy = np('allow-from-a', 'x', { podSelector: { matchLabels: { pod: 'b' } }, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'a' } } }] }] });
  const intoXb = (m: Model) => m.matrix(80, TCP).split('\n').slice(1).map((r) => r.split(' ')[2]).join('');

  test('peer side: x/c relabelled pod=a is admitted into x/b, and out again', () => {
    const m = new Model().apply(policy);
    expect(intoXb(m)).toBe('.XXXXXXXX');
    m.engine.takeDirty();
    m.relabel('x/c', { pod: 'a' });
    // x/c got x/a's identity: its own endpoint is dirty; x/b's rules (identity-based) did not change.
    expect([...m.engine.takeDirty()]).toEqual(['x/c']);
    expect(intoXb(m)).toBe('.X.XXXXXX');
    m.relabel('x/c', { pod: 'c' });
    expect(intoXb(m)).toBe('.XXXXXXXX');
  });

  test('peer side with a new identity: a new label set shows up in the selector cache', () => {
    const m = new Model().apply(policy);
    m.engine.takeDirty();
    m.relabel('x/c', { pod: 'a', extra: 'yes' });
    // A new identity matching pod=a: x/b (selected by the policy using that selector) is dirty.
    expect([...m.engine.takeDirty()]).toEqual(['x/b', 'x/c']);
    expect(intoXb(m)).toBe('.X.XXXXXX');
  });

  test('selected side: x/b relabelled leaves the policy (open), relabelled back is selected again', () => {
    const m = new Model().apply(policy);
    m.relabel('x/b', { pod: 'bb' });
    expect(intoXb(m)).toBe('.........');
    expect(m.engine.endpointPolicy('x/b').ingress.enforced).toBe(false);
    m.relabel('x/b', { pod: 'b' });
    expect(intoXb(m)).toBe('.XXXXXXXX');
  });
});
