/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one description of xdpfwd's maps, shared by the kernel side
 * (bpf/redirect.c includes it) and user space (xdpfwd/layout.py reads the
 * defines, the structs' shape and the XDPFWD_OUTCOMES list below). Change
 * it here only.
 */
#ifndef XDPFWD_COUNTERS_H
#define XDPFWD_COUNTERS_H

/* Names the kernel shows (bpftool, netlink); user space creates the maps
 * under these names and later finds its own program and maps by them, so
 * they are at most 15 characters. */
#define XDPFWD_PROG_NAME  xdpfwd_redirect
#define XDPFWD_STATS_MAP  xdpfwd_stats
#define XDPFWD_PORTS_MAP  xdpfwd_ports
#define XDPFWD_CONFIG_MAP xdpfwd_config

/* Interfaces one program can serve: the maps' max_entries. */
#define XDPFWD_MAX_PORTS  64

/*
 * Every packet the program sees is counted as received, and then ends in
 * exactly one outcome. The two are counted apart, so that
 * received == forwarded + passed + dropped is a check that can fail.
 * X(ENUM, kind, label): kind is forwarded, passed (XDP_PASS, the kernel's
 * stack takes the packet and decides, as if xdpfwd were not there) or
 * dropped; label is the stable name user space shows (`stats --json`
 * pass_reasons, the exporter's reason label).
 * The position in this list is the index into struct xdpfwd_counters'
 * outcome[]: append new outcomes at the end, never reorder.
 */
#define XDPFWD_OUTCOMES(X)                                                   \
	X(FORWARDED,            forwarded, "forwarded")                      \
	X(PASS_NOT_IP,          passed,    "not_ip")                         \
	X(PASS_VLAN,            passed,    "vlan")                           \
	X(PASS_MALFORMED,       passed,    "malformed")                      \
	X(PASS_MULTICAST,       passed,    "multicast")                      \
	X(PASS_BAD_CHECKSUM,    passed,    "bad_checksum")                   \
	X(PASS_IP_OPTIONS,      passed,    "ip_options")                     \
	X(PASS_LINK_LOCAL,      passed,    "link_local")                     \
	X(PASS_TTL,             passed,    "ttl_exceeded")                   \
	X(PASS_FIB_BLACKHOLE,   passed,    "fib_blackhole")                  \
	X(PASS_FIB_UNREACHABLE, passed,    "fib_unreachable")                \
	X(PASS_FIB_PROHIBIT,    passed,    "fib_prohibit")                   \
	X(PASS_FIB_NOT_FWDED,   passed,    "fib_not_forwarded")              \
	X(PASS_FIB_FWD_DISABLED, passed,   "fib_forwarding_disabled")        \
	X(PASS_FIB_UNSUPP_LWT,  passed,    "fib_unsupported_lwt")            \
	X(PASS_FIB_NO_NEIGH,    passed,    "fib_no_neighbour")               \
	X(PASS_FIB_FRAG_NEEDED, passed,    "fib_frag_needed")                \
	X(PASS_FIB_OTHER,       passed,    "fib_other")                      \
	X(PASS_NOT_A_PORT,      passed,    "egress_not_a_port")              \
	X(PASS_SAME_PORT,       passed,    "egress_is_ingress")              \
	X(DROP_REDIRECT_FAILED, dropped,   "redirect_failed")                \
	X(PASS_OTHER_HOST,      passed,    "other_host")                     \
	X(PASS_MARTIAN_SOURCE,  passed,    "martian_source")                 \
	X(PASS_MARTIAN_DEST,    passed,    "martian_destination")            \
	X(PASS_REVERSE_PATH,    passed,    "reverse_path")                   \
	X(PASS_IPV6_DISABLED,   passed,    "ipv6_disabled")                  \
	X(PASS_ROUTE_MTU,       passed,    "route_mtu")                      \
	X(PASS_NDP,             passed,    "ndp")                            \
	X(PASS_ICMP_ERROR,      passed,    "icmp_error")                     \
	X(PASS_MULTIPATH_HASH,  passed,    "multipath_hash")

enum xdpfwd_outcome {
#define XDPFWD_ENUM(name, kind, label) XDPFWD_##name,
	XDPFWD_OUTCOMES(XDPFWD_ENUM)
#undef XDPFWD_ENUM
	XDPFWD_N_OUTCOMES
};

struct xdpfwd_count {
	__u64 packets;
	__u64 bytes;
};

/*
 * The ports of one program are numbered 0..n-1 in the order given to
 * attach: their slots. The program learns its ports' slots when it is
 * compiled (XDPFWD_PORT_SLOTS, a list of X(ifindex, slot)), so finding a
 * port costs a compare, not a hash lookup.
 *
 * XDPFWD_CONFIG_MAP: ARRAY, slot (__u32) -> struct xdpfwd_port, written by
 * user space at attach, again by an attach that finds the program in place
 * and, while `run` forwards, whenever the port changes (the program cannot
 * read either field from the kernel itself); user space reads it to name a
 * slot's counters.
 * XDPFWD_STATS_MAP: PERCPU_ARRAY, slot (__u32) -> struct xdpfwd_counters.
 * XDPFWD_PORTS_MAP: DEVMAP_HASH, ifindex (__u32) -> ifindex (__u32): the
 * redirect targets; detach takes a port out of it first.
 */
struct xdpfwd_port {
	__u32 ifindex;
	__u8  mac[6];	/* the port's own address: frames to any other are not ours */
	__u8  ipv6_disabled;	/* net.ipv6.conf.PORT.disable_ipv6, or no IPv6 on it:
				 * ip6_rcv_core() drops the port's IPv6 */
	/* net.ipv{4,6}.fib_multipath_hash_policy, IPv4's in the low four
	 * bits, IPv6's in the high four; the same in every port's entry.
	 * Some policies hash what bpf_fib_lookup() is not given (the
	 * packet itself): IPv4 under 3 and its tunnels under 2, IPv6 under
	 * 2 and 3 go to the kernel. */
	__u8  hash_policy;
	/* The smallest MTU set on any IPv4 route without `lock`, 0 for none;
	 * the same in every port's entry. ip_forward() honours such an MTU,
	 * bpf_fib_lookup() does not see it: larger IPv4 packets are left to
	 * the kernel. (With ip_forward_use_pmtu: at most min_pmtu.) */
	__u32 ipv4_route_mtu;
	/* The same for IPv6 routes: ip6_forward() does not honour such an
	 * MTU, but the output path does (ip6_fragment() answers Packet Too
	 * Big), and bpf_fib_lookup() sees it only once a path MTU is learnt. */
	__u32 ipv6_route_mtu;
};

struct xdpfwd_counters {
	struct xdpfwd_count received;	/* every frame, before any decision */
	struct xdpfwd_count outcome[XDPFWD_N_OUTCOMES];
	struct xdpfwd_count transmitted;	/* redirected out of this port */
};

#endif /* XDPFWD_COUNTERS_H */
