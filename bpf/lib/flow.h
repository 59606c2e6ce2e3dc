/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * flow.h: every verdict ends here. verdict_forward/verdict_drop count the
 * packet in mesh_metrics, emit a struct mesh_flow_event into the mesh_flows
 * ring buffer and hand back the tc action to return.
 */
#ifndef MESH_FLOW_H
#define MESH_FLOW_H

#include "common.h"
#include "packet.h"
#include "metrics.h"

/* Should this verdict be reported, given the node's flow settings? */
static __always_inline int flow_should_emit(const struct mesh_pkt *p, __u8 verdict)
{
	__u32 zero = 0;
	const struct mesh_config *cfg = bpf_map_lookup_elem(&mesh_config, &zero);

	if (!cfg)
		return 1;
	if (cfg->flags & MESH_CFG_F_NO_FLOWS)
		return 0;
	if ((cfg->flags & MESH_CFG_F_FLOWS_NEW_ONLY) && verdict == MESH_VERDICT_FORWARDED &&
	    p->ct_state != MESH_CT_NEW)
		return 0;
	return 1;
}

static __always_inline void flow_emit(struct __sk_buff *skb, const struct mesh_pkt *p,
				      __u8 verdict, __u8 reason)
{
	struct mesh_flow_event *ev;

	if (!flow_should_emit(p, verdict))
		return;
	/* A full ring loses the event, never the packet. */
	ev = bpf_ringbuf_reserve(&mesh_flows, sizeof(*ev), 0);
	if (!ev)
		return;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->saddr = p->saddr;
	ev->daddr = p->daddr;
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->proto = p->proto;
	ev->verdict = verdict;
	ev->drop_reason = reason;
	ev->direction = p->direction;
	ev->src_identity = p->src_identity;
	ev->dst_identity = p->dst_identity;
	ev->ifindex = p->ifindex;
	ev->path = p->path;
	ev->ct_state = p->ct_state;
	ev->ep_id = p->ep_id;
	ev->pkt_len = p->len;
	ev->node_ip = p->node_ip;
	bpf_ringbuf_submit(ev, 0);
}

/* Records a forwarding verdict; returns `action` (TC_ACT_OK or a redirect). */
static __always_inline int verdict_forward(struct __sk_buff *skb, const struct mesh_pkt *p, int action)
{
	metrics_count(MESH_DROP_NONE, p->direction, p->len);
	flow_emit(skb, p, MESH_VERDICT_FORWARDED, MESH_DROP_NONE);
	return action;
}

/* Records a drop; returns TC_ACT_SHOT. */
static __always_inline int verdict_drop(struct __sk_buff *skb, const struct mesh_pkt *p, __u8 reason)
{
	metrics_count(reason, p->direction, p->len);
	flow_emit(skb, p, MESH_VERDICT_DROPPED, reason);
	return TC_ACT_SHOT;
}

#endif /* MESH_FLOW_H */
