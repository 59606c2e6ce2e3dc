/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * common.h: every type that C and TypeScript must agree on.
 *
 * src/datapath/codecs.ts mirrors each struct below byte for byte, and
 * tests/unit/datapath-layout.test.ts compiles this header on the host and
 * compares sizeof/offsetof with the codecs' declared layouts. Change both
 * sides together.
 *
 * Byte order:
 *   - IPv4 addresses and L4 ports are stored as on the wire (network order).
 *   - Every other number (identities, ids, ifindexes, counters, flags) is in
 *     host order (little-endian on the machines we run on).
 *
 * Every struct has explicit padding and only fixed-size fields, so the
 * compiler never inserts hidden bytes; padding must be written as zero
 * (hash and LPM keys compare all bytes).
 *
 * This header builds in two worlds: BPF objects (map definitions below) and
 * the host layout helper (tests/layout/), which defines MESH_LAYOUT_ONLY and
 * only wants the types.
 */
#ifndef MESH_COMMON_H
#define MESH_COMMON_H

#include <linux/types.h>

/* ---------------------------------------------------------------------- */
/* Constants and enums shared with TypeScript                               */
/* ---------------------------------------------------------------------- */

/* Bumped whenever a shared struct changes meaning. libbpf reuses a pinned map
 * whose type and sizes match, so a loader must not trust pins of another
 * layout version (mesh_service_info kept its 8 bytes when count became u32).
 *   1: the first layout
 *   2: u32 backend slots, conntrack expiry/TCP state, lifetimes in config,
 *      mesh_frags */
#define MESH_LAYOUT_VERSION 2

/* Cluster id in address keys. 0 = the one flat address space of the mesh;
 * a real cluster id goes here once overlapping pod CIDRs are supported. */
#define MESH_CLUSTER_ANY 0

/* Reserved security identities (no cluster bits). */
#define MESH_IDENTITY_UNKNOWN     0
#define MESH_IDENTITY_HOST        1
#define MESH_IDENTITY_WORLD       2
#define MESH_IDENTITY_REMOTE_NODE 6
/* In a policy key, identity 0 matches every source/destination identity. */
#define MESH_IDENTITY_ANY         0
/* Identities are 24 bits so they fit a VXLAN VNI. */
#define MESH_IDENTITY_MASK        0x00ffffffU

/* Default map sizes (max_entries); the loader may set others at load, and
 * a build may override them with -D. */
#ifndef MESH_MAX_ENDPOINTS
#define MESH_MAX_ENDPOINTS   4096
#endif
#ifndef MESH_MAX_IPCACHE
#define MESH_MAX_IPCACHE     65536
#endif
#ifndef MESH_MAX_NODES
#define MESH_MAX_NODES       4096
#endif
#ifndef MESH_MAX_POLICY
#define MESH_MAX_POLICY      65536
#endif
#ifndef MESH_MAX_SERVICES
#define MESH_MAX_SERVICES    8192
#endif
#ifndef MESH_MAX_BACKENDS
#define MESH_MAX_BACKENDS    131072
#endif
#ifndef MESH_MAX_REVNAT
#define MESH_MAX_REVNAT      8192
#endif
#ifndef MESH_MAX_CONNTRACK
#define MESH_MAX_CONNTRACK   131072
#endif
#ifndef MESH_MAX_FRAGS
#define MESH_MAX_FRAGS       8192
#endif
#ifndef MESH_MAX_METRICS
#define MESH_MAX_METRICS     1024
#endif
#define MESH_FLOW_RING_BYTES (1U << 20)
/* Backends per service: slots 1..count in mesh_backends (a 32-bit slot);
 * in practice the backends map's size is the bound. */
#define MESH_MAX_SERVICE_BACKENDS (1U << 24)
/* Identities below this are reserved (host, world, ...) and carry no
 * cluster bits; cluster identities are cluster_id << 16 | local. */
