/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * conntrack.h: is this packet part of a connection we already allowed?
 *
 * Entries are keyed by the opening packet's tuple plus the direction it
 * was opened in, relative to the local endpoint:
 *
 *   pod A opens to B (egress at A):    {A, B, sa, sb, p, EGRESS}
 *   B's reply, seen at A's ingress:    reverse tuple is {A, B, ...}, EGRESS -> REPLY
 *   peer C opens to pod D (ingress):   {C, D, sc, sd, p, INGRESS}
 *   D's reply, seen at D's egress:     reverse tuple is {C, D, ...}, INGRESS -> REPLY
 *
 * So one map serves both ends of a pod-to-pod connection on one node.
 *
 * Lifetimes: every packet sets expires_ns = now + the lifetime of the
 * entry's state, from mesh_config (seconds, 0 = MESH_CT_LIFETIME_*):
 *
 *   TCP, until the opener sends an ACK without SYN   ct_tcp_syn_s
 *   TCP, after that                                   ct_tcp_established_s
 *   TCP, after an RST or a FIN each way               ct_tcp_close_s
 *   UDP, ICMP, anything else                          ct_other_s
 *
 * An expired entry is treated as missing (the next packet is NEW and meets
 * policy again); the agent deletes expired entries (src/datapath/
 * conntrack.ts), the LRU evicts cold ones when the map is full. A bare SYN
 * on a closing entry opens a new connection on the same tuple.
 *
 * ICMP errors (unreachable, frag-needed, time exceeded) are RELATED when
 * the packet they quote belongs to a tracked connection: they pass without
 * policy, so path MTU discovery works for allowed connections only.
 */
#ifndef MESH_CONNTRACK_H
#define MESH_CONNTRACK_H

#include "common.h"
#include "packet.h"

#define MESH_NSEC_PER_SEC 1000000000ULL

static __always_inline __u8 ct_opposite(__u8 direction)
{
	return direction == MESH_DIR_EGRESS ? MESH_DIR_INGRESS : MESH_DIR_EGRESS;
}

static __always_inline __u64 ct_seconds_or(__u32 configured, __u32 fallback)
{
	return (__u64)(configured ? configured : fallback) * MESH_NSEC_PER_SEC;
}

/* How long an entry in this state lives after its last packet. */
static __always_inline __u64 ct_lifetime_ns(__u8 proto, __u8 ct_flags)
{
	__u32 zero = 0;
	const struct mesh_config *cfg = bpf_map_lookup_elem(&mesh_config, &zero);
	struct mesh_config none = {};

	if (!cfg)
		cfg = &none;
	if (proto != IPPROTO_TCP)
		return ct_seconds_or(cfg->ct_other_s, MESH_CT_LIFETIME_OTHER_S);
	if (ct_flags & MESH_CT_F_CLOSING)
		return ct_seconds_or(cfg->ct_tcp_close_s, MESH_CT_LIFETIME_TCP_CLOSE_S);
	if (ct_flags & MESH_CT_F_ESTABLISHED)
		return ct_seconds_or(cfg->ct_tcp_established_s, MESH_CT_LIFETIME_TCP_ESTABLISHED_S);
	return ct_seconds_or(cfg->ct_tcp_syn_s, MESH_CT_LIFETIME_TCP_SYN_S);
}

/*
 * The state flags a TCP packet moves an entry to (from_opener: it travels
 * the way the connection was opened). A half-closed connection (one FIN)
 * keeps its established lifetime, as the other side may still send for
 * long; RST or a FIN each way closes it. A SERVICE entry only ever sees the
 * opener's packets, so the opener's FIN closes it.
 */
