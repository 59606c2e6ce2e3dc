/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * policy.h: may a new connection leave (egress) or reach (ingress) a local
 * endpoint?
 *
 * An endpoint no policy selects in a direction is allowed there; the agent
 * marks selected directions with MESH_EP_F_POLICY_{INGRESS,EGRESS}, after
 * which only rules in mesh_policy let traffic through (default deny).
 *
 * mesh_policy is an LPM trie over (identity, endpoint, direction, proto,
 * dport): a rule is L3-only (any protocol), one protocol on any port, or
 * one protocol on a port prefix (ranges are split into aligned prefixes by
 * the agent). Two lookups decide:
 *
 *   (peer identity, proto, dport)  -> its most specific rule
 *   (any identity,  proto, dport)  -> its most specific rule
 *
 * A deny answer from either wins; else an allow from either allows. The
 * agent writes every rule a deny of the same identity covers as a deny, so
 * the most specific answer is a deny whenever any matching rule is.
 * Replies and later packets of allowed connections never get here:
 * conntrack passes them.
 */
#ifndef MESH_POLICY_H
#define MESH_POLICY_H

#include "common.h"

#define MESH_POLICY_NO_MATCH 0
#define MESH_POLICY_ALLOW    1
#define MESH_POLICY_DENY     2

static __always_inline int policy_match(__u16 ep_id, __u8 direction, __u32 identity,
					__u16 dport, __u8 proto, __u32 bytes)
{
	struct mesh_policy_key key = {
		.prefixlen = MESH_POLICY_PREFIX_FULL,
		.identity = identity,
		.ep_id = ep_id,
		.direction = direction,
		.proto = proto,
		.dport = dport,
	};
	struct mesh_policy_entry *rule = bpf_map_lookup_elem(&mesh_policy, &key);

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
	int by_id, by_any = MESH_POLICY_NO_MATCH;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		dport = 0;

	by_id = policy_match(ep_id, direction, peer_identity, dport, proto, bytes);
	if (peer_identity != MESH_IDENTITY_ANY)
		by_any = policy_match(ep_id, direction, MESH_IDENTITY_ANY, dport, proto, bytes);

	if (by_id == MESH_POLICY_DENY || by_any == MESH_POLICY_DENY)
		return MESH_DROP_POLICY_DENY_RULE;
	if (by_id == MESH_POLICY_ALLOW || by_any == MESH_POLICY_ALLOW)
		return MESH_DROP_NONE;
	return MESH_DROP_POLICY_DENIED;
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
