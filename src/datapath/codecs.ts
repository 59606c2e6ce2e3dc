/**
 * Byte codecs for every struct in bpf/lib/common.h.
 *
 * Each codec declares its layout (size and field offsets) next to the
 * encoder, and tests/unit/datapath-layout.test.ts checks that declaration
 * against what the C compiler does with common.h. Change both together.
 *
 * Conventions, mirroring common.h:
 * - IPv4 addresses are dotted-quad strings in TS and network order in maps.
 * - Ports are host numbers in TS and network order in maps.
 * - Everything else is little-endian host order (x86-64, arm64); 64-bit
 *   counters and timestamps are bigint.
 * - MACs are `aa:bb:cc:dd:ee:ff` strings.
 * - Padding is always written as zero; hash and LPM keys compare it.
 */

/** Names of the pinned maps, as the loader finds them under the pin root. */
export const MapNames = {
  config: 'mesh_config',
  endpoints: 'mesh_endpoints',
  ipcache: 'mesh_ipcache',
  nodes: 'mesh_nodes',
  policy: 'mesh_policy',
  services: 'mesh_services',
  backends: 'mesh_backends',
  revnat: 'mesh_revnat',
  conntrack: 'mesh_conntrack',
  flows: 'mesh_flows',
  metrics: 'mesh_metrics',
  /** LRU: ports of fragmented datagrams, filled by their first fragment. */
  frags: 'mesh_frags',
} as const;
export type MapName = (typeof MapNames)[keyof typeof MapNames];

/** Entry programs: object file base name → program (function) name inside it. */
export const ProgramNames = {
  'from-container': 'mesh_from_container',
  'from-overlay': 'mesh_from_overlay',
  'from-netdev': 'mesh_from_netdev',
  /** Optional: tc egress of each lxc, polices what the node's own stack sends into a pod. */
  'to-container': 'mesh_to_container',
} as const;

/**
 * Version of the shared struct layouts (MESH_LAYOUT_VERSION in common.h). libbpf reuses a pinned
 * map whose type and sizes match even when its layout changed (mesh_service_info kept 8 bytes
 * when count became u32), so a loader should treat pins of another version as a migration.
 */
export const LAYOUT_VERSION = 2;

/** Cluster id written in address keys until overlapping pod CIDRs exist. */
export const CLUSTER_ANY = 0;
/** Identity 0 in a policy key matches any peer identity. */
export const IDENTITY_ANY = 0;
export const ReservedIdentity = { unknown: 0, host: 1, world: 2, remoteNode: 6 } as const;
export const IDENTITY_MASK = 0x00ffffff;
/** Sanity bound on a service's backend count (slots are 32-bit); the backends map's size is the real limit. */
export const MAX_SERVICE_BACKENDS = 1 << 24;
/** Identities below this are reserved and carry no cluster bits. */
export const IDENTITY_RESERVED_MAX = 256;
/** Cluster identities are `clusterId << IDENTITY_CLUSTER_SHIFT | local`; the cluster id is 8 bits. */
export const IDENTITY_CLUSTER_SHIFT = 16;
export const IDENTITY_CLUSTER_MASK = 0xff;

/**
 * Conntrack lifetimes (seconds) the datapath uses where `MeshConfig` holds 0, as Cilium's: an
 * unfinished handshake goes after a minute; an established TCP connection may idle 6 h (beyond
 * the usual 2 h keepalive); after a FIN or RST 10 s for the last ACKs and retransmits; UDP,
 * ICMP and other protocols idle out after 60 s.
 */
export const CtLifetimeDefaults = { tcpSynS: 60, tcpEstablishedS: 21600, tcpCloseS: 10, otherS: 60 } as const;

export enum Verdict {
  Forwarded = 1,
  Dropped = 2,
}

export enum DropReason {
  None = 0,
  PolicyDenied = 1,
  PolicyDenyRule = 2,
  NoBackend = 3,
  CtInvalid = 4,
  UnknownDest = 5,
  InvalidPacket = 6,
  SourceSpoofed = 7,
  UnknownSource = 8,
  FibFailed = 9,
  NoTunnelEndpoint = 10,
  NoConfig = 11,
  WriteFailed = 12,
  TtlExceeded = 13,
  NoTunnelKey = 14,
  BackendInvalid = 15,
  RedirectFailed = 16,
  /** Overlay: the outer source address is no node in mesh_nodes. */
  TunnelSourceUnknown = 17,
  /** Overlay: the VNI's cluster bits are not the sending node's cluster. */
  IdentityMismatch = 18,
  /** Native packet to a pod from a source behind no direct-routed peer. */
  NotDirectRouted = 19,
  /** A later fragment whose first fragment was never seen. */
  FragNotFound = 20,
}

