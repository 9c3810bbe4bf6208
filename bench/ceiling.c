/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The benchmark's ceiling, on the router's eth1: count every frame and drop
 * it at the earliest point a forwarder could touch it. No forwarder does
 * less work per packet on this lab, so none can beat this row.
 */
#include <uapi/linux/bpf.h>

/* Slot 0: packets, slot 1: bytes. */
BPF_PERCPU_ARRAY(bench_ceiling_count, u64, 2);

int bench_ceiling(struct xdp_md *ctx)
{
	int packets = 0, bytes = 1;
	u64 *n;

	n = bench_ceiling_count.lookup(&packets);
	if (n)
		*n += 1;
	n = bench_ceiling_count.lookup(&bytes);
	if (n)
		*n += ctx->data_end - ctx->data;
	return XDP_DROP;
}
