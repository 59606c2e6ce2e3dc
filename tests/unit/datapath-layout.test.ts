// The C structs in bpf/lib/common.h and the TS codecs in src/datapath/codecs.ts
// must agree byte for byte. A host C program (tests/layout/print-layout.c)
// prints what the compiler does with common.h; this test compares it with the
// codecs' declared layouts and round-trips every codec.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import {
  structCodecs,
  mapCodecs,
  MapNames,
  Verdict,
  DropReason,
  Direction,
  Path,
  CtState,
  RoutingMode,
  EndpointFlags,
  IpcacheFlags,
  NodeFlags,
  PolicyFlags,
  ServiceFlags,
  CtFlags,
  ConfigFlags,
  CLUSTER_ANY,
  IDENTITY_ANY,
  IDENTITY_MASK,
  MAX_SERVICE_BACKENDS,
  POLICY_PREFIX_L3,
  POLICY_PREFIX_PROTO,
  POLICY_PREFIX_FULL,
  LAYOUT_VERSION,
  IDENTITY_RESERVED_MAX,
  IDENTITY_CLUSTER_SHIFT,
  IDENTITY_CLUSTER_MASK,
  CtLifetimeDefaults,
  ReservedIdentity,
  sumPerCpuMetrics,
  dropReasonName,
  type StructCodec,
} from '../../src/datapath/codecs.js';

// dist/tests/unit/ → repository root
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

interface CLayout {
  structs: Record<string, { size: number; fields: Record<string, { offset: number; size: number }> }>;
  constants: Record<string, number>;
}

let c: CLayout;
let workDir: string;

beforeAll(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'meshctl-layout-'));
  const exe = join(workDir, 'print-layout');
  const cc = process.env.CC ?? 'cc';
  await execa(cc, ['-Wall', '-Werror', '-I', join(repoRoot, 'bpf'), '-o', exe, join(repoRoot, 'tests/layout/print-layout.c')]);
  const { stdout } = await execa(exe);
  c = JSON.parse(stdout) as CLayout;
});