/** Upper-snake names for drop reasons, as shown to users and in metrics. */
export const dropReasonName = (r: number): string =>
  (
    ({
      [DropReason.None]: 'NONE',
      [DropReason.PolicyDenied]: 'POLICY_DENIED',
      [DropReason.PolicyDenyRule]: 'POLICY_DENY_RULE',
      [DropReason.NoBackend]: 'NO_BACKEND',
      [DropReason.CtInvalid]: 'CT_INVALID',
      [DropReason.UnknownDest]: 'UNKNOWN_DEST',
      [DropReason.InvalidPacket]: 'INVALID_PACKET',
      [DropReason.SourceSpoofed]: 'SOURCE_SPOOFED',
      [DropReason.UnknownSource]: 'UNKNOWN_SOURCE',
      [DropReason.FibFailed]: 'FIB_FAILED',
      [DropReason.NoTunnelEndpoint]: 'NO_TUNNEL_ENDPOINT',
      [DropReason.NoConfig]: 'NO_CONFIG',
      [DropReason.WriteFailed]: 'WRITE_FAILED',
      [DropReason.TtlExceeded]: 'TTL_EXCEEDED',
      [DropReason.NoTunnelKey]: 'NO_TUNNEL_KEY',
      [DropReason.BackendInvalid]: 'BACKEND_INVALID',
      [DropReason.RedirectFailed]: 'REDIRECT_FAILED',
      [DropReason.TunnelSourceUnknown]: 'TUNNEL_SOURCE_UNKNOWN',
      [DropReason.IdentityMismatch]: 'IDENTITY_MISMATCH',
      [DropReason.NotDirectRouted]: 'NOT_DIRECT_ROUTED',
      [DropReason.FragNotFound]: 'FRAG_NOT_FOUND',
    }) as Record<number, string>
  )[r] ?? `UNKNOWN_${r}`;

export enum Direction {
  Ingress = 1,
  Egress = 2,
  /** Conntrack only: records a VIP → backend choice. */
  Service = 3,
}

export enum Path {
  None = 0,
  Local = 1,
  Tunnel = 2,
  Native = 3,
  Stack = 4,
}

export enum CtState {
  New = 0,
  Established = 1,
  Reply = 2,
  /** An ICMP error about a tracked connection (delivered past policy). */
  Related = 3,
}

export enum RoutingMode {
  Tunnel = 1,
  Native = 2,
  Hybrid = 3,
}

export const Proto = { any: 0, icmp: 1, tcp: 6, udp: 17 } as const;

export const EndpointFlags = { policyIngress: 1 << 0, policyEgress: 1 << 1 } as const;
export const IpcacheFlags = { node: 1 << 0, localNode: 1 << 1, encrypt: 1 << 2 } as const;
export const NodeFlags = { direct: 1 << 0, encrypt: 1 << 1 } as const;
export const PolicyFlags = { deny: 1 << 0 } as const;
export const ServiceFlags = { global: 1 << 0 } as const;
/**
 * `established`: TCP, the opener ACKed without SYN; `closing`: TCP, an RST or a FIN each way (a
 * SERVICE entry: the opener's FIN); `finOpener`/`finReply`: which side sent a FIN.
 */
export const CtFlags = {
  service: 1 << 0,
  seenReply: 1 << 1,
  established: 1 << 2,
  closing: 1 << 3,
  finOpener: 1 << 4,
  finReply: 1 << 5,
} as const;
/** TCP header flag bits, as in `CtEntry.tcpFlags`. */
export const TcpFlags = { fin: 0x01, syn: 0x02, rst: 0x04, psh: 0x08, ack: 0x10 } as const;
/** `noFlows`: no flow events at all; `flowsNewOnly`: only new connections and drops (counters unaffected). */
export const ConfigFlags = { noFlows: 1 << 0, flowsNewOnly: 1 << 1 } as const;

// ---------------------------------------------------------------------------
// Field kinds and the generic struct codec

type FieldKind = 'u8' | 'u16' | 'u32' | 'u64' | 'ipv4' | 'port' | 'mac';

const KIND_SIZE: Record<FieldKind, number> = { u8: 1, u16: 2, u32: 4, u64: 8, ipv4: 4, port: 2, mac: 6 };


export interface FieldLayout {
  /** Property name in the TS object. */
  readonly name: string;
  /** Member name in the C struct. */
  readonly cName: string;
  readonly offset: number;
  readonly size: number;
  readonly kind: FieldKind;
}

