// Who may claim an identity: the overlay takes a VNI only from a known node and only with that
// node's cluster bits; native packets reach pods only from direct-routed peers. Real packets
// through real namespaces, maps written directly (no agent).
//
//   ns a 10.200.1.2 ─ lxca ┐                         ┌ lxcc ─ ns c 10.200.2.2
//   ns b 10.200.1.3 ─ lxcb ┤ node n1 ── eth0 ══ eth0 ── node n2
//   ns x 10.200.1.9 ─ lxcx ┘ (a pod that makes its own VXLAN device)
//                   10.99.0.1/24             10.99.0.2/24
import {
  CtState,
  Direction,
  DropReason,
  EndpointFlags,
  NodeFlags,
  Path,
  Proto,
  ReservedIdentity,
  Verdict,
  policyKeyCodec,
  policyEntryCodec,
  MapNames,
  nodeKeyCodec,
  nodeInfoCodec,
  type FlowEvent,
} from '../../src/datapath/codecs.js';
import { BpfNet, ip, inNs, ping, type Pod, type TestNode } from '../helpers/bpf-net.js';

const net = new BpfNet('trust');
const ID = { a: 0x010101, b: 0x010102, c: 0x010103, x: 0x010109, otherCluster: 0x020005 };
let n1: TestNode, n2: TestNode;
let a: Pod, b: Pod, c: Pod, x: Pod;

beforeAll(async () => {
  await net.setup();
  n1 = await net.addNode('n1', '10.99.0.1', '10.200.1.0', 1);
  n2 = await net.addNode('n2', '10.99.0.2', '10.200.2.0', 2);
  await net.linkNodes(n1, n2);
  a = await net.addPod(n1, 'a', '10.200.1.2', ID.a, 101);
  b = await net.addPod(n1, 'b', '10.200.1.3', ID.b, 102);
  x = await net.addPod(n1, 'x', '10.200.1.9', ID.x, 109);
  c = await net.addPod(n2, 'c', '10.200.2.2', ID.c, 201);
  await net.wire(n1);
  await net.wire(n2);
  net.writeIpcache(n1, n2.podCidr, 24, ID.c, n2.ip);
  net.writeIpcache(n2, n1.podCidr, 24, ID.a, n1.ip);
  // A tunnel cluster: each node knows the other, not direct.
  net.writePeerNode(n1, n2, 0);
  net.writePeerNode(n2, n1, 0);
  // The underlay can route pod CIDRs natively (as a forger on it would).
  await ip(n1.ns, 'route', 'add', `${n2.podCidr}/24`, 'via', n2.ip, 'dev', 'eth0');
  await ip(n2.ns, 'route', 'add', `${n1.podCidr}/24`, 'via', n1.ip, 'dev', 'eth0');
}, 180_000);

afterAll(async () => {
  await net.teardown();
}, 60_000);

function rulePackets(node: TestNode, pod: Pod, identity: number): bigint {
  const raw = net
    .map(node, MapNames.policy)
    .lookup(policyKeyCodec.encode({ endpointId: pod.epId, direction: Direction.Ingress, proto: 0, identity, dport: 0 }));
  return raw ? policyEntryCodec.decode(raw).packets : -1n;
}

const icmpTo = (ev: FlowEvent[], daddr: string) => ev.filter((e) => e.proto === Proto.icmp && e.daddr === daddr);

