"""IPv4 options and IPv6 hop-by-hop options as the kernel's receive and
forward paths treat them. Pure functions on bytes; whatever needs the
kernel's tables (an address the route chooses, the type of an address) is
passed in as a callable, asked only when the kernel would ask.

IPv4 (net/ipv4/ip_options.c):

    opts = compile_v4(header, addr_type, now_ms)
        __ip_options_compile() on a received header (the IP header with its
        options, from a packet ip_rcv_core() accepted). opts.problem is the
        Parameter Problem pointer when the kernel refuses the options (it
        drops the packet; ip_options_compile() sends the error), else None.
        opts.header is the header as the kernel holds it afterwards:
        record route and timestamp filled in for this hop, padding after
        END zeroed, the checksum not yet updated (as in the kernel), except
        for the spec_dst address, left to fill_spec_dst() (it costs a route
        lookup, and forwarding overwrites it in record route).

    srr_next_hop(opts, route_input) -> (verdict, nexthop)
        ip_options_rcv_srr() for a packet to one of the router's addresses:
        the source route's next hop that is not the router itself.

    forward_v4(opts, packet, rt_source) -> bytes
        ip_forward_options(): the egress address (rt_source(daddr), what
        ip_rt_get_source() chooses) into record route and into the source
        route slot that was hit, then the checksum if anything changed.

IPv6 (net/ipv6/exthdrs.c):

    hbh_refusal(packet, max_count, max_len, ioam_enabled) -> str
        ipv6_parse_hopopts() / ip6_parse_tlv(): why the kernel drops a
        packet for its hop-by-hop header ("" when it accepts it). Whatever
        ICMP error goes with a refusal the kernel sends itself, before any
        routing, also while the AF_PACKET forwarder runs.
"""

import struct
from dataclasses import dataclass

from xdpfwd.afpacket.packet import checksum

# include/uapi/linux/ip.h
IPOPT_END, IPOPT_NOOP = 0, 1
IPOPT_RR, IPOPT_TIMESTAMP, IPOPT_LSRR, IPOPT_SSRR = 7, 68, 131, 137
IPOPT_CIPSO, IPOPT_RA = 134, 148
IPOPT_TS_TSONLY, IPOPT_TS_TSANDADDR, IPOPT_TS_PRESPEC = 0, 1, 3
RTN_UNICAST, RTN_LOCAL = 1, 2
# The pointer ip_options_rcv_srr() reports for a strict route that is not
# ours to follow (htonl(16 << 24)): the destination address field.
SSRR_NOT_LOCAL = 16

# include/uapi/linux/in6.h
IPV6_TLV_PAD1, IPV6_TLV_PADN = 0, 1
IPV6_TLV_ROUTERALERT, IPV6_TLV_JUMBO, IPV6_TLV_CALIPSO, IPV6_TLV_IOAM = 5, 0xC2, 0x07, 0x31


@dataclass
class V4Options:
    """struct ip_options: offsets from the start of the IP header, 0 when
    the option is absent."""
    header: bytearray
    problem: int | None = None  # Parameter Problem pointer: the kernel drops the packet
    changed: bool = False       # opt->is_changed: the checksum must be recomputed
    srr: int = 0
    is_strictroute: bool = False
    srr_is_hit: bool = False
    nexthop: bytes = b""
    rr: int = 0
    rr_needaddr: bool = False
    ts: int = 0
    ts_needaddr: bool = False
    ts_needtime: bool = False
    router_alert: int = 0
    cipso: int = 0
    spec_slots: tuple = ()      # where __ip_options_compile() wrote spec_dst


def fill_spec_dst(opt: V4Options, addr: bytes) -> None:
    """spec_dst_fill()'s address (fib_compute_spec_dst()) into the slots
    compile_v4() left for it."""
    for at in opt.spec_slots:
        opt.header[at:at + 4] = addr