/** Declared C layout of one struct: what the layout test checks. */
export interface StructLayout {
  /** The C struct name in common.h. */
  readonly cName: string;
  readonly size: number;
  readonly fields: readonly FieldLayout[];
}

export interface StructCodec<T> {
  readonly layout: StructLayout;
  /** A fresh zeroed buffer of `layout.size` bytes holding `value`. */
  encode(value: T): Buffer;
  /** Reads `layout.size` bytes at `offset` (default 0). */
  decode(buf: Uint8Array, offset?: number): T;
  /** `encode` as space-separated hex bytes, the form `bpftool map update … key hex …` takes. */
  toHexArgs(value: T): string[];
}

type FieldSpec<T> = { [K in keyof T]-?: readonly [K, string, number, FieldKind] }[keyof T];

export function ipv4ToBytes(ip: string): number[] {
  const parts = ip.split('.');
  if (parts.length !== 4) throw new RangeError(`invalid IPv4 address ${JSON.stringify(ip)}`);
  return parts.map((p) => {
    const n = Number(p);
    if (!/^\d{1,3}$/.test(p) || n > 255) throw new RangeError(`invalid IPv4 address ${JSON.stringify(ip)}`);
    return n;
  });
}

export function bytesToIpv4(b: Uint8Array, offset = 0): string {
  return `${b[offset]}.${b[offset + 1]}.${b[offset + 2]}.${b[offset + 3]}`;
}

function macToBytes(mac: string): number[] {
  const parts = mac.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
    throw new RangeError(`invalid MAC address ${JSON.stringify(mac)}`);
  }
  return parts.map((p) => parseInt(p, 16));
}

function bytesToMac(b: Uint8Array, offset: number): string {
  return Array.from(b.subarray(offset, offset + 6), (x) => x.toString(16).padStart(2, '0')).join(':');
}

function checkUint(name: string, v: unknown, bits: 8 | 16 | 32): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= 2 ** bits) {
    throw new RangeError(`${name}: ${String(v)} is not a u${bits}`);
  }
  return v;
}

function defineStruct<T>(cName: string, size: number, spec: readonly FieldSpec<T>[]): StructCodec<T> {
  const fields: FieldLayout[] = spec.map(([name, cField, offset, kind]) => ({
    name: String(name),
    cName: cField,
    offset,
    size: KIND_SIZE[kind],
    kind,
  }));
  for (const f of fields) {
    if (f.offset + f.size > size) throw new Error(`${cName}.${f.name} overruns ${size} bytes`);
  }
  const layout: StructLayout = { cName, size, fields };

  const encode = (value: T): Buffer => {
    const buf = Buffer.alloc(size);
    const rec = value as Record<string, unknown>;
    for (const f of fields) {
      const v = rec[f.name];
      const where = `${cName}.${f.name}`;
      switch (f.kind) {
        case 'u8':
          buf.writeUInt8(checkUint(where, v, 8), f.offset);
          break;
        case 'u16':
          buf.writeUInt16LE(checkUint(where, v, 16), f.offset);
          break;
        case 'u32':
          buf.writeUInt32LE(checkUint(where, v, 32), f.offset);
          break;
        case 'u64':
          if (typeof v !== 'bigint' || v < 0n || v >= 1n << 64n) throw new RangeError(`${where}: ${String(v)} is not a u64`);
          buf.writeBigUInt64LE(v, f.offset);
          break;
        case 'port':
          buf.writeUInt16BE(checkUint(where, v, 16), f.offset);
          break;
        case 'ipv4':
          if (typeof v !== 'string') throw new RangeError(`${where}: expected a dotted-quad string`);
          buf.set(ipv4ToBytes(v), f.offset);
          break;
        case 'mac':
          if (typeof v !== 'string') throw new RangeError(`${where}: expected a MAC string`);
          buf.set(macToBytes(v), f.offset);
          break;
      }
    }
    return buf;
  };

  const decode = (src: Uint8Array, offset = 0): T => {
    if (src.length - offset < size) throw new RangeError(`${cName}: need ${size} bytes, got ${src.length - offset}`);
    const buf = Buffer.from(src.buffer, src.byteOffset + offset, size);
    const out: Record<string, unknown> = {};
    for (const f of fields) {
      switch (f.kind) {
        case 'u8':
          out[f.name] = buf.readUInt8(f.offset);
          break;
        case 'u16':
          out[f.name] = buf.readUInt16LE(f.offset);
          break;
        case 'u32':
          out[f.name] = buf.readUInt32LE(f.offset);
          break;
        case 'u64':
          out[f.name] = buf.readBigUInt64LE(f.offset);
          break;
        case 'port':
          out[f.name] = buf.readUInt16BE(f.offset);
          break;
        case 'ipv4':
          out[f.name] = bytesToIpv4(buf, f.offset);
          break;
        case 'mac':
          out[f.name] = bytesToMac(buf, f.offset);
          break;
      }
    }
    return out as T;
  };

  const toHexArgs = (value: T): string[] => Array.from(encode(value), (b) => b.toString(16).padStart(2, '0'));

  return { layout, encode, decode, toHexArgs };
}

