/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shim for -target bpf, which has no arch asm/ directory of its own: the
 * uapi headers' <asm/byteorder.h> resolves here (via -Ibpf). The BPF target
 * takes the host's byte order. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#include <linux/byteorder/little_endian.h>
#else
#include <linux/byteorder/big_endian.h>
#endif
