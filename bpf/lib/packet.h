/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * packet.h: parse an Ethernet/IPv4 packet into a struct mesh_pkt and
 * rewrite its addresses, ports, MACs and TTL with checksums kept right.
 *
 * All reads and writes go through bpf_skb_load_bytes/bpf_skb_store_bytes
 * at computed offsets, so non-linear skbs (GRO, tunnel decap) work and no
 * packet pointer has to survive a helper call.
 *
 *   0        14             14+ihl*4
 *   +--------+--------------+----------------------+
 *   | ethhdr | iphdr (+opts)| tcp/udp ports | icmp |
 *   +--------+--------------+----------------------+
 */
#ifndef MESH_PACKET_H
#define MESH_PACKET_H

#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"

#define MESH_L3_OFF     ETH_HLEN
#define MESH_IP_CSUM_OFF (MESH_L3_OFF + offsetof(struct iphdr, check))
#define MESH_IP_SADDR_OFF (MESH_L3_OFF + offsetof(struct iphdr, saddr))
#define MESH_IP_DADDR_OFF (MESH_L3_OFF + offsetof(struct iphdr, daddr))
#define MESH_IP_TTL_OFF (MESH_L3_OFF + offsetof(struct iphdr, ttl))

#define MESH_IP_FRAG_OFFSET_MASK 0x1fff
#define MESH_IP_MF               0x2000
#define MESH_TCP_FLAGS_OFF       13 /* byte of FIN..CWR in the TCP header */

/* <linux/icmp.h> drags in <linux/if.h> and libc's <sys/socket.h>, which
 * the BPF target lacks; the echo header is all we need. */
#define MESH_ICMP_ECHOREPLY   0
#define MESH_ICMP_DEST_UNREACH 3 /* includes frag-needed (code 4), for PMTU */
#define MESH_ICMP_ECHO        8
#define MESH_ICMP_TIME_EXCEEDED 11
#define MESH_ICMP_PARAMETERPROB 12
/* An ICMP error quotes the offending packet's IP header after its own 8 bytes. */
#define MESH_ICMP_ERR_HLEN    8

#define MESH_TCP_FIN 0x01
#define MESH_TCP_SYN 0x02
#define MESH_TCP_RST 0x04
#define MESH_TCP_ACK 0x10

struct mesh_icmp_echo {
	__u8  type;
	__u8  code;
	__u16 checksum;
	__u16 id;
	__u16 sequence;
};

/* What the programs know about one packet while deciding its fate. Ports
 * and addresses stay in network order, as in the packet. */
struct mesh_pkt {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;        /* ICMP echo: the echo id */
	__u16 dport;        /* ICMP echo: the echo id */
	__u8  proto;
	__u8  has_ports;    /* TCP/UDP header present (not a later fragment) */
	__u16 l4_off;
	__u32 len;
	/* verdict context, filled as the program learns it */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 node_ip;      /* peer node, network order */
	__u16 ep_id;        /* local endpoint concerned */
	__u8  direction;    /* enum mesh_direction */
	__u8  ct_state;     /* enum mesh_ct_state */
	__u8  path;         /* enum mesh_path */
	__u8  tcp_flags;    /* MESH_TCP_* of a TCP packet, else 0 */
	__u8  icmp_err;     /* ICMP error quoting a parsed packet: inner_* valid */
	__u8  is_frag;      /* a later fragment: ports from mesh_frags, no L4 header */
	__u32 ifindex;      /* device the program runs on */
	/* ICMP errors: the tuple of the quoted packet, as it was sent */
	__u32 inner_saddr;
	__u32 inner_daddr;
	__u16 inner_sport;
	__u16 inner_dport;
	__u8  inner_proto;
	__u8  pad2;
	__u16 inner_l4_off; /* offset of the quoted packet's L4 header */
};

/* Reads the context fields the verdict needs once, up front: clang may
 * otherwise merge ctx loads across branches into a form the verifier
 * rejects ("dereference of modified ctx ptr"). */
static __always_inline void pkt_init(struct __sk_buff *skb, struct mesh_pkt *p, __u8 direction, __u8 path)
{
	p->len = skb->len;
	p->ifindex = skb->ifindex;
	p->direction = direction;
	p->path = path;
}

/* Returns the Ethernet protocol (network order) or 0 if unreadable. */
static __always_inline __u16 pkt_eth_proto(struct __sk_buff *skb)
{
	__u16 proto;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto)) < 0)
		return 0;
	return proto;
}

/* Reads the ports (or ICMP echo id) of the L4 header at l4_off into
 * sport and dport; both stay 0 for protocols without them. Returns 0 or
 * MESH_DROP_INVALID_PACKET. */