/** Little-endian u32 map key (array index), as for `mesh_config`. */
export const u32Key: StructCodec<{ value: number }> = defineStruct<{ value: number }>('__u32', 4, [['value', 'value', 0, 'u32']]);

// ---------------------------------------------------------------------------
// Structs, in common.h order

/** `struct mesh_config`, the single entry (key 0) of `mesh_config`. */
export interface MeshConfig {
  /** This node's underlay IPv4. */
  nodeIp: string;
  nodeId: number;
  /** ifindex of the collect-metadata VXLAN device. */
  vxlanIfindex: number;
  clusterId: number;
  /** Routing for peers missing from `mesh_nodes`. */
  routingMode: RoutingMode;
  flags: number;
  /** ifindex of the underlay device (eth0), for native routing. */
  netdevIfindex: number;
  /** Conntrack lifetime (s) of TCP until the opener's first bare ACK. Default 0 = CtLifetimeDefaults.tcpSynS. */
  ctTcpSynS?: number;
  /** Conntrack lifetime (s) of established TCP. Default 0 = CtLifetimeDefaults.tcpEstablishedS. */
  ctTcpEstablishedS?: number;
  /** Conntrack lifetime (s) of TCP after a FIN or RST. Default 0 = CtLifetimeDefaults.tcpCloseS. */
  ctTcpCloseS?: number;
  /** Conntrack lifetime (s) of UDP, ICMP and the rest. Default 0 = CtLifetimeDefaults.otherS. */
  ctOtherS?: number;
}
const configRaw = defineStruct<Required<MeshConfig>>('mesh_config', 40, [
  ['nodeIp', 'node_ip', 0, 'ipv4'],
  ['nodeId', 'node_id', 4, 'u32'],
  ['vxlanIfindex', 'vxlan_ifindex', 8, 'u32'],
  ['clusterId', 'cluster_id', 12, 'u16'],
  ['routingMode', 'routing_mode', 14, 'u8'],
  ['flags', 'flags', 15, 'u8'],
  ['netdevIfindex', 'netdev_ifindex', 16, 'u32'],
  ['ctTcpSynS', 'ct_tcp_syn_s', 20, 'u32'],
  ['ctTcpEstablishedS', 'ct_tcp_established_s', 24, 'u32'],
  ['ctTcpCloseS', 'ct_tcp_close_s', 28, 'u32'],
  ['ctOtherS', 'ct_other_s', 32, 'u32'],
]);
const withLifetimes = (c: MeshConfig): Required<MeshConfig> => ({
  ctTcpSynS: 0,
  ctTcpEstablishedS: 0,
  ctTcpCloseS: 0,
  ctOtherS: 0,
  ...c,
});
/** `struct mesh_config`; the conntrack lifetimes may be left out (written as 0 = default). */
export const configCodec: StructCodec<MeshConfig> = {
  layout: configRaw.layout,
  encode: (c) => configRaw.encode(withLifetimes(c)),
  decode: (buf, offset) => configRaw.decode(buf, offset),
  toHexArgs: (c) => configRaw.toHexArgs(withLifetimes(c)),
};

export interface EndpointKey {
  ip: string;
  /** Default in practice: CLUSTER_ANY. */
  clusterId: number;
}
export const endpointKeyCodec = defineStruct<EndpointKey>('mesh_endpoint_key', 8, [
  ['ip', 'ip4', 0, 'ipv4'],
  ['clusterId', 'cluster_id', 4, 'u16'],
]);

export interface EndpointInfo {
  /** Host-side lxc device. */
  ifindex: number;
  /** MAC of the lxc device: the pod's gateway MAC. */
  lxcMac: string;
  /** MAC of the pod's eth0. */
  podMac: string;
  endpointId: number;
  /** EndpointFlags. */
  flags: number;
  identity: number;
}
export const endpointInfoCodec = defineStruct<EndpointInfo>('mesh_endpoint_info', 24, [
  ['ifindex', 'ifindex', 0, 'u32'],
  ['lxcMac', 'lxc_mac', 4, 'mac'],
  ['podMac', 'pod_mac', 10, 'mac'],
  ['endpointId', 'ep_id', 16, 'u16'],
  ['flags', 'flags', 18, 'u16'],
  ['identity', 'identity', 20, 'u32'],
]);

