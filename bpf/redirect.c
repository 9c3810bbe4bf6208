/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xdpfwd: route IPv4 and IPv6 between a set of ports inside the XDP hook.
 *
 * The kernel stays the router: bpf_fib_lookup() asks its routing and
 * neighbour tables, and whatever this program cannot finish itself goes to
 * the stack with XDP_PASS, so the kernel resolves neighbours, sends ICMP
 * errors and serves the box's own traffic. Nothing is dropped for being
 * unusual. Every packet is counted in exactly one outcome (counters.h).
 *
 * Built by bcc at attach time (xdpfwd/compiler.py). User space creates both
 * maps from counters.h and hands their file descriptors in as
 * XDPFWD_PORTS_FD and XDPFWD_STATS_FD: bcc 0.26 has no devmap_hash table
 * type, and refuses map names that come from a macro.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include "counters.h"

#if !defined(XDPFWD_PORTS_FD) || !defined(XDPFWD_STATS_FD)
#error "XDPFWD_PORTS_FD and XDPFWD_STATS_FD must name the maps' file descriptors"
#endif

#define AF_INET  2
#define AF_INET6 10
#define IPV6_FLOWINFO_MASK bpf_htonl(0x0FFFFFFF)

/* DEVMAP_HASH, ifindex -> ifindex: the ports, and the redirect targets. */
#define XDPFWD_PORTS ((void *)bpf_pseudo_fd(1, XDPFWD_PORTS_FD))
/* PERCPU_HASH, ingress ifindex -> struct xdpfwd_counters. */
#define XDPFWD_STATS ((void *)bpf_pseudo_fd(1, XDPFWD_STATS_FD))

static __always_inline int count(struct xdpfwd_counters *c, int outcome,
				 __u64 bytes, int action)
{
	/* Per-CPU values: no other CPU writes this slot, no atomics needed. */
	if (c && outcome >= 0 && outcome < XDPFWD_N_OUTCOMES) {
		c->outcome[outcome].packets++;
		c->outcome[outcome].bytes += bytes;
	}
	return action;
}

#define PASS(outcome) count(stats, XDPFWD_##outcome, bytes, XDP_PASS)

static __always_inline int fib_outcome(int rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_BLACKHOLE:    return XDPFWD_PASS_FIB_BLACKHOLE;
	case BPF_FIB_LKUP_RET_UNREACHABLE:  return XDPFWD_PASS_FIB_UNREACHABLE;
	case BPF_FIB_LKUP_RET_PROHIBIT:     return XDPFWD_PASS_FIB_PROHIBIT;
	case BPF_FIB_LKUP_RET_NOT_FWDED:    return XDPFWD_PASS_FIB_NOT_FWDED;
	case BPF_FIB_LKUP_RET_FWD_DISABLED: return XDPFWD_PASS_FIB_FWD_DISABLED;
	case BPF_FIB_LKUP_RET_UNSUPP_LWT:   return XDPFWD_PASS_FIB_UNSUPP_LWT;
	case BPF_FIB_LKUP_RET_NO_NEIGH:     return XDPFWD_PASS_FIB_NO_NEIGH;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:  return XDPFWD_PASS_FIB_FRAG_NEEDED;
	}
	return XDPFWD_PASS_FIB_OTHER;
}

/* The same arithmetic as the kernel's ip_decrease_ttl(): TTL sits in the
 * high byte of its 16-bit word, so the checksum grows by 0x0100. */
static __always_inline void ip_decrease_ttl(struct iphdr *iph)
{
	__u32 check = (__u32)iph->check;

	check += (__u32)bpf_htons(0x0100);
	iph->check = (__u16)(check + (check >= 0xFFFF));
	iph->ttl--;
}

/* Header checksum of an option-less IPv4 header: the kernel drops a bad
 * one in ip_rcv(), so a forwarder must not carry it on. */
static __always_inline int ipv4_csum_ok(struct iphdr *iph)
{
	__u16 *w = (__u16 *)iph;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)sizeof(*iph) / 2; i++)
		sum += w[i];
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return sum == 0xFFFF;
}

/* A 16-bit length the verifier knows is at most 0xFFFF. Older verifiers
 * (Debian's 6.1 and 6.12) lose the bound of bpf_ntohs()'s result and
 * refuse "math between pkt pointer and register with unbounded min
 * value"; a mask the compiler cannot drop restores it. */
static __always_inline __u64 u16_bounded(__u64 v)
{
	asm volatile("%0 &= 0xffff" : "+r"(v));
	return v;
}

static __always_inline int ipv6_link_local(const struct in6_addr *a)
{
	return (a->s6_addr[0] == 0xFE) && ((a->s6_addr[1] & 0xC0) == 0x80);
}

