/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * policy.h: may a new connection leave (egress) or reach (ingress) a local
 * endpoint?
 *
 * An endpoint no policy selects in a direction is allowed there; the agent
 * marks selected directions with MESH_EP_F_POLICY_{INGRESS,EGRESS}, after
 * which only rules in mesh_policy let traffic through (default deny).
 * Rules are looked up from the most to the least specific:
 *
 *   (identity, dport, proto)   (identity, 0, proto)   (identity, 0, 0)
 *   (any,      dport, proto)   (any,      0, proto)   (any,      0, 0)
 *
 * and a deny rule among the matches wins over allows. Replies and later
 * packets of allowed connections never get here: conntrack passes them.
 */
#ifndef MESH_POLICY_H
#define MESH_POLICY_H

#include "common.h"

#define MESH_POLICY_NO_MATCH 0
#define MESH_POLICY_ALLOW    1
#define MESH_POLICY_DENY     2

static __always_inline int policy_match(struct mesh_policy_key *key, __u32 bytes)
{
	struct mesh_policy_entry *rule = bpf_map_lookup_elem(&mesh_policy, key);

	if (!rule)
		return MESH_POLICY_NO_MATCH;
	__sync_fetch_and_add(&rule->packets, 1);
	__sync_fetch_and_add(&rule->bytes, bytes);
	return (rule->flags & MESH_POLICY_F_DENY) ? MESH_POLICY_DENY : MESH_POLICY_ALLOW;
}

/* Returns MESH_DROP_NONE when allowed, else the drop reason. dport in
 * network order; it is ignored for protocols without ports. */
static __always_inline int policy_verdict(__u16 ep_id, __u8 direction, __u32 peer_identity,
					  __u16 dport, __u8 proto, __u32 bytes)
{
	struct mesh_policy_key key = { .ep_id = ep_id, .direction = direction };
	int allowed = 0, denied = 0, m;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		dport = 0;

#define MESH_POLICY_TRY(id, port, l4)                        \
	do {                                                 \
		key.identity = (id);                         \
		key.dport = (port);                          \
		key.proto = (l4);                            \
		m = policy_match(&key, bytes);               \
		allowed |= m == MESH_POLICY_ALLOW;           \
		denied |= m == MESH_POLICY_DENY;             \
	} while (0)

	if (dport)
		MESH_POLICY_TRY(peer_identity, dport, proto);
	MESH_POLICY_TRY(peer_identity, 0, proto);
	MESH_POLICY_TRY(peer_identity, 0, 0);
	if (dport)
		MESH_POLICY_TRY(MESH_IDENTITY_ANY, dport, proto);
	MESH_POLICY_TRY(MESH_IDENTITY_ANY, 0, proto);
	MESH_POLICY_TRY(MESH_IDENTITY_ANY, 0, 0);
#undef MESH_POLICY_TRY

	if (denied)
		return MESH_DROP_POLICY_DENY_RULE;
	return allowed ? MESH_DROP_NONE : MESH_DROP_POLICY_DENIED;
}

/* May the local endpoint `ep` open a connection to `peer_identity`? */
static __always_inline int policy_can_egress(const struct mesh_endpoint_info *ep, __u32 peer_identity,
					     __u16 dport, __u8 proto, __u32 bytes)
{
	if (!(ep->flags & MESH_EP_F_POLICY_EGRESS))
		return MESH_DROP_NONE;
	return policy_verdict(ep->ep_id, MESH_DIR_EGRESS, peer_identity, dport, proto, bytes);
}

/* May `peer_identity` open a connection to the local endpoint `ep`? */
static __always_inline int policy_can_ingress(const struct mesh_endpoint_info *ep, __u32 peer_identity,
					      __u16 dport, __u8 proto, __u32 bytes)
{
	if (!(ep->flags & MESH_EP_F_POLICY_INGRESS))
		return MESH_DROP_NONE;
	return policy_verdict(ep->ep_id, MESH_DIR_INGRESS, peer_identity, dport, proto, bytes);
}

#endif /* MESH_POLICY_H */
