import { STATUS_FRESH_MS, errorHint, interpretHealth, parseDuration, peersOfStatus, renderStatus, sortKeys, summarizeStatus, waitDuration, waitLine, type NodeStatusInput, type StatusInputs } from '../../src/mesh/status.js';
import type { PeerStatus } from '../../src/mesh/peers.js';
import { ValidationError } from '../../src/util/errors.js';

const NOW = Date.parse('2026-12-03T12:00:00.000Z');
const fresh = new Date(NOW - 1000).toISOString();
const stale = new Date(NOW - STATUS_FRESH_MS - 1).toISOString();

function peer(cluster: string, over: Partial<PeerStatus> = {}): PeerStatus {
  return {
    cluster,
    configured: true,
    connected: true,
    synced: { nodes: true, identities: true, ip: true },
    ready: true,
    entries: { nodes: 2, identities: 3, ips: 4 },
    invalid: {},
    invalidSamples: [],
    lastError: '',
    lastErrorKind: '',
    lastHeartbeat: fresh,
    readySince: fresh,
    resyncs: 0,
    ...over,
  };
}

const down = (cluster: string, kind: PeerStatus['lastErrorKind'], msg: string): PeerStatus =>
  peer(cluster, { connected: false, ready: false, synced: { nodes: true, identities: true, ip: true }, lastError: msg, lastErrorKind: kind });

function inputs(statuses: NodeStatusInput[], over: Partial<StatusInputs> = {}): StatusInputs {
  return {
    cluster: 'c1',
    apiserver: { endpoint: 'https://198.18.0.3:32379', ready: true, error: '' },
    nodes: ['c1-n1', 'c1-n2'],
    peers: ['c2'],
    statuses,
    now: NOW,
    ...over,
  };
}

