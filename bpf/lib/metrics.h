/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * metrics.h: per-CPU packet/byte counters by (drop reason, direction).
 * Forwarded packets count under MESH_DROP_NONE.
 */
#ifndef MESH_METRICS_H
#define MESH_METRICS_H

#include "common.h"

static __always_inline void metrics_count(__u8 reason, __u8 direction, __u32 bytes)
{
	struct mesh_metrics_key key = { .reason = reason, .direction = direction };
	struct mesh_metrics_value *val;

	val = bpf_map_lookup_elem(&mesh_metrics, &key);
	if (val) {
		/* Per-CPU slot: no other CPU writes it. */
		val->packets++;
		val->bytes += bytes;
		return;
	}
	struct mesh_metrics_value init = { .packets = 1, .bytes = bytes };

	bpf_map_update_elem(&mesh_metrics, &key, &init, BPF_NOEXIST);
}

#endif /* MESH_METRICS_H */