def compile_v4(header: bytes, addr_type, now_ms) -> V4Options:
    """__ip_options_compile() with an skb and its input route, as
    ip_rcv_options() calls it. addr_type(addr) gives inet_addr_type()
    (RTN_*); now_ms() gives inet_current_timestamp() as an int. Where the
    kernel writes spec_dst (record route, a timestamp with addresses) the
    slot is noted in spec_slots (see fill_spec_dst())."""
    h = bytearray(header)
    opt = V4Options(h)
    spec = []

    def fill() -> bytes:
        spec.append(i + h[i + 2] - 1)
        opt.spec_slots = tuple(spec)
        return bytes(4)

    i, left = 20, len(h) - 20
    while left > 0:
        kind = h[i]
        if kind == IPOPT_END:
            for j in range(i + 1, len(h)):
                if h[j] != IPOPT_END:
                    h[j] = IPOPT_END
                    opt.changed = True
            return opt
        if kind == IPOPT_NOOP:
            i += 1
            left -= 1
            continue
        if left < 2:
            return _problem(opt, i)
        optlen = h[i + 1]
        if optlen < 2 or optlen > left:
            return _problem(opt, i)
        ptr = h[i + 2] if optlen > 2 else 0
        if kind in (IPOPT_SSRR, IPOPT_LSRR):
            if optlen < 3:
                return _problem(opt, i + 1)
            if ptr < 4:
                return _problem(opt, i + 2)
            if opt.srr:  # RFC 1812 5.2.4.1: one source route only
                return _problem(opt, i)
            opt.is_strictroute = kind == IPOPT_SSRR
            opt.srr = i
        elif kind == IPOPT_RR:
            if opt.rr:
                return _problem(opt, i)
            if optlen < 3:
                return _problem(opt, i + 1)
            if ptr < 4:
                return _problem(opt, i + 2)
            if ptr <= optlen:
                if ptr + 3 > optlen:
                    return _problem(opt, i + 2)
                h[i + ptr - 1:i + ptr + 3] = fill()
                opt.changed = True
                h[i + 2] = ptr + 4
                opt.rr_needaddr = True
            opt.rr = i
        elif kind == IPOPT_TIMESTAMP:
            if opt.ts:
                return _problem(opt, i)
            if optlen < 4:
                return _problem(opt, i + 1)
            if ptr < 5:
                return _problem(opt, i + 2)
            flags = h[i + 3]
            if ptr <= optlen:
                if ptr + 3 > optlen:
                    return _problem(opt, i + 2)
                timeptr = None
                if flags & 0xF == IPOPT_TS_TSONLY:
                    timeptr = i + ptr - 1
                    opt.ts_needtime = True
                    h[i + 2] = ptr + 4
                elif flags & 0xF == IPOPT_TS_TSANDADDR:
                    if ptr + 7 > optlen:
                        return _problem(opt, i + 2)
                    h[i + ptr - 1:i + ptr + 3] = fill()
                    timeptr = i + ptr + 3
                    opt.ts_needaddr = opt.ts_needtime = True
                    h[i + 2] = ptr + 8
                elif flags & 0xF == IPOPT_TS_PRESPEC:
                    if ptr + 7 > optlen:
                        return _problem(opt, i + 2)
                    # Only the hop named in the slot stamps it.
                    if addr_type(bytes(h[i + ptr - 1:i + ptr + 3])) != RTN_UNICAST:
                        timeptr = i + ptr + 3
                        opt.ts_needtime = True
                        h[i + 2] = ptr + 8
                # Other flags: accepted as they are (the received path
                # has an skb, so no CAP_NET_RAW question).
                if timeptr is not None:
                    h[timeptr:timeptr + 4] = struct.pack("!I", now_ms() & 0xFFFFFFFF)
                    opt.changed = True
            elif flags & 0xF != IPOPT_TS_PRESPEC:
                overflow = flags >> 4
                if overflow == 15:
                    return _problem(opt, i + 3)
                h[i + 3] = (flags & 0xF) | ((overflow + 1) << 4)
                opt.changed = True
            opt.ts = i
        elif kind == IPOPT_RA:
            if optlen < 4:
                return _problem(opt, i + 1)
            if h[i + 2] == 0 and h[i + 3] == 0:
                opt.router_alert = i
        elif kind == IPOPT_CIPSO:
            if opt.cipso:
                return _problem(opt, i)
            opt.cipso = i
            # cipso_v4_validate(): no CIPSO DOI is configured (netlabelctl),
            # so none validates: too short points at the length, else at
            # the DOI.
            return _problem(opt, i + (1 if optlen < 8 else 2))
        # IPOPT_SEC, IPOPT_SID and unknown options pass untouched.
        i += optlen
        left -= optlen
    return opt


def _problem(opt: V4Options, pointer: int) -> V4Options:
    opt.problem = pointer
    return opt


def srr_next_hop(opt: V4Options, route_input) -> tuple[str, bytes]:
    """ip_options_rcv_srr() for a packet whose destination is one of the
    router's addresses (rt_type RTN_LOCAL). route_input(nexthop) gives the
    type of ip_route_input() for the next address in the list (RTN_UNICAST,
    RTN_LOCAL, anything else fails). Returns ("forward", nexthop) when the route goes on
    through this router (srr_is_hit), ("deliver", b"") when every address
    left is the router's own, ("problem", b"") when the list ends inside an
    address (the kernel sends Parameter Problem itself), ("drop", b"")."""
    h = opt.header
    o = opt.srr
    space, ptr = h[o + 1], h[o + 2]
    nexthop = b""
    while ptr <= space:
        if ptr + 3 > space:
            return "problem", b""
        nexthop = bytes(h[o + ptr - 1:o + ptr + 3])
        kind = route_input(nexthop)
        if kind not in (RTN_UNICAST, RTN_LOCAL):
            return "drop", b""
        if kind != RTN_LOCAL:
            break
        h[16:20] = nexthop  # "Superfast 8) loopback forward"
        opt.changed = True
        ptr += 4
    if ptr <= space:
        opt.srr_is_hit = True
        opt.nexthop = nexthop
        opt.changed = True
        return "forward", nexthop
    return "deliver", b""


