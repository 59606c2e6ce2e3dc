/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tunnel.h: how to reach a peer node (tunnel or native), and VXLAN
 * encapsulation.
 *
 * The agent decides per peer node and writes it to mesh_nodes:
 * MESH_NODE_F_DIRECT = route natively (native mode, or hybrid and the peer
 * shares our VPC), otherwise tunnel. A node the agent has not written yet
 * follows this node's routing mode (native -> direct, else tunnel); every
 * node accepts tunnel traffic, so tunnelling is always safe.
 *
 * Encapsulation uses the collect-metadata VXLAN device: the tunnel key
 * carries the outer destination (peer node) and the VNI, which is the
 * source pod's security identity (24 bits), so the receiver learns it
 * without an ipcache lookup.
 */
#ifndef MESH_TUNNEL_H
#define MESH_TUNNEL_H

#include "common.h"
#include "packet.h"

#define MESH_TUNNEL_TTL 64

/* The peer node with this underlay address, or NULL. */
static __always_inline const struct mesh_node_info *node_lookup(__u32 node_ip)
{
	struct mesh_node_key key = { .ip4 = node_ip };

	return bpf_map_lookup_elem(&mesh_nodes, &key);
}

static __always_inline int tunnel_should_encap(const struct mesh_config *cfg, __u32 node_ip)
{
	const struct mesh_node_info *node = node_lookup(node_ip);

	if (node)
		return !(node->flags & MESH_NODE_F_DIRECT);
	return cfg->routing_mode != MESH_ROUTING_NATIVE;
}

/* Sets the tunnel key and redirects to the VXLAN device. Returns the tc
 * action, or a negative drop reason. */
static __always_inline int tunnel_encap_and_redirect(struct __sk_buff *skb, const struct mesh_config *cfg,
						     __u32 node_ip, __u32 src_identity)
{
	struct bpf_tunnel_key key = {};

	if (!cfg->vxlan_ifindex)
		return -MESH_DROP_NO_CONFIG;
	key.remote_ipv4 = bpf_ntohl(node_ip); /* the helper takes host order */
	key.tunnel_id = src_identity & MESH_IDENTITY_MASK;
	key.tunnel_ttl = MESH_TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return -MESH_DROP_WRITE_FAILED;
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

/* Reads the tunnel key of a decapsulated packet: the sender's node and the
 * source identity (VNI). Returns 0 or a drop reason. */
static __always_inline int tunnel_read_key(struct __sk_buff *skb, __u32 *node_ip, __u32 *identity)
{
	struct bpf_tunnel_key key = {};

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return MESH_DROP_NO_TUNNEL_KEY;
	*node_ip = bpf_htonl(key.remote_ipv4);
	*identity = key.tunnel_id & MESH_IDENTITY_MASK;
	return 0;
}

/*
 * May the node at outer source `node_ip` speak for `identity`? Only known
 * nodes send tunnel traffic, and a node speaks only for identities of its
 * own cluster (bits 16-23) or reserved ones (< 256, no cluster bits).
 * Returns 0 or a drop reason.
 */
static __always_inline int tunnel_check_sender(__u32 node_ip, __u32 identity)
{
	const struct mesh_node_info *node = node_lookup(node_ip);

	if (!node)
		return MESH_DROP_TUNNEL_SOURCE_UNKNOWN;
	if (identity >= MESH_IDENTITY_RESERVED_MAX &&
	    ((identity >> MESH_IDENTITY_CLUSTER_SHIFT) & MESH_IDENTITY_CLUSTER_MASK) != node->cluster_id)
		return MESH_DROP_IDENTITY_MISMATCH;
	return 0;
}

#endif /* MESH_TUNNEL_H */
