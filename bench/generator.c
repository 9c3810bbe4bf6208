/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The benchmark's traffic generator, an XDP program.
 *
 * bench_generator runs in sendbox under BPF_PROG_TEST_RUN in live-frame
 * mode (BPF_F_TEST_XDP_LIVE_FRAMES) on the generator's CPU: the kernel hands
 * it a frame again and again, it writes the packet and transmits it on
 * sendbox's eth0 with XDP_REDIRECT. veth_xdp_xmit() only queues the frame
 * on the router's eth1 and wakes its NAPI, whose thread the benchmark pins
 * to the router's CPU (bench/napi.py): everything the router does runs
 * there, fed as a NIC would feed it, while the generator has a CPU of its
 * own.
 *
 * Frames are recycled without being reset, and the router rewrites the ones
 * it forwards in place (MACs, TTL, checksum): so bench_generator writes the
 * whole Ethernet + IPv4 + UDP header every time, from the words the loader
 * passes in (GENERATOR_HDR0..5: the header's bytes as the CPU reads them).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#define HEADER_BYTES 42 /* Ethernet 14 + IPv4 20 + UDP 8 */

/* Frames generated: slot 0 packets, slot 1 bytes. */
BPF_PERCPU_ARRAY(bench_generator_count, u64, 2);

int bench_generator(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 *words = data;
	struct udphdr *udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	int packets = 0, bytes = 1;
	u64 *n;

	if (data + HEADER_BYTES > data_end)
		return XDP_ABORTED;
	words[0] = GENERATOR_HDR0;
	words[1] = GENERATOR_HDR1;
	words[2] = GENERATOR_HDR2;
	words[3] = GENERATOR_HDR3;
	words[4] = GENERATOR_HDR4;
	*(__u16 *)&words[5] = GENERATOR_HDR5;
#if GENERATOR_FLOWS > 1
	/* Many flows: a random source port out of GENERATOR_FLOWS. The UDP
	 * checksum is 0 (none, legal for IPv4), so nothing else changes. */
	udp->source = bpf_htons(GENERATOR_BASE_PORT + bpf_get_prandom_u32() % GENERATOR_FLOWS);
#endif
	n = bench_generator_count.lookup(&packets);
	if (n)
		*n += 1;
	n = bench_generator_count.lookup(&bytes);
	if (n)
		*n += data_end - data;
	return bpf_redirect(GENERATOR_IFINDEX, 0);
}