static __always_inline __u8 ct_tcp_state(__u8 ct_flags, __u8 tcp_flags, int from_opener)
{
	if (tcp_flags & MESH_TCP_RST)
		return ct_flags | MESH_CT_F_CLOSING;
	if (tcp_flags & MESH_TCP_FIN) {
		ct_flags |= from_opener ? MESH_CT_F_FIN_OPENER : MESH_CT_F_FIN_REPLY;
		if ((ct_flags & MESH_CT_F_SERVICE) ||
		    (ct_flags & (MESH_CT_F_FIN_OPENER | MESH_CT_F_FIN_REPLY)) ==
			    (MESH_CT_F_FIN_OPENER | MESH_CT_F_FIN_REPLY))
			ct_flags |= MESH_CT_F_CLOSING;
		return ct_flags;
	}
	if (from_opener && (tcp_flags & MESH_TCP_ACK) && !(tcp_flags & MESH_TCP_SYN))
		return ct_flags | MESH_CT_F_ESTABLISHED;
	return ct_flags;
}

/* A pure SYN: the start of a connection. */
static __always_inline int ct_is_syn(const struct mesh_pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (MESH_TCP_SYN | MESH_TCP_ACK)) == MESH_TCP_SYN;
}

static __always_inline int ct_alive(const struct mesh_ct_entry *e, __u64 now)
{
	return e->expires_ns > now;
}

/* Counts `p` on the entry and moves its state and expiry. Concurrent
 * packets may race on flags; the worst outcome is one lost state change,
 * repeated by the next packet. */
static __always_inline void ct_touch(struct mesh_ct_entry *e, const struct mesh_pkt *p, __u64 now,
				     int from_opener)
{
	__u8 flags = e->flags;

	e->last_seen_ns = now;
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, p->len);
	if (p->proto == IPPROTO_TCP) {
		flags = ct_tcp_state(flags, p->tcp_flags, from_opener);
		if ((e->tcp_flags | p->tcp_flags) != e->tcp_flags)
			e->tcp_flags |= p->tcp_flags;
	}
	if (!from_opener)
		flags |= MESH_CT_F_SEEN_REPLY;
	if (flags != e->flags)
		e->flags = flags;
	e->expires_ns = now + ct_lifetime_ns(p->proto, flags);
}

/* A live entry under `key`, or NULL. */
static __always_inline struct mesh_ct_entry *ct_find(struct mesh_ct_key *key, __u64 now)
{
	struct mesh_ct_entry *e = bpf_map_lookup_elem(&mesh_conntrack, key);

	if (!e || !ct_alive(e, now))
		return NULL;
	return e;
}

/* Does the packet an ICMP error quotes belong to a connection tracked at
 * this endpoint? The error travels against the quoted packet, so the
 * quoted packet went out in the opposite direction. */
static __always_inline struct mesh_ct_entry *ct_lookup_related(const struct mesh_pkt *p, __u8 direction,
								__u64 now)
{
	struct mesh_ct_key key = {
		/* quoted packet opened the connection (other direction) */
		.saddr = p->inner_saddr,
		.daddr = p->inner_daddr,
		.sport = p->inner_sport,
		.dport = p->inner_dport,
		.proto = p->inner_proto,
		.direction = ct_opposite(direction),
	};
	struct mesh_ct_entry *e = ct_find(&key, now);

	if (e)
		return e;
	/* quoted packet was a reply to a connection opened in `direction` */
	key.saddr = p->inner_daddr;
	key.daddr = p->inner_saddr;
	key.sport = p->inner_dport;
	key.dport = p->inner_sport;
	key.direction = direction;
	return ct_find(&key, now);
}

/*
 * Classifies `p` seen in `direction` at a local endpoint as NEW,
 * ESTABLISHED (same direction as the opener), REPLY or RELATED (an ICMP
 * error about a tracked connection). On a hit, *entry points at the
 * matching entry (for REPLY: the opener's entry, which carries the
 * reverse-NAT id).
 */