/**
 * LPM key of `mesh_ipcache`. `prefixLen` is the IPv4 prefix length (0–32);
 * the codec adds the 32 bits of cluster id + pad that the trie also matches.
 */
export interface IpcacheKey {
  prefixLen: number;
  clusterId: number;
  ip: string;
}
const ipcacheKeyRaw = defineStruct<{ prefixlen: number; clusterId: number; ip: string }>('mesh_ipcache_key', 12, [
  ['prefixlen', 'prefixlen', 0, 'u32'],
  ['clusterId', 'cluster_id', 4, 'u16'],
  ['ip', 'ip4', 8, 'ipv4'],
]);
export const IPCACHE_PREFIX_BASE = 32;
export const ipcacheKeyCodec: StructCodec<IpcacheKey> = {
  layout: ipcacheKeyRaw.layout,
  encode: (k) => {
    if (!Number.isInteger(k.prefixLen) || k.prefixLen < 0 || k.prefixLen > 32) {
      throw new RangeError(`mesh_ipcache_key.prefixLen: ${k.prefixLen} is not 0..32`);
    }
    return ipcacheKeyRaw.encode({ prefixlen: k.prefixLen + IPCACHE_PREFIX_BASE, clusterId: k.clusterId, ip: k.ip });
  },
  decode: (buf, offset) => {
    const raw = ipcacheKeyRaw.decode(buf, offset);
    return { prefixLen: raw.prefixlen - IPCACHE_PREFIX_BASE, clusterId: raw.clusterId, ip: raw.ip };
  },
  toHexArgs: (k) => Array.from(ipcacheKeyCodec.encode(k), (b) => b.toString(16).padStart(2, '0')),
};

export interface IpcacheInfo {
  identity: number;
  /** Underlay IPv4 of the node hosting the prefix; '0.0.0.0' = local or none. */
  tunnelIp: string;
  nodeId: number;
  /** IpcacheFlags. */
  flags: number;
}
export const ipcacheInfoCodec = defineStruct<IpcacheInfo>('mesh_ipcache_info', 12, [
  ['identity', 'identity', 0, 'u32'],
  ['tunnelIp', 'tunnel_ip', 4, 'ipv4'],
  ['nodeId', 'node_id', 8, 'u16'],
  ['flags', 'flags', 10, 'u16'],
]);

export interface NodeKey {
  ip: string;
}
export const nodeKeyCodec = defineStruct<NodeKey>('mesh_node_key', 4, [['ip', 'ip4', 0, 'ipv4']]);

export interface NodeInfo {
  nodeId: number;
  clusterId: number;
  /** NodeFlags: `direct` = route natively, otherwise tunnel. */
  flags: number;
}
export const nodeInfoCodec = defineStruct<NodeInfo>('mesh_node_info', 8, [
  ['nodeId', 'node_id', 0, 'u16'],
  ['clusterId', 'cluster_id', 2, 'u16'],
  ['flags', 'flags', 4, 'u32'],
]);

/**
 * Key of the `mesh_policy` LPM trie: one rule of one endpoint and direction.
 *
 * - `proto` 0: any protocol and port (L3-only rule); `dport` and `portPrefixLen` must be 0.
 * - `portPrefixLen` 0..16: how many leading bits of `dport` the rule matches; 0 = any port,
 *   16 = exactly `dport`. The bits of `dport` beyond the prefix must be 0.
 *   Default when absent: 16 for a non-zero `dport`, else 0 (so `{ proto, dport }` is one port
 *   and `{ proto, dport: 0 }` any port, as before ranges existed).
 *
 * The codec adds the bits of identity, ep_id and direction that the trie always matches
 * (POLICY_PREFIX_L3) and the 8 protocol bits.
 */
