/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps for bench/maps.ts, built from the same key and value structs as mesh_ipcache
 * (lib/common.h), sized for 100k entries: the real mesh_ipcache holds MESH_MAX_IPCACHE
 * (65536) at most.
 *
 *   bench_ipcache  LPM trie, no prealloc: mesh_ipcache with a larger max_entries
 *   bench_hash     plain (preallocated) hash, same key, value and size: the baseline
 *
 * Neither is pinned; the bench drops them with the object.
 */
#define MESH_LAYOUT_ONLY
#include "lib/common.h"

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define BENCH_MAX_ENTRIES 131072

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, BENCH_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mesh_ipcache_key);
	__type(value, struct mesh_ipcache_info);
} bench_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BENCH_MAX_ENTRIES);
	__type(key, struct mesh_ipcache_key);
	__type(value, struct mesh_ipcache_info);
} bench_hash SEC(".maps");

/* Never attached: it only gives the object a program that uses both maps. */
SEC("tc")
int bench_maps_touch(struct __sk_buff *skb)
{
	struct mesh_ipcache_key key = {};

	bpf_map_lookup_elem(&bench_ipcache, &key);
	bpf_map_lookup_elem(&bench_hash, &key);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
