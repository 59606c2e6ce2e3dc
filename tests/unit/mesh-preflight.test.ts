import {
  PreflightError,
  checkCas,
  checkMembers,
  directionState,
  meshComponent,
  parseConnectionMode,
  parseDestinations,
  planDirections,
  type DesiredPeer,
  type Direction,
  type MemberFacts,
  type ObservedDirection,
} from '../../src/mesh/preflight.js';
import { ValidationError } from '../../src/util/errors.js';

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected an error');
}

const arrows = (ds: Direction[]): string[] => ds.map((d) => `${d.from}>${d.to}`);
const member = (name: string, id: number, pod: string, svc: string, encryption?: string): MemberFacts => ({
  name,
  id,
  podCidrs: [pod],
  serviceCidr: svc,
  encryption,
});

describe('connection modes and destinations', () => {
  test.each([
    [undefined, 'bidirectional'],
    ['bidirectional', 'bidirectional'],
    ['unicast', 'unicast'],
    ['mesh', 'mesh'],
  ])('mode %s', (text, want) => {
    expect(parseConnectionMode(text)).toBe(want);
  });

  test('unknown mode is a usage error naming the value and the choices', () => {
    const e = thrown(() => parseConnectionMode('star'));
    expect(e).toBeInstanceOf(ValidationError);
    expect(e.message).toBe('invalid connection mode "star": must be one of bidirectional, unicast, mesh');
  });

  test.each([
    ['c2', ['c2']],
    ['c2,c3', ['c2', 'c3']],
    [' c2 , c3 ', ['c2', 'c3']],
  ])('destinations %s', (text, want) => {
    expect(parseDestinations(text)).toEqual(want);
  });

  test.each([
    ['', 'invalid destination list "": give cluster names separated by commas'],
    ['c2,,c3', 'invalid destination list "c2,,c3": give cluster names separated by commas'],
    ['c2,c3,c2', 'invalid destination list "c2,c3,c2": c2 is listed twice'],
  ])('bad destinations %j', (text, want) => {
    const e = thrown(() => parseDestinations(text));
    expect(e).toBeInstanceOf(ValidationError);
    expect(e.message).toBe(want);
  });
});

describe('planDirections', () => {
  test.each([
    ['bidirectional', ['c2'], ['c1>c2', 'c2>c1']],
    ['bidirectional', ['c2', 'c3'], ['c1>c2', 'c2>c1', 'c1>c3', 'c3>c1']],
    ['unicast', ['c2', 'c3'], ['c1>c2', 'c1>c3']],
    ['mesh', ['c2'], ['c1>c2', 'c2>c1']],
    ['mesh', ['c2', 'c3'], ['c1>c2', 'c2>c1', 'c1>c3', 'c3>c1', 'c2>c3', 'c3>c2']],
  ] as const)('%s to %j', (mode, dests, want) => {
    expect(arrows(planDirections('c1', dests, mode))).toEqual(want);
  });

  test('mesh of n clusters has n(n-1) directions', () => {
    const dests = Array.from({ length: 9 }, (_, i) => `c${i + 2}`);
    const ds = planDirections('c1', dests, 'mesh');
    expect(ds).toHaveLength(10 * 9);
    expect(new Set(arrows(ds)).size).toBe(90);
  });

  test.each(['bidirectional', 'unicast', 'mesh'] as const)('a cluster connected to itself (%s)', (mode) => {
    const e = thrown(() => planDirections('c1', ['c2', 'c1'], mode));
    expect(e).toBeInstanceOf(ValidationError);
    expect(e.message).toBe('cannot connect cluster c1 to itself');
  });
});

