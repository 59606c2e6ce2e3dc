/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shim for -target bpf, which has no arch asm/ directory of its own: the
 * uapi headers' <asm/posix_types.h> resolves here (via -Ibpf) to the generic one. */
#include <asm-generic/posix_types.h>
