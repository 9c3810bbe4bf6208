"""ICMP and ICMPv6 errors for what the AF_PACKET forwarder cannot forward,
sent as the kernel's own forwarding path would have sent them.

While the forwarder runs, the kernel's forwarding is off on its ports (see
service.py), so the kernel no longer answers for forwarded traffic:
ip_error() (net/ipv4/route.c) needs IN_DEV_FORWARD and ip6_forward()
(net/ipv6/ip6_output.c) stops at devconf_all->forwarding. This module sends
those errors instead, deciding exactly as the kernel does whether one is
sent at all, with the kernel's type, code, quote, header and rate limits.

Interface
---------
    errors = IcmpErrors()       # once per worker, inside the router's namespace
    errors.reply(frame, ingress_ifindex, cause, mtu=0) -> bool

`frame` is the Ethernet frame exactly as received on `ingress_ifindex`
(untagged); the result says whether an error was sent. `cause` is one of:

    time_exceeded      TTL / hop limit <= 1 on a packet the kernel would
                       forward. Routing comes first in the kernel: a packet
                       to an unreachable, prohibit or missing route gets
                       that error even with TTL 1, and an IPv6 link-local
                       source gets Time Exceeded when its hop limit is 1.
    no_route           no route at all (ENETUNREACH). For IPv6 this and the
                       next two return False: the kernel still sends them
                       itself with forwarding off.
    unreachable        a route of type unreachable (EHOSTUNREACH)
    prohibit           a route of type prohibit, or `ip rule ... prohibit` (EACCES)
    blackhole          a blackhole route: never an error (returns False)
    frag_needed        IPv4 with DF, or any IPv6 packet, larger than `mtu`,
                       the route's MTU (fib.Hop.mtu; IPv6: Hop.forward_mtu,
                       ip6_forward()'s); see fragment.decision()
    output_too_big     IPv6 only: within ip6_forward()'s MTU but larger than
                       `mtu`, the output path's (dst_mtu(): fib.Hop.mtu);
                       ip6_fragment() answers it after the hop limit went
                       down, with that MTU even below 1280
    neighbour_failed   the next hop never answered ARP / ND
    source_link_local  an IPv6 packet with a link-local source that would be
                       forwarded (ip6_forward(): ICMPV6_NOT_NEIGHBOUR)
    param_problem      IPv4 only: Parameter Problem, `pointer` the offset
                       reported (ip_options_rcv_srr(): a strict source route
                       that is not the router's to follow)
    sr_failed          IPv4 only: a strict source route through a gateway
                       (ip_forward(): ICMP_SR_FAILED)

What is decided here, and where each rule comes from, is said at each rule.
The pure parts (parse(), refusal(), build_ipv4(), build_icmpv6(), the
token buckets) are usable without sockets.

Limits: IPv4 options of the original are not echoed in the error (the kernel
echoes record-route, timestamp and source-route options through
__ip_options_echo()); the rate-limit state belongs to one IcmpErrors, so
with several workers each has the namespace's budget (the kernel has one per
namespace); `ip addrlabel` changes are not seen by the IPv6 source address
selection, which uses the kernel's default label table.
"""

import os
import random
import socket
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xdpfwd import sysctl
from xdpfwd.afpacket.fib import ROUTE_EVENT_GROUPS
from xdpfwd.netlink import drain, event_socket
from xdpfwd.afpacket.packet import checksum

CAUSES = frozenset({"time_exceeded", "no_route", "unreachable", "prohibit", "blackhole",
                    "frag_needed", "output_too_big", "neighbour_failed", "source_link_local",
                    "param_problem", "sr_failed"})
# Errors sent once ip_forward() / ip6_forward() has decremented the TTL /
# hop limit: they quote the packet so.
AFTER_FORWARD = frozenset({"neighbour_failed", "output_too_big"})

# include/uapi/linux/icmp.h, include/uapi/linux/icmpv6.h
ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB = 3, 11, 12
ICMP_NET_UNREACH, ICMP_HOST_UNREACH, ICMP_FRAG_NEEDED, ICMP_PKT_FILTERED = 0, 1, 4, 13
ICMP_SR_FAILED = 5
NR_ICMP_TYPES = 18
# icmp_pointers[] in net/ipv4/icmp.c: the types marked .error = 1.
ICMP_ERROR_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12})
ICMPV6_DEST_UNREACH, ICMPV6_PKT_TOOBIG, ICMPV6_TIME_EXCEED = 1, 2, 3
ICMPV6_NOROUTE, ICMPV6_ADM_PROHIBITED, ICMPV6_NOT_NEIGHBOUR, ICMPV6_ADDR_UNREACH = 0, 1, 2, 3
ICMPV6_INFOMSG_MASK = 0x80
IPV6_MIN_MTU = 1280
IPTOS_TOS_MASK, IPTOS_PREC_INTERNETCONTROL = 0x1E, 0xC0
IP_OFFSET = 0x1FFF
IPPROTO_ICMP, IPPROTO_ICMPV6 = 1, 58
# if_packet.h pkt_type values
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST = 0, 1, 2, 3