#define MESH_IDENTITY_RESERVED_MAX 256
#define MESH_IDENTITY_CLUSTER_SHIFT 16
#define MESH_IDENTITY_CLUSTER_MASK  0xffU

/* Default conntrack lifetimes in seconds, used where mesh_config holds 0.
 * As Cilium's: a handshake that does not finish within a minute is gone,
 * an established TCP connection may idle for 6 h (longer than the usual
 * 2 h TCP keepalive, so idle keepalive'd connections survive), a closed
 * one (RST, or FIN both ways) lingers 10 s for the last ACKs and retransmits,
 * and datagram "connections" (UDP, ICMP, other) idle out after 60 s. */
#define MESH_CT_LIFETIME_TCP_SYN_S         60
#define MESH_CT_LIFETIME_TCP_ESTABLISHED_S 21600
#define MESH_CT_LIFETIME_TCP_CLOSE_S       10
#define MESH_CT_LIFETIME_OTHER_S           60

enum mesh_verdict {
	MESH_VERDICT_FORWARDED = 1,
	MESH_VERDICT_DROPPED   = 2,
};

/* Why a packet was dropped; 0 for forwarded packets. Append only: the
 * numbers are stored in flow events and metric keys. */
enum mesh_drop_reason {
	MESH_DROP_NONE             = 0,
	MESH_DROP_POLICY_DENIED    = 1, /* selected endpoint, no rule allows */
	MESH_DROP_POLICY_DENY_RULE = 2, /* an explicit deny rule matched */
	MESH_DROP_NO_BACKEND       = 3, /* service with zero backends */
	MESH_DROP_CT_INVALID       = 4, /* reply needs reverse NAT, entry gone */
	MESH_DROP_UNKNOWN_DEST     = 5, /* tunnel/native packet for no local pod */
	MESH_DROP_INVALID_PACKET   = 6, /* truncated or malformed headers */
	MESH_DROP_SOURCE_SPOOFED   = 7, /* source IP is not this lxc's pod */
	MESH_DROP_UNKNOWN_SOURCE   = 8, /* source IP is no local endpoint */
	MESH_DROP_FIB_FAILED       = 9, /* native routing: no route/neighbour */
	MESH_DROP_NO_TUNNEL_ENDPOINT = 10, /* remote pod without node address */
	MESH_DROP_NO_CONFIG        = 11, /* mesh_config not written yet */
	MESH_DROP_WRITE_FAILED     = 12, /* packet rewrite helper failed */
	MESH_DROP_TTL_EXCEEDED     = 13,
	MESH_DROP_NO_TUNNEL_KEY    = 14, /* overlay packet without metadata */
	MESH_DROP_BACKEND_INVALID  = 15, /* service slot points at nothing */
	MESH_DROP_REDIRECT_FAILED  = 16,
	MESH_DROP_TUNNEL_SOURCE_UNKNOWN = 17, /* overlay: outer source is no known node */
	MESH_DROP_IDENTITY_MISMATCH = 18, /* overlay: VNI's cluster bits are not the sender node's */
	MESH_DROP_NOT_DIRECT_ROUTED = 19, /* native packet to a pod from no direct-routed peer */
	MESH_DROP_FRAG_NOT_FOUND   = 20, /* later fragment whose first fragment was not seen */
	MESH_DROP_REASON_MAX,
};

enum mesh_direction {
	MESH_DIR_INGRESS = 1, /* towards a local endpoint */
	MESH_DIR_EGRESS  = 2, /* leaving a local endpoint */
	MESH_DIR_SERVICE = 3, /* conntrack only: VIP -> backend choice */
};

/* How a forwarded packet left (or entered) this node. */
enum mesh_path {
	MESH_PATH_NONE   = 0,
	MESH_PATH_LOCAL  = 1, /* redirected to a pod on this node */
	MESH_PATH_TUNNEL = 2, /* VXLAN, VNI = source identity */
	MESH_PATH_NATIVE = 3, /* routed on the underlay without encapsulation */
	MESH_PATH_STACK  = 4, /* handed to the node's own stack (world, host) */
};

