/* Test fixture the verifier must reject: it reads packet bytes past the Ethernet header without
 * checking them against data_end, so loading it has to fail with a verifier log.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int fixture_oob(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	__u32 word = *(__u32 *)(data + 64);

	return word == 0x01020304 ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
