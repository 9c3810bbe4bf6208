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
 *
 * Paced (bench_generator_pace[0] non-zero): frames go out only when the
 * rate allows; the others return XDP_DROP, which live-frame mode recycles
 * without sending them, so only frames sent count as generated. They go out
 * in groups of PACE_GROUP (bench/rate.py): 16, the devmap bulk queue's size
 * (DEV_MAP_BULK_SIZE, bq_enqueue() in kernel/bpf/devmap.c), in which the
 * flooding generator's frames reach the router too. Paced, the router's
 * eth1 receives as it does flooded, bulks of 16 handed over by one
 * veth_xdp_xmit() and one NAPI schedule each, only fewer of them. Sent one
 * by one, every frame would wake the router's NAPI thread: in the lab the
 * kernel row then cost 2-5 times the router CPU per frame at 20-60 kpps
 * that it cost in groups of 16. The groups are paced by the generic cell
 * rate algorithm (a token bucket told by the time the next group is due):
 * one group per interval, and after a stall (the sink's thread preempting
 * this one) at most PACE_BURST frames back to back; the rest of the stall's
 * frames are never sent. The router's eth1 ring (256 frames) then never
 * overflows from burstiness alone. Times are in 1/2^PACE_SHIFT ns, fine
 * enough that the rate is exact to 0.01% at 10 Mpps.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#define HEADER_BYTES 42 /* Ethernet 14 + IPv4 20 + UDP 8 */

/* Frames generated: slot 0 packets, slot 1 bytes. */
BPF_PERCPU_ARRAY(bench_generator_count, u64, 2);

#define PACE_SHIFT 8
/* Slot 0: the interval between groups (0: unpaced), slot 1: how far ahead
 * of now the next group's due time may run (the burst), slot 2: that due
 * time, slot 3: frames per group, slot 4: frames of the current group still
 * to send. Written from Python between runs; one CPU runs the program, so
 * plain loads and stores suffice. */
BPF_ARRAY(bench_generator_pace, u64, 5);

static __always_inline int on_time(void)
{
	int interval_slot = 0, burst_slot = 1, due_slot = 2, group_slot = 3, left_slot = 4;
	u64 *interval = bench_generator_pace.lookup(&interval_slot);
	u64 *burst = bench_generator_pace.lookup(&burst_slot);
	u64 *due = bench_generator_pace.lookup(&due_slot);
	u64 *group = bench_generator_pace.lookup(&group_slot);
	u64 *left = bench_generator_pace.lookup(&left_slot);
	u64 now;

	if (!interval || !burst || !due || !group || !left || !*interval)
		return 1;
	if (*left) {
		*left -= 1;
		return 1;
	}
	now = bpf_ktime_get_ns() << PACE_SHIFT;
	if (*due > now + *burst)
		return 0;
	*due = (*due > now ? *due : now) + *interval;
	*left = *group ? *group - 1 : 0;
	return 1;
}

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
	if (!on_time())
		return XDP_DROP;
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