/* Connection-tracking state of a packet, reported in flow events. */
enum mesh_ct_state {
	MESH_CT_NEW         = 0,
	MESH_CT_ESTABLISHED = 1,
	MESH_CT_REPLY       = 2,
	MESH_CT_RELATED     = 3, /* ICMP error about a tracked connection */
};

enum mesh_routing_mode {
	MESH_ROUTING_TUNNEL = 1,
	MESH_ROUTING_NATIVE = 2,
	MESH_ROUTING_HYBRID = 3,
};

/* mesh_endpoint_info.flags */
#define MESH_EP_F_POLICY_INGRESS (1U << 0) /* selected by ingress policy */
#define MESH_EP_F_POLICY_EGRESS  (1U << 1) /* selected by egress policy */

/* mesh_ipcache_info.flags */
#define MESH_IPCACHE_F_NODE       (1U << 0) /* prefix is a node's own address */
#define MESH_IPCACHE_F_LOCAL_NODE (1U << 1) /* ... of this node */
#define MESH_IPCACHE_F_ENCRYPT    (1U << 2) /* reserved: WireGuard */

/* mesh_node_info.flags */
#define MESH_NODE_F_DIRECT  (1U << 0) /* route natively (same VPC / native) */
#define MESH_NODE_F_ENCRYPT (1U << 1) /* reserved: WireGuard */

/* mesh_policy_entry.flags */
#define MESH_POLICY_F_DENY (1U << 0)

/* mesh_service_info.flags */
#define MESH_SVC_F_GLOBAL (1U << 0) /* informational: a global service */

/* mesh_ct_entry.flags */
#define MESH_CT_F_SERVICE    (1U << 0) /* entry records a VIP -> backend choice */
#define MESH_CT_F_SEEN_REPLY (1U << 1)
#define MESH_CT_F_ESTABLISHED (1U << 2) /* TCP: the opener ACKed without SYN */
#define MESH_CT_F_CLOSING    (1U << 3) /* TCP: RST, or FIN both ways (SERVICE: the opener's) */
#define MESH_CT_F_FIN_OPENER (1U << 4) /* TCP: the opener sent FIN */
#define MESH_CT_F_FIN_REPLY  (1U << 5) /* TCP: the other side sent FIN */

/* mesh_config.flags */
#define MESH_CFG_F_NO_FLOWS  (1U << 0) /* do not emit flow events */
/* Forwarded packets of known connections (ESTABLISHED/REPLY) emit no flow
 * event; new connections and drops still do. Counters are unaffected. */
#define MESH_CFG_F_FLOWS_NEW_ONLY (1U << 1)

/* ---------------------------------------------------------------------- */
/* Shared structs                                                           */
/* ---------------------------------------------------------------------- */

/*
 * mesh_config (array, 1 entry, key 0): written by the agent at start.
 *
 *  0               4               8               12      14  15  16
 *  +---------------+---------------+---------------+-------+---+---+
 *  | node_ip (NBO) | node_id       | vxlan_ifindex |cluster|mod|flg|
 *  +---------------+---------------+---------------+-------+---+---+
 *  | netdev_ifindex| ct_tcp_syn_s  | ct_tcp_estab_s| ct_tcp_close_s|
 *  +---------------+---------------+---------------+---------------+ 32
 *  | ct_other_s    | pad           |
 *  +---------------+---------------+ 40
 *
 * The ct_* lifetimes are in seconds; 0 = the MESH_CT_LIFETIME_* default.
 */
struct mesh_config {
	__u32 node_ip;        /* this node's underlay IPv4 (network order) */
	__u32 node_id;
	__u32 vxlan_ifindex;  /* collect-metadata VXLAN device */
	__u16 cluster_id;
	__u8  routing_mode;   /* enum mesh_routing_mode, for unknown nodes */
	__u8  flags;          /* MESH_CFG_F_* */
	__u32 netdev_ifindex; /* underlay device (eth0) for native routing */
	__u32 ct_tcp_syn_s;   /* TCP until the opener's first bare ACK */
	__u32 ct_tcp_established_s;
	__u32 ct_tcp_close_s; /* TCP after an RST or a FIN each way */
	__u32 ct_other_s;     /* UDP, ICMP, everything else */
	__u32 pad;
};

