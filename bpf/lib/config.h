/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * config.h: this node's settings, written once by the agent into the
 * single entry of mesh_config.
 */
#ifndef MESH_CONFIG_H
#define MESH_CONFIG_H

#include "common.h"

/* NULL until the agent has written the entry (node_ip 0 means unset). */
static __always_inline const struct mesh_config *config_get(void)
{
	__u32 zero = 0;
	const struct mesh_config *cfg = bpf_map_lookup_elem(&mesh_config, &zero);

	if (!cfg || !cfg->node_ip)
		return NULL;
	return cfg;
}

#endif /* MESH_CONFIG_H */
