/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb.h: ClusterIP load balancing for TCP and UDP.
 *
 *   mesh_services {vip, port, proto} -> {count, rev_nat_id}
 *   mesh_backends {rev_nat_id, slot 1..count} -> {ip, port}
 *   mesh_revnat   {rev_nat_id} -> {vip, port}
 *
 * A pod's first packet to a VIP picks a backend at random and records the
 * choice (slot, ip, port) in a SERVICE conntrack entry (tuple before DNAT),
 * so the rest of the connection sticks to it as long as that slot still
 * holds that backend: once the agent removes it (count lowered, slot
 * rewritten) the next packet picks again, so a client is moved to a live
 * backend (a TCP one resets it) instead of talking into a void. The egress
 * conntrack entry of the translated tuple carries rev_nat_id and the VIP;
 * replies matching it get their source rewritten back to the VIP before
 * they reach the pod.
 */
#ifndef MESH_LB_H
#define MESH_LB_H

#include "common.h"
#include "packet.h"
#include "conntrack.h"

static __always_inline const struct mesh_service_info *lb_lookup_service(const struct mesh_pkt *p)
{
	struct mesh_service_key key = { .vip = p->daddr, .dport = p->dport, .proto = p->proto };

	/* TCP/UDP only; later fragments carry their first fragment's ports. */
	if (!p->has_ports && !(p->is_frag && (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)))
		return NULL;
	return bpf_map_lookup_elem(&mesh_services, &key);
}

/* The port a backend takes traffic on: its own, or the service's. */
static __always_inline __u16 lb_backend_port(const struct mesh_backend_info *be, const struct mesh_pkt *p)
{
	return be->port ? be->port : p->dport;
}

/* Picks a backend slot in 1..count. Returns the backend (and *slot) or NULL. */
static __always_inline const struct mesh_backend_info *
lb_select_backend(const struct mesh_service_info *svc, __u32 *slot)
{
	struct mesh_backend_key key = { .rev_nat_id = svc->rev_nat_id };
	__u32 count = svc->count;

	if (count == 0 || count > MESH_MAX_SERVICE_BACKENDS)
		return NULL;
	key.slot = (bpf_get_prandom_u32() % count) + 1;
	*slot = key.slot;
	return bpf_map_lookup_elem(&mesh_backends, &key);
}

/* Does the backend a SERVICE entry recorded still serve the service, in
 * the same slot? */
static __always_inline int lb_backend_still_valid(const struct mesh_service_info *svc,
						  const struct mesh_ct_entry *sct,
						  const struct mesh_pkt *p)
{
	struct mesh_backend_key key = { .rev_nat_id = svc->rev_nat_id, .slot = sct->backend_slot };
	const struct mesh_backend_info *be;

	if (sct->rev_nat_id != svc->rev_nat_id || key.slot == 0 || key.slot > svc->count)
		return 0;
	be = bpf_map_lookup_elem(&mesh_backends, &key);
	return be && be->ip4 == sct->nat_ip && lb_backend_port(be, p) == sct->nat_port;
}

/*
 * If `p` goes to a service VIP, translates it to a backend (rewriting the
 * packet and `p`) and fills *nat with the VIP (nat->rev_nat_id stays 0
 * when no service matched). Returns 0 or a drop reason.
 */
static __always_inline int lb_translate_service(struct __sk_buff *skb, struct mesh_pkt *p,
						struct mesh_ct_nat *nat)
{
	const struct mesh_service_info *svc;
	const struct mesh_backend_info *be;
	struct mesh_ct_entry *sct;
	__u32 backend_ip, slot = 0;
	__u16 backend_port;
	int ret;

	nat->rev_nat_id = 0;
	svc = lb_lookup_service(p);
	if (!svc)
		return 0;
	if (svc->count == 0)
		return MESH_DROP_NO_BACKEND;

	sct = ct_lookup_service(p);
	if (sct && lb_backend_still_valid(svc, sct, p)) {
		backend_ip = sct->nat_ip;
		backend_port = sct->nat_port;
	} else {
		be = lb_select_backend(svc, &slot);
		if (!be)
			return MESH_DROP_BACKEND_INVALID;
		backend_ip = be->ip4;
		backend_port = lb_backend_port(be, p);
		ct_create_service(p, backend_ip, backend_port, slot, svc->rev_nat_id);
	}
	nat->vip = p->daddr;
	nat->port = p->dport;
	nat->rev_nat_id = svc->rev_nat_id;

	ret = pkt_rewrite_addr(skb, p, MESH_IP_DADDR_OFF, p->daddr, backend_ip);
	if (ret)
		return ret;
	ret = pkt_rewrite_port(skb, p, 1, p->dport, backend_port);
	if (ret)
		return ret;
	p->daddr = backend_ip;
	p->dport = backend_port;
	return 0;
}

