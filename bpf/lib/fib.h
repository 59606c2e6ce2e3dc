/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * fib.h: native routing. The node's own routing table decides where a pod
 * packet goes on the underlay (the agent installs routes to peer pod
 * CIDRs: via the peer node in the same VPC, via the VPC router beyond);
 * the neighbour subsystem fills in the MACs.
 */
#ifndef MESH_FIB_H
#define MESH_FIB_H

#include "common.h"
#include "packet.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* Returns the tc action, or a negative drop reason. */
static __always_inline int fib_redirect_native(struct __sk_buff *skb, const struct mesh_config *cfg,
					       const struct mesh_pkt *p)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	__u32 flags = 0;
	long rc;

	fib.family = AF_INET;
	fib.l4_protocol = p->proto;
	fib.sport = p->sport;
	fib.dport = p->dport;
	/* tot_len stays 0: the kernel then checks the MTU with
	 * is_skb_forwardable(), which understands GSO packets. */
	fib.ipv4_src = p->saddr;
	fib.ipv4_dst = p->daddr;
	if (cfg->netdev_ifindex) {
		/* An output lookup bound to the underlay device: no need for
		 * forwarding to be enabled on the lxc. */
		fib.ifindex = cfg->netdev_ifindex;
		flags = BPF_FIB_LOOKUP_OUTPUT;
	} else {
		fib.ifindex = p->ifindex;
	}

	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), flags);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (pkt_set_macs(skb, fib.dmac, fib.smac))
			return -MESH_DROP_WRITE_FAILED;
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib.ipv4_dst; /* the gateway, or the destination itself */
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	return -MESH_DROP_FIB_FAILED;
}

#endif /* MESH_FIB_H */