describe('meshctl status aggregation', () => {
  const cases: Array<{ name: string; in: StatusInputs; ready: boolean; waitingFor: string; lines: string[] }> = [
    {
      name: 'all connected and synced',
      in: inputs([
        { node: 'c1-n2', updatedAt: fresh, peers: [peer('c2')] },
        { node: 'c1-n1', updatedAt: fresh, peers: [peer('c2')] },
      ]),
      ready: true,
      waitingFor: '',
      lines: [
        '✅ clustermesh-apiserver of c1 is ready at https://198.18.0.3:32379',
        '✅ All 2 nodes are connected to all clusters [min:1 / avg:1.0 / max:1]',
        '🔌 Cluster Connections:',
        '✅ c2: 2/2 configured, 2/2 connected, 2/2 synced (nodes 2/2, identities 2/2, ip 2/2)',
        '   entries: nodes 2, identities 3, ips 4',
      ],
    },
    {
      name: 'one node lost the peer (unreachable)',
      in: inputs([
        { node: 'c1-n1', updatedAt: fresh, peers: [peer('c2', { entries: { nodes: 2, identities: 3, ips: 5 } })] },
        { node: 'c1-n2', updatedAt: fresh, peers: [down('c2', 'unreachable', 'connect ECONNREFUSED 198.18.1.3:32379')] },
      ]),
      ready: false,
      waitingFor: 'c2: 1 of 2 nodes not connected: connect ECONNREFUSED 198.18.1.3:32379',
      lines: [
        '✅ clustermesh-apiserver of c1 is ready at https://198.18.0.3:32379',
        '⚠️  1 of 2 nodes are not connected to all clusters [min:0 / avg:0.5 / max:1]',
        '🔌 Cluster Connections:',
        '⚠️  c2: 2/2 configured, 1/2 connected, 1/2 synced (nodes 1/2, identities 1/2, ip 1/2)',
        '   entries: nodes 2, identities 3, ips 4-5',
        '❌ c2: c1-n2: connect ECONNREFUSED 198.18.1.3:32379',
        "💡 is c2's clustermesh-apiserver running? check with meshctl status --context c2; start it with meshctl enable --context c2",
      ],
    },
    {
      name: 'connected but ip not synced yet, invalid objects, a stale node status',
      in: inputs(
        [
          {
            node: 'c1-n1',
            updatedAt: fresh,
            peers: [
              peer('c2', {
                synced: { nodes: true, identities: true, ip: false },
                ready: false,
                invalid: { schema: 1, 'ip-outside-pod-cidr': 2 },
                invalidSamples: [{ key: 'mesh/v1/ip/c2/10.9.0.1', reason: 'ip-outside-pod-cidr' }],
              }),
            ],
          },
          { node: 'c1-n2', updatedAt: stale, peers: [peer('c2')] },
        ],
        { apiserver: { endpoint: 'https://198.18.0.3:32379', ready: true, error: '' } },
      ),
      ready: false,
      waitingFor: 'no fresh status from c1-n2',
      lines: [
        '✅ clustermesh-apiserver of c1 is ready at https://198.18.0.3:32379',
        '⚠️  1 of 2 nodes have no fresh status: c1-n2',
        '💡 is their agent running? meshctl lab list --context c1',
        '⚠️  1 of 2 nodes are not connected to all clusters [min:0 / avg:0.5 / max:1]',
        '🔌 Cluster Connections:',
        '⚠️  c2: 1/2 configured, 1/2 connected, 0/2 synced (nodes 1/2, identities 1/2, ip 0/2)',
        '   entries: nodes 2, identities 3, ips 4',
        '⚠️  c2: 3 invalid objects skipped (ip-outside-pod-cidr 2, schema 1)',
        '   - mesh/v1/ip/c2/10.9.0.1: ip-outside-pod-cidr',
      ],
    },
    {
      name: 'two peers, one not yet picked up by any agent; apiserver down',
      in: inputs(
        [
          { node: 'c1-n1', updatedAt: fresh, peers: [peer('c2')] },
          { node: 'c1-n2', updatedAt: fresh, peers: [peer('c2')] },
        ],
        { peers: ['c3', 'c2'], apiserver: { endpoint: 'https://198.18.0.3:32379', ready: false, error: 'context deadline exceeded' } },
      ),
      ready: false,
      waitingFor: 'clustermesh-apiserver of c1 is not ready: context deadline exceeded',
      lines: [
        '❌ clustermesh-apiserver of c1 at https://198.18.0.3:32379 is not ready: context deadline exceeded',
        '⚠️  2 of 2 nodes are not connected to all clusters [min:1 / avg:1.0 / max:1]',
        '🔌 Cluster Connections:',
        '✅ c2: 2/2 configured, 2/2 connected, 2/2 synced (nodes 2/2, identities 2/2, ip 2/2)',
        '   entries: nodes 2, identities 3, ips 4',
        '❌ c3: 0/2 configured, 0/2 connected, 0/2 synced (nodes 0/2, identities 0/2, ip 0/2)',
      ],
    },
    {
      name: 'no peers configured',
      in: inputs([{ node: 'c1-n1', updatedAt: fresh, peers: [] }, { node: 'c1-n2', updatedAt: fresh, peers: [] }], { peers: [] }),
      ready: true,
      waitingFor: '',
      lines: [
        '✅ clustermesh-apiserver of c1 is ready at https://198.18.0.3:32379',
        '⚠️  No clusters configured for c1',
        '💡 connect one with: meshctl connect --context c1 --destination-context OTHER',
      ],
    },
    {
      name: 'heartbeat lost on both nodes; a status of a node not in lab.json is ignored',
      in: inputs([
        { node: 'c1-n1', updatedAt: fresh, peers: [down('c2', 'heartbeat', 'no heartbeat from c2 for 6s')] },
        { node: 'c1-n2', updatedAt: fresh, peers: [down('c2', 'heartbeat', 'no heartbeat from c2 for 6s')] },
        { node: 'c1-n9', updatedAt: fresh, peers: [peer('c2')] },
      ]),
      ready: false,
      waitingFor: 'c2: 2 of 2 nodes not connected: no heartbeat from c2 for 6s',
      lines: [
        '✅ clustermesh-apiserver of c1 is ready at https://198.18.0.3:32379',
        '⚠️  2 of 2 nodes are not connected to all clusters [min:0 / avg:0.0 / max:0]',
        '🔌 Cluster Connections:',
        '❌ c2: 2/2 configured, 0/2 connected, 0/2 synced (nodes 0/2, identities 0/2, ip 0/2)',
        '   entries: nodes 2, identities 3, ips 4',
        '❌ c2: c1-n1, c1-n2: no heartbeat from c2 for 6s',
        "💡 c2's apiserver answers but its heartbeat is stale: c2's export process stopped (meshctl enable --context c2 restarts it)",
      ],
    },
  ];

  test.each(cases)('$name', (c) => {
    const r = summarizeStatus(c.in);
    expect(r.ready).toBe(c.ready);
    expect(r.waitingFor).toBe(c.waitingFor);
    expect(renderStatus(r)).toEqual(c.lines);
  });

  test('json is deterministic: the same report whatever order the statuses come in', () => {
    const a = [
      { node: 'c1-n1', updatedAt: fresh, peers: [peer('c3'), down('c2', 'tls', 'x509: unknown authority')] },
      { node: 'c1-n2', updatedAt: fresh, peers: [peer('c2'), peer('c3')] },
    ];
    const r1 = JSON.stringify(sortKeys(summarizeStatus(inputs(a, { peers: ['c2', 'c3'] }))));
    const r2 = JSON.stringify(sortKeys(summarizeStatus(inputs([...a].reverse(), { peers: ['c3', 'c2'] }))));
    expect(r1).toBe(r2);
    const j = JSON.parse(r1) as { peers: Array<{ cluster: string; connected: number }>; summary: unknown };
    expect(j.peers.map((p) => [p.cluster, p.connected])).toEqual([['c2', 1], ['c3', 2]]);
    expect(j.summary).toEqual({ avg: 1.5, connectedToAll: 1, max: 2, min: 1, nodes: 2 });
    expect(Object.keys(JSON.parse(r1))).toEqual(['apiserver', 'cluster', 'nodes', 'peers', 'ready', 'summary', 'waitingFor']);
  });

  test.each([
    ['tls', "c2's server certificate is not trusted: check that both clusters share a CA, or connect with --allow-mismatching-ca (meshctl connect --context c1 --destination-context c2 --allow-mismatching-ca)"],
    ['auth', "c2's apiserver refused c1's credentials (its peer user was revoked?): reconnect with meshctl connect --context c1 --destination-context c2"],
    ['config', "c2's cluster config does not fit c1's (name, id or pod CIDRs): check meshctl connect --context c1 --destination-context c2 --dry-run"],
    ['other', "see the agents' logs of c1 (meshctl lab list --context c1)"],
  ] as const)('hint for %s', (kind, want) => {
    expect(errorHint(kind, 'c1', 'c2')).toBe(want);
  });

  test('wait line', () => {
    expect(waitLine('c1', 12_400, 'c2: 1 of 2 nodes not connected: connect ECONNREFUSED')).toBe(
      "⌛ Waiting (12s) for c1's nodes to connect and sync with all clusters: c2: 1 of 2 nodes not connected: connect ECONNREFUSED",
    );
  });
});