/*
 * mesh_endpoints: local pods.
 *
 * key (8)                          value (24)
 *  0       4       6       8        0       4          10         16   18   20      24
 *  +-------+-------+-------+        +-------+----------+----------+----+----+-------+
 *  | ip4   |cluster| pad   |        |ifindex| lxc_mac  | pod_mac  |epid|flag|ident. |
 *  +-------+-------+-------+        +-------+----------+----------+----+----+-------+
 */
struct mesh_endpoint_key {
	__u32 ip4;        /* pod IPv4 (network order) */
	__u16 cluster_id; /* MESH_CLUSTER_ANY for now */
	__u16 pad;
};

struct mesh_endpoint_info {
	__u32 ifindex;    /* host-side lxc device; traffic is redirected to its peer */
	__u8  lxc_mac[6]; /* MAC of the lxc device (the pod's gateway MAC) */
	__u8  pod_mac[6]; /* MAC of the pod's eth0 */
	__u16 ep_id;      /* endpoint id, keys the pod's policy */
	__u16 flags;      /* MESH_EP_F_* */
	__u32 identity;   /* security identity of the pod */
};

/*
 * mesh_ipcache (LPM trie): every known pod/node prefix -> identity and the
 * node hosting it.
 *
 * key (12)                               value (12)
 *  0           4       6       8     12   0          4          8       10      12
 *  +-----------+-------+-------+-----+    +----------+----------+-------+-------+
 *  | prefixlen |cluster| pad   | ip4 |    | identity | tunnel_ip|node_id| flags |
 *  +-----------+-------+-------+-----+    +----------+----------+-------+-------+
 *
 * prefixlen counts the matched bits after the prefixlen field, so it is
 * 32 + the IPv4 prefix length (cluster id and pad always match exactly).
 */
struct mesh_ipcache_key {
	__u32 prefixlen;
	__u16 cluster_id; /* MESH_CLUSTER_ANY for now */
	__u16 pad;
	__u32 ip4;        /* network order */
};

struct mesh_ipcache_info {
	__u32 identity;
	__u32 tunnel_ip;  /* underlay IPv4 of the hosting node, 0 = local/none */
	__u16 node_id;
	__u16 flags;      /* MESH_IPCACHE_F_* */
};

/*
 * mesh_nodes: per peer node, how to reach it and whether to trust it. The
 * agent decides tunnel/native/hybrid and writes the result here. Only a node
 * listed here may send tunnel traffic, and only with identities of its
 * cluster_id; only a DIRECT one may route natively to our pods.
 *
 * key (4)          value (8)
 *  0        4       0       2       4       8
 *  +--------+       +-------+-------+-------+
 *  | ip4    |       |node_id|cluster| flags |
 *  +--------+       +-------+-------+-------+
 */
struct mesh_node_key {
	__u32 ip4;        /* node underlay IPv4 (network order) */
};

struct mesh_node_info {
	__u16 node_id;
	__u16 cluster_id; /* identities it may send: cluster_id << 16 | local */
	__u32 flags;      /* MESH_NODE_F_* */
};

