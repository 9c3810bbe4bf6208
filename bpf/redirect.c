/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xdpfwd: route IPv4 and IPv6 between a set of ports inside the XDP hook.
 *
 * The kernel stays the router. This program forwards a packet only when
 * the kernel's own forwarding would forward it unchanged but for the TTL
 * and MACs: the checks ip_rcv_core(), ip_route_input_slow(),
 * fib_validate_source() and ip_forward() make (IPv6: ip6_rcv_core() and
 * ip6_forward()) are made here too, or their answer is asked of the
 * kernel's tables through bpf_fib_lookup(). Whatever is not certain to be
 * forwarded goes to the stack with XDP_PASS, unchanged, so the kernel
 * applies its own rules to it: it drops martians and frames for other
 * hosts (and counts them), applies rp_filter as the sysctls say at that
 * moment, resolves neighbours, sends ICMP errors, fragments, and serves
 * the box's own traffic. Nothing is dropped for being unusual.
 *
 * Every packet is counted as received on its port, and in exactly one
 * outcome (counters.h).
 *
 * Built by bcc at attach time (xdpfwd/compiler.py). User space creates the
 * maps from counters.h and hands their file descriptors in as
 * XDPFWD_{PORTS,STATS,CONFIG}_FD (bcc 0.26 has no devmap_hash table type,
 * and refuses map names that come from a macro), and the ports' slots as
 * XDPFWD_PORT_SLOTS.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include "counters.h"

#if !defined(XDPFWD_PORTS_FD) || !defined(XDPFWD_STATS_FD) || \
    !defined(XDPFWD_CONFIG_FD) || !defined(XDPFWD_PORT_SLOTS)
#error "XDPFWD_{PORTS,STATS,CONFIG}_FD and XDPFWD_PORT_SLOTS must be defined"
#endif

#define AF_INET  2
#define AF_INET6 10
#define IPV6_FLOWINFO_MASK bpf_htonl(0x0FFFFFFF)
/* BPF_FIB_LOOKUP_SKIP_NEIGH (6.3, backported to Debian's 6.1), spelled out
 * for headers that predate it. */
#define XDPFWD_FIB_SKIP_NEIGH (1U << 2)

/* DEVMAP_HASH, ifindex -> ifindex: the redirect targets. */
#define XDPFWD_PORTS ((void *)bpf_pseudo_fd(1, XDPFWD_PORTS_FD))
/* PERCPU_ARRAY, slot -> struct xdpfwd_counters. */
#define XDPFWD_STATS ((void *)bpf_pseudo_fd(1, XDPFWD_STATS_FD))
/* ARRAY, slot -> struct xdpfwd_port. */
#define XDPFWD_CONFIG ((void *)bpf_pseudo_fd(1, XDPFWD_CONFIG_FD))

/* The slot of a port, or -1: a switch the compiler turns into a compare
 * or two, cheaper than any map lookup. */
static __always_inline int port_slot(__u32 ifindex)
{
	switch (ifindex) {
#define XDPFWD_SLOT_CASE(ifindex, slot) case ifindex: return slot;
	XDPFWD_PORT_SLOTS(XDPFWD_SLOT_CASE)
#undef XDPFWD_SLOT_CASE
	}
	return -1;
}

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
 * one in ip_rcv_core(), so a forwarder must not carry it on. */
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

/* eth_type_trans() makes a unicast frame to any address but the port's
 * own PACKET_OTHERHOST, and ip_rcv_core() / ip6_rcv_core() drop it. */
static __always_inline int for_this_port(const struct ethhdr *eth,
					 const struct xdpfwd_port *port)
{
	return port &&
	       *(const __u32 *)&eth->h_dest[0] == *(const __u32 *)&port->mac[0] &&
	       *(const __u16 *)&eth->h_dest[4] == *(const __u16 *)&port->mac[4];
}

/* The checks ip_route_input_slow() makes before it asks the FIB (and
 * ip_route_input_rcu(), which sends multicast elsewhere). Loopback
 * addresses are martians unless route_localnet is set, which this program
 * cannot see: it leaves them to the stack either way. */
