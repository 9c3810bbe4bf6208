"""IPv4 fragmentation of a forwarded packet, as the kernel's output path does it.

In AF_PACKET mode the kernel's forwarding is off on the ports, so a packet
larger than the egress MTU that the kernel would have fragmented
(ip_finish_output() -> ip_fragment() -> ip_do_fragment() in
net/ipv4/ip_output.c) has to be fragmented here.

Interface (pure functions, IP packets without Ethernet header):

    decision(ip_packet, mtu) -> "fits" | "fragment" | "frag_needed"
        What ip_forward() (net/ipv4/ip_forward.c) does with a packet routed
        to a path of `mtu` bytes: send it as it is, fragment it, or drop it
        and send ICMP Fragmentation Needed (icmp.IcmpErrors.reply(...,
        "frag_needed", mtu)). `mtu` is what ip_dst_mtu_maybe_forward()
        gives: the route's MTU metric if set, else the egress device's MTU
        (fib.Hop.mtu).

    fragment(ip_packet, mtu) -> list[bytes]
        The fragments ip_do_fragment() makes, in the order it sends them.
        Give it the packet as it leaves: ip_forward() decrements the TTL
        (and fixes the checksum) before ip_output() fragments. A packet that
        fits comes back alone and unchanged; a packet with DF set raises
        ValueError (it is never fragmented: use decision() first).

The packet must be well formed (IHL >= 5, total length within the bytes
given); bytes past the total length (Ethernet padding) are ignored, as the
kernel trims them in ip_rcv_core().
"""

import struct

from xdpfwd.afpacket.packet import checksum

IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFSET = 0x1FFF
IPOPT_END, IPOPT_NOOP = 0, 1
IPOPT_COPY = 0x80


def _parts(ip_packet: bytes) -> tuple[int, int, int]:
    if len(ip_packet) < 20 or ip_packet[0] >> 4 != 4 or ip_packet[0] & 0xF < 5:
        raise ValueError("not an IPv4 header")
    hlen = (ip_packet[0] & 0xF) * 4
    total = (ip_packet[2] << 8) | ip_packet[3]
    if total < hlen or total > len(ip_packet):
        raise ValueError("IPv4 total length does not match the packet")
    frag_off = (ip_packet[6] << 8) | ip_packet[7]
    return hlen, total, frag_off


def decision(ip_packet: bytes, mtu: int) -> str:
    """ip_forward(): ip_exceeds_mtu() decides on Frag Needed before the
    packet is touched; what still exceeds the MTU is fragmented by
    ip_finish_output() (ip_fragment()). A received packet never has
    skb->ignore_df or IPCB()->frag_max_size here (both come from conntrack
    defragmentation or tunnels, which the forwarder does not do), so DF
    alone decides."""
    _, total, frag_off = _parts(ip_packet)
    if total <= mtu:
        return "fits"
    if frag_off & IP_DF:
        return "frag_needed"
    return "fragment"


def _copied_options_only(header: bytearray) -> None:
    """ip_options_fragment() (net/ipv4/ip_options.c), applied once the first
    fragment is made: options without the copied flag become NOPs, so later
    fragments keep the same header length. It stops at END, and at a
    malformed length, exactly where the kernel stops."""
    i, left = 20, len(header) - 20
    while left > 0:
        kind = header[i]
        if kind == IPOPT_END:
            return
        if kind == IPOPT_NOOP:
            i += 1
            left -= 1
            continue
        if left < 2:
            return  # the kernel reads optptr[1] from the options area's padding: nothing to change
        optlen = header[i + 1]
        if optlen < 2 or optlen > left:
            return
        if not kind & IPOPT_COPY:
            header[i:i + optlen] = bytes([IPOPT_NOOP]) * optlen
        i += optlen
        left -= optlen


def fragment(ip_packet: bytes, mtu: int) -> list[bytes]:
    """ip_do_fragment()'s slow path (ip_frag_init() / ip_frag_next())."""
    hlen, total, frag_off = _parts(ip_packet)
    if total <= mtu:
        return [ip_packet[:total]]
    if frag_off & IP_DF:
        raise ValueError("DF is set: the kernel sends Fragmentation Needed instead")
    space = mtu - hlen  # "Size of data space"
    if space < 8:
        raise ValueError(f"MTU {mtu} leaves no room for data after a {hlen}-byte header")
    header = bytearray(ip_packet[:hlen])
    # A fragment being fragmented again keeps its offset and, unless it was
    # the last one, MF on every piece ("Added AC" in ip_frag_next()).
    offset = (frag_off & IP_OFFSET) << 3
    not_last = frag_off & IP_MF
    ptr, left = hlen, total - hlen
    out = []
    while left > 0:
        size = min(left, space)
        if size < left:
            size &= ~7  # every fragment but the last ends on an 8-byte boundary
        left -= size
        piece = bytearray(header)
        word = offset >> 3
        if left > 0 or not_last:
            word |= IP_MF
        struct.pack_into("!H", piece, 2, hlen + size)
        struct.pack_into("!H", piece, 6, word)
        piece[10:12] = b"\0\0"
        struct.pack_into("!H", piece, 10, checksum(bytes(piece)))
        out.append(bytes(piece) + ip_packet[ptr:ptr + size])
        if len(out) == 1:
            # ip_frag_ipcb(): the options are trimmed on the original once
            # the first fragment has its copy; later ones copy the result.
            _copied_options_only(header)
        ptr += size
        offset += size
    return out
