// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * from-container: tc ingress (clsact) of each pod's host-side lxc veth, so
 * it sees every packet a pod sends.
 *
 * It decides, in order:
 *   1. who sent it: the endpoint owning the source IP, which must sit
 *      behind this lxc (else SOURCE_SPOOFED / UNKNOWN_SOURCE);
 *   2. service: a TCP/UDP packet to a ClusterIP is DNATed to a backend
 *      that stays fixed for the connection (NO_BACKEND when there is none);
 *   3. who receives it: a local endpoint, else the ipcache (prefix ->
 *      identity and hosting node), else world;
 *   4. may it leave: conntrack passes established connections and replies,
 *      a new connection needs the pod's egress policy;
 *   5. where it goes:
 *        local pod   -> the destination's ingress policy, then straight into
 *                       its netns (redirect to the lxc's peer);
 *        remote pod  -> tunnel (VXLAN, VNI = our identity) or native
 *                       (FIB + neighbour redirect on the underlay), as
 *                       mesh_nodes says for the hosting node;
 *        anything else (world, this node, other nodes) -> the node's stack.
 *
 * Non-IPv4 frames (ARP for the gateway, IPv6) go to the node's stack
 * untouched and are not reported.
 */
#include "lib/common.h"
#include "lib/packet.h"
#include "lib/config.h"
#include "lib/endpoint.h"
#include "lib/ipcache.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/lb.h"
#include "lib/flow.h"
#include "lib/local.h"
#include "lib/tunnel.h"
#include "lib/fib.h"

/* Where the packet leaves to once egress is allowed. */
static __always_inline int route_to_remote(struct __sk_buff *skb, struct mesh_pkt *p,
					   const struct mesh_config *cfg,
					   const struct mesh_ipcache_info *dst)
{
	int ret;

	p->node_ip = dst->tunnel_ip;
	if (tunnel_should_encap(cfg, dst->tunnel_ip)) {
		p->path = MESH_PATH_TUNNEL;
		ret = tunnel_encap_and_redirect(skb, cfg, dst->tunnel_ip, p->src_identity);
	} else {
		p->path = MESH_PATH_NATIVE;
		ret = fib_redirect_native(skb, cfg, p);
	}
	if (ret < 0)
		return verdict_drop(skb, p, -ret);
	if (ret != TC_ACT_REDIRECT)
		return verdict_drop(skb, p, MESH_DROP_REDIRECT_FAILED);
	return verdict_forward(skb, p, ret);
}

SEC("tc")
int mesh_from_container(struct __sk_buff *skb)
{
	const struct mesh_endpoint_info *src_ep, *dst_ep;
	const struct mesh_ipcache_info *dst_info = NULL;
	const struct mesh_config *cfg;
	struct mesh_ct_entry *entry;
	struct mesh_pkt p = {};
	struct mesh_ct_nat nat = {};
	int ret;

	if (pkt_eth_proto(skb) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;

	pkt_init(skb, &p, MESH_DIR_EGRESS, MESH_PATH_NONE);
	ret = pkt_parse_ipv4(skb, &p);
	if (ret)
		return verdict_drop(skb, &p, ret);

	src_ep = endpoint_lookup(p.saddr);
	if (!src_ep)
		return verdict_drop(skb, &p, MESH_DROP_UNKNOWN_SOURCE);
	p.src_identity = src_ep->identity;
	p.ep_id = src_ep->ep_id;
	if (src_ep->ifindex != p.ifindex)
		return verdict_drop(skb, &p, MESH_DROP_SOURCE_SPOOFED);

	cfg = config_get();
	ret = lb_translate_service(skb, &p, &nat);
	if (ret)
		return verdict_drop(skb, &p, ret);

	dst_ep = endpoint_lookup(p.daddr);
	if (dst_ep) {
		p.dst_identity = dst_ep->identity;
	} else {
		dst_info = ipcache_lookup(p.daddr);
		p.dst_identity = dst_info ? dst_info->identity : MESH_IDENTITY_WORLD;
	}

	p.ct_state = ct_lookup(&p, MESH_DIR_EGRESS, &entry);
	if (p.ct_state == MESH_CT_NEW) {
		ret = policy_can_egress(src_ep, p.dst_identity, p.dport, p.proto, p.len);
		if (ret)
			return verdict_drop(skb, &p, ret);
		ct_create(&p, MESH_DIR_EGRESS, nat.rev_nat_id ? &nat : NULL);
	}

	if (!dst_ep && !ipcache_is_remote(dst_info, cfg)) {
		/* Not a pod of the mesh on another node (world, a node address,
		 * or a local address the endpoint map does not know yet): the
		 * node's stack routes it. */
		p.path = MESH_PATH_STACK;
		return verdict_forward(skb, &p, TC_ACT_OK);
	}

	ret = pkt_dec_ttl(skb);
	if (ret)
		return verdict_drop(skb, &p, ret);

	if (dst_ep) {
		/* Report leaving the source, then judge arrival at the destination. */
		p.path = MESH_PATH_LOCAL;
		verdict_forward(skb, &p, TC_ACT_OK);
		return local_deliver(skb, &p, dst_ep);
	}
	if (!cfg || !dst_info)
		return verdict_drop(skb, &p, MESH_DROP_NO_CONFIG);
	return route_to_remote(skb, &p, cfg, dst_info);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