export interface PolicyKey {
  endpointId: number;
  direction: Direction.Ingress | Direction.Egress;
  /** 0 = any protocol (then dport must be 0). */
  proto: number;
  /** Peer identity, IDENTITY_ANY = any. */
  identity: number;
  /** First port of the prefix (host order). */
  dport: number;
  /** Matched leading bits of dport, 0..16; see above for the default. */
  portPrefixLen?: number;
}
/** prefixlen of an L3-only policy rule (identity, ep_id and direction). */
export const POLICY_PREFIX_L3 = 56;
/** prefixlen of a rule on one protocol, any port. */
export const POLICY_PREFIX_PROTO = 64;
/** prefixlen of a rule on one protocol and port; also what lookups ask with. */
export const POLICY_PREFIX_FULL = 80;
const policyKeyRaw = defineStruct<{ prefixlen: number; identity: number; endpointId: number; direction: number; proto: number; dport: number }>('mesh_policy_key', 16, [
  ['prefixlen', 'prefixlen', 0, 'u32'],
  ['identity', 'identity', 4, 'u32'],
  ['endpointId', 'ep_id', 8, 'u16'],
  ['direction', 'direction', 10, 'u8'],
  ['proto', 'proto', 11, 'u8'],
  ['dport', 'dport', 12, 'port'],
]);
export const policyKeyCodec: StructCodec<PolicyKey> = {
  layout: policyKeyRaw.layout,
  encode: (k) => {
    const bits = k.portPrefixLen ?? (k.proto !== 0 && k.dport !== 0 ? 16 : 0);
    if (!Number.isInteger(bits) || bits < 0 || bits > 16) throw new RangeError(`mesh_policy_key.portPrefixLen: ${bits} is not 0..16`);
    if (k.proto === 0 && (k.dport !== 0 || bits !== 0)) throw new RangeError(`mesh_policy_key: protocol 0 (any) takes no port, got ${k.dport}/${bits}`);
    if (typeof k.dport === 'number' && bits < 16 && (k.dport & (0xffff >>> bits)) !== 0) {
      throw new RangeError(`mesh_policy_key.dport: ${k.dport} has bits set beyond a /${bits} port prefix`);
    }
    const prefixlen = k.proto === 0 ? POLICY_PREFIX_L3 : POLICY_PREFIX_PROTO + bits;
    return policyKeyRaw.encode({ prefixlen, identity: k.identity, endpointId: k.endpointId, direction: k.direction, proto: k.proto, dport: k.dport });
  },
  decode: (buf, offset) => {
    const raw = policyKeyRaw.decode(buf, offset);
    const portPrefixLen = raw.prefixlen <= POLICY_PREFIX_PROTO ? 0 : raw.prefixlen - POLICY_PREFIX_PROTO;
    return { endpointId: raw.endpointId, direction: raw.direction as PolicyKey['direction'], proto: raw.proto, identity: raw.identity, dport: raw.dport, portPrefixLen };
  },
  toHexArgs: (k) => Array.from(policyKeyCodec.encode(k), (b) => b.toString(16).padStart(2, '0')),
};

export interface PolicyEntry {
  /** PolicyFlags. */
  flags: number;
  packets: bigint;
  bytes: bigint;
}
export const policyEntryCodec = defineStruct<PolicyEntry>('mesh_policy_entry', 24, [
  ['flags', 'flags', 0, 'u32'],
  ['packets', 'packets', 8, 'u64'],
  ['bytes', 'bytes', 16, 'u64'],
]);

export interface ServiceKey {
  vip: string;
  dport: number;
  proto: number;
}
export const serviceKeyCodec = defineStruct<ServiceKey>('mesh_service_key', 8, [
  ['vip', 'vip', 0, 'ipv4'],
  ['dport', 'dport', 4, 'port'],
  ['proto', 'proto', 6, 'u8'],
]);

export interface ServiceInfo {
  /** Backends live in slots 1..count of mesh_backends (u32). */
  count: number;
  /** Also the service id keying mesh_backends; 1..65535. */
  revNatId: number;
  flags: number;
}
export const serviceInfoCodec = defineStruct<ServiceInfo>('mesh_service_info', 8, [
  ['count', 'count', 0, 'u32'],
  ['revNatId', 'rev_nat_id', 4, 'u16'],
  ['flags', 'flags', 6, 'u8'],
]);

export interface BackendKey {
  revNatId: number;
  /** 1-based, u32. */
  slot: number;
}
export const backendKeyCodec = defineStruct<BackendKey>('mesh_backend_key', 8, [
  ['revNatId', 'rev_nat_id', 0, 'u16'],
  ['slot', 'slot', 4, 'u32'],
]);

export interface BackendInfo {
  ip: string;
  port: number;
  proto: number;
  flags: number;
  clusterId: number;
}
export const backendInfoCodec = defineStruct<BackendInfo>('mesh_backend_info', 12, [
  ['ip', 'ip4', 0, 'ipv4'],
  ['port', 'port', 4, 'port'],
  ['proto', 'proto', 6, 'u8'],
  ['flags', 'flags', 7, 'u8'],
  ['clusterId', 'cluster_id', 8, 'u16'],
]);

