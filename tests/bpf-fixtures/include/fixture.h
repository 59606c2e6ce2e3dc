/* Layout shared by the fixture programs and tests/integration/native-datapath.test.ts.
 *
 *   struct fixture_event (24 bytes, little endian)
 *   0        4          8      12       16       20       22  23
 *   +--------+----------+------+--------+--------+--------+---+---+
 *   | tag    | ifindex  | len  | saddr  | daddr  |identity|eth|ipp|
 *   +--------+----------+------+--------+--------+--------+---+---+
 *   saddr/daddr in network byte order, eth = h_proto (network order, 16 bits)
 */
#ifndef MESHCTL_FIXTURE_H
#define MESHCTL_FIXTURE_H

#include <linux/types.h>

#define FIXTURE_SLOTS 4

struct fixture_event {
	__u32 tag;
	__u32 ifindex;
	__u32 len;
	__u32 saddr;
	__u32 daddr;
	__u16 identity;
	__u16 eth_proto;
} __attribute__((packed));

struct fixture_lpm_key {
	__u32 prefixlen;
	__u32 addr;
};

#endif