# (type, code) per cause and family. IPv4 route errors: ip_error() maps
# dst.error ENETUNREACH / EHOSTUNREACH / EACCES to these codes; IPv6:
# ip6_pkt_discard() (no route, unreachable) and ip6_pkt_prohibit() in
# net/ipv6/route.c; neighbour failure: ipv4_link_failure() in
# net/ipv4/route.c and ip6_link_failure() in net/ipv6/route.c.
V4_ERRORS = {
    "time_exceeded": (ICMP_TIME_EXCEEDED, 0),          # ip_forward(): too_many_hops
    "no_route": (ICMP_DEST_UNREACH, ICMP_NET_UNREACH),
    "unreachable": (ICMP_DEST_UNREACH, ICMP_HOST_UNREACH),
    "prohibit": (ICMP_DEST_UNREACH, ICMP_PKT_FILTERED),
    "frag_needed": (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED),  # ip_forward(): ip_exceeds_mtu()
    "neighbour_failed": (ICMP_DEST_UNREACH, ICMP_HOST_UNREACH),
    "param_problem": (ICMP_PARAMETERPROB, 0),
    "sr_failed": (ICMP_DEST_UNREACH, ICMP_SR_FAILED),
}
V6_ERRORS = {
    "time_exceeded": (ICMPV6_TIME_EXCEED, 0),           # ip6_forward(): hop_limit <= 1
    "no_route": (ICMPV6_DEST_UNREACH, ICMPV6_NOROUTE),
    "unreachable": (ICMPV6_DEST_UNREACH, ICMPV6_NOROUTE),
    "prohibit": (ICMPV6_DEST_UNREACH, ICMPV6_ADM_PROHIBITED),
    "frag_needed": (ICMPV6_PKT_TOOBIG, 0),               # ip6_forward(): ip6_pkt_too_big()
    "output_too_big": (ICMPV6_PKT_TOOBIG, 0),            # ip6_fragment(): fail_toobig
    "neighbour_failed": (ICMPV6_DEST_UNREACH, ICMPV6_ADDR_UNREACH),
    "source_link_local": (ICMPV6_DEST_UNREACH, ICMPV6_NOT_NEIGHBOUR),
}
ROUTE_ERRORS = ("no_route", "unreachable", "prohibit")

# Defaults of values that a namespace may not show: ip_rt_error_cost (HZ) and
# ip_rt_error_burst (5 * HZ) in net/ipv4/route.c are global and exist under
# /proc/sys/net/ipv4/route/ only in the initial namespace; inet_peer_*
# (net/ipv4/inetpeer.c) likewise. inet_peer_threshold is clamp(1% of RAM /
# sizeof(struct inet_peer), 4096, 65536 + 128): the upper bound on any
# machine with more than a few hundred MB.
PEER_THRESHOLD, PEER_MINTTL_S, PEER_MAXTTL_S = 65536 + 128, 120, 600
PEER_MAX_GC = 32
XRLIM_BURST_FACTOR = 6
CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)


def kernel_hz() -> int:
    """CONFIG_HZ: the coarse clocks advance once per tick, so their
    resolution is one jiffy (TICK_NSEC)."""
    return max(1, round(1 / time.clock_getres(CLOCK_MONOTONIC_COARSE)))


class Jiffies:
    """A jiffies counter from the same tick the kernel counts."""

    def __init__(self, hz: int | None = None):
        self.hz = hz or kernel_hz()

    def __call__(self) -> int:
        return int(time.clock_gettime(CLOCK_MONOTONIC_COARSE) * self.hz)


