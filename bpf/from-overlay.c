// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * from-overlay: tc ingress (clsact) of the node's VXLAN device, created in
 * collect-metadata mode (`ip link add … type vxlan external dstport 8472`),
 * so it sees every decapsulated packet another node tunnelled to us.
 *
 * It decides:
 *   - may the sender speak: the outer source must be a node in mesh_nodes
 *     (else TUNNEL_SOURCE_UNKNOWN: a pod or any host can reach UDP 8472 and
 *     make up a VNI), and the VNI must be a reserved identity or one of
 *     that node's cluster (else IDENTITY_MISMATCH);
 *   - who sent it: then the VNI is the sender's security identity (a zero
 *     VNI falls back to the ipcache, then world);
 *   - may it enter: the destination endpoint's ingress policy for new
 *     connections (conntrack passes replies and established ones, and
 *     reverse-NATs replies of service connections);
 *   - delivery: straight into the destination pod's netns. A packet for an
 *     address that is no pod of this node is dropped (UNKNOWN_DEST).
 *
 * Non-IPv4 inner frames are left to the stack (the device has no address,
 * so they die there).
 */
#include "lib/common.h"
#include "lib/packet.h"
#include "lib/endpoint.h"
#include "lib/ipcache.h"
#include "lib/flow.h"
#include "lib/local.h"
#include "lib/tunnel.h"

SEC("tc")
int mesh_from_overlay(struct __sk_buff *skb)
{
	const struct mesh_endpoint_info *ep;
	struct mesh_pkt p = {};
	__u32 node_ip = 0, identity = 0;
	int ret;

	if (pkt_eth_proto(skb) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;

	pkt_init(skb, &p, MESH_DIR_INGRESS, MESH_PATH_TUNNEL);
	ret = pkt_parse_ipv4(skb, &p);
	if (ret)
		return verdict_drop(skb, &p, ret);

	ret = tunnel_read_key(skb, &node_ip, &identity);
	if (ret)
		return verdict_drop(skb, &p, ret);
	p.node_ip = node_ip;
	p.src_identity = identity;
	ret = tunnel_check_sender(node_ip, identity);
	if (ret)
		return verdict_drop(skb, &p, ret);
	if (!identity)
		p.src_identity = ipcache_identity_of(p.saddr);

	ep = endpoint_lookup(p.daddr);
	if (!ep)
		return verdict_drop(skb, &p, MESH_DROP_UNKNOWN_DEST);
	return local_deliver(skb, &p, ep);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
