/* Layout shared by the fixture programs and tests/integration/native-datapath.test.ts.
 *
 *   struct fixture_event (24 bytes, host byte order unless noted)
 *   0        4          8        12       16       20         22         24
 *   +--------+----------+--------+--------+--------+----------+----------+
 *   | tag    | ifindex  | len    | saddr  | daddr  | identity | eth_proto|
 *   +--------+----------+--------+--------+--------+----------+----------+
 *   saddr, daddr and eth_proto in network byte order; identity from the LPM map (0: none)
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
