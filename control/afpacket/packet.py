"""The AF_PACKET forwarder's decision for one frame: the same checks, in the
same order, with the same outcomes as bpf/redirect.c.

decide() returns (outcome index, egress ifindex, frame to send or None).
Only "forwarded" comes with a frame: its MACs rewritten, TTL / hop limit
decremented and (IPv4) the header checksum updated as the kernel does, and
cut to the IP packet's length as ip_rcv_core() trims it.
"""

import struct

from xdpfwd.layout import layout

_IDX = {o.label: o.index for o in layout().outcomes}
FORWARDED = _IDX["forwarded"]
NOT_IP, VLAN, MALFORMED = _IDX["not_ip"], _IDX["vlan"], _IDX["malformed"]
MULTICAST, BAD_CHECKSUM = _IDX["multicast"], _IDX["bad_checksum"]
IP_OPTIONS, LINK_LOCAL, TTL = _IDX["ip_options"], _IDX["link_local"], _IDX["ttl_exceeded"]
FRAG_NEEDED, NOT_A_PORT = _IDX["fib_frag_needed"], _IDX["egress_not_a_port"]
SAME_PORT, NO_NEIGH = _IDX["egress_is_ingress"], _IDX["fib_no_neighbour"]
REDIRECT_FAILED = _IDX["redirect_failed"]
OTHER_HOST, REVERSE_PATH = _IDX["other_host"], _IDX["reverse_path"]
FWD_DISABLED = _IDX["fib_forwarding_disabled"]
MARTIAN_SOURCE, MARTIAN_DEST = _IDX["martian_source"], _IDX["martian_destination"]
IPV6_DISABLED, NDP = _IDX["ipv6_disabled"], _IDX["ndp"]
ICMP_ERROR = _IDX["icmp_error"]
OUTCOME_INDEX = _IDX

ETH_IPV4, ETH_IPV6 = b"\x08\x00", b"\x86\xdd"
ETH_VLAN = (b"\x81\x00", b"\x88\xa8")
IPPROTO_HOPOPTS = 0
# ipv6_ext_hdr()'s headers that ipv6_skip_exthdr() walks past: hop-by-hop,
# routing, fragment, AH, destination options (at No Next Header it gives up).
IPV6_EXT_HEADERS = frozenset({0, 43, 44, 51, 60})
IPV6_EXT_MAX = 6  # bpf/redirect.c's: how many the fast paths walk
# Routing, fragment, destination options: the headers the kernel's flow
# dissector walks past to the transport header (hop-by-hop goes earlier).
IPV6_DISSECTED_HEADERS = frozenset({43, 44, 60})
NOT_ND, ND, DEEP = 0, 1, 2
# icmp_is_err() and icmpv6_is_err(): the ICMP errors the kernel's multipath
# hash takes from the quoted header (bpf/redirect.c).
ICMP_ERRORS, ICMPV6_ERRORS = frozenset({3, 4, 5, 11, 12}), frozenset({1, 2, 3, 4})
_WORDS = struct.Struct("!10H")


def ipv4_checksum_ok(frame: bytes) -> bool:
    total = sum(_WORDS.unpack_from(frame, 14))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data, odd lengths padded."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def decrement_ttl_checksum(check: int) -> int:
    """The kernel's ip_decrease_ttl() arithmetic on the big-endian value."""
    check += 0x0100
    return (check + (check >= 0xFFFF)) & 0xFFFF


def ipv4_martian_source(a: bytes) -> bool:
    """ip_route_input_slow(): multicast, limited broadcast, 0.0.0.0
    (ipv4_is_zeronet(): the rest of 0/8 is routable), 127/8."""
    return a[0] >> 4 == 0xE or a == b"\xff\xff\xff\xff" or a == bytes(4) or a[0] == 127


def ipv6_any_or_loopback(a: bytes) -> bool:
    return a[:15] == bytes(15) and a[15] in (0, 1)


def ipv6_nd_message(frame: bytes, end: int, limit: int | None = IPV6_EXT_MAX) -> int:
    """ND when the IPv6 packet in frame[14:end] carries a Neighbour
    Discovery message (ICMPv6 133-137, what ip6_forward_proxy_check()
    looks for) past its extension headers, walked as ipv6_skip_exthdr()
    walks them; DEEP when more than `limit` extension headers come first
    (None: no limit, as in the kernel); else NOT_ND."""
    nexthdr, off, walked = frame[20], 54, 0
    while nexthdr in IPV6_EXT_HEADERS:
        if limit is not None and walked == limit:
            return DEEP
        if off + 2 > end:
            return NOT_ND
        if nexthdr == 44:
            # A fragment other than the first stops the walk there.
            if off + 4 > end or ((frame[off + 2] << 8) | frame[off + 3]) & 0xFFF8:
                return NOT_ND
            length = 8
        elif nexthdr == 51:
            length = (frame[off + 1] + 2) << 2  # ipv6_authlen()
        else:
            length = (frame[off + 1] + 1) << 3  # ipv6_optlen()
        nexthdr, off, walked = frame[off], off + length, walked + 1
    if nexthdr == 58 and off < end and 133 <= frame[off] <= 137:
        return ND
    return NOT_ND