static __always_inline int pkt_read_ports(struct __sk_buff *skb, __u32 l4_off, __u8 proto,
					  __u16 *sport, __u16 *dport)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		/* Ports lead the SCTP common header too: for policy and
		 * conntrack only (no NAT of SCTP). */
		__u16 ports[2];

		if (bpf_skb_load_bytes(skb, l4_off, ports, sizeof(ports)) < 0)
			return MESH_DROP_INVALID_PACKET;
		*sport = ports[0];
		*dport = ports[1];
	} else if (proto == IPPROTO_ICMP) {
		struct mesh_icmp_echo icmp;

		if (bpf_skb_load_bytes(skb, l4_off, &icmp, sizeof(icmp)) < 0)
			return MESH_DROP_INVALID_PACKET;
		/* Echo request and reply share the id, so the reverse tuple of a
		 * request is its reply's tuple. */
		if (icmp.type == MESH_ICMP_ECHO || icmp.type == MESH_ICMP_ECHOREPLY) {
			*sport = icmp.id;
			*dport = icmp.id;
		}
	}
	return 0;
}

/* An ICMP error (unreachable incl. frag-needed, time exceeded, parameter
 * problem) quotes the IP header and 8 bytes of the packet it is about:
 * record that packet's tuple so conntrack can tell whether the error
 * belongs to a tracked connection. Unreadable quotes leave icmp_err 0. */
static __always_inline void pkt_parse_icmp_error(struct __sk_buff *skb, struct mesh_pkt *p)
{
	__u32 inner_off = p->l4_off + MESH_ICMP_ERR_HLEN;
	struct iphdr inner;
	__u8 type;

	if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1) < 0)
		return;
	if (type != MESH_ICMP_DEST_UNREACH && type != MESH_ICMP_TIME_EXCEEDED &&
	    type != MESH_ICMP_PARAMETERPROB)
		return;
	if (bpf_skb_load_bytes(skb, inner_off, &inner, sizeof(inner)) < 0)
		return;
	if (inner.version != 4 || inner.ihl < 5)
		return;
	p->inner_saddr = inner.saddr;
	p->inner_daddr = inner.daddr;
	p->inner_proto = inner.protocol;
	p->inner_sport = 0;
	p->inner_dport = 0;
	p->inner_l4_off = inner_off + inner.ihl * 4;
	if (!(inner.frag_off & bpf_htons(MESH_IP_FRAG_OFFSET_MASK)) &&
	    pkt_read_ports(skb, p->inner_l4_off, inner.protocol, &p->inner_sport,
			   &p->inner_dport))
		return;
	p->icmp_err = 1;
}

/*
 * Fills the 5-tuple of an IPv4 packet. Returns 0 or a drop reason
 * (INVALID_PACKET, FRAG_NOT_FOUND).
 *
 * Fragments: the first one (MF set, offset 0) records its ports in
 * mesh_frags under (saddr, daddr, IP id, proto); the later ones carry no
 * L4 header and take the ports from there, so policy, conntrack and service
 * translation judge them like the first (is_frag set, has_ports 0: only the
 * addresses can be rewritten, the first fragment carried the ports).
 */
static __always_inline int pkt_parse_ipv4(struct __sk_buff *skb, struct mesh_pkt *p)
{
	struct mesh_frag_key fkey = {};
	struct mesh_frag_ports *fports;
	struct iphdr ip;
	__u32 ihl_bytes;
	int ret;

	if (bpf_skb_load_bytes(skb, MESH_L3_OFF, &ip, sizeof(ip)) < 0)
		return MESH_DROP_INVALID_PACKET;
	if (ip.version != 4 || ip.ihl < 5)
		return MESH_DROP_INVALID_PACKET;

	ihl_bytes = ip.ihl * 4;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	p->l4_off = MESH_L3_OFF + ihl_bytes;
	p->sport = 0;
	p->dport = 0;
	p->has_ports = 0;
	p->tcp_flags = 0;
	p->icmp_err = 0;
	p->is_frag = 0;

	fkey.saddr = ip.saddr;
	fkey.daddr = ip.daddr;
	fkey.id = ip.id;
	fkey.proto = ip.protocol;

	if (ip.frag_off & bpf_htons(MESH_IP_FRAG_OFFSET_MASK)) {
		fports = bpf_map_lookup_elem(&mesh_frags, &fkey);
		if (!fports)
			return MESH_DROP_FRAG_NOT_FOUND;
		p->sport = fports->sport;
		p->dport = fports->dport;
		p->is_frag = 1;
		return 0;
	}

	ret = pkt_read_ports(skb, p->l4_off, ip.protocol, &p->sport, &p->dport);
	if (ret)
		return ret;
	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP)
		p->has_ports = 1;
	if (ip.protocol == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, p->l4_off + MESH_TCP_FLAGS_OFF, &p->tcp_flags, 1) < 0)
		return MESH_DROP_INVALID_PACKET;
	if (ip.protocol == IPPROTO_ICMP)
		pkt_parse_icmp_error(skb, p);

	if (ip.frag_off & bpf_htons(MESH_IP_MF)) {
		struct mesh_frag_ports ports = { .sport = p->sport, .dport = p->dport };

		bpf_map_update_elem(&mesh_frags, &fkey, &ports, BPF_ANY);
	}
	return 0;
}