/*
 * A reply of a translated connection (`entry` is the opener's egress
 * entry): rewrite its source back to the VIP the pod talked to. mesh_revnat
 * is authoritative; the VIP recorded in the entry covers a service the
 * agent already removed while the connection still runs.
 */
static __always_inline int lb_rev_nat(struct __sk_buff *skb, struct mesh_pkt *p,
				      const struct mesh_ct_entry *entry)
{
	struct mesh_revnat_key key = { .rev_nat_id = entry->rev_nat_id };
	const struct mesh_revnat_info *rn;
	__u32 vip = entry->nat_ip;
	__u16 port = entry->nat_port;
	int ret;

	rn = bpf_map_lookup_elem(&mesh_revnat, &key);
	if (rn) {
		vip = rn->vip;
		port = rn->port;
	}
	if (!vip)
		return MESH_DROP_CT_INVALID;
	ret = pkt_rewrite_addr(skb, p, MESH_IP_SADDR_OFF, p->saddr, vip);
	if (ret)
		return ret;
	ret = pkt_rewrite_port(skb, p, 0, p->sport, port);
	if (ret)
		return ret;
	p->saddr = vip;
	p->sport = port;
	return 0;
}

/*
 * An ICMP error about a translated connection (`entry` is the pod's egress
 * entry, keyed with the backend): the quoted packet went to the backend, but
 * the pod's socket knows the VIP. Rewrite the quoted destination (address,
 * its IP checksum, port) and, when the backend itself sent the error, the
 * outer source, so the pod's stack finds the socket (PMTU, ECONNREFUSED).
 *
 *   outer IP | ICMP type code csum .... | quoted IP (daddr) | quoted L4 (dport)
 *
 * The quoted IP header's checksum moves with its address, so its bytes keep
 * their sum and the ICMP checksum only follows the port. The quoted L4
 * checksum is left alone: receivers do not verify it.
 */
static __always_inline int lb_rev_nat_icmp_error(struct __sk_buff *skb, struct mesh_pkt *p,
						 const struct mesh_ct_entry *entry)
{
	struct mesh_revnat_key key = { .rev_nat_id = entry->rev_nat_id };
	const struct mesh_revnat_info *rn;
	__u32 inner_ip_off = p->l4_off + MESH_ICMP_ERR_HLEN;
	__u32 icmp_csum_off = p->l4_off + 2;
	__u32 vip = entry->nat_ip, backend = p->inner_daddr;
	__u16 port = entry->nat_port, old_port = p->inner_dport;

	rn = bpf_map_lookup_elem(&mesh_revnat, &key);
	if (rn) {
		vip = rn->vip;
		port = rn->port;
	}
	if (!vip)
		return MESH_DROP_CT_INVALID;

	if (bpf_l3_csum_replace(skb, inner_ip_off + offsetof(struct iphdr, check), backend, vip, sizeof(vip)) < 0 ||
	    bpf_skb_store_bytes(skb, inner_ip_off + offsetof(struct iphdr, daddr), &vip, sizeof(vip), 0) < 0)
		return MESH_DROP_WRITE_FAILED;
	if ((p->inner_proto == IPPROTO_TCP || p->inner_proto == IPPROTO_UDP) && old_port != port) {
		if (bpf_l4_csum_replace(skb, icmp_csum_off, old_port, port, sizeof(port)) < 0 ||
		    bpf_skb_store_bytes(skb, p->inner_l4_off + 2, &port, sizeof(port), 0) < 0)
			return MESH_DROP_WRITE_FAILED;
	}
	p->inner_daddr = vip;
	p->inner_dport = port;

	if (p->saddr == backend) {
		if (bpf_l3_csum_replace(skb, MESH_IP_CSUM_OFF, backend, vip, sizeof(vip)) < 0 ||
		    bpf_skb_store_bytes(skb, MESH_IP_SADDR_OFF, &vip, sizeof(vip), 0) < 0)
			return MESH_DROP_WRITE_FAILED;
		p->saddr = vip;
	}
	return 0;
}

/* Reverse NAT for what reaches a pod: replies and ICMP errors of
 * connections it opened to a service. Returns 0 or a drop reason. */
static __always_inline int lb_rev_nat_to_pod(struct __sk_buff *skb, struct mesh_pkt *p,
					     const struct mesh_ct_entry *entry)
{
	if (!entry || !entry->rev_nat_id)
		return 0;
	if (p->ct_state == MESH_CT_REPLY)
		return lb_rev_nat(skb, p, entry);
	if (p->ct_state == MESH_CT_RELATED && p->icmp_err)
		return lb_rev_nat_icmp_error(skb, p, entry);
	return 0;
}

#endif /* MESH_LB_H */