def decide(frame: bytes, ingress: int, vlan_tagged: bool, fib, ports,
           disabled: frozenset = frozenset()) -> tuple:
    """One frame arriving on `ingress`. fib answers lookup(family, dst)
    with a Hop, mac(ifindex) with a port's address, ipv6_disabled(ifindex)
    with its IPv6 switch and reverse_ok() with the reverse-path check; ports is the set of ifindexes the forwarder
    serves; disabled holds the (family, ingress) pairs the kernel's own
    forwarding was off for before the forwarder started (what
    bpf_fib_lookup() answers with FWD_DISABLED)."""
    n = len(frame)
    if n < 14:
        return MALFORMED, 0, None
    if frame[0] & 1:
        return MULTICAST, 0, None
    if frame[0:6] != fib.mac(ingress):
        return OTHER_HOST, 0, None
    # AF_PACKET hands VLAN frames over untagged, the tag in the metadata.
    ethertype = frame[12:14]
    if vlan_tagged or ethertype in ETH_VLAN:
        return VLAN, 0, None

    if ethertype == ETH_IPV4:
        if n < 34:
            return MALFORMED, 0, None
        vihl = frame[14]
        total = (frame[16] << 8) | frame[17]
        # ip_rcv_core(): the length must cover the header, options included.
        if vihl >> 4 != 4 or vihl & 0xF < 5 or total < (vihl & 0xF) * 4 or 14 + total > n:
            return MALFORMED, 0, None
        if vihl & 0xF != 5:
            return IP_OPTIONS, 0, None
        if not ipv4_checksum_ok(frame):
            return BAD_CHECKSUM, 0, None
        src, dst = frame[26:30], frame[30:34]
        if ipv4_martian_source(src):
            return MARTIAN_SOURCE, 0, None
        if dst[0] >> 4 == 0xE or dst == b"\xff\xff\xff\xff":
            return MULTICAST, 0, None
        if dst == bytes(4) or dst[0] == 127:
            return MARTIAN_DEST, 0, None
        ttl = frame[22]
        if ttl <= 1:
            return TTL, 0, None
        # An ICMP error takes the path of the packet it quotes (the
        # kernel's multipath hash): bpf/redirect.c leaves it to the kernel.
        if frame[23] == 1 and not ((frame[20] << 8) | frame[21]) & 0x1FFF and total > 20 \
                and frame[34] in ICMP_ERRORS:
            return ICMP_ERROR, 0, None
        if (4, ingress) in disabled:
            return FWD_DISABLED, 0, None
        hop = fib.lookup(4, dst)
    elif ethertype == ETH_IPV6:
        # ip6_rcv_core() drops it before looking at the header.
        if fib.ipv6_disabled(ingress):
            return IPV6_DISABLED, 0, None
        if n < 54:
            return MALFORMED, 0, None
        payload = (frame[18] << 8) | frame[19]
        if frame[14] >> 4 != 6 or 54 + payload > n:
            return MALFORMED, 0, None
        if frame[20] == IPPROTO_HOPOPTS:
            return IP_OPTIONS, 0, None
        src, dst = frame[22:38], frame[38:54]
        if src[0] == 0xFF or ipv6_any_or_loopback(src):
            return MARTIAN_SOURCE, 0, None
        if ipv6_any_or_loopback(dst):
            return MARTIAN_DEST, 0, None
        if dst[0] == 0xFF:
            return MULTICAST, 0, None
        if (frame[22] == 0xFE and frame[23] & 0xC0 == 0x80) or \
                (frame[38] == 0xFE and frame[39] & 0xC0 == 0x80):
            return LINK_LOCAL, 0, None
        ttl = frame[21]
        if ttl <= 1:
            return TTL, 0, None
        total = 40 + payload
        # ip6_forward(): ND for a proxied address is the kernel's to answer.
        nd = ipv6_nd_message(frame, 14 + total)
        if nd != NOT_ND:
            return (NDP if nd == ND else IP_OPTIONS), 0, None
        if frame[20] == 58 and total > 40 and frame[54] in ICMPV6_ERRORS:
            return ICMP_ERROR, 0, None
        # Policy rules and the multipath hash by ports look past these
        # (the flow dissector): bpf/redirect.c leaves them to the kernel.
        if frame[20] in IPV6_DISSECTED_HEADERS:
            return IP_OPTIONS, 0, None
        if (6, ingress) in disabled:
            return FWD_DISABLED, 0, None
        hop = fib.lookup(6, frame[38:54])
    else:
        return NOT_IP, 0, None

    # bpf_fib_lookup() checks the MTU once it has a route, before it looks
    # for the neighbour: FRAG_NEEDED wins over NO_NEIGH there, so here too.
    if hop.outcome == "forwarded" or hop.outcome == "fib_no_neighbour":
        if total > hop.mtu:
            return FRAG_NEEDED, hop.ifindex, None
    if hop.outcome != "forwarded":
        return OUTCOME_INDEX[hop.outcome], hop.ifindex, None
    if hop.ifindex not in ports:
        return NOT_A_PORT, hop.ifindex, None
    if hop.ifindex == ingress:
        return SAME_PORT, hop.ifindex, None

    end = 14 + total
    if ethertype == ETH_IPV4:
        if not fib.reverse_ok(src, dst, ingress, hop.ifindex):
            return REVERSE_PATH, hop.ifindex, None
        check = decrement_ttl_checksum((frame[24] << 8) | frame[25])
        out = b"".join((hop.dmac, hop.smac, frame[12:22], bytes((ttl - 1, frame[23])),
                        check.to_bytes(2, "big"), frame[26:end]))
    else:
        out = b"".join((hop.dmac, hop.smac, frame[12:21], bytes((ttl - 1,)), frame[22:end]))
    return FORWARDED, hop.ifindex, out