/* Offset of the L4 checksum for TCP/UDP, 0 if there is none to fix. */
static __always_inline __u32 pkt_l4_csum_off(const struct mesh_pkt *p)
{
	if (p->proto == IPPROTO_TCP)
		return p->l4_off + offsetof(struct tcphdr, check);
	if (p->proto == IPPROTO_UDP)
		return p->l4_off + offsetof(struct udphdr, check);
	return 0;
}

static __always_inline __u64 pkt_l4_csum_flags(const struct mesh_pkt *p)
{
	/* A zero UDP checksum means "none" and must stay zero. */
	if (p->proto == IPPROTO_UDP)
		return BPF_F_MARK_MANGLED_0;
	return 0;
}

/* Rewrites the source or destination address (addr_off) from old to new,
 * fixing the IP and (pseudo-header) L4 checksums. Returns 0 or a drop reason. */
static __always_inline int pkt_rewrite_addr(struct __sk_buff *skb, const struct mesh_pkt *p,
					    __u32 addr_off, __u32 old_addr, __u32 new_addr)
{
	__u32 csum_off = pkt_l4_csum_off(p);

	if (csum_off && p->has_ports &&
	    bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
				pkt_l4_csum_flags(p) | BPF_F_PSEUDO_HDR | sizeof(new_addr)) < 0)
		return MESH_DROP_WRITE_FAILED;
	if (bpf_l3_csum_replace(skb, MESH_IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)) < 0)
		return MESH_DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0) < 0)
		return MESH_DROP_WRITE_FAILED;
	return 0;
}

/* Rewrites the TCP/UDP source (is_dst = 0) or destination port. */
static __always_inline int pkt_rewrite_port(struct __sk_buff *skb, const struct mesh_pkt *p,
					    int is_dst, __u16 old_port, __u16 new_port)
{
	__u32 csum_off = pkt_l4_csum_off(p);
	__u32 port_off = p->l4_off + (is_dst ? 2 : 0);

	if (old_port == new_port || p->is_frag)
		return 0; /* a later fragment has no L4 header: the first one held the ports */
	if (!csum_off || !p->has_ports)
		return MESH_DROP_WRITE_FAILED;
	if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
				pkt_l4_csum_flags(p) | sizeof(new_port)) < 0)
		return MESH_DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
		return MESH_DROP_WRITE_FAILED;
	return 0;
}

/* Sets destination and source MAC in one write. */
static __always_inline int pkt_set_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	__u8 macs[12];

	__builtin_memcpy(macs, dst, 6);
	__builtin_memcpy(macs + 6, src, 6);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return MESH_DROP_WRITE_FAILED;
	return 0;
}

/* Decrements the IPv4 TTL as a router would. Returns 0 or a drop reason. */
static __always_inline int pkt_dec_ttl(struct __sk_buff *skb)
{
	__u8 ttl;
	__u16 old_word, new_word;

	if (bpf_skb_load_bytes(skb, MESH_IP_TTL_OFF, &ttl, 1) < 0)
		return MESH_DROP_INVALID_PACKET;
	if (ttl <= 1)
		return MESH_DROP_TTL_EXCEEDED;
	/* The checksum covers TTL as the high byte of the TTL/protocol word. */
	old_word = bpf_htons((__u16)ttl << 8);
	ttl--;
	new_word = bpf_htons((__u16)ttl << 8);
	if (bpf_l3_csum_replace(skb, MESH_IP_CSUM_OFF, old_word, new_word, sizeof(__u16)) < 0)
		return MESH_DROP_WRITE_FAILED;
	if (bpf_skb_store_bytes(skb, MESH_IP_TTL_OFF, &ttl, 1, 0) < 0)
		return MESH_DROP_WRITE_FAILED;
	return 0;
}

#endif /* MESH_PACKET_H */
