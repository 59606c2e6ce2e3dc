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
 * Entries are never removed by the datapath: the LRU evicts cold ones and
 * the agent may age them out by last_seen_ns.
 */
#ifndef MESH_CONNTRACK_H
#define MESH_CONNTRACK_H

#include "common.h"
#include "packet.h"

static __always_inline __u8 ct_opposite(__u8 direction)
{
	return direction == MESH_DIR_EGRESS ? MESH_DIR_INGRESS : MESH_DIR_EGRESS;
}

static __always_inline void ct_touch(struct mesh_ct_entry *e, __u32 bytes)
{
	e->last_seen_ns = bpf_ktime_get_ns();
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, bytes);
}

/*
 * Classifies `p` seen in `direction` at a local endpoint as NEW,
 * ESTABLISHED (same direction as the opener) or REPLY. On a hit, *entry
 * points at the matching entry (for REPLY: the opener's entry, which
 * carries the reverse-NAT id).
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
	struct mesh_ct_entry *e;

	e = bpf_map_lookup_elem(&mesh_conntrack, &key);
	if (e) {
		ct_touch(e, p->len);
		*entry = e;
		return MESH_CT_ESTABLISHED;
	}

	key.saddr = p->daddr;
	key.daddr = p->saddr;
	key.sport = p->dport;
	key.dport = p->sport;
	key.direction = ct_opposite(direction);
	e = bpf_map_lookup_elem(&mesh_conntrack, &key);
	if (e) {
		ct_touch(e, p->len);
		if (!(e->flags & MESH_CT_F_SEEN_REPLY))
			e->flags |= MESH_CT_F_SEEN_REPLY;
		*entry = e;
		return MESH_CT_REPLY;
	}
	*entry = NULL;
	return MESH_CT_NEW;
}

/* Records a newly allowed connection opened in `direction`. For a
 * connection to a service, `nat` holds the VIP the pod addressed. */
struct mesh_ct_nat {
	__u32 vip;
	__u16 port;
	__u16 rev_nat_id;
};

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
	__u64 now = bpf_ktime_get_ns();
	struct mesh_ct_entry e = {
		.created_ns = now,
		.last_seen_ns = now,
		.packets = 1,
		.bytes = p->len,
		.nat_ip = nat ? nat->vip : 0,
		.nat_port = nat ? nat->port : 0,
		.rev_nat_id = nat ? nat->rev_nat_id : 0,
		.src_identity = p->src_identity,
	};

	bpf_map_update_elem(&mesh_conntrack, &key, &e, BPF_ANY);
}

/* The backend a pod's earlier packets to this VIP went to, if any. The
 * key is the tuple before DNAT. */
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
	struct mesh_ct_entry *e = bpf_map_lookup_elem(&mesh_conntrack, &key);

	if (e)
		ct_touch(e, p->len);
	return e;
}

static __always_inline void ct_create_service(const struct mesh_pkt *p, __u32 backend_ip,
					      __u16 backend_port, __u16 rev_nat_id)
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
	struct mesh_ct_entry e = {
		.created_ns = now,
		.last_seen_ns = now,
		.packets = 1,
		.bytes = p->len,
		.nat_ip = backend_ip,
		.nat_port = backend_port,
		.rev_nat_id = rev_nat_id,
		.src_identity = p->src_identity,
		.flags = MESH_CT_F_SERVICE,
	};

	bpf_map_update_elem(&mesh_conntrack, &key, &e, BPF_ANY);
}

#endif /* MESH_CONNTRACK_H */