/*
 * mesh_policy (LPM trie): per-endpoint allow/deny rules.
 *
 * key (16)
 *  0           4          8      10   11   12      14    16
 *  +-----------+----------+------+----+----+-------+-----+
 *  | prefixlen | identity |ep_id |dir |prot| dport | pad |
 *  +-----------+----------+------+----+----+-------+-----+
 *              |<-- always matched (56) ->|<-8->|<-16->|
 *
 * value (24)
 *  0      4      8         16        24
 *  +------+------+---------+---------+
 *  |flags | pad  | packets | bytes   |
 *  +------+------+---------+---------+
 *
 * prefixlen counts the matched bits after the prefixlen field: identity,
 * ep_id and direction always match (MESH_POLICY_PREFIX_L3: any protocol,
 * any port); + 8 matches the protocol (MESH_POLICY_PREFIX_PROTO: any port);
 * + n matches the top n bits of dport (network order), so a port range is
 * a few aligned prefixes and one port is MESH_POLICY_PREFIX_FULL. Bits
 * beyond prefixlen are written as zero. identity 0 = any identity.
 *
 * A lookup asks once with the peer's identity and once with identity 0;
 * each answers with its most specific rule. The agent turns every rule
 * that a deny rule of the same identity covers into a deny, so "a deny
 * among the matching rules wins" holds with one answer per lookup.
 */
#define MESH_POLICY_PREFIX_L3    56
#define MESH_POLICY_PREFIX_PROTO 64
#define MESH_POLICY_PREFIX_FULL  80

struct mesh_policy_key {
	__u32 prefixlen;
	__u32 identity;   /* peer identity, 0 = any */
	__u16 ep_id;
	__u8  direction;  /* MESH_DIR_INGRESS / MESH_DIR_EGRESS */
	__u8  proto;      /* IPPROTO_*; 0 with prefixlen MESH_POLICY_PREFIX_L3 */
	__u16 dport;      /* network order */
	__u16 pad;
};

struct mesh_policy_entry {
	__u32 flags;      /* MESH_POLICY_F_* */
	__u32 pad;
	__u64 packets;    /* bumped by the datapath on new connections */
	__u64 bytes;
};

/*
 * mesh_services: ClusterIP frontends.
 *
 * key (8)                           value (8)
 *  0      4      6    7    8         0               4          6     7     8
 *  +------+------+----+----+         +---------------+----------+-----+-----+
 *  | vip  |dport |prot|pad |         | count         |rev_nat_id|flags| pad |
 *  +------+------+----+----+         +---------------+----------+-----+-----+
 */
struct mesh_service_key {
	__u32 vip;        /* network order */
	__u16 dport;      /* network order */
	__u8  proto;      /* IPPROTO_TCP / IPPROTO_UDP */
	__u8  pad;
};

struct mesh_service_info {
	__u32 count;      /* backends in slots 1..count, 0 = drop NO_BACKEND */
	__u16 rev_nat_id; /* also the service id that keys mesh_backends */
	__u8  flags;      /* MESH_SVC_F_* */
	__u8  pad;
};

/*
 * mesh_backends: (service id, slot) -> backend. Slot numbers start at 1.
 *
 * key (8)                          value (12)
 *  0          2      4       8      0      4      6    7    8        10     12
 *  +----------+------+-------+      +------+------+----+----+--------+------+
 *  |rev_nat_id| pad  | slot  |      | ip4  | port |prot|flg|cluster | pad  |
 *  +----------+------+-------+      +------+------+----+----+--------+------+
 */
struct mesh_backend_key {
	__u16 rev_nat_id;
	__u16 pad;
	__u32 slot;
};

struct mesh_backend_info {
	__u32 ip4;        /* network order */
	__u16 port;       /* network order; 0 = the service's port */
	__u8  proto;
	__u8  flags;
	__u16 cluster_id; /* owning cluster, informational for now */
	__u16 pad;
};

/*
 * mesh_revnat: rev_nat_id -> the VIP replies must come from.
 *
 * key (4)                 value (8)
 *  0          2     4      0      4      6     8
 *  +----------+-----+      +------+------+-----+
 *  |rev_nat_id| pad |      | vip  | port | pad |
 *  +----------+-----+      +------+------+-----+
 */
struct mesh_revnat_key {
	__u16 rev_nat_id;
	__u16 pad;
};

struct mesh_revnat_info {
	__u32 vip;        /* network order */
	__u16 port;       /* network order */
	__u16 pad;
};

