/* Test fixture: two tc programs that count packets and report each one.
 *
 * Attach either to a device's clsact ingress. Every packet bumps the per-CPU counter in the slot
 * of the program that saw it (fixture_count_a → slot 0, fixture_count_b → slot 1, so a test can
 * tell which program ran), IPv4 packets also count per source address and look the source up in
 * an LPM map for an "identity", and one fixture_event per packet goes to the ring buffer. Always
 * TC_ACT_OK: the fixture never changes what passes.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fixture.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FIXTURE_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fixture_count SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fixture_by_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fixture_lpm_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fixture_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} fixture_events SEC(".maps");

static __always_inline void count_slot(__u32 slot)
{
	__u64 *count = bpf_map_lookup_elem(&fixture_count, &slot);

	if (count)
		*count += 1;
}

static __always_inline void count_source(__u32 saddr)
{
	__u64 one = 1, *count = bpf_map_lookup_elem(&fixture_by_src, &saddr);

	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&fixture_by_src, &saddr, &one, BPF_NOEXIST);
}

static __always_inline __u16 identity_of(__u32 saddr)
{
	struct fixture_lpm_key key = { .prefixlen = 32, .addr = saddr };
	__u32 *identity = bpf_map_lookup_elem(&fixture_ipcache, &key);

	return identity ? (__u16)*identity : 0;
}

static __always_inline int observe(struct __sk_buff *skb, __u32 tag)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct fixture_event *ev;

	count_slot(tag);
	ev = bpf_ringbuf_reserve(&fixture_events, sizeof(*ev), 0);
	if (!ev)
		return TC_ACT_OK;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->tag = tag;
	ev->ifindex = skb->ifindex;
	ev->len = skb->len;
	if ((void *)(eth + 1) <= data_end) {
		ev->eth_proto = eth->h_proto;
		if (eth->h_proto == bpf_htons(ETH_P_IP)) {
			struct iphdr *ip = (void *)(eth + 1);

			if ((void *)(ip + 1) <= data_end) {
				ev->saddr = ip->saddr;
				ev->daddr = ip->daddr;
				ev->identity = identity_of(ip->saddr);
				count_source(ip->saddr);
			}
		}
	}
	bpf_ringbuf_submit(ev, 0);
	return TC_ACT_OK;
}

SEC("tc")
int fixture_count_a(struct __sk_buff *skb)
{
	return observe(skb, 0);
}

SEC("tc")
int fixture_count_b(struct __sk_buff *skb)
{
	return observe(skb, 1);
}

char LICENSE[] SEC("license") = "GPL";
