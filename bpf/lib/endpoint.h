/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * endpoint.h: is this address a pod on this node?
 */
#ifndef MESH_ENDPOINT_H
#define MESH_ENDPOINT_H

#include "common.h"

static __always_inline const struct mesh_endpoint_info *endpoint_lookup(__u32 ip4)
{
	struct mesh_endpoint_key key = { .ip4 = ip4, .cluster_id = MESH_CLUSTER_ANY };

	return bpf_map_lookup_elem(&mesh_endpoints, &key);
}

#endif /* MESH_ENDPOINT_H */