/*
 * mesh_conntrack (LRU hash). Entries are keyed by the tuple of the packet
 * that opened the connection, as seen by the local endpoint, plus the
 * direction it was opened in:
 *   EGRESS  - a local pod opened it (tuple after service DNAT)
 *   INGRESS - a peer opened it towards a local pod
 *   SERVICE - a local pod sent to a VIP (tuple before DNAT); the entry
 *             remembers the chosen backend (slot, ip, port) so the
 *             connection sticks to it while that slot still holds it,
 *             and the EGRESS entry of the translated tuple records the VIP.
 * A packet matching the reverse of an EGRESS/INGRESS entry is a reply.
 * For ICMP echo, both ports hold the echo id.
 *
 * Every packet moves expires_ns to now + the lifetime of the entry's state
 * (mesh_config ct_* seconds): TCP before the opener's bare ACK = syn, then
 * established, after an RST or a FIN each way = close (a SERVICE entry: the
 * opener's FIN); anything else = other. An entry
 * past expires_ns is treated as missing; src/datapath/conntrack.ts deletes
 * such entries (same clock: CLOCK_MONOTONIC).
 *
 * key (16)
 *  0       4       8      10     12   13   14     16
 *  +-------+-------+------+------+----+----+------+
 *  | saddr | daddr |sport |dport |prot|dir | pad  |
 *  +-------+-------+------+------+----+----+------+
 *
 * value (64)
 *  0          8           16         24        32       40
 *  +----------+-----------+----------+---------+--------+
 *  |created_ns|last_seen  |expires_ns| packets | bytes  |
 *  +----------+-----------+----------+---------+--------+
 *  40       44     46         48             52            56    57      58    64
 *  +--------+------+----------+--------------+-------------+-----+-------+-----+
 *  | nat_ip |nport |rev_nat_id| src_identity | backend_slot|flags|tcp_flg| pad |
 *  +--------+------+----------+--------------+-------------+-----+-------+-----+
 */
struct mesh_ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  direction; /* enum mesh_direction */
	__u16 pad;
};

struct mesh_ct_entry {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 expires_ns;   /* bpf_ktime_get_ns() after which the entry is dead */
	__u64 packets;
	__u64 bytes;
	/* SERVICE entries: the backend chosen. EGRESS entries of a translated
	 * connection: the VIP and port the pod addressed (replies are rewritten
	 * to come from them if mesh_revnat no longer knows rev_nat_id). */
	__u32 nat_ip;       /* network order */
	__u16 nat_port;     /* network order */
	__u16 rev_nat_id;   /* non-zero: replies are rewritten to come from the VIP */
	__u32 src_identity; /* identity of the opener */
	__u32 backend_slot; /* SERVICE entries: the mesh_backends slot chosen */
	__u8  flags;        /* MESH_CT_F_* */
	__u8  tcp_flags;    /* TCP flags seen so far, both directions (FIN 0x01 ... ) */
	__u8  pad[6];
};

/*
 * mesh_frags (LRU hash): the ports of a fragmented datagram, filled from its
 * first fragment so the later ones (which carry no L4 header) are judged
 * like it.
 *
 * key (12)                                   value (4)
 *  0       4       8      10   11   12        0      2      4
 *  +-------+-------+------+----+----+         +------+------+
 *  | saddr | daddr | id   |prot|pad |         |sport |dport |
 *  +-------+-------+------+----+----+         +------+------+
 */
struct mesh_frag_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;         /* IPv4 identification (network order) */
	__u8  proto;
	__u8  pad;
};

struct mesh_frag_ports {
	__u16 sport;      /* network order */
	__u16 dport;      /* network order */
};