#define V4_MULTICAST(a) ((bpf_ntohl(a) & 0xF0000000) == 0xE0000000)
#define V4_LBCAST(a)    ((a) == 0xFFFFFFFF)
#define V4_ZERONET(a)   ((a) == 0)	/* ipv4_is_zeronet(): only 0.0.0.0, the rest of 0/8 is routable */
#define V4_LOOPBACK(a)  ((bpf_ntohl(a) & 0xFF000000) == 0x7F000000)

static __always_inline int ipv4_martian_source(__be32 a)
{
	return V4_MULTICAST(a) || V4_LBCAST(a) || V4_ZERONET(a) || V4_LOOPBACK(a);
}

static __always_inline int ipv4_martian_destination(__be32 a)
{
	return V4_ZERONET(a) || V4_LOOPBACK(a);
}

/* The ports the kernel's flow dissector gives to policy rules and the
 * multipath hash (fib4_rules_early_flow_dissect(), proto_ports_offset()):
 * from the first bytes of the transport header, none for a fragment, and
 * none when they are cut off: the kernel has trimmed the packet to its IP
 * length by then, so bytes in the Ethernet padding are no ports. */
static __always_inline void l4_ports(struct bpf_fib_lookup *fib, void *l4, void *l3_end,
				     void *data_end, __u8 proto)
{
	int off;

	switch (proto) {
	case IPPROTO_TCP: case IPPROTO_UDP: case IPPROTO_DCCP:
	case IPPROTO_ESP: case IPPROTO_SCTP: case IPPROTO_UDPLITE:
		off = 0;
		break;
	case IPPROTO_AH:
		off = 4;
		break;
	default:
		return;
	}
	if (l4 + off + 4 > data_end || l4 + off + 4 > l3_end)
		return;
	fib->sport = *(__be16 *)(l4 + off);
	fib->dport = *(__be16 *)(l4 + off + 2);
}

static __always_inline int ipv6_link_local(const struct in6_addr *a)
{
	return (a->s6_addr[0] == 0xFE) && ((a->s6_addr[1] & 0xC0) == 0x80);
}

static __always_inline int ipv6_multicast(const struct in6_addr *a)
{
	return a->s6_addr[0] == 0xFF;
}

static __always_inline int ipv6_any_or_loopback(const struct in6_addr *a)
{
	return (a->s6_addr32[0] | a->s6_addr32[1] | a->s6_addr32[2]) == 0 &&
	       (a->s6_addr32[3] == 0 || a->s6_addr32[3] == bpf_htonl(1));
}

/* icmp_is_err() and icmpv6_is_err() in the kernel: Destination
 * Unreachable, Source Quench, Redirect, Time Exceeded, Parameter Problem;
 * for ICMPv6 Destination Unreachable, Packet Too Big, Time Exceeded,
 * Parameter Problem. */