def forward_v4(opt: V4Options, packet: bytes, rt_source) -> bytes:
    """ip_forward_options() on the packet as ip_forward() leaves it (the
    header compile_v4() made, the TTL decremented). rt_source(daddr) is
    what ip_rt_get_source() writes: the preferred source of the route to
    daddr out of the egress interface."""
    h = bytearray(packet[:len(opt.header)])
    changed = opt.changed
    if opt.rr_needaddr:
        o = opt.rr
        at = o + h[o + 2] - 5
        h[at:at + 4] = rt_source(bytes(h[16:20]))
        changed = True
    if opt.srr_is_hit:
        o = opt.srr
        space, ptr = h[o + 1], h[o + 2]
        while ptr <= space:
            if ptr + 3 > space or h[o + ptr - 1:o + ptr + 3] == opt.nexthop:
                break
            ptr += 4
        if ptr + 3 <= space:
            changed = True
            h[16:20] = opt.nexthop
            h[o + ptr - 1:o + ptr + 3] = rt_source(opt.nexthop)
            h[o + 2] = ptr + 4
        # else the kernel logs "Destination lost!" and sends it as it is
        if opt.ts_needaddr:
            o = opt.ts
            at = o + h[o + 2] - 9
            h[at:at + 4] = rt_source(bytes(h[16:20]))
            changed = True
    if changed:  # ip_send_check()
        h[10:12] = b"\0\0"
        h[10:12] = checksum(bytes(h)).to_bytes(2, "big")
    return bytes(h) + packet[len(h):]


def hbh_refusal(packet: bytes, max_count: int, max_len: int, ioam_enabled: bool) -> str:
    """ipv6_parse_hopopts() and ip6_parse_tlv(true, ...) for an IPv6 packet
    (from its IPv6 header on, cut to what ip6_rcv_core() keeps) whose next
    header is hop-by-hop. max_count and max_len are the namespace's
    net.ipv6.max_hbh_opts_number and max_hbh_length; a negative count also
    refuses every unknown option. ioam_enabled: the ingress interface's
    net.ipv6.conf.IF.ioam6_enabled. Returns why the kernel drops the
    packet, or "" when it goes on to routing."""
    if len(packet) < 48:
        return "hop-by-hop header cut short"
    extlen = (packet[41] + 1) << 3
    if len(packet) < 40 + extlen:
        return "hop-by-hop header cut short"
    if extlen > max_len:
        return "hop-by-hop header longer than max_hbh_length"
    disallow_unknowns = max_count < 0
    max_count = abs(max_count)
    off, left = 42, extlen - 2
    count = padlen = 0
    while left > 0:
        kind = packet[off]
        if kind == IPV6_TLV_PAD1:
            padlen += 1
            if padlen > 7:
                return "more than 7 bytes of padding"
            off += 1
            left -= 1
            continue
        if left < 2:
            return "option cut short"
        optlen = packet[off + 1] + 2
        if optlen > left:
            return "option longer than the header"
        if kind == IPV6_TLV_PADN:
            # RFC 4942 2.1.9.5: padding is at most 7 bytes, all zero.
            padlen += optlen
            if padlen > 7:
                return "more than 7 bytes of padding"
            if any(packet[off + 2:off + optlen]):
                return "PadN with non-zero bytes"
        else:
            count += 1
            if count > max_count:
                return "more options than max_hbh_opts_number"
            why = _hbh_option(packet, off, kind, disallow_unknowns, ioam_enabled)
            if why:
                return why
            padlen = 0
        off += optlen
        left -= optlen
    return ""


def _hbh_option(packet: bytes, off: int, kind: int, disallow_unknowns: bool,
                ioam_enabled: bool) -> str:
    if kind == IPV6_TLV_ROUTERALERT:  # ipv6_hop_ra()
        return "" if packet[off + 1] == 2 else "router alert of the wrong length"
    if kind == IPV6_TLV_IOAM:  # ipv6_hop_ioam()
        if off & 3:
            return "IOAM option not 4n-aligned"
        if ioam_enabled:
            # The kernel then writes trace data into the packet; not done here.
            return "IOAM on the ingress interface: not processed (LIMITATIONS)"
        return ""
    if kind == IPV6_TLV_JUMBO:
        # ipv6_hop_jumbo(): a jumbogram needs a payload over 65535 bytes,
        # more than any frame the forwarder receives; everything short of
        # one is dropped (with Parameter Problem from the kernel's copy).
        return "jumbo payload option without a jumbogram"
    if kind == IPV6_TLV_CALIPSO:
        # ipv6_hop_calipso() / calipso_validate(): without a CALIPSO DOI
        # (netlabelctl) no option validates.
        return "CALIPSO option: no DOI configured"
    # ip6_tlvopt_unknown(): the top two bits of the type say what to do.
    if disallow_unknowns:
        return "unknown option, and max_hbh_opts_number < 0"
    action = kind >> 6
    if action == 0:
        return ""
    return ("unknown option: discard", "unknown option: Parameter Problem",
            "unknown option: Parameter Problem unless multicast")[action - 1]