int XDPFWD_PROG_NAME(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;
	__u64 bytes = data_end - data;
	struct xdpfwd_counters *stats, *egress;
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6h;
	struct iphdr *iph;
	__u16 proto;
	int rc, action;

	stats = bpf_map_lookup_elem(XDPFWD_STATS, &ifindex);

	if ((void *)(eth + 1) > data_end)
		return PASS(PASS_MALFORMED);
	/* Broadcast and multicast are the stack's business (ARP, ND, IGMP). */
	if (eth->h_dest[0] & 1)
		return PASS(PASS_MULTICAST);

	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return PASS(PASS_VLAN);

	if (proto == bpf_htons(ETH_P_IP)) {
		iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return PASS(PASS_MALFORMED);
		if (iph->version != 4 || iph->ihl < 5 ||
		    (void *)iph + u16_bounded(bpf_ntohs(iph->tot_len)) > data_end ||
		    bpf_ntohs(iph->tot_len) < sizeof(*iph))
			return PASS(PASS_MALFORMED);
		/* Options (record route, source route...) are processed by
		 * the kernel's forwarding path; leave them to it. */
		if (iph->ihl != 5)
			return PASS(PASS_IP_OPTIONS);
		if (!ipv4_csum_ok(iph))
			return PASS(PASS_BAD_CHECKSUM);
		/* TTL 1 expires here: the kernel sends Time Exceeded. */
		if (iph->ttl <= 1)
			return PASS(PASS_TTL);

		fib.family = AF_INET;
		fib.tos = iph->tos;
		fib.l4_protocol = iph->protocol;
		fib.tot_len = bpf_ntohs(iph->tot_len);
		fib.ipv4_src = iph->saddr;
		fib.ipv4_dst = iph->daddr;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		ip6h = (void *)(eth + 1);
		if ((void *)(ip6h + 1) > data_end)
			return PASS(PASS_MALFORMED);
		if (ip6h->version != 6 ||
		    (void *)(ip6h + 1) + u16_bounded(bpf_ntohs(ip6h->payload_len)) > data_end)
			return PASS(PASS_MALFORMED);
		/* Hop-by-hop options must be read by every router on the way
		 * (a payload_len of 0 with a jumbogram option among them). */
		if (ip6h->nexthdr == IPPROTO_HOPOPTS)
			return PASS(PASS_IP_OPTIONS);
		/* Link-local addresses never cross a router; the kernel answers
		 * with Destination Unreachable (beyond scope). */
		if (ipv6_link_local(&ip6h->saddr) || ipv6_link_local(&ip6h->daddr))
			return PASS(PASS_LINK_LOCAL);
		if (ip6h->hop_limit <= 1)
			return PASS(PASS_TTL);

		fib.family = AF_INET6;
		fib.flowinfo = *(__be32 *)ip6h & IPV6_FLOWINFO_MASK;
		fib.l4_protocol = ip6h->nexthdr;
		fib.tot_len = sizeof(*ip6h) + bpf_ntohs(ip6h->payload_len);
		__builtin_memcpy(fib.ipv6_src, &ip6h->saddr, sizeof(fib.ipv6_src));
		__builtin_memcpy(fib.ipv6_dst, &ip6h->daddr, sizeof(fib.ipv6_dst));
	} else {
		return PASS(PASS_NOT_IP);
	}

	fib.ifindex = ifindex;
	/* Flags 0: a full lookup, policy rules included, and the MTU check
	 * (FRAG_NEEDED) so the kernel fragments or sends Packet Too Big. */
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		/* NO_NEIGH above all: the kernel resolves ARP/ND only for
		 * packets it sees, and later packets then come back here. */
		return count(stats, fib_outcome(rc), bytes, XDP_PASS);

	/* Only the ports this program was attached to are redirect targets;
	 * a route out of any other interface stays the kernel's job. */
	if (!bpf_map_lookup_elem(XDPFWD_PORTS, &fib.ifindex))
		return PASS(PASS_NOT_A_PORT);
	/* Hairpin: the kernel forwards it and also sends an ICMP redirect. */
	if (fib.ifindex == ifindex)
		return PASS(PASS_SAME_PORT);

	/* The headers were checked above; the verifier wants the bounds seen
	 * again on this path. */
	if (fib.family == AF_INET) {
		iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return PASS(PASS_MALFORMED);
		ip_decrease_ttl(iph);
	} else {
		ip6h = (void *)(eth + 1);
		if ((void *)(ip6h + 1) > data_end)
			return PASS(PASS_MALFORMED);
		ip6h->hop_limit--;
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);

	action = bpf_redirect_map(XDPFWD_PORTS, fib.ifindex, 0);
	if (action != XDP_REDIRECT)
		/* The port left the map between lookup and redirect (a detach
		 * in progress). The frame is already rewritten, so the stack
		 * must not see it: drop, and count it. */
		return count(stats, XDPFWD_DROP_REDIRECT_FAILED, bytes, XDP_DROP);

	egress = bpf_map_lookup_elem(XDPFWD_STATS, &fib.ifindex);
	if (egress) {
		egress->transmitted.packets++;
		egress->transmitted.bytes += bytes;
	}
	return count(stats, XDPFWD_FORWARDED, bytes, XDP_REDIRECT);
}
