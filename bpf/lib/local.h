/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * local.h: deliver a packet to a pod on this node.
 *
 * Shared by all three entry programs: conntrack in the ingress direction
 * of the destination endpoint, its ingress policy for new connections,
 * reverse NAT for replies of service connections, then the MACs the pod
 * expects (lxc -> pod) and a redirect straight into the pod's netns
 * (bpf_redirect_peer: the packet skips the node's stack and the lxc's
 * own transmit path).
 */
#ifndef MESH_LOCAL_H
#define MESH_LOCAL_H

#include <linux/if_packet.h>
#include "common.h"
#include "packet.h"
#include "conntrack.h"
#include "policy.h"
#include "lb.h"
#include "flow.h"

/* p->src_identity and p->path must be set by the caller. Replies and ICMP
 * errors of the pod's service connections are reverse-NATed to the VIP. */
static __always_inline int local_deliver(struct __sk_buff *skb, struct mesh_pkt *p,
					 const struct mesh_endpoint_info *ep)
{
	struct mesh_ct_entry *entry;
	int ret;

	p->direction = MESH_DIR_INGRESS;
	p->dst_identity = ep->identity;
	p->ep_id = ep->ep_id;

	p->ct_state = ct_lookup(p, MESH_DIR_INGRESS, &entry);
	if (p->ct_state == MESH_CT_NEW) {
		ret = policy_can_ingress(ep, p->src_identity, p->dport, p->proto, p->len);
		if (ret)
			return verdict_drop(skb, p, ret);
		ct_create(p, MESH_DIR_INGRESS, NULL);
	} else {
		ret = lb_rev_nat_to_pod(skb, p, entry);
		if (ret)
			return verdict_drop(skb, p, ret);
	}

	ret = pkt_set_macs(skb, ep->pod_mac, ep->lxc_mac);
	if (ret)
		return verdict_drop(skb, p, ret);
	/* Frames from the tunnel or the underlay were addressed to another
	 * MAC; the pod's stack must take this one as its own. */
	bpf_skb_change_type(skb, PACKET_HOST);

	ret = bpf_redirect_peer(ep->ifindex, 0);
	if (ret != TC_ACT_REDIRECT)
		return verdict_drop(skb, p, MESH_DROP_REDIRECT_FAILED);
	return verdict_forward(skb, p, ret);
}

#endif /* MESH_LOCAL_H */