describe('meshComponent', () => {
  const d = (from: string, to: string): Direction => ({ from, to });
  test.each([
    ['no links', ['c1', 'c2'], [], ['c1', 'c2']],
    ['a chain reaches the far end', ['c3'], [d('c3', 'c1'), d('c1', 'c2'), d('c2', 'c1')], ['c1', 'c2', 'c3']],
    ['a one-way link counts both ways', ['c3'], [d('c3', 'c2'), d('c1', 'c2')], ['c1', 'c2', 'c3']],
    ['other meshes stay out', ['c1', 'c2'], [d('c1', 'c2'), d('c4', 'c5'), d('c5', 'c4')], ['c1', 'c2']],
    ['peers known only from MeshPeers are members', ['c1'], [d('c1', 'gone')], ['c1', 'gone']],
  ])('%s', (_name, start, links, want) => {
    expect(meshComponent(start, links)).toEqual(want);
  });
});

describe('checkMembers', () => {
  const refusal = (members: MemberFacts[]): string => {
    const e = thrown(() => checkMembers(members));
    expect(e).toBeInstanceOf(PreflightError);
    return e.message;
  };

  test('disjoint clusters with unique ids pass', () => {
    expect(() =>
      checkMembers([member('c1', 1, '10.1.0.0/16', '10.101.0.0/16'), member('c2', 2, '10.2.0.0/16', '10.102.0.0/16', 'none')]),
    ).not.toThrow();
  });

  test.each([
    [
      'same id',
      [member('c1', 2, '10.1.0.0/16', '10.101.0.0/16'), member('c2', 2, '10.2.0.0/16', '10.102.0.0/16')],
      'cluster id 2 is used by both c1 and c2, which would be in one mesh (c1, c2); cluster ids must be unique in a mesh',
    ],
    [
      'a third cluster colliding with one already connected',
      [member('c3', 2, '10.3.0.0/16', '10.103.0.0/16'), member('c1', 1, '10.1.0.0/16', '10.101.0.0/16'), member('c2', 2, '10.2.0.0/16', '10.102.0.0/16')],
      'cluster id 2 is used by both c2 and c3, which would be in one mesh (c1, c2, c3); cluster ids must be unique in a mesh',
    ],
    [
      'id out of range',
      [member('c1', 1, '10.1.0.0/16', '10.101.0.0/16'), member('c2', 300, '10.2.0.0/16', '10.102.0.0/16')],
      'cluster id 300 of c2 is out of range: must be an integer from 1 to 255',
    ],
    [
      'bad name',
      [member('c1', 1, '10.1.0.0/16', '10.101.0.0/16'), member('Bad_Peer', 2, '10.2.0.0/16', '10.102.0.0/16')],
      `invalid cluster name "Bad_Peer": must consist of a-z, 0-9 and '-', and start and end with a letter or digit (which would be in one mesh (Bad_Peer, c1))`,
    ],
    [
      'overlapping pod CIDRs',
      [member('c1', 1, '10.1.0.0/16', '10.101.0.0/16'), member('c4', 4, '10.1.128.0/17', '10.104.0.0/16')],
      'pod CIDR 10.1.0.0/16 of c1 overlaps pod CIDR 10.1.128.0/17 of c4, which would be in one mesh (c1, c4); pod CIDRs must be disjoint in a mesh',
    ],
    [
      'overlapping service CIDRs',
      [member('c1', 1, '10.1.0.0/16', '10.96.0.0/16'), member('c2', 2, '10.2.0.0/16', '10.96.0.0/16')],
      'service CIDR 10.96.0.0/16 of c1 overlaps service CIDR 10.96.0.0/16 of c2, which would be in one mesh (c1, c2); service CIDRs must be disjoint in a mesh',
    ],
    [
      "a pod CIDR inside another cluster's service CIDR",
      [member('c1', 1, '10.1.0.0/16', '10.101.0.0/16'), member('c2', 2, '10.101.0.0/20', '10.102.0.0/16')],
      'service CIDR 10.101.0.0/16 of c1 overlaps pod CIDR 10.101.0.0/20 of c2, which would be in one mesh (c1, c2); pod and service CIDRs must be disjoint in a mesh',
    ],
    [
      'encryption differs',
      [member('c1', 1, '10.1.0.0/16', '10.101.0.0/16'), member('c2', 2, '10.2.0.0/16', '10.102.0.0/16', 'wireguard')],
      'encryption differs: c1 uses none, c2 uses wireguard, which would be in one mesh (c1, c2); every cluster of a mesh must use the same',
    ],
  ])('%s', (_name, members, want) => {
    expect(refusal(members)).toBe(want);
  });

  test('a peer with unknown CIDRs still takes part in the id check', () => {
    const gone: MemberFacts = { name: 'gone', id: 1, podCidrs: [] };
    expect(refusal([member('c1', 1, '10.1.0.0/16', '10.101.0.0/16'), gone])).toBe(
      'cluster id 1 is used by both c1 and gone, which would be in one mesh (c1, gone); cluster ids must be unique in a mesh',
    );
  });

  test('a large mesh is listed shortly', () => {
    const ms = Array.from({ length: 12 }, (_, i) => member(`c${String(i + 1).padStart(2, '0')}`, i + 1, `10.${i + 1}.0.0/16`, `10.${100 + i}.0.0/16`));
    ms.push(member('z', 3, '10.200.0.0/16', '10.201.0.0/16'));
    expect(refusal(ms)).toBe(
      'cluster id 3 is used by both c03 and z, which would be in one mesh (c01, c02, c03, c04, c05, c06, c07, c08, … 13 clusters); cluster ids must be unique in a mesh',
    );
  });
});