/*
 * mesh_flows (ring buffer): one record per verdict.
 *
 *  0          8       12      16     18     20   21   22   23   24
 *  +----------+-------+-------+------+------+----+----+----+----+
 *  | ts_ns    | saddr | daddr |sport |dport |prot|verd|drop|dir |
 *  +----------+-------+-------+------+------+----+----+----+----+
 *  24           28           32        36   37   38     40      44       48
 *  +------------+------------+---------+----+----+------+-------+--------+
 *  |src_identity|dst_identity| ifindex |path|ct  |ep_id |pkt_len|node_ip |
 *  +------------+------------+---------+----+----+------+-------+--------+
 */
struct mesh_flow_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns() */
	__u32 saddr;        /* as the packet leaves (after DNAT or reverse NAT) */
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  verdict;      /* enum mesh_verdict */
	__u8  drop_reason;  /* enum mesh_drop_reason */
	__u8  direction;    /* enum mesh_direction */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;      /* device the program runs on */
	__u8  path;         /* enum mesh_path */
	__u8  ct_state;     /* enum mesh_ct_state */
	__u16 ep_id;        /* local endpoint concerned, 0 if none */
	__u32 pkt_len;
	__u32 node_ip;      /* peer node for tunnel/native paths (network order) */
};

/*
 * mesh_metrics (per-CPU hash): (reason, direction) -> counters. Forwarded
 * packets count under reason MESH_DROP_NONE.
 *
 * key (4)                      value (16)
 *  0      1    2     4          0         8        16
 *  +------+----+-----+          +---------+--------+
 *  |reason|dir | pad |          | packets | bytes  |
 *  +------+----+-----+          +---------+--------+
 */
struct mesh_metrics_key {
	__u8  reason;       /* enum mesh_drop_reason */
	__u8  direction;    /* enum mesh_direction */
	__u16 pad;
};

struct mesh_metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* ---------------------------------------------------------------------- */
/* Map definitions (BPF objects only)                                       */
/* ---------------------------------------------------------------------- */
#ifndef MESH_LAYOUT_ONLY

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Every map is pinned by name, so the three entry objects share one set of
 * maps and a restarted agent finds them again. The loader sets the pin
 * root to /sys/fs/bpf/meshctl/<lab>/<cluster>/<node>/. */
#define MESH_PIN __uint(pinning, LIBBPF_PIN_BY_NAME)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mesh_config);
	MESH_PIN;
} mesh_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_MAX_ENDPOINTS);
	__type(key, struct mesh_endpoint_key);
	__type(value, struct mesh_endpoint_info);
	MESH_PIN;
} mesh_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MESH_MAX_IPCACHE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mesh_ipcache_key);
	__type(value, struct mesh_ipcache_info);
	MESH_PIN;
} mesh_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_MAX_NODES);
	__type(key, struct mesh_node_key);
	__type(value, struct mesh_node_info);
	MESH_PIN;
} mesh_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MESH_MAX_POLICY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mesh_policy_key);
	__type(value, struct mesh_policy_entry);
	MESH_PIN;
} mesh_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_MAX_SERVICES);
	__type(key, struct mesh_service_key);
	__type(value, struct mesh_service_info);
	MESH_PIN;
} mesh_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_MAX_BACKENDS);
	__type(key, struct mesh_backend_key);
	__type(value, struct mesh_backend_info);
	MESH_PIN;
} mesh_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_MAX_REVNAT);
	__type(key, struct mesh_revnat_key);
	__type(value, struct mesh_revnat_info);
	MESH_PIN;
} mesh_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_MAX_CONNTRACK);
	__type(key, struct mesh_ct_key);
	__type(value, struct mesh_ct_entry);
	MESH_PIN;
} mesh_conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_MAX_FRAGS);
	__type(key, struct mesh_frag_key);
	__type(value, struct mesh_frag_ports);
	MESH_PIN;
} mesh_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MESH_FLOW_RING_BYTES);
	MESH_PIN;
} mesh_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MESH_MAX_METRICS);
	__type(key, struct mesh_metrics_key);
	__type(value, struct mesh_metrics_value);
	MESH_PIN;
} mesh_metrics SEC(".maps");

#endif /* MESH_LAYOUT_ONLY */
#endif /* MESH_COMMON_H */