afterAll(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

const codecEntries = Object.entries(structCodecs) as [string, StructCodec<unknown>][];

describe('struct layouts agree with common.h', () => {
  test('every C struct has a codec and every codec a C struct', () => {
    expect(Object.keys(c.structs).sort()).toEqual(codecEntries.map(([name]) => name).sort());
  });

  test.each(codecEntries)('%s', (name, codec) => {
    const cs = c.structs[name];
    expect(cs).toBeDefined();
    expect(codec.layout.cName).toBe(name);
    expect(codec.layout.size).toBe(cs.size);
    for (const f of codec.layout.fields) {
      const cf = cs.fields[f.cName];
      expect({ field: f.cName, ...cf }).toEqual({ field: f.cName, offset: f.offset, size: f.size });
    }
    // Every C member that is not padding must be carried by the codec.
    const covered = new Set(codec.layout.fields.map((f) => f.cName));
    const missing = Object.keys(cs.fields).filter((m) => !m.startsWith('pad') && !covered.has(m));
    expect(missing).toEqual([]);
  });
});

describe('enum and flag values agree with common.h', () => {
  const cases: [string, number][] = [
    ['MESH_LAYOUT_VERSION', LAYOUT_VERSION],
    ['MESH_CLUSTER_ANY', CLUSTER_ANY],
    ['MESH_IDENTITY_ANY', IDENTITY_ANY],
    ['MESH_IDENTITY_HOST', ReservedIdentity.host],
    ['MESH_IDENTITY_WORLD', ReservedIdentity.world],
    ['MESH_IDENTITY_REMOTE_NODE', ReservedIdentity.remoteNode],
    ['MESH_IDENTITY_MASK', IDENTITY_MASK],
    ['MESH_MAX_SERVICE_BACKENDS', MAX_SERVICE_BACKENDS],
    ['MESH_IDENTITY_RESERVED_MAX', IDENTITY_RESERVED_MAX],
    ['MESH_IDENTITY_CLUSTER_SHIFT', IDENTITY_CLUSTER_SHIFT],
    ['MESH_IDENTITY_CLUSTER_MASK', IDENTITY_CLUSTER_MASK],
    ['MESH_CT_LIFETIME_TCP_SYN_S', CtLifetimeDefaults.tcpSynS],
    ['MESH_CT_LIFETIME_TCP_ESTABLISHED_S', CtLifetimeDefaults.tcpEstablishedS],
    ['MESH_CT_LIFETIME_TCP_CLOSE_S', CtLifetimeDefaults.tcpCloseS],
    ['MESH_CT_LIFETIME_OTHER_S', CtLifetimeDefaults.otherS],
    ['MESH_VERDICT_FORWARDED', Verdict.Forwarded],
    ['MESH_VERDICT_DROPPED', Verdict.Dropped],
    ['MESH_DROP_NONE', DropReason.None],
    ['MESH_DROP_POLICY_DENIED', DropReason.PolicyDenied],
    ['MESH_DROP_POLICY_DENY_RULE', DropReason.PolicyDenyRule],
    ['MESH_DROP_NO_BACKEND', DropReason.NoBackend],
    ['MESH_DROP_CT_INVALID', DropReason.CtInvalid],
    ['MESH_DROP_UNKNOWN_DEST', DropReason.UnknownDest],
    ['MESH_DROP_INVALID_PACKET', DropReason.InvalidPacket],
    ['MESH_DROP_SOURCE_SPOOFED', DropReason.SourceSpoofed],
    ['MESH_DROP_UNKNOWN_SOURCE', DropReason.UnknownSource],
    ['MESH_DROP_FIB_FAILED', DropReason.FibFailed],
    ['MESH_DROP_NO_TUNNEL_ENDPOINT', DropReason.NoTunnelEndpoint],
    ['MESH_DROP_NO_CONFIG', DropReason.NoConfig],
    ['MESH_DROP_WRITE_FAILED', DropReason.WriteFailed],
    ['MESH_DROP_TTL_EXCEEDED', DropReason.TtlExceeded],
    ['MESH_DROP_NO_TUNNEL_KEY', DropReason.NoTunnelKey],
    ['MESH_DROP_BACKEND_INVALID', DropReason.BackendInvalid],
    ['MESH_DROP_REDIRECT_FAILED', DropReason.RedirectFailed],
    ['MESH_DROP_TUNNEL_SOURCE_UNKNOWN', DropReason.TunnelSourceUnknown],
    ['MESH_DROP_IDENTITY_MISMATCH', DropReason.IdentityMismatch],
    ['MESH_DROP_NOT_DIRECT_ROUTED', DropReason.NotDirectRouted],
    ['MESH_DROP_FRAG_NOT_FOUND', DropReason.FragNotFound],
    ['MESH_DIR_INGRESS', Direction.Ingress],
    ['MESH_DIR_EGRESS', Direction.Egress],
    ['MESH_DIR_SERVICE', Direction.Service],
    ['MESH_PATH_NONE', Path.None],
    ['MESH_PATH_LOCAL', Path.Local],
    ['MESH_PATH_TUNNEL', Path.Tunnel],
    ['MESH_PATH_NATIVE', Path.Native],
    ['MESH_PATH_STACK', Path.Stack],
    ['MESH_CT_NEW', CtState.New],
    ['MESH_CT_ESTABLISHED', CtState.Established],
    ['MESH_CT_REPLY', CtState.Reply],
    ['MESH_CT_RELATED', CtState.Related],
    ['MESH_ROUTING_TUNNEL', RoutingMode.Tunnel],
    ['MESH_ROUTING_NATIVE', RoutingMode.Native],
    ['MESH_ROUTING_HYBRID', RoutingMode.Hybrid],
    ['MESH_EP_F_POLICY_INGRESS', EndpointFlags.policyIngress],
    ['MESH_EP_F_POLICY_EGRESS', EndpointFlags.policyEgress],
    ['MESH_IPCACHE_F_NODE', IpcacheFlags.node],
    ['MESH_IPCACHE_F_LOCAL_NODE', IpcacheFlags.localNode],
    ['MESH_IPCACHE_F_ENCRYPT', IpcacheFlags.encrypt],
    ['MESH_NODE_F_DIRECT', NodeFlags.direct],
    ['MESH_NODE_F_ENCRYPT', NodeFlags.encrypt],
    ['MESH_POLICY_F_DENY', PolicyFlags.deny],
    ['MESH_POLICY_PREFIX_L3', POLICY_PREFIX_L3],
    ['MESH_POLICY_PREFIX_PROTO', POLICY_PREFIX_PROTO],
    ['MESH_POLICY_PREFIX_FULL', POLICY_PREFIX_FULL],
    ['MESH_SVC_F_GLOBAL', ServiceFlags.global],
    ['MESH_CT_F_SERVICE', CtFlags.service],
    ['MESH_CT_F_SEEN_REPLY', CtFlags.seenReply],
    ['MESH_CT_F_ESTABLISHED', CtFlags.established],
    ['MESH_CT_F_CLOSING', CtFlags.closing],
    ['MESH_CT_F_FIN_OPENER', CtFlags.finOpener],
    ['MESH_CT_F_FIN_REPLY', CtFlags.finReply],
    ['MESH_CFG_F_NO_FLOWS', ConfigFlags.noFlows],
    ['MESH_CFG_F_FLOWS_NEW_ONLY', ConfigFlags.flowsNewOnly],
  ];

  test('every C constant is checked', () => {
    const checked = new Set(cases.map(([name]) => name));
    expect(Object.keys(c.constants).filter((k) => k !== 'MESH_DROP_REASON_MAX' && !checked.has(k))).toEqual([]);
  });

  test.each(cases)('%s', (name, value) => {
    expect(c.constants[name]).toBe(value);
  });

  test('every drop reason has a name', () => {
    for (let r = 0; r < c.constants.MESH_DROP_REASON_MAX; r++) {
      expect(dropReasonName(r)).toMatch(/^[A-Z_]+$/);
      expect(dropReasonName(r)).not.toBe(`UNKNOWN_${r}`);
      expect(DropReason[r]).toBeDefined();
    }
  });
});

// One sample per struct, chosen so that every field is non-zero and byte order
// mistakes show.
const samples: Record<keyof typeof structCodecs, unknown> = {
  mesh_config: {
    nodeIp: '192.168.10.2',
    nodeId: 7,
    vxlanIfindex: 12,
    clusterId: 3,
    routingMode: RoutingMode.Hybrid,
    flags: ConfigFlags.noFlows,
    netdevIfindex: 2,
    ctTcpSynS: 30,
    ctTcpEstablishedS: 3600,
    ctTcpCloseS: 5,
    ctOtherS: 45,
  },
  mesh_endpoint_key: { ip: '10.1.2.3', clusterId: 5 },
  mesh_endpoint_info: {
    ifindex: 41,
    lxcMac: '02:aa:bb:cc:dd:01',
    podMac: '0a:58:0a:01:02:03',
    endpointId: 1234,
    flags: EndpointFlags.policyIngress | EndpointFlags.policyEgress,
    identity: (3 << 16) | 77,
  },
  mesh_ipcache_key: { prefixLen: 24, clusterId: 0, ip: '10.2.1.0' },
  mesh_ipcache_info: { identity: 0x020011, tunnelIp: '192.168.20.3', nodeId: 9, flags: IpcacheFlags.node },
  mesh_node_key: { ip: '192.168.20.3' },
  mesh_node_info: { nodeId: 9, clusterId: 2, flags: NodeFlags.direct },
  mesh_policy_key: { endpointId: 1234, direction: Direction.Ingress, proto: 6, identity: 0x010002, dport: 8080, portPrefixLen: 16 },
  mesh_policy_entry: { flags: PolicyFlags.deny, packets: 5n, bytes: 1n << 40n },
  mesh_service_key: { vip: '10.96.0.10', dport: 53, proto: 17 },
  mesh_service_info: { count: 70_000, revNatId: 42, flags: ServiceFlags.global },
  mesh_backend_key: { revNatId: 42, slot: 69_999 },
  mesh_backend_info: { ip: '10.1.0.9', port: 5353, proto: 17, flags: 1, clusterId: 1 },
  mesh_revnat_key: { revNatId: 42 },
  mesh_revnat_info: { vip: '10.96.0.10', port: 53 },
  mesh_ct_key: { saddr: '10.1.0.5', daddr: '10.2.0.6', sport: 40000, dport: 80, proto: 6, direction: Direction.Egress },
  mesh_ct_entry: {
    createdNs: 123456789n,
    lastSeenNs: 987654321n,
    expiresNs: 10_987654321n,
    packets: 10n,
    bytes: 1500n,
    natIp: '10.1.0.9',
    natPort: 8080,
    revNatId: 42,
    srcIdentity: 0x010005,
    backendSlot: 65_537,
    flags: CtFlags.service | CtFlags.seenReply | CtFlags.established,
    tcpFlags: 0x12,
  },
  mesh_frag_key: { saddr: '10.1.0.5', daddr: '10.2.0.6', id: 0xbeef, proto: 17 },
  mesh_frag_ports: { sport: 40000, dport: 5353 },
  mesh_flow_event: {
    tsNs: 0xfedcba9876543210n,
    saddr: '10.1.0.5',
    daddr: '10.2.0.6',
    sport: 40000,
    dport: 80,
    proto: 6,
    verdict: Verdict.Dropped,
    dropReason: DropReason.PolicyDenied,
    direction: Direction.Ingress,
    srcIdentity: 0x010005,
    dstIdentity: 0x020006,
    ifindex: 33,
    path: Path.Tunnel,
    ctState: CtState.Reply,
    endpointId: 99,
    pktLen: 98,
    nodeIp: '192.168.20.3',
  },
  mesh_metrics_key: { reason: DropReason.NoBackend, direction: Direction.Egress },
  mesh_metrics_value: { packets: 3n, bytes: 4096n },
};

describe('codecs round-trip', () => {
  test.each(codecEntries)('%s', (name, codec) => {
    const sample = samples[name as keyof typeof samples];
    const bytes = codec.encode(sample);
    expect(bytes.length).toBe(codec.layout.size);
    expect(codec.decode(bytes)).toEqual(sample);
    // Padding stays zero: re-encoding the decoded value is byte-identical,
    // and every byte outside the declared fields is 0.
    expect(codec.encode(codec.decode(bytes)).equals(bytes)).toBe(true);
    const covered = new Array<boolean>(codec.layout.size).fill(false);
    for (const f of codec.layout.fields) for (let i = 0; i < f.size; i++) covered[f.offset + i] = true;
    covered.forEach((isField, i) => {
      if (!isField) expect(bytes[i]).toBe(0);
    });
    expect(codec.toHexArgs(sample)).toEqual(Array.from(bytes, (b) => b.toString(16).padStart(2, '0')));
  });

  test('decode reads at an offset inside a larger buffer', () => {
    const codec = structCodecs.mesh_flow_event;
    const one = codec.encode(samples.mesh_flow_event as never);
    const big = Buffer.concat([Buffer.alloc(5, 0xff), one, Buffer.alloc(3, 0xff)]);
    expect(codec.decode(big, 5)).toEqual(samples.mesh_flow_event);
    expect(() => codec.decode(big, 10)).toThrow(RangeError);
  });
});

describe('byte order', () => {
  test('addresses and ports in network order, the rest little-endian', () => {
    const key = structCodecs.mesh_policy_key.encode({
      endpointId: 0x0102,
      direction: Direction.Egress,
      proto: 17,
      identity: 0x00030004,
      dport: 0x1f90,
    });
    expect(key.toString('hex')).toBe('50000000' + '04000300' + '0201' + '02' + '11' + '1f90' + '0000');
    const ep = structCodecs.mesh_endpoint_key.encode({ ip: '10.1.2.3', clusterId: 0 });
    expect(ep.toString('hex')).toBe('0a010203' + '0000' + '0000');
  });

  test.each([
    ['L3 only (any protocol)', { proto: 0, dport: 0 }, POLICY_PREFIX_L3, 0],
    ['one protocol, any port', { proto: 6, dport: 0 }, POLICY_PREFIX_PROTO, 0],
    ['one port', { proto: 6, dport: 443 }, POLICY_PREFIX_FULL, 16],
    ['a /6 port prefix (1024 ports)', { proto: 17, dport: 0x0400, portPrefixLen: 6 }, POLICY_PREFIX_PROTO + 6, 6],
  ])('policy key prefix length: %s', (_name, k, prefixlen, portPrefixLen) => {
    const key = { endpointId: 7, direction: Direction.Ingress as const, identity: 0x010005, ...k };
    const bytes = structCodecs.mesh_policy_key.encode(key);
    expect(bytes.readUInt32LE(0)).toBe(prefixlen);
    expect(structCodecs.mesh_policy_key.decode(bytes)).toEqual({ ...key, portPrefixLen });
  });

  test.each([
    ['port bits beyond the prefix', { proto: 6, dport: 0x0401, portPrefixLen: 6 }, 'mesh_policy_key.dport: 1025 has bits set beyond a /6 port prefix'],
    ['a port with protocol any', { proto: 0, dport: 80 }, 'mesh_policy_key: protocol 0 (any) takes no port, got 80/0'],
    ['prefix too long', { proto: 6, dport: 80, portPrefixLen: 17 }, 'mesh_policy_key.portPrefixLen: 17 is not 0..16'],
  ])('policy key refused: %s', (_name, k, message) => {
    expect(() => structCodecs.mesh_policy_key.encode({ endpointId: 7, direction: Direction.Ingress, identity: 1, ...k })).toThrow(message);
  });

  test('ipcache prefix length counts the cluster id and pad bits', () => {
    const k = structCodecs.mesh_ipcache_key.encode({ prefixLen: 16, clusterId: 0, ip: '10.1.0.0' });
    expect(k.readUInt32LE(0)).toBe(48);
    expect(() => structCodecs.mesh_ipcache_key.encode({ prefixLen: 33, clusterId: 0, ip: '10.1.0.0' })).toThrow(
      'mesh_ipcache_key.prefixLen: 33 is not 0..32',
    );
  });
});

describe('mesh_config', () => {
  test('conntrack lifetimes left out are written as 0 (the datapath default)', () => {
    const bytes = structCodecs.mesh_config.encode({
      nodeIp: '10.0.0.1',
      nodeId: 1,
      vxlanIfindex: 3,
      clusterId: 1,
      routingMode: RoutingMode.Tunnel,
      flags: 0,
      netdevIfindex: 2,
    });
    expect(bytes.subarray(20).equals(Buffer.alloc(20))).toBe(true);
    expect(structCodecs.mesh_config.decode(bytes)).toMatchObject({ ctTcpSynS: 0, ctTcpEstablishedS: 0, ctTcpCloseS: 0, ctOtherS: 0 });
  });
});

describe('input validation', () => {
  test.each([
    ['bad IP', () => structCodecs.mesh_node_key.encode({ ip: '10.1.2' }), 'invalid IPv4 address "10.1.2"'],
    ['octet too big', () => structCodecs.mesh_node_key.encode({ ip: '10.1.2.256' }), 'invalid IPv4 address "10.1.2.256"'],
    [
      'u16 overflow',
      () => structCodecs.mesh_backend_key.encode({ revNatId: 70000, slot: 1 }),
      'mesh_backend_key.revNatId: 70000 is not a u16',
    ],
    [
      'bad MAC',
      () =>
        structCodecs.mesh_endpoint_info.encode({
          ifindex: 1,
          lxcMac: '02:aa',
          podMac: '02:00:00:00:00:01',
          endpointId: 1,
          flags: 0,
          identity: 1,
        }),
      'invalid MAC address "02:aa"',
    ],
  ])('%s', (_name, fn, message) => {
    expect(fn).toThrow(message);
  });
});

describe('maps', () => {
  test('every map name is mesh_ + snake_case and has codecs unless it is the ring buffer', () => {
    for (const name of Object.values(MapNames)) {
      expect(name).toMatch(/^mesh_[a-z0-9_]+$/);
      if (name !== MapNames.flows) expect(mapCodecs[name as keyof typeof mapCodecs]).toBeDefined();
    }
  });

  test('per-CPU metric values are summed', () => {
    const v = structCodecs.mesh_metrics_value;
    const raw = Buffer.concat([v.encode({ packets: 1n, bytes: 100n }), v.encode({ packets: 2n, bytes: 50n })]);
    expect(sumPerCpuMetrics(raw)).toEqual({ packets: 3n, bytes: 150n });
  });
});
