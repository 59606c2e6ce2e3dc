/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ipcache.h: which identity an address has and which node hosts it
 * (longest-prefix match over every pod and node the agent knows).
 */
#ifndef MESH_IPCACHE_H
#define MESH_IPCACHE_H

#include "common.h"

/* Matched bits ahead of the address: cluster id (16) + pad (16). */
#define MESH_IPCACHE_PREFIX_BASE 32

static __always_inline const struct mesh_ipcache_info *ipcache_lookup(__u32 ip4)
{
	struct mesh_ipcache_key key = {
		.prefixlen = MESH_IPCACHE_PREFIX_BASE + 32,
		.cluster_id = MESH_CLUSTER_ANY,
		.ip4 = ip4,
	};

	return bpf_map_lookup_elem(&mesh_ipcache, &key);
}

/* Identity of an address that is not a local endpoint; unknown = world. */
static __always_inline __u32 ipcache_identity_of(__u32 ip4)
{
	const struct mesh_ipcache_info *info = ipcache_lookup(ip4);

	return info ? info->identity : MESH_IDENTITY_WORLD;
}

/* Is the address hosted by another node (so it must be tunnelled or
 * routed there)? Without config we cannot tell our own address apart and
 * say yes; the caller then drops with NO_CONFIG. */
static __always_inline int ipcache_is_remote(const struct mesh_ipcache_info *info,
					     const struct mesh_config *cfg)
{
	if (!info || !info->tunnel_ip)
		return 0;
	return !cfg || info->tunnel_ip != cfg->node_ip;
}

#endif /* MESH_IPCACHE_H */