static __always_inline int icmp_is_err(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

static __always_inline int icmpv6_is_err(__u8 type)
{
	return type >= 1 && type <= 4;
}

/* What ip6_forward_proxy_check() looks for: a Neighbour Discovery message
 * (Router or Neighbour Solicitation or Advertisement, Redirect) as the
 * upper-layer header, found past the extension headers as
 * ipv6_skip_exthdr() finds it (a header cut short, No Next Header, or a
 * fragment other than the first: not one). IPV6_EXT_MAX extension headers
 * cover every order RFC 8200 allows; a longer chain is V6_DEEP. */
#define IPV6_EXT_MAX 6
#define V6_NOT_ND 0
#define V6_ND     1
#define V6_DEEP   2

static __always_inline int ipv6_nd_message(const struct ipv6hdr *ip6h, const void *l3_end,
					   const void *data_end)
{
	const __u8 *p = (const void *)(ip6h + 1);
	__u8 nexthdr = ip6h->nexthdr;
	__u32 len;

#pragma unroll
	for (int i = 0; i <= IPV6_EXT_MAX; i++) {
		switch (nexthdr) {
		case IPPROTO_ICMPV6:
			if ((const void *)(p + 1) > data_end || (const void *)(p + 1) > l3_end)
				return V6_NOT_ND;
			return *p >= 133 && *p <= 137 ? V6_ND : V6_NOT_ND;
		case IPPROTO_HOPOPTS: case IPPROTO_ROUTING: case IPPROTO_DSTOPTS:
		case IPPROTO_AH: case IPPROTO_FRAGMENT:
			break;
		default:
			return V6_NOT_ND;
		}
		if (i == IPV6_EXT_MAX)
			return V6_DEEP;
		/* Only what ipv6_skip_exthdr() reads (2 bytes, 4 for a fragment):
		 * a header cut short ends the walk as there, not one header early. */
		if ((const void *)(p + 2) > data_end || (const void *)(p + 2) > l3_end)
			return V6_NOT_ND;
		if (nexthdr == IPPROTO_FRAGMENT) {
			if ((const void *)(p + 4) > data_end || (const void *)(p + 4) > l3_end ||
			    (*(const __be16 *)(p + 2) & bpf_htons(0xFFF8)))
				return V6_NOT_ND;
			len = 8;
		} else if (nexthdr == IPPROTO_AH) {
			len = ((__u32)p[1] + 2) << 2;
		} else {
			len = ((__u32)p[1] + 1) << 3;
		}
		nexthdr = p[0];
		p += len;
	}
	return V6_DEEP;
}

int XDPFWD_PROG_NAME(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;
	__u64 bytes = data_end - data;
	__u64 l3_len;
	struct xdpfwd_counters *stats, *egress;
	struct bpf_fib_lookup fib = {};
	struct xdpfwd_port *port;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6h;
	struct iphdr *iph;
	__u32 slot, out_slot, route_mtu;
	__u8 policy;
	int rc, found, family;
	__u16 proto;

	found = port_slot(ifindex);
	if (found < 0)
		return XDP_PASS;	/* not attached here by us: cannot happen */
	slot = found;
	stats = bpf_map_lookup_elem(XDPFWD_STATS, &slot);
	port = bpf_map_lookup_elem(XDPFWD_CONFIG, &slot);
	if (stats) {
		stats->received.packets++;
		stats->received.bytes += bytes;
	}

	if ((void *)(eth + 1) > data_end)
		return PASS(PASS_MALFORMED);
	/* Broadcast and multicast are the stack's business (ARP, ND, IGMP). */
	if (eth->h_dest[0] & 1)
		return PASS(PASS_MULTICAST);
	if (!for_this_port(eth, port))
		return PASS(PASS_OTHER_HOST);

	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return PASS(PASS_VLAN);

	if (proto == bpf_htons(ETH_P_IP)) {
		iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return PASS(PASS_MALFORMED);
		l3_len = u16_bounded(bpf_ntohs(iph->tot_len));
		/* ip_rcv_core(): a length shorter than the header is an error. */
		if (iph->version != 4 || iph->ihl < 5 ||
		    (void *)iph + l3_len > data_end || l3_len < iph->ihl * 4)
			return PASS(PASS_MALFORMED);
		/* Options (record route, source route...) are processed by
		 * the kernel's forwarding path; leave them to it. */
		if (iph->ihl != 5)
			return PASS(PASS_IP_OPTIONS);
		if (!ipv4_csum_ok(iph))
			return PASS(PASS_BAD_CHECKSUM);
		if (ipv4_martian_source(iph->saddr))
			return PASS(PASS_MARTIAN_SOURCE);
		/* Limited broadcast and multicast go to local input (or the
		 * multicast router), never to unicast forwarding. */
		if (V4_LBCAST(iph->daddr) || V4_MULTICAST(iph->daddr))
			return PASS(PASS_MULTICAST);
		if (ipv4_martian_destination(iph->daddr))
			return PASS(PASS_MARTIAN_DEST);
		/* TTL 1 expires here: the kernel sends Time Exceeded. */
		if (iph->ttl <= 1)
			return PASS(PASS_TTL);
		/* An ICMP error takes the path of the packet it quotes: over a
		 * multipath route the kernel hashes the quoted header's
		 * addresses (ip_multipath_l3_keys()), bpf_fib_lookup() only
		 * the outer ones. The program cannot tell a multipath route
		 * from another, so every ICMP error goes to the kernel (they
		 * are few). A later fragment carries no ICMP header. */
		if (iph->protocol == IPPROTO_ICMP && !(iph->frag_off & bpf_htons(0x1FFF)) &&
		    l3_len > sizeof(*iph) && (void *)(iph + 1) + 1 <= data_end &&
		    icmp_is_err(*(__u8 *)(iph + 1)))
			return PASS(PASS_ICMP_ERROR);
		/* fib_multipath_hash_policy 3 hashes the packet's own fields
		 * and then once more (fib_multipath_custom_hash_skb()); 2
		 * hashes a tunnelled packet by its inner addresses (the flow
		 * dissector goes through IPIP, IPv6 in IPv4 and GRE).
		 * bpf_fib_lookup() hashes the outer header once. A policy this
		 * program does not know yet is left to the kernel too. */
		policy = port->hash_policy & 0xF;
		if (policy >= 3 ||
		    (policy == 2 && (iph->protocol == IPPROTO_IPIP || iph->protocol == IPPROTO_IPV6 ||
				     iph->protocol == IPPROTO_GRE)))
			return PASS(PASS_MULTIPATH_HASH);

		fib.family = family = AF_INET;
		fib.tos = iph->tos;
		fib.l4_protocol = iph->protocol;
		fib.tot_len = l3_len;
		if (!(iph->frag_off & bpf_htons(0x3FFF)))	/* MF or an offset: a fragment */
			l4_ports(&fib, iph + 1, (void *)iph + l3_len, data_end, iph->protocol);
		fib.ipv4_src = iph->saddr;
		fib.ipv4_dst = iph->daddr;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		/* ip6_rcv_core() drops IPv6 from a port with disable_ipv6 set
		 * (or no IPv6 at all) before it looks at the header, while
		 * bpf_fib_lookup() asks only the port's forwarding switch. The
		 * program cannot read the sysctl: user space copies it in. */
		if (port->ipv6_disabled)
			return PASS(PASS_IPV6_DISABLED);
		ip6h = (void *)(eth + 1);
		if ((void *)(ip6h + 1) > data_end)
			return PASS(PASS_MALFORMED);
		l3_len = sizeof(*ip6h) + u16_bounded(bpf_ntohs(ip6h->payload_len));
		if (ip6h->version != 6 || (void *)ip6h + l3_len > data_end)
			return PASS(PASS_MALFORMED);
		/* Hop-by-hop options must be read by every router on the way
		 * (a payload_len of 0 with a jumbogram option among them). */
		if (ip6h->nexthdr == IPPROTO_HOPOPTS)
			return PASS(PASS_IP_OPTIONS);
		/* ip6_rcv_core() drops multicast and loopback sources and
		 * loopback destinations; ip6_forward() drops the unspecified
		 * source. */
		if (ipv6_multicast(&ip6h->saddr) || ipv6_any_or_loopback(&ip6h->saddr))
			return PASS(PASS_MARTIAN_SOURCE);
		if (ipv6_any_or_loopback(&ip6h->daddr))
			return PASS(PASS_MARTIAN_DEST);
		if (ipv6_multicast(&ip6h->daddr))
			return PASS(PASS_MULTICAST);
		/* Link-local addresses never cross a router; the kernel answers
		 * with Destination Unreachable (beyond scope). */
		if (ipv6_link_local(&ip6h->saddr) || ipv6_link_local(&ip6h->daddr))
			return PASS(PASS_LINK_LOCAL);
		if (ip6h->hop_limit <= 1)
			return PASS(PASS_TTL);
		/* ip6_forward() hands a Neighbour Discovery message for an
		 * address it proxies (proxy_ndp and a proxy entry) to its own
		 * input, which answers it; forwarded, it would reach a host
		 * bound to discard it (RFC 4861: hop limit 255). The program
		 * sees neither the sysctl nor the proxy table, so every ND
		 * message goes to the stack, which forwards the others. */
		switch (ipv6_nd_message(ip6h, (void *)ip6h + l3_len, data_end)) {
		case V6_ND:
			return PASS(PASS_NDP);
		case V6_DEEP:	/* the kernel walks on; leave it to it */
			return PASS(PASS_IP_OPTIONS);
		}
		/* The same for ICMPv6 errors (ip6_multipath_l3_keys(), which
		 * looks only right behind the fixed header). */
		if (ip6h->nexthdr == IPPROTO_ICMPV6 && l3_len > sizeof(*ip6h) &&
		    (void *)(ip6h + 1) + 1 <= data_end && icmpv6_is_err(*(__u8 *)(ip6h + 1)))
			return PASS(PASS_ICMP_ERROR);
		/* Policy rules on the protocol or ports, and the multipath hash
		 * by ports (fib_multipath_hash_policy 1), take the transport
		 * header past routing, destination options and fragment headers
		 * (the flow dissector walks them, and makes a fragment's
		 * protocol the one it carries); bpf_fib_lookup() is given the
		 * first next header. Left to the kernel, with the options. */
		if (ip6h->nexthdr == IPPROTO_ROUTING || ip6h->nexthdr == IPPROTO_FRAGMENT ||
		    ip6h->nexthdr == IPPROTO_DSTOPTS)
			return PASS(PASS_IP_OPTIONS);
		/* IPv6 under fib_multipath_hash_policy 2 and 3: the kernel's
		 * hash takes the flow dissector's keys, its flow label in host
		 * order where bpf_fib_lookup()'s is in network order, and 3
		 * hashes once more; every IPv6 packet, not only tunnels. */
		if ((port->hash_policy >> 4) >= 2)
			return PASS(PASS_MULTIPATH_HASH);

		fib.family = family = AF_INET6;
		fib.flowinfo = *(__be32 *)ip6h & IPV6_FLOWINFO_MASK;
		fib.l4_protocol = ip6h->nexthdr;
		fib.tot_len = l3_len;
		l4_ports(&fib, ip6h + 1, (void *)ip6h + l3_len, data_end, ip6h->nexthdr);
		__builtin_memcpy(fib.ipv6_src, &ip6h->saddr, sizeof(fib.ipv6_src));
		__builtin_memcpy(fib.ipv6_dst, &ip6h->daddr, sizeof(fib.ipv6_dst));
	} else {
		return PASS(PASS_NOT_IP);
	}

	fib.ifindex = ifindex;
	/* Flags 0: a full input lookup, policy rules included, and the MTU
	 * check (FRAG_NEEDED) so the kernel fragments or sends Packet Too
	 * Big. Never SKIP_NEIGH here: the neighbour is also what keeps IPv6
	 * from an egress port with disable_ipv6 (its neighbours are flushed
	 * and refused, while routes over a nexthop object stay), and what
	 * makes the kernel resolve the ones it does not know.
	 * The lookup may answer an IPv4 packet with family AF_INET6: a route
	 * `via inet6` (RFC 8950) gives an IPv6 gateway. The packet's own
	 * family is `family` from here on, never fib.family. */
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		/* NO_NEIGH above all: the kernel resolves ARP/ND only for
		 * packets it sees, and later packets then come back here. */
		return count(stats, fib_outcome(rc), bytes, XDP_PASS);

	/* ip_forward() checks the route's MTU, locked or not
	 * (ip_dst_mtu_maybe_forward()); bpf_fib_lookup() only a locked one
	 * (ip_mtu_from_fib_result()) and otherwise the link's. IPv6 likewise,
	 * in the output path (ip6_fragment() by dst_mtu()), against a lookup
	 * that sees a learnt path MTU but not an unlocked route MTU
	 * (ip6_mtu_from_fib6()). The program cannot tell which route matched,
	 * so a packet larger than any unlocked route MTU of its family goes
	 * to the kernel, which fragments it or sends Frag Needed / Packet Too
	 * Big where the route says so. */
	route_mtu = family == AF_INET ? port->ipv4_route_mtu : port->ipv6_route_mtu;
	if (route_mtu && l3_len > route_mtu)
		return PASS(PASS_ROUTE_MTU);

	/* Only the ports this program was attached to are redirect targets;
	 * a route out of any other interface stays the kernel's job. */
	found = port_slot(fib.ifindex);
	if (found < 0)
		return PASS(PASS_NOT_A_PORT);
	out_slot = found;
	/* Hairpin: the kernel forwards it and also sends an ICMP redirect. */
	if (fib.ifindex == ifindex)
		return PASS(PASS_SAME_PORT);

	if (family == AF_INET) {
		/* fib_validate_source(): the way back to the source must be a
		 * unicast route out of the port the packet came in on. That is
		 * what strict rp_filter asks, and more than loose or none ask:
		 * whatever fails it goes to the stack, which applies the
		 * rp_filter and accept_local the sysctls say now. The same
		 * lookup finds a source that is one of the box's own addresses
		 * (a local route), a martian with rp_filter off too. As in the
		 * kernel, the reverse lookup comes in through the egress port
		 * with the addresses swapped. NO_NEIGH still names the port. */
		struct bpf_fib_lookup rev = {};

		iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return PASS(PASS_MALFORMED);
		rev.family = AF_INET;
		rev.tos = iph->tos;
		rev.l4_protocol = iph->protocol;
		rev.sport = fib.dport;	/* the way back: the ports swapped */
		rev.dport = fib.sport;
		rev.ipv4_src = iph->daddr;
		rev.ipv4_dst = iph->saddr;
		rev.ifindex = fib.ifindex;
		/* Only the route matters here, not the source's neighbour:
		 * SKIP_NEIGH saves a lookup; a kernel that does not know the
		 * flag refuses it (-EINVAL), and then gets the full lookup. */
		rc = bpf_fib_lookup(ctx, &rev, sizeof(rev), XDPFWD_FIB_SKIP_NEIGH);
		if (rc < 0)
			rc = bpf_fib_lookup(ctx, &rev, sizeof(rev), 0);
		if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) ||
		    rev.ifindex != ifindex)
			return PASS(PASS_REVERSE_PATH);
	}

	/* Fails (and leaves the frame alone) if the port has just left the
	 * devmap: a detach in progress, when the stack takes over. */
	if (bpf_redirect_map(XDPFWD_PORTS, fib.ifindex, XDP_PASS) != XDP_REDIRECT)
		return PASS(PASS_NOT_A_PORT);

	/* ip_rcv_core() / ip6_rcv_core() trim what follows the IP packet
	 * (Ethernet padding, trailing bytes) before forwarding. */
	if (sizeof(*eth) + l3_len < bytes) {
		if (bpf_xdp_adjust_tail(ctx, (int)(sizeof(*eth) + l3_len) - (int)bytes))
			return PASS(PASS_MALFORMED);
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		eth = data;
	}

	/* The headers were checked above; the verifier wants the bounds seen
	 * again on this path. */
	if (family == AF_INET) {
		iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return count(stats, XDPFWD_DROP_REDIRECT_FAILED, bytes, XDP_DROP);
		ip_decrease_ttl(iph);
	} else {
		ip6h = (void *)(eth + 1);
		if ((void *)(ip6h + 1) > data_end)
			return count(stats, XDPFWD_DROP_REDIRECT_FAILED, bytes, XDP_DROP);
		ip6h->hop_limit--;
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);

	egress = bpf_map_lookup_elem(XDPFWD_STATS, &out_slot);
	if (egress) {
		egress->transmitted.packets++;
		egress->transmitted.bytes += data_end - data;
	}
	return count(stats, XDPFWD_FORWARDED, bytes, XDP_REDIRECT);
}