describe('checkCas', () => {
  const fa = 'AA:BB:CC:DD:EE:FF:00:11:22:33:44:55';
  const fb = '01:02:03:04:05:06:07:08:09:0A:0B:0C';
  const fps = new Map([
    ['c1', fa],
    ['c2', fa],
    ['c4', fb],
  ]);

  test('one CA passes', () => {
    expect(() => checkCas(planDirections('c1', ['c2'], 'bidirectional'), fps, false)).not.toThrow();
  });

  test('different CAs are refused, naming both clusters and fingerprints, with a hint', () => {
    const e = thrown(() => checkCas(planDirections('c4', ['c1'], 'unicast'), fps, false)) as PreflightError;
    expect(e).toBeInstanceOf(PreflightError);
    expect(e.check).toBe('ca');
    expect(e.message).toBe(
      'c1 and c4 have different mesh CAs (c1: AA:BB:CC:DD:EE:FF:00:11…, c4: 01:02:03:04:05:06:07:08…); connecting them needs --allow-mismatching-ca',
    );
    expect(e.hint).toBe('enable both with one CA (meshctl enable --ca-cert/--ca-key), or pass --allow-mismatching-ca to trust both');
  });

  test('--allow-mismatching-ca lets them through', () => {
    expect(() => checkCas(planDirections('c4', ['c1'], 'unicast'), fps, true)).not.toThrow();
  });
});

describe('directionState', () => {
  const want: DesiredPeer = { cluster: 'c2', clusterId: 2, endpoints: ['https://172.31.1.3:32379'], caBundle: 'CA2', serverName: '172.31.1.3' };
  const spec = { cluster: 'c2', clusterId: 2, endpoints: ['https://172.31.1.3:32379'], caBundle: 'CA2', cert: 'C', key: 'K', serverName: '172.31.1.3' };
  const seen = (o: Partial<ObservedDirection>): ObservedDirection => ({ peer: spec, userExists: true, certValid: true, ...o });
  test.each([
    ['all there and equal', seen({}), 'connected'],
    ['nothing there', seen({ peer: null, userExists: false, certValid: false }), 'absent'],
    ['user only (a half-made run)', seen({ peer: null, certValid: false }), 'stale'],
    ['MeshPeer only (peer re-enabled)', seen({ userExists: false }), 'stale'],
    ['certificate of another CA', seen({ certValid: false }), 'stale'],
    ['changed address', seen({ peer: { ...spec, endpoints: ['https://172.31.9.9:32379'] } }), 'stale'],
    ['changed CA bundle', seen({ peer: { ...spec, caBundle: 'CA2+CA1' } }), 'stale'],
    ['unparsable MeshPeer', seen({ peer: new Error('MeshPeer c2: endpoints: Required') }), 'stale'],
  ])('%s', (_name, s, state) => {
    expect(directionState(want, s)).toBe(state);
  });
});