describe('durations', () => {
  test.each([
    ['500ms', 500],
    ['30s', 30_000],
    ['2m', 120_000],
    ['1.5s', 1500],
    ['1h', 3_600_000],
  ])('%s', (text, ms) => expect(parseDuration(text)).toBe(ms));

  test.each(['', '5', '5x', '-1s', '0s', 'm', '1 m2'])('refuses %p', (text) => {
    let err: unknown;
    try {
      parseDuration(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ValidationError);
    const want = text === '0s' ? `invalid wait-duration "0s": must be greater than 0` : `invalid wait-duration "${text}": must be a duration such as 500ms, 30s, 2m or 1h`;
    expect((err as Error).message).toBe(want);
  });

  test('flag, then MESH_STATUS_WAIT_MS (plain ms or a duration), then 5m', () => {
    expect(waitDuration('2m', { MESH_STATUS_WAIT_MS: '1000' })).toBe(120_000);
    expect(waitDuration(undefined, { MESH_STATUS_WAIT_MS: '1000' })).toBe(1000);
    expect(waitDuration(undefined, { MESH_STATUS_WAIT_MS: '30s' })).toBe(30_000);
    expect(waitDuration(undefined, {})).toBe(300_000);
    expect(() => waitDuration(undefined, { MESH_STATUS_WAIT_MS: 'soon' })).toThrow('invalid MESH_STATUS_WAIT_MS "soon": must be a duration such as 500ms, 30s, 2m or 1h');
  });
});

describe('inputs', () => {
  test.each([
    [undefined, { ready: true, error: '' }],
    [true, { ready: true, error: '' }],
    [false, { ready: false, error: 'not ready' }],
    [{ ok: false, error: 'etcdserver: no leader' }, { ready: false, error: 'etcdserver: no leader' }],
    [{ healthy: true }, { ready: true, error: '' }],
  ])('health %p', (h, want) => expect(interpretHealth(h)).toEqual(want));

  test('peers of a status object', () => {
    expect(peersOfStatus({ clustermesh: { peers: [peer('c2'), { nope: 1 }, 'x'] } }).map((p) => p.cluster)).toEqual(['c2']);
    expect(peersOfStatus({ datapath: {} })).toEqual([]);
    expect(peersOfStatus(undefined)).toEqual([]);
  });
});
