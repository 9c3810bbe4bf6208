/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The benchmark's packet sink, on recvbox's eth0: count and drop IPv4/UDP
 * (the benchmark's traffic), pass everything else so that ARP still
 * answers the router. An XDP program here also makes frames that the
 * router XDP-redirects into this veth deliverable (docs/kernel-facts.md, veth).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>

/* Slot 0: packets, slot 1: bytes. Per CPU: no atomics on the hot path. */
BPF_PERCPU_ARRAY(bench_sink_count, u64, 2);

int bench_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	int packets = 0, bytes = 1;
	u64 *n;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	n = bench_sink_count.lookup(&packets);
	if (n)
		*n += 1;
	n = bench_sink_count.lookup(&bytes);
	if (n)
		*n += data_end - data;
	return XDP_DROP;
}