describe('overlay: the VNI is an identity only from a known node of its cluster', () => {
  beforeAll(async () => {
    // b admits exactly the identities the forger claims in the cases below.
    for (const id of [ID.c, ID.otherCluster, ReservedIdentity.remoteNode]) {
      net.setRule(n1, { endpointId: b.epId, direction: Direction.Ingress, proto: 0, identity: id, dport: 0 });
    }
    net.writeEndpoint(n1, b, EndpointFlags.policyIngress);
  });

  afterEach(() => {
    net.map(n1, MapNames.nodes).delete(nodeKeyCodec.encode({ ip: x.ip }));
  });

  /** Pod x sends one ping to b inside VXLAN with VNI `vni`, outer destination its own node. */
  async function forge(vni: number): Promise<FlowEvent[]> {
    await ip(x.ns, 'link', 'add', 'vxf', 'type', 'vxlan', 'id', String(vni), 'remote', n1.ip, 'dstport', '8472', 'dev', 'eth0');
    try {
      await ip(x.ns, 'addr', 'add', '10.200.2.77/32', 'dev', 'vxf');
      await ip(x.ns, 'link', 'set', 'vxf', 'up');
      await ip(x.ns, 'neigh', 'add', b.ip, 'lladdr', '02:00:00:00:00:01', 'dev', 'vxf', 'nud', 'permanent');
      await ip(x.ns, 'route', 'add', `${b.ip}/32`, 'dev', 'vxf');
      return await net.flows(n1, async () => {
        await inNs(x.ns, 'ping', ['-n', '-c', '1', '-W', '1', b.ip], { reject: false });
      });
    } finally {
      await ip(x.ns, 'link', 'del', 'vxf');
    }
  }

  test.each([
    ['a pod (no node) claiming a pod identity', false, ID.c, DropReason.TunnelSourceUnknown],
    ['a known node claiming an identity of another cluster', true, ID.otherCluster, DropReason.IdentityMismatch],
    ['a known node with an identity of its cluster', true, ID.c, DropReason.None],
    ['a known node with a reserved identity', true, ReservedIdentity.remoteNode, DropReason.None],
  ])('%s', async (_name, known, vni, reason) => {
    if (known) {
      // x's address stands in for a node of cluster 1.
      net.map(n1, MapNames.nodes).update(nodeKeyCodec.encode({ ip: x.ip }), nodeInfoCodec.encode({ nodeId: 9, clusterId: 1, flags: 0 }));
    }
    const ruleBefore = rulePackets(n1, b, vni);
    const dropsBefore = net.metric(n1, reason, Direction.Ingress);
    const events = icmpTo(await forge(vni), b.ip).filter((e) => e.path === Path.Tunnel);
    if (reason === DropReason.None) {
      expect(rulePackets(n1, b, vni)).toBeGreaterThan(ruleBefore);
      expect(events[0]).toMatchObject({ verdict: Verdict.Forwarded, srcIdentity: vni, nodeIp: x.ip });
      return;
    }
    expect(net.metric(n1, reason, Direction.Ingress)).toBeGreaterThan(dropsBefore);
    // The rule that admits the claimed identity was never reached.
    expect(rulePackets(n1, b, vni)).toBe(ruleBefore);
    expect(events[0]).toMatchObject({
      verdict: Verdict.Dropped,
      dropReason: reason,
      direction: Direction.Ingress,
      saddr: '10.200.2.77',
      nodeIp: x.ip,
      srcIdentity: vni,
    });
  });

  test('a real node still tunnels; the same node believed to be of another cluster is refused', async () => {
    expect(await ping(c.ns, a.ip)).toBe(true);
    net.writePeerNode(n1, n2, 0, 2);
    try {
      const before = net.metric(n1, DropReason.IdentityMismatch, Direction.Ingress);
      const events = await net.flows(n1, async () => {
        expect(await ping(c.ns, a.ip, 1)).toBe(false);
      });
      expect(net.metric(n1, DropReason.IdentityMismatch, Direction.Ingress)).toBeGreaterThan(before);
      expect(icmpTo(events, a.ip)[0]).toMatchObject({ verdict: Verdict.Dropped, dropReason: DropReason.IdentityMismatch, nodeIp: n2.ip, srcIdentity: ID.c });
    } finally {
      net.writePeerNode(n1, n2, 0);
    }
    expect(await ping(c.ns, a.ip)).toBe(true);
  });
});

describe('native: packets to pods only from direct-routed peers', () => {
  beforeAll(async () => {
    // Addresses on n2 a forger can send from: one inside c's pod CIDR, one plain underlay host.
    await ip(n2.ns, 'addr', 'add', '10.200.2.99/32', 'dev', 'lo');
    await ip(n2.ns, 'addr', 'add', '10.99.0.99/24', 'dev', 'eth0');
  });

  afterEach(() => {
    net.writePeerNode(n1, n2, 0);
  });

  test.each([
    ['claiming a pod address of a tunnel peer', '10.200.2.99'],
    ['from an unknown underlay host', '10.99.0.99'],
  ])('in a tunnel cluster, a native packet %s is dropped (NOT_DIRECT_ROUTED)', async (_name, source) => {
    const before = net.metric(n1, DropReason.NotDirectRouted, Direction.Ingress);
    const events = await net.flows(n1, async () => {
      expect(await ping(n2.ns, a.ip, 1, ['-I', source])).toBe(false);
    });
    expect(net.metric(n1, DropReason.NotDirectRouted, Direction.Ingress)).toBeGreaterThan(before);
    expect(icmpTo(events, a.ip)[0]).toMatchObject({
      verdict: Verdict.Dropped,
      dropReason: DropReason.NotDirectRouted,
      direction: Direction.Ingress,
      path: Path.Native,
      saddr: source,
      endpointId: a.epId,
    });
  });

  test('the same packet from a direct-routed peer is delivered', async () => {
    net.writePeerNode(n1, n2, NodeFlags.direct);
    expect(await ping(n2.ns, a.ip, 2, ['-I', '10.200.2.99'])).toBe(true);
  });

  test("a node's own address and replies to what a pod opened still come in natively", async () => {
    // n2's stack (health checks, host network) reaches a pod natively even in tunnel mode.
    expect(await ping(n2.ns, a.ip, 2, ['-I', n2.ip])).toBe(true);
    // a opens to an underlay host; its replies arrive on eth0 and are replies.
    const events = await net.flows(n1, async () => {
      expect(await ping(a.ns, '10.99.0.99', 3)).toBe(true);
    });
    expect(events.find((e) => e.saddr === '10.99.0.99' && e.daddr === a.ip)).toMatchObject({
      verdict: Verdict.Forwarded,
      path: Path.Native,
      ctState: CtState.Reply,
    });
  });
});
