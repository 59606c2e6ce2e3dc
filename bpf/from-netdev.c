// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * from-netdev: tc ingress (clsact) of the node's underlay device (eth0).
 *
 * It only takes packets addressed to a pod of this node: natively routed
 * pod traffic from other nodes (and anything else the underlay sends to a
 * local pod IP). For those it decides:
 *   - may it come natively: only from a direct-routed peer (the source's
 *     ipcache entry names a node whose mesh_nodes entry has DIRECT), from a
 *     node's own address, or as a reply to (or ICMP error about) a
 *     connection the pod opened; anything else is dropped NOT_DIRECT_ROUTED,
 *     since in tunnel mode any underlay host could claim a pod's address;
 *   - who sent it: the ipcache identity of the source address (world if
 *     unknown), since native routing carries no identity;
 *   - may it enter: the destination endpoint's ingress policy for new
 *     connections, conntrack for the rest (with reverse NAT of replies);
 *   - delivery: straight into the pod's netns.
 *
 * Everything else (tunnel packets, traffic for the node itself, ARP) goes
 * on to the stack untouched and unreported.
 */
#include "lib/common.h"
#include "lib/packet.h"
#include "lib/endpoint.h"
#include "lib/ipcache.h"
#include "lib/flow.h"
#include "lib/local.h"
#include "lib/tunnel.h"
#include "lib/conntrack.h"

/* Is the source of a native packet one that may route to our pods? */
static __always_inline int native_source_trusted(const struct mesh_pkt *p,
						 const struct mesh_ipcache_info *src)
{
	const struct mesh_node_info *node;

	if (node_lookup(p->saddr))
		return 1; /* a node's own stack (health checks, host network) */
	if (src && src->tunnel_ip) {
		node = node_lookup(src->tunnel_ip);
		if (node && (node->flags & MESH_NODE_F_DIRECT))
			return 1;
	}
	return ct_is_reply(p, MESH_DIR_INGRESS);
}

SEC("tc")
int mesh_from_netdev(struct __sk_buff *skb)
{
	const struct mesh_endpoint_info *ep;
	const struct mesh_ipcache_info *src;
	struct mesh_pkt p = {};
	__u32 daddr;
	int ret;

	if (pkt_eth_proto(skb) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, MESH_IP_DADDR_OFF, &daddr, sizeof(daddr)) < 0)
		return TC_ACT_OK;
	ep = endpoint_lookup(daddr);
	if (!ep)
		return TC_ACT_OK;

	pkt_init(skb, &p, MESH_DIR_INGRESS, MESH_PATH_NATIVE);
	ret = pkt_parse_ipv4(skb, &p);
	if (ret)
		return verdict_drop(skb, &p, ret);

	src = ipcache_lookup(p.saddr);
	if (src) {
		p.src_identity = src->identity;
		p.node_ip = src->tunnel_ip;
	} else {
		p.src_identity = MESH_IDENTITY_WORLD;
	}
	if (!native_source_trusted(&p, src)) {
		p.dst_identity = ep->identity;
		p.ep_id = ep->ep_id;
		return verdict_drop(skb, &p, MESH_DROP_NOT_DIRECT_ROUTED);
	}
	return local_deliver(skb, &p, ep);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