export interface RevNatKey {
  revNatId: number;
}
export const revNatKeyCodec = defineStruct<RevNatKey>('mesh_revnat_key', 4, [['revNatId', 'rev_nat_id', 0, 'u16']]);

export interface RevNatInfo {
  vip: string;
  port: number;
}
export const revNatInfoCodec = defineStruct<RevNatInfo>('mesh_revnat_info', 8, [
  ['vip', 'vip', 0, 'ipv4'],
  ['port', 'port', 4, 'port'],
]);

export interface CtKey {
  saddr: string;
  daddr: string;
  sport: number;
  dport: number;
  proto: number;
  direction: Direction;
}
export const ctKeyCodec = defineStruct<CtKey>('mesh_ct_key', 16, [
  ['saddr', 'saddr', 0, 'ipv4'],
  ['daddr', 'daddr', 4, 'ipv4'],
  ['sport', 'sport', 8, 'port'],
  ['dport', 'dport', 10, 'port'],
  ['proto', 'proto', 12, 'u8'],
  ['direction', 'direction', 13, 'u8'],
]);

export interface CtEntry {
  /** bpf_ktime_get_ns() (CLOCK_MONOTONIC, as process.hrtime.bigint()). */
  createdNs: bigint;
  lastSeenNs: bigint;
  /** The entry is dead (treated as missing) from this time on. */
  expiresNs: bigint;
  packets: bigint;
  bytes: bigint;
  /** SERVICE entries: the chosen backend. EGRESS entries of a translated connection: the VIP addressed. */
  natIp: string;
  natPort: number;
  revNatId: number;
  srcIdentity: number;
  /** SERVICE entries: the mesh_backends slot chosen (the backend is revalidated against it). */
  backendSlot: number;
  /** CtFlags. */
  flags: number;
  /** TcpFlags seen so far, either direction. */
  tcpFlags: number;
}
export const ctEntryCodec = defineStruct<CtEntry>('mesh_ct_entry', 64, [
  ['createdNs', 'created_ns', 0, 'u64'],
  ['lastSeenNs', 'last_seen_ns', 8, 'u64'],
  ['expiresNs', 'expires_ns', 16, 'u64'],
  ['packets', 'packets', 24, 'u64'],
  ['bytes', 'bytes', 32, 'u64'],
  ['natIp', 'nat_ip', 40, 'ipv4'],
  ['natPort', 'nat_port', 44, 'port'],
  ['revNatId', 'rev_nat_id', 46, 'u16'],
  ['srcIdentity', 'src_identity', 48, 'u32'],
  ['backendSlot', 'backend_slot', 52, 'u32'],
  ['flags', 'flags', 56, 'u8'],
  ['tcpFlags', 'tcp_flags', 57, 'u8'],
]);

/** Key of `mesh_frags`: one fragmented datagram. */
export interface FragKey {
  saddr: string;
  daddr: string;
  /** IPv4 identification field. */
  id: number;
  proto: number;
}
export const fragKeyCodec = defineStruct<FragKey>('mesh_frag_key', 12, [
  ['saddr', 'saddr', 0, 'ipv4'],
  ['daddr', 'daddr', 4, 'ipv4'],
  ['id', 'id', 8, 'port'],
  ['proto', 'proto', 10, 'u8'],
]);

/** Value of `mesh_frags`: the ports its first fragment carried. */
export interface FragPorts {
  sport: number;
  dport: number;
}
export const fragPortsCodec = defineStruct<FragPorts>('mesh_frag_ports', 4, [
  ['sport', 'sport', 0, 'port'],
  ['dport', 'dport', 2, 'port'],
]);