def msecs_to_jiffies(ms: int, hz: int) -> int:
    # The *_ms_jiffies sysctls store msecs_to_jiffies(), which rounds up.
    return -(-ms * hz // 1000)


# -- what the kernel sends, for one frame (pure) ----------------------------


@dataclass(frozen=True)
class Error:
    family: int        # 4 or 6
    type: int
    code: int
    info: int          # the 32-bit word after the checksum (MTU for Frag Needed / Packet Too Big)
    packet: bytes      # the original IP packet as the kernel holds it when it sends the error
    src: bytes         # the original's source: the error goes there
    dst: bytes
    cause: str


def _v4_martian(src: bytes, dst: bytes) -> str:
    """ip_route_input_slow(): sources and destinations that are dropped
    as martians before any forwarding or error (route_localnet off)."""
    # ipv4_is_multicast() is 224/4 (240/4 is routable), ipv4_is_zeronet()
    # only 0.0.0.0 (the rest of 0/8 is routable).
    if src[0] >> 4 == 0xE or src == b"\xff\xff\xff\xff":
        return "martian source (multicast or broadcast)"
    if src == bytes(4):
        return "martian source (zeronet)"
    if src[0] == 127:
        return "martian source (loopback)"
    if dst == bytes(4) or dst[0] == 127:
        return "martian destination"
    if dst[0] >> 4 == 0xE or dst == b"\xff\xff\xff\xff":
        # Multicast is ip_mr_input()'s, limited broadcast is local input:
        # neither reaches ip_forward() or ip_error(); __icmp_send() also
        # refuses RTCF_BROADCAST / RTCF_MULTICAST.
        return "broadcast or multicast destination"
    return ""


def _decrease_ttl(packet: bytes) -> bytes:
    """ip_decrease_ttl(): TTL - 1 and the incremental checksum update."""
    check = ((packet[10] << 8) | packet[11]) + 0x0100
    check = (check + (check >= 0xFFFF)) & 0xFFFF
    return packet[:8] + bytes((packet[8] - 1, packet[9])) + check.to_bytes(2, "big") + packet[12:]


def parse(frame: bytes, cause: str, mtu: int = 0, pointer: int = 0) -> Error | str:
    """The error the kernel's forward path raises for this frame, or why it
    raises none, before any rate limit or __icmp_send() / icmp6_send() rule
    (see refusal())."""
    if cause not in CAUSES:
        raise ValueError(f"unknown cause {cause!r}")
    if len(frame) < 34:
        return "frame cut short"
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00":
        ihl = (frame[14] & 0xF) * 4
        total = (frame[16] << 8) | frame[17]
        if frame[14] >> 4 != 4 or ihl < 20 or total < ihl or 14 + total > len(frame):
            return "malformed IPv4 header"  # ip_rcv_core() drops it
        # ip_rcv_core() trims the link layer's padding (pskb_trim_rcsum()).
        packet = frame[14:14 + total]
        src, dst = packet[12:16], packet[16:20]
        martian = _v4_martian(src, dst)
        if martian:
            return martian
        if cause == "blackhole":
            return "blackhole route: ip_error() sends nothing for EINVAL"
        if cause not in V4_ERRORS:
            raise ValueError(f"{cause} is an IPv6 cause")
        if cause in AFTER_FORWARD:
            # ip_forward() decrements the TTL before the packet waits for
            # its neighbour; ipv4_link_failure() quotes it so.
            packet = _decrease_ttl(packet)
        type_, code = V4_ERRORS[cause]
        info = mtu if cause == "frag_needed" else 0  # htonl(mtu) in ip_forward()
        if cause == "param_problem":
            info = (pointer & 0xFF) << 24  # htonl(pointer << 24)
        return Error(4, type_, code, info & 0xFFFFFFFF, packet, src, dst, cause)
    if ethertype == b"\x86\xdd":
        if len(frame) < 54:
            return "frame cut short"
        payload = (frame[18] << 8) | frame[19]
        if frame[14] >> 4 != 6 or 54 + payload > len(frame):
            return "malformed IPv6 header"  # ipv6_rcv_core()
        packet = frame[14:54 + payload]
        src, dst = packet[8:24], packet[24:40]
        # ipv6_rcv_core(): loopback addresses from outside and multicast
        # sources are dropped on input.
        if src == _V6_LOOPBACK or dst == _V6_LOOPBACK:
            return "loopback address received from outside"
        if src[0] == 0xFF:
            return "multicast source"
        if cause == "blackhole":
            return "blackhole route: dst_discard() sends nothing"
        if cause not in V6_ERRORS:
            raise ValueError(f"{cause} is an IPv4 cause")
        if cause in AFTER_FORWARD:
            # ip6_forward() decrements hop_limit before ip6_forward_finish():
            # the neighbour's queue and ip6_fragment() hold it so.
            packet = packet[:7] + bytes((packet[7] - 1,)) + packet[8:]
        type_, code = V6_ERRORS[cause]
        # ip6_forward() raises its MTU to IPV6_MIN_MTU; ip6_fragment() sends
        # ip6_skb_dst_mtu() as it is (a route's MTU may be set below 1280).
        info = {"frag_needed": max(mtu, IPV6_MIN_MTU), "output_too_big": mtu}.get(cause, 0)
        return Error(6, type_, code, info, packet, src, dst, cause)
    return "not IPv4 or IPv6"


_V6_LOOPBACK = bytes(15) + b"\x01"
_V6_ANY = bytes(16)
NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT = 0, 43, 44
NEXTHDR_AUTH, NEXTHDR_NONE, NEXTHDR_DEST = 51, 59, 60
_EXT_HEADERS = {NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_AUTH, NEXTHDR_NONE,
                NEXTHDR_DEST}


def _v6_ineligible(packet: bytes) -> bool:
    """is_ineligible() in net/ipv6/icmp.c, with ipv6_skip_exthdr()
    (net/ipv6/exthdrs_core.c): never answer an ICMPv6 error, nor a packet
    cut short inside its ICMPv6 header."""
    nexthdr, ptr, frag_off = packet[6], 40, 0
    while nexthdr in _EXT_HEADERS:
        if nexthdr == NEXTHDR_NONE or ptr + 2 > len(packet):
            return False  # ipv6_skip_exthdr() < 0
        if nexthdr == NEXTHDR_FRAGMENT:
            if ptr + 4 > len(packet):
                return False
            frag_off = (packet[ptr + 2] << 8) | packet[ptr + 3]
            if frag_off & ~7:
                break  # a later fragment: nexthdr stays "fragment"
            hdrlen = 8
        elif nexthdr == NEXTHDR_AUTH:
            hdrlen = (packet[ptr + 1] + 2) << 2
        else:
            hdrlen = (packet[ptr + 1] + 1) << 3
        nexthdr = packet[ptr]
        ptr += hdrlen
    if nexthdr != IPPROTO_ICMPV6:
        return False
    if ptr >= len(packet):
        # RFC 8200 4.5: a fragment without the ICMPv6 header is answered.
        return frag_off == 0
    return not packet[ptr] & ICMPV6_INFOMSG_MASK


def refusal(err: Error, pkt_type: int = PACKET_HOST) -> str:
    """__icmp_send() (net/ipv4/icmp.c) / icmp6_send() (net/ipv6/icmp.c):
    the rules on the original alone. Empty when an error may be sent."""
    p = err.packet
    if err.family == 4:
        if pkt_type != PACKET_HOST:
            return "no replies to link-layer broadcast or multicast"
        if ((p[6] << 8) | p[7]) & IP_OFFSET:
            return "not the first fragment"
        if err.type in ICMP_ERROR_TYPES and p[9] == IPPROTO_ICMP:
            ihl = (p[0] & 0xF) * 4
            if len(p) <= ihl:
                return "ICMP header cut short"
            if p[ihl] > NR_ICMP_TYPES or p[ihl] in ICMP_ERROR_TYPES:
                return "never an error about an ICMP error"
        return ""
    if err.dst[0] == 0xFF or pkt_type != PACKET_HOST:
        if err.type != ICMPV6_PKT_TOOBIG:
            return "multicast destination or not PACKET_HOST: Packet Too Big only"
    if err.src == _V6_ANY:
        return "unspecified source"
    if _v6_ineligible(p):
        return "never an error about an ICMPv6 error"
    return ""


def pkt_type_of(frame: bytes, own_mac: bytes) -> int:
    """eth_type_trans(): what the receiving device classed the frame as."""
    if frame[0] & 1:
        return PACKET_BROADCAST if frame[:6] == b"\xff" * 6 else PACKET_MULTICAST
    return PACKET_HOST if frame[:6] == own_mac else PACKET_OTHERHOST


def quote_v4(err: Error, route_mtu: int) -> bytes | None:
    """__icmp_send(): as much of the original as fits in 576 bytes (or the
    route's MTU back to the source, if smaller), or nothing if that leaves no
    room for more than an IP header. No options are echoed here."""
    room = min(route_mtu, 576) - 20 - 8
    if room <= 20:
        return None
    return err.packet[:room]


def quote_v6(err: Error) -> bytes:
    # icmp6_send(): len = min(skb->len, IPV6_MIN_MTU - ipv6hdr - icmp6hdr).
    return err.packet[:IPV6_MIN_MTU - 40 - 8]


def error_tos(err: Error) -> int:
    """__icmp_send(): errors keep the original's TOS bits, lose its ECN
    bits and carry precedence "internetwork control"."""
    return (err.packet[1] & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL


def build_ipv4(err: Error, quote: bytes, src: bytes, ttl: int, ip_id: int = 0) -> bytes:
    """The error as an IPv4 packet. With src 0.0.0.0 and ID 0 the raw
    socket's raw_send_hdrinc() fills both in as the kernel's own ICMP
    socket would (route source, ip_select_ident()); DF stays clear (the
    ICMP socket uses IP_PMTUDISC_DONT)."""
    icmp = struct.pack("!BBHI", err.type, err.code, 0, err.info) + quote
    icmp = icmp[:2] + checksum(icmp).to_bytes(2, "big") + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, error_tos(err), 20 + len(icmp), ip_id, 0, ttl,
                         IPPROTO_ICMP, 0, src, err.src)
    header = header[:10] + checksum(header).to_bytes(2, "big") + header[12:]
    return header + icmp


def build_icmpv6(err: Error, quote: bytes, src: bytes | None = None) -> bytes:
    """The ICMPv6 message. The raw ICMPv6 socket computes the checksum;
    with `src` given it is filled in here too (for tests)."""
    msg = struct.pack("!BBHI", err.type, err.code, 0, err.info) + quote
    if src is not None:
        pseudo = src + err.src + struct.pack("!I3xB", len(msg), IPPROTO_ICMPV6)
        msg = msg[:2] + checksum(pseudo + msg).to_bytes(2, "big") + msg[4:]
    return msg


# -- rate limits (pure, with an injected clock in jiffies) ---------------------


class GlobalBucket:
    """icmp_global_allow() / icmp_global_consume() in net/ipv4/icmp.c: one
    bucket per network namespace, shared by ICMP and ICMPv6. allow() only
    looks (and refills); consume() takes 0, 1 or 2 credits at random once the
    per-destination limit has let the message through, as the kernel does
    since "icmp: change the order of rate limits"."""

    def __init__(self, hz: int, now: int, rng=None):
        self.hz = hz
        self.credit = 0
        self.stamp = now - hz  # the kernel's stamp starts at 0: a full refill first
        self._rng = rng or random.SystemRandom()

    def allow(self, now: int, per_sec: int, burst: int) -> bool:
        if self.credit > 0:
            return True
        delta = min((now - self.stamp) & 0xFFFFFFFF, self.hz)
        if delta < self.hz // 50:
            return False
        incr = per_sec * delta // self.hz
        if not incr:
            return False
        self.stamp = now
        self.credit = min(self.credit + incr, burst)
        return True

    def consume(self) -> None:
        self.credit -= self._rng.randrange(3)  # get_random_u32_below(3): may go negative


@dataclass
class Peer:
    rate_tokens: int
    rate_last: int
    dtime: int


@dataclass
class PeerLimits:
    threshold: int
    minttl: int   # jiffies
    maxttl: int   # jiffies


class Peers:
    """The namespace's inet_peer tree of one family (net/ipv4/inetpeer.c):
    an entry per address, created with a full bucket, expiring when unused
    for a TTL that shrinks as the tree fills (inet_peer_gc())."""

    def __init__(self, hz: int):
        self.hz = hz
        self._peers: OrderedDict[bytes, Peer] = OrderedDict()  # oldest use first

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, key: bytes, now: int, limits: PeerLimits) -> Peer:
        peer = self._peers.get(key)
        if peer is not None:
            peer.dtime = now
            self._peers.move_to_end(key)
            return peer
        self._gc(now, limits)
        # "60*HZ is arbitrary, but chosen enough high so that the first
        # calculation of tokens is at its maximum."
        peer = self._peers[key] = Peer(0, now - 60 * self.hz, now)
        return peer

    def _gc(self, now: int, limits: PeerLimits) -> None:
        """inet_peer_gc() looks at up to PEER_MAX_GC entries (those its
        lookup walked past); the oldest ones are the ones it could drop."""
        total = len(self._peers)
        if total >= limits.threshold:
            ttl = 0  # be aggressive
        else:
            ttl = (limits.maxttl - (limits.maxttl - limits.minttl) // self.hz * total
                   // limits.threshold * self.hz)
        for key in list(self._peers)[:PEER_MAX_GC]:
            if now - self._peers[key].dtime >= ttl:
                del self._peers[key]
            else:
                break


def xrlim_allow(peer: Peer, timeout: int, now: int) -> bool:
    """inet_peer_xrlim_allow(): tokens are jiffies, `timeout` per message,
    at most XRLIM_BURST_FACTOR messages' worth."""
    token = peer.rate_tokens
    delta = now - peer.rate_last
    if delta:
        peer.rate_last = now
        token = min(token + delta, XRLIM_BURST_FACTOR * timeout)
    allowed = token >= timeout
    if allowed:
        token -= timeout
    peer.rate_tokens = token
    return allowed


def ip_error_allow(peer: Peer, cost: int, burst: int, now: int) -> bool:
    """ip_error()'s own bucket, on the same inet_peer entry (and the same
    tokens) as icmpv4_xrlim_allow() uses for the error's destination."""
    peer.rate_tokens = min(peer.rate_tokens + now - peer.rate_last, burst)
    peer.rate_last = now
    if peer.rate_tokens >= cost:
        peer.rate_tokens -= cost
        return True
    return False


# -- sysctls ----------------------------------------------------------------


@dataclass
class Settings:
    """The namespace's sysctls, rate limits in jiffies."""
    msgs_per_sec: int = 1000
    msgs_burst: int = 50
    ratelimit: int = 250
    ratemask: int = 0x1818
    use_inbound_ifaddr: bool = False
    default_ttl: int = 64
    v6_ratelimit: int = 250
    v6_ratemask: int = field(default=((1 << 128) - 1) & ~(1 << 2))  # 0-1,3-127
    error_cost: int = 250
    error_burst: int = 1250
    peers: PeerLimits = field(default_factory=lambda: PeerLimits(PEER_THRESHOLD, 0, 0))


def parse_bitmap(text: str) -> int:
    """proc_do_large_bitmap's format, e.g. "0-1,3-127"."""
    bits = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        for bit in range(int(lo), int(hi or lo) + 1):
            bits |= 1 << bit
    return bits


class Sysctls:
    """Reads the namespace's sysctls through files opened once (a /proc/sys/net
    file belongs to the namespace it was opened in), again at most once a
    jiffy-ish, so a change takes effect from the next message on."""

    REREAD_SECONDS = 0.01
    FILES = {
        "msgs_per_sec": "net/ipv4/icmp_msgs_per_sec", "msgs_burst": "net/ipv4/icmp_msgs_burst",
        "ratelimit": "net/ipv4/icmp_ratelimit", "ratemask": "net/ipv4/icmp_ratemask",
        "use_inbound_ifaddr": "net/ipv4/icmp_errors_use_inbound_ifaddr",
        "default_ttl": "net/ipv4/ip_default_ttl",
        "v6_ratelimit": "net/ipv6/icmp/ratelimit", "v6_ratemask": "net/ipv6/icmp/ratemask",
        "error_cost": "net/ipv4/route/error_cost", "error_burst": "net/ipv4/route/error_burst",
        "peer_threshold": "net/ipv4/inet_peer_threshold",
        "peer_minttl": "net/ipv4/inet_peer_minttl", "peer_maxttl": "net/ipv4/inet_peer_maxttl",
    }

    def __init__(self, hz: int, root: str = "/proc/sys"):
        self.hz = hz
        self._fds = {}
        for name, rel in self.FILES.items():
            fd = sysctl.opened(os.path.join(root, rel))
            if fd is not None:  # absent in this namespace: the kernel's default applies
                self._fds[name] = fd
        self._read_at = -1.0
        self.settings = self._read()

    def current(self) -> Settings:
        now = time.monotonic()
        if now - self._read_at >= self.REREAD_SECONDS:
            self.settings = self._read()
            self._read_at = now
        return self.settings

    def _value(self, name: str) -> str | None:
        fd = self._fds.get(name)
        return sysctl.pread(fd) if fd is not None else None

    def _read(self) -> Settings:
        hz, v = self.hz, self._value
        s = Settings()

        def num(name, default):
            text = v(name)
            return int(text) if text is not None else default

        s.msgs_per_sec = num("msgs_per_sec", 1000)
        s.msgs_burst = num("msgs_burst", 50)
        s.ratelimit = msecs_to_jiffies(num("ratelimit", 1000), hz)
        s.ratemask = num("ratemask", 0x1818)
        s.use_inbound_ifaddr = bool(num("use_inbound_ifaddr", 0))
        s.default_ttl = num("default_ttl", 64)
        s.v6_ratelimit = msecs_to_jiffies(num("v6_ratelimit", 1000), hz)
        mask = v("v6_ratemask")
        s.v6_ratemask = parse_bitmap(mask) if mask is not None else Settings().v6_ratemask
        s.error_cost = num("error_cost", hz)
        s.error_burst = num("error_burst", 5 * hz)
        # inet_peer_minttl / maxttl are shown in seconds (proc_dointvec_jiffies).
        s.peers = PeerLimits(num("peer_threshold", PEER_THRESHOLD),
                             num("peer_minttl", PEER_MINTTL_S) * hz,
                             num("peer_maxttl", PEER_MAXTTL_S) * hz)
        return s

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


# -- IPv6 source address selection ---------------------------------------------

IFA_F_TEMPORARY, IFA_F_OPTIMISTIC, IFA_F_DADFAILED = 0x01, 0x04, 0x08
IFA_F_DEPRECATED, IFA_F_TENTATIVE = 0x20, 0x40
# ip6addrlbl_init_table in net/ipv6/addrlabel.c (RFC 6724's default policy).
_LABELS = [(bytes.fromhex(p.ljust(32, "0")), plen, label) for p, plen, label in (
    ("", 0, 1), ("fc", 7, 5), ("fec0", 10, 11), ("2002", 16, 2), ("3ffe", 16, 12),
    ("2001", 32, 6), ("20010010", 28, 7), ("00000000000000000000ffff", 96, 4),
    ("", 96, 3), ("00000000000000000000000000000001", 128, 0))]


def _common_prefix(a: bytes, b: bytes) -> int:
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return 128 - x.bit_length()


def _v6_scope(addr: bytes) -> int:
    """__ipv6_addr_src_scope(__ipv6_addr_type()) for unicast addresses."""
    if addr == _V6_LOOPBACK:
        return 0x1
    if addr[0] == 0xFF:
        return addr[1] & 0xF
    if addr[0] == 0xFE and addr[1] & 0xC0 == 0x80:
        return 0x2
    if addr[0] == 0xFE and addr[1] & 0xC0 == 0xC0:
        return 0x5
    return 0xE


def _v6_label(addr: bytes) -> int:
    best, label = -1, 1
    for prefix, plen, lab in _LABELS:
        if plen > best and _common_prefix(addr, prefix) >= plen:
            best, label = plen, lab
    return label


@dataclass(frozen=True)
class Addr6:
    ifindex: int
    addr: bytes
    prefixlen: int
    flags: int


def select_v6_source(candidates: list[Addr6], dst: bytes, dst_ifindex: int) -> bytes | None:
    """ipv6_dev_get_saddr() (net/ipv6/addrconf.c) for a socket without
    preferences: RFC 6724's rules 1, 2, 3, 5, 6, 7 and 8 in the kernel's
    order; the first candidate wins a tie. Only the device's own addresses
    count for a link-local or multicast destination."""
    dst_scope = _v6_scope(dst)
    dst_label = _v6_label(dst)
    use_oif_only = dst[0] == 0xFF or dst_scope <= 0x2
    best, best_score = None, None
    for c in candidates:
        if use_oif_only and c.ifindex != dst_ifindex:
            continue
        if c.flags & IFA_F_TENTATIVE and not c.flags & IFA_F_OPTIMISTIC:
            continue
        if c.addr == _V6_ANY or c.addr[0] == 0xFF:
            continue
        scope = _v6_scope(c.addr)
        score = (
            c.addr == dst,                                              # rule 1
            -scope if scope >= dst_scope else scope - 128,              # rule 2
            c.addr == _V6_LOOPBACK or not c.flags & (IFA_F_DEPRECATED | IFA_F_OPTIMISTIC),  # 3
            c.ifindex == dst_ifindex,                                   # rule 5
            _v6_label(c.addr) == dst_label,                             # rule 6
            not c.flags & IFA_F_TEMPORARY,                              # rule 7
            min(_common_prefix(c.addr, dst), c.prefixlen),              # rule 8
        )
        if best_score is None or score > best_score:
            best, best_score = c.addr, score
    return best


# -- the sender ---------------------------------------------------------------

RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, RTN_ANYCAST, RTN_MULTICAST = 1, 2, 3, 4, 5
RTM_F_FIB_MATCH = 0x2000
MAX_CACHED = 4096


@dataclass(frozen=True)
class RouteBack:
    """The FIB entry the error's route lookup finds for the original's source."""
    error: str = ""        # why no route back (then nothing is sent)
    type: int = RTN_UNICAST
    oif: int = 0
    plen: int = 0
    dst: bytes = b""       # the entry's prefix
    gateway: bool = False
    prefsrc: bool = False
    mtu: int = 0
    hoplimit: int = 0      # RTAX_HOPLIMIT, 0 when unset
    loopback: bool = False


class IcmpErrors:
    """Sends the kernel's forwarding errors through raw sockets of the
    namespace it is created in. See the module docstring."""

    def __init__(self, clock=None, rng=None, proc: str = "/proc/sys"):
        self.clock = clock or Jiffies()
        self.hz = self.clock.hz
        self.sysctls = Sysctls(self.hz, proc)
        now = self.clock()
        self.global_bucket = GlobalBucket(self.hz, now, rng)
        self.peers4 = Peers(self.hz)
        self.peers6 = Peers(self.hz)
        self.last_refusal = ""  # why the last reply() sent nothing (for tests and logs)
        # IPPROTO_RAW implies IP_HDRINCL. The kernel routes the error and
        # resolves its neighbour; forwarding being off does not concern
        # locally generated packets.
        self._raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.IPPROTO_RAW)
        self._raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.IPPROTO_ICMPV6)
        # Nothing is read from this socket: let nothing queue on it.
        self._raw6.setsockopt(socket.IPPROTO_ICMPV6, 1, b"\xff" * 32)  # ICMP6_FILTER: block all
        self._events = event_socket(ROUTE_EVENT_GROUPS)
        self._ipr = IPRoute()
        self._routes: dict[tuple, RouteBack] = {}
        self._links: dict[int, tuple[bytes, int, bool]] = {}  # ifindex -> (MAC, MTU, loopback)
        self._addrs: dict[int, list] = {}  # family -> addresses

    def close(self) -> None:
        self.sysctls.close()
        self._ipr.close()
        for s in (self._raw4, self._raw6, self._events):
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def reply(self, frame: bytes, ingress_ifindex: int, cause: str, mtu: int = 0,
              pkt_type: int | None = None, pointer: int = 0) -> bool:
        """Send the error the kernel would send for `frame`; True if sent.
        pkt_type (PACKET_*) defaults to what the frame's destination MAC
        makes of it on the ingress device."""
        self._poll_events()
        err = parse(frame, cause, mtu, pointer)
        if isinstance(err, str):
            return self._refuse(err)
        if pkt_type is None:
            pkt_type = pkt_type_of(frame, self._link(ingress_ifindex)[0])
        if pkt_type == PACKET_OTHERHOST:
            # ip_rcv_core() / ipv6_rcv(): another host's frame never gets
            # as far as forwarding.
            return self._refuse("another host's frame (PACKET_OTHERHOST)")
        settings = self.sysctls.current()
        now = self.clock()
        if err.family == 4:
            return self._reply4(err, ingress_ifindex, pkt_type, settings, now)
        return self._reply6(err, ingress_ifindex, pkt_type, settings, now)

    # IPv4: ip_error() and __icmp_send() in their order.
    def _reply4(self, err, ingress, pkt_type, s, now) -> bool:
        if err.cause in ROUTE_ERRORS:
            peer = self.peers4.get(err.src, now, s.peers)
            if not ip_error_allow(peer, s.error_cost, s.error_burst, now):
                return self._refuse("ip_error() rate limit")
        why = refusal(err, pkt_type)
        if why:
            return self._refuse(why)
        # icmpv4_mask_allow(): Frag Needed and types outside the mask are
        # not limited at all.
        limited = not (err.type == ICMP_DEST_UNREACH and err.code == ICMP_FRAG_NEEDED) \
            and err.type <= NR_ICMP_TYPES and bool(s.ratemask >> err.type & 1)
        if limited and not self.global_bucket.allow(now, s.msgs_per_sec, s.msgs_burst):
            return self._refuse("icmp_global_allow(): icmp_msgs_per_sec")
        src = b"\0\0\0\0"  # __icmp_send(): saddr 0 lets the route choose
        if s.use_inbound_ifaddr:
            src = self._inet_select_addr(ingress, err.src) or src
        route = self._route_back(4, err.src, 0)
        if route.error:
            return self._refuse(route.error)
        if route.type in (RTN_BROADCAST, RTN_MULTICAST):
            return self._refuse("route back is broadcast or multicast")
        if limited:
            if not route.loopback:
                peer = self.peers4.get(err.src, now, s.peers)
                if not xrlim_allow(peer, s.ratelimit, now):
                    return self._refuse("icmpv4_xrlim_allow(): icmp_ratelimit")
            self.global_bucket.consume()
        quote = quote_v4(err, route.mtu)
        if quote is None:
            return self._refuse("route MTU leaves no room to quote")
        # ip_select_ttl(): the route's hoplimit metric, else ip_default_ttl.
        packet = build_ipv4(err, quote, src, route.hoplimit or s.default_ttl)
        try:
            self._raw4.sendto(packet, (socket.inet_ntop(socket.AF_INET, err.src), 0))
        except OSError as e:
            return self._refuse(f"send: {os.strerror(e.errno)}")
        self.last_refusal = ""
        return True

    # IPv6: icmp6_send() in its order.
    def _reply6(self, err, ingress, pkt_type, s, now) -> bool:
        if err.cause in ROUTE_ERRORS:
            # Seen in the lab, and in the source: these routes' input
            # functions (ip6_pkt_discard(), ip6_pkt_prohibit()) send the
            # error whatever the forwarding sysctls say. Sending it here
            # too would answer twice.
            return self._refuse("the kernel sends it itself (ip6_pkt_drop())")
        why = refusal(err, pkt_type)
        if why:
            return self._refuse(why)
        limited = bool(s.v6_ratemask >> err.type & 1)  # icmpv6_mask_allow()
        if limited and not self.global_bucket.allow(now, s.msgs_per_sec, s.msgs_burst):
            return self._refuse("icmp_global_allow(): icmp_msgs_per_sec")
        # A scoped source (link-local) is answered out of the interface the
        # packet came in on (icmp6_iif()).
        oif = ingress if _v6_scope(err.src) <= 0x2 else 0
        route = self._route_back(6, err.src, oif)
        if route.error:
            return self._refuse(route.error)
        if limited:
            if not route.loopback:
                tmo = s.v6_ratelimit
                if route.plen < 128:
                    tmo >>= (128 - route.plen) >> 5  # "more bandwidth to wider prefixes"
                peer = self.peers6.get(err.src, now, s.peers)
                if not xrlim_allow(peer, tmo, now):
                    return self._refuse("icmpv6_xrlim_allow(): icmp/ratelimit")
            self.global_bucket.consume()
        # icmpv6_route_lookup(): no error to an anycast source.
        if route.type == RTN_ANYCAST or (route.plen < 127 and not route.gateway
                                         and route.dst == err.src):
            return self._refuse("anycast source")
        src = None
        if not route.prefsrc:
            # "select a more meaningful saddr from input if": the ingress
            # device's view of the source, not the output route's.
            src = select_v6_source(self._addresses6(), err.src, ingress)
        msg = build_icmpv6(err, quote_v6(err))
        ancillary = []
        if src is not None:
            ancillary.append((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                              src + struct.pack("@I", 0)))
        dst = (socket.inet_ntop(socket.AF_INET6, err.src), 0, 0, oif)
        try:
            self._raw6.sendmsg([msg], ancillary, 0, dst)
        except OSError as e:
            return self._refuse(f"send: {os.strerror(e.errno)}")
        self.last_refusal = ""
        return True

    def _refuse(self, why: str) -> bool:
        self.last_refusal = why
        return False

    # -- the kernel's tables, cached until anything changes ------------------

    def _poll_events(self) -> None:
        if drain(self._events):
            self._routes.clear()
            self._links.clear()
            self._addrs.clear()

    def _link(self, ifindex: int) -> tuple[bytes, int, bool]:
        link = self._links.get(ifindex)
        if link is None:
            (msg,) = self._ipr.link("get", index=ifindex)
            mac = msg.get_attr("IFLA_ADDRESS") or ""
            link = self._links[ifindex] = (bytes.fromhex(mac.replace(":", "")) or bytes(6),
                                           msg.get_attr("IFLA_MTU"), bool(msg["flags"] & 0x8))
        return link

    def _route_back(self, family: int, addr: bytes, oif: int) -> RouteBack:
        key = (family, addr, oif)
        route = self._routes.get(key)
        if route is None:
            if len(self._routes) >= MAX_CACHED:
                self._routes.clear()
            route = self._routes[key] = self._ask_route(family, addr, oif)
        return route

    def _ask_route(self, family: int, addr: bytes, oif: int) -> RouteBack:
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        req = {"family": af, "dst": socket.inet_ntop(af, addr), "flags": RTM_F_FIB_MATCH}
        if oif:
            req["oif"] = oif
        try:
            (msg,) = self._ipr.route("get", **req)
        except NetlinkError as e:
            return RouteBack(error=f"no route back to the source: {os.strerror(e.code)}")
        oif = msg.get_attr("RTA_OIF") or 0
        mtu_link, loopback = 0, False
        if oif:
            _, mtu_link, loopback = self._link(oif)
        metrics = msg.get_attr("RTA_METRICS")
        mtu = (metrics.get_attr("RTAX_MTU") if metrics else None) or mtu_link or 65535
        hoplimit = (metrics.get_attr("RTAX_HOPLIMIT") if metrics else None) or 0
        dst = msg.get_attr("RTA_DST")
        return RouteBack(
            type=msg["type"], oif=oif, plen=msg["dst_len"],
            dst=socket.inet_pton(af, dst) if dst else bytes(len(addr)),
            gateway=bool(msg.get_attr("RTA_GATEWAY") or msg.get_attr("RTA_VIA")
                         or msg.get_attr("RTA_MULTIPATH")),
            prefsrc=bool(msg.get_attr("RTA_PREFSRC")), mtu=mtu, hoplimit=hoplimit,
            loopback=loopback or msg["type"] == RTN_LOCAL)

    def _addresses(self, family: int) -> list:
        addrs = self._addrs.get(family)
        if addrs is None:
            af = socket.AF_INET if family == 4 else socket.AF_INET6
            addrs = self._addrs[family] = list(self._ipr.get_addr(family=af))
        return addrs

    def _addresses6(self) -> list[Addr6]:
        out = []
        for msg in self._addresses(6):
            flags = msg.get_attr("IFA_FLAGS")
            out.append(Addr6(msg["index"], socket.inet_pton(socket.AF_INET6,
                                                            msg.get_attr("IFA_ADDRESS")),
                             msg["prefixlen"], msg["flags"] if flags is None else flags))
        return out

    def _inet_select_addr(self, ifindex: int, dst: bytes) -> bytes | None:
        """inet_select_addr(dev, dst, RT_SCOPE_LINK) in net/ipv4/devinet.c,
        for the ingress device: its first primary address in dst's subnet,
        else its first primary address of scope link or wider."""
        first = None
        for msg in self._addresses(4):
            if msg["index"] != ifindex or msg["flags"] & 0x01:  # IFA_F_SECONDARY
                continue
            if msg["scope"] > 253:  # RT_SCOPE_HOST and RT_SCOPE_NOWHERE
                continue
            local = socket.inet_pton(socket.AF_INET, msg.get_attr("IFA_LOCAL")
                                     or msg.get_attr("IFA_ADDRESS"))
            plen = msg["prefixlen"]
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
            if int.from_bytes(local, "big") & mask == int.from_bytes(dst, "big") & mask:
                return local
            first = first or local
        return first
