// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * to-container: tc egress (clsact) of each pod's host-side lxc veth. Only
 * what the node's own stack routes into the pod passes here (the other
 * programs redirect straight into the pod's netns, skipping this hook):
 * connections the node opens (health checks, `lab exec` from the node,
 * host-network processes) and anything else the stack forwards to a pod.
 *
 * It decides:
 *   - who sent it: the ipcache identity of the source (world if unknown);
 *   - may it enter: traffic from this node (identity host, or an ipcache
 *     entry flagged LOCAL_NODE) is always allowed, like Cilium's
 *     allow-localhost; anyone else needs the pod's ingress policy;
 *   - and records the connection, so the pod's replies pass its egress
 *     policy in from-container as replies.
 *
 * Optional: without it, host-to-pod traffic is not policed and a pod's
 * replies to it meet its egress policy as new connections.
 */
#include "lib/common.h"
#include "lib/packet.h"
#include "lib/endpoint.h"
#include "lib/ipcache.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/lb.h"
#include "lib/flow.h"

static __always_inline int ipcache_is_this_node(const struct mesh_ipcache_info *info)
{
	return info && (info->identity == MESH_IDENTITY_HOST ||
			(info->flags & MESH_IPCACHE_F_LOCAL_NODE));
}

SEC("tc")
int mesh_to_container(struct __sk_buff *skb)
{
	const struct mesh_endpoint_info *ep;
	const struct mesh_ipcache_info *src;
	struct mesh_ct_entry *entry;
	struct mesh_pkt p = {};
	int ret;

	if (pkt_eth_proto(skb) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;

	pkt_init(skb, &p, MESH_DIR_INGRESS, MESH_PATH_STACK);
	ret = pkt_parse_ipv4(skb, &p);
	if (ret)
		return verdict_drop(skb, &p, ret);

	ep = endpoint_lookup(p.daddr);
	if (!ep)
		return TC_ACT_OK;
	p.dst_identity = ep->identity;
	p.ep_id = ep->ep_id;

	src = ipcache_lookup(p.saddr);
	p.src_identity = src ? src->identity : MESH_IDENTITY_WORLD;

	p.ct_state = ct_lookup(&p, MESH_DIR_INGRESS, &entry);
	if (p.ct_state == MESH_CT_NEW) {
		if (!ipcache_is_this_node(src)) {
			ret = policy_can_ingress(ep, p.src_identity, p.dport, p.proto, p.len);
			if (ret)
				return verdict_drop(skb, &p, ret);
		}
		ct_create(&p, MESH_DIR_INGRESS, NULL);
	} else if (p.ct_state == MESH_CT_RELATED) {
		/* An error from the stack's side (a router) about the pod's service
		 * connection names the backend: give the pod the VIP. */
		ret = lb_rev_nat_to_pod(skb, &p, entry);
		if (ret)
			return verdict_drop(skb, &p, ret);
	}
	return verdict_forward(skb, &p, TC_ACT_OK);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