static __always_inline __u8 ct_lookup(const struct mesh_pkt *p, __u8 direction,
				      struct mesh_ct_entry **entry)
{
	struct mesh_ct_key key = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.direction = direction,
	};
	__u64 now = bpf_ktime_get_ns();
	struct mesh_ct_entry *e;

	*entry = NULL;
	if (p->icmp_err) {
		e = ct_lookup_related(p, direction, now);
		if (e) {
			*entry = e;
			return MESH_CT_RELATED;
		}
	}

	e = ct_find(&key, now);
	if (e) {
		if ((e->flags & MESH_CT_F_CLOSING) && ct_is_syn(p))
			return MESH_CT_NEW;
		ct_touch(e, p, now, 1);
		*entry = e;
		return MESH_CT_ESTABLISHED;
	}

	key.saddr = p->daddr;
	key.daddr = p->saddr;
	key.sport = p->dport;
	key.dport = p->sport;
	key.direction = ct_opposite(direction);
	e = ct_find(&key, now);
	if (e) {
		ct_touch(e, p, now, 0);
		*entry = e;
		return MESH_CT_REPLY;
	}
	return MESH_CT_NEW;
}

/* Is `p` (seen in `direction`) a reply to, or an ICMP error about, a
 * connection the local endpoint opened? Looks without touching. */
static __always_inline int ct_is_reply(const struct mesh_pkt *p, __u8 direction)
{
	struct mesh_ct_key key = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.proto = p->proto,
		.direction = ct_opposite(direction),
	};
	__u64 now = bpf_ktime_get_ns();

	if (p->icmp_err && ct_lookup_related(p, direction, now))
		return 1;
	return ct_find(&key, now) != NULL;
}

/* Records a newly allowed connection opened in `direction`. For a
 * connection to a service, `nat` holds the VIP the pod addressed. */
struct mesh_ct_nat {
	__u32 vip;
	__u16 port;
	__u16 rev_nat_id;
};

static __always_inline void ct_fill_new(struct mesh_ct_entry *e, const struct mesh_pkt *p, __u64 now)
{
	e->created_ns = now;
	e->last_seen_ns = now;
	e->packets = 1;
	e->bytes = p->len;
	e->src_identity = p->src_identity;
	if (p->proto == IPPROTO_TCP) {
		e->tcp_flags = p->tcp_flags;
		e->flags = ct_tcp_state(e->flags, p->tcp_flags, 1);
	}
	e->expires_ns = now + ct_lifetime_ns(p->proto, e->flags);
}

static __always_inline void ct_create(const struct mesh_pkt *p, __u8 direction,
				      const struct mesh_ct_nat *nat)
{
	struct mesh_ct_key key = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.direction = direction,
	};
	struct mesh_ct_entry e = {
		.nat_ip = nat ? nat->vip : 0,
		.nat_port = nat ? nat->port : 0,
		.rev_nat_id = nat ? nat->rev_nat_id : 0,
	};

	ct_fill_new(&e, p, bpf_ktime_get_ns());
	bpf_map_update_elem(&mesh_conntrack, &key, &e, BPF_ANY);
}

/* The live SERVICE entry of a pod's earlier packets to this VIP, if any
 * (counted and aged like any entry). The key is the tuple before DNAT. */
static __always_inline struct mesh_ct_entry *ct_lookup_service(const struct mesh_pkt *p)
{
	struct mesh_ct_key key = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.direction = MESH_DIR_SERVICE,
	};
	__u64 now = bpf_ktime_get_ns();
	struct mesh_ct_entry *e = ct_find(&key, now);

	if (!e)
		return NULL;
	if ((e->flags & MESH_CT_F_CLOSING) && ct_is_syn(p))
		return NULL;
	ct_touch(e, p, now, 1);
	return e;
}

static __always_inline void ct_create_service(const struct mesh_pkt *p, __u32 backend_ip,
					      __u16 backend_port, __u32 slot, __u16 rev_nat_id)
{
	struct mesh_ct_key key = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.direction = MESH_DIR_SERVICE,
	};
	struct mesh_ct_entry e = {
		.nat_ip = backend_ip,
		.nat_port = backend_port,
		.rev_nat_id = rev_nat_id,
		.backend_slot = slot,
		.flags = MESH_CT_F_SERVICE,
	};

	ct_fill_new(&e, p, bpf_ktime_get_ns());
	bpf_map_update_elem(&mesh_conntrack, &key, &e, BPF_ANY);
}

#endif /* MESH_CONNTRACK_H */