/** One record of the `mesh_flows` ring buffer. */
export interface FlowEvent {
  tsNs: bigint;
  saddr: string;
  daddr: string;
  sport: number;
  dport: number;
  proto: number;
  verdict: Verdict;
  dropReason: DropReason;
  direction: Direction;
  srcIdentity: number;
  dstIdentity: number;
  ifindex: number;
  path: Path;
  ctState: CtState;
  endpointId: number;
  pktLen: number;
  /** Peer node for tunnel/native paths, '0.0.0.0' otherwise. */
  nodeIp: string;
}
export const flowEventCodec = defineStruct<FlowEvent>('mesh_flow_event', 48, [
  ['tsNs', 'ts_ns', 0, 'u64'],
  ['saddr', 'saddr', 8, 'ipv4'],
  ['daddr', 'daddr', 12, 'ipv4'],
  ['sport', 'sport', 16, 'port'],
  ['dport', 'dport', 18, 'port'],
  ['proto', 'proto', 20, 'u8'],
  ['verdict', 'verdict', 21, 'u8'],
  ['dropReason', 'drop_reason', 22, 'u8'],
  ['direction', 'direction', 23, 'u8'],
  ['srcIdentity', 'src_identity', 24, 'u32'],
  ['dstIdentity', 'dst_identity', 28, 'u32'],
  ['ifindex', 'ifindex', 32, 'u32'],
  ['path', 'path', 36, 'u8'],
  ['ctState', 'ct_state', 37, 'u8'],
  ['endpointId', 'ep_id', 38, 'u16'],
  ['pktLen', 'pkt_len', 40, 'u32'],
  ['nodeIp', 'node_ip', 44, 'ipv4'],
]);

export interface MetricsKey {
  /** DropReason.None for forwarded packets. */
  reason: DropReason;
  direction: Direction;
}
export const metricsKeyCodec = defineStruct<MetricsKey>('mesh_metrics_key', 4, [
  ['reason', 'reason', 0, 'u8'],
  ['direction', 'direction', 1, 'u8'],
]);

/** One CPU's slot of a `mesh_metrics` value; sum over CPUs for totals. */
export interface MetricsValue {
  packets: bigint;
  bytes: bigint;
}
export const metricsValueCodec = defineStruct<MetricsValue>('mesh_metrics_value', 16, [
  ['packets', 'packets', 0, 'u64'],
  ['bytes', 'bytes', 8, 'u64'],
]);

/**
 * Sums a per-CPU `mesh_metrics` value as the kernel returns it: one slot per
 * possible CPU, each rounded up to 8 bytes.
 */
export function sumPerCpuMetrics(raw: Uint8Array): MetricsValue {
  const stride = metricsValueCodec.layout.size; // already a multiple of 8
  let packets = 0n;
  let bytes = 0n;
  for (let off = 0; off + stride <= raw.length; off += stride) {
    const v = metricsValueCodec.decode(raw, off);
    packets += v.packets;
    bytes += v.bytes;
  }
  return { packets, bytes };
}

/** Every shared struct codec by C name: the set the layout test walks. */
export const structCodecs = {
  mesh_config: configCodec,
  mesh_endpoint_key: endpointKeyCodec,
  mesh_endpoint_info: endpointInfoCodec,
  mesh_ipcache_key: ipcacheKeyCodec,
  mesh_ipcache_info: ipcacheInfoCodec,
  mesh_node_key: nodeKeyCodec,
  mesh_node_info: nodeInfoCodec,
  mesh_policy_key: policyKeyCodec,
  mesh_policy_entry: policyEntryCodec,
  mesh_service_key: serviceKeyCodec,
  mesh_service_info: serviceInfoCodec,
  mesh_backend_key: backendKeyCodec,
  mesh_backend_info: backendInfoCodec,
  mesh_revnat_key: revNatKeyCodec,
  mesh_revnat_info: revNatInfoCodec,
  mesh_ct_key: ctKeyCodec,
  mesh_ct_entry: ctEntryCodec,
  mesh_frag_key: fragKeyCodec,
  mesh_frag_ports: fragPortsCodec,
  mesh_flow_event: flowEventCodec,
  mesh_metrics_key: metricsKeyCodec,
  mesh_metrics_value: metricsValueCodec,
} as const;

/** Which key/value codec each map uses (the ring buffer has records, not entries). */
export const mapCodecs = {
  [MapNames.config]: { key: u32Key, value: configCodec },
  [MapNames.endpoints]: { key: endpointKeyCodec, value: endpointInfoCodec },
  [MapNames.ipcache]: { key: ipcacheKeyCodec, value: ipcacheInfoCodec },
  [MapNames.nodes]: { key: nodeKeyCodec, value: nodeInfoCodec },
  [MapNames.policy]: { key: policyKeyCodec, value: policyEntryCodec },
  [MapNames.services]: { key: serviceKeyCodec, value: serviceInfoCodec },
  [MapNames.backends]: { key: backendKeyCodec, value: backendInfoCodec },
  [MapNames.revnat]: { key: revNatKeyCodec, value: revNatInfoCodec },
  [MapNames.conntrack]: { key: ctKeyCodec, value: ctEntryCodec },
  [MapNames.metrics]: { key: metricsKeyCodec, value: metricsValueCodec },
  [MapNames.frags]: { key: fragKeyCodec, value: fragPortsCodec },
} as const;
