/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one description of xdpfwd's maps, shared by the kernel side
 * (bpf/redirect.c includes it) and user space (xdpfwd/layout.py reads the
 * defines and the XDPFWD_OUTCOMES list below). Change it here only.
 */
#ifndef XDPFWD_COUNTERS_H
#define XDPFWD_COUNTERS_H

/* Names the kernel shows (bpftool, netlink); user space creates the maps
 * under these names and later finds its own program and maps by them, so
 * they are at most 15 characters. */
#define XDPFWD_PROG_NAME  xdpfwd_redirect
#define XDPFWD_STATS_MAP  xdpfwd_stats
#define XDPFWD_PORTS_MAP  xdpfwd_ports

/* Interfaces one program can serve: both maps' max_entries. */
#define XDPFWD_MAX_PORTS  64

/*
 * Every packet the program sees ends in exactly one outcome.
 * X(ENUM, kind, label): kind is forwarded, passed (XDP_PASS, the kernel's
 * stack takes the packet) or dropped; label is the stable name user space
 * shows (`stats --json` pass_reasons, the exporter's reason label).
 * The position in this list is the index into struct xdpfwd_counters:
 * append new outcomes at the end, never reorder.
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
	X(DROP_REDIRECT_FAILED, dropped,   "redirect_failed")

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

/* Value of the per-CPU hash XDPFWD_STATS_MAP, keyed by ifindex (__u32).
 * outcome[] counts what arrived on that port, one outcome per packet;
 * transmitted counts what was redirected out of it (its egress side).
 * User space creates the entries at attach time.
 * XDPFWD_PORTS_MAP is a DEVMAP_HASH, ifindex (__u32) -> ifindex (__u32). */
struct xdpfwd_counters {
	struct xdpfwd_count outcome[XDPFWD_N_OUTCOMES];
	struct xdpfwd_count transmitted;
};

#endif /* XDPFWD_COUNTERS_H */
