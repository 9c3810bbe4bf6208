"""The benchmark's packets: IPv4/UDP frames from sendbox to recvbox, port
2152, in two sizes, with one flow or many (distinct source ports).

What a "64-byte" and a "1500-byte" packet are here: the minimum Ethernet
frame (64 bytes on a wire with its FCS, 60 handed to veth, which has no
FCS) and a full-MTU IP packet (1500 bytes of IP, a 1514-byte frame).
"""

import struct
from dataclasses import dataclass

from xdpfwd.afpacket.packet import checksum

ETH_P_IP = 0x0800
IPPROTO_UDP = 17
DST_PORT = 2152  # the lab's UDP port (lab.json)
BASE_SRC_PORT = 10000
MANY_FLOWS = 1000
TTL = 64
HEADER_BYTES = 42  # Ethernet 14 + IPv4 20 + UDP 8
FRAME_BYTES = {64: 60, 1500: 1514}


@dataclass(frozen=True)
class Traffic:
    size: int   # 64 or 1500 (see FRAME_BYTES)
    flows: int  # 1, or MANY_FLOWS distinct source ports

    @property
    def key(self) -> str:
        return f"{self.size}B-{self.flows}flow{'s' if self.flows > 1 else ''}"

    @property
    def label(self) -> str:
        return f"{self.size} B, {self.flows} flow{'s' if self.flows > 1 else ''}"


def frame(dmac: bytes, smac: bytes, src: bytes, dst: bytes, sport: int, size: int,
          udp_checksum: bool = True) -> bytes:
    """One IPv4/UDP frame of FRAME_BYTES[size] bytes, IPv4 checksum filled
    in; the UDP checksum too, or 0 ("none") without udp_checksum."""
    ip_len = FRAME_BYTES[size] - 14
    udp_len = ip_len - 20
    payload = bytes(udp_len - 8)
    csum = 0
    if udp_checksum:
        pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_UDP, udp_len)
        udp = struct.pack("!HHHH", sport, DST_PORT, udp_len, 0) + payload
        csum = checksum(pseudo + udp) or 0xFFFF
    udp = struct.pack("!HHHH", sport, DST_PORT, udp_len, csum) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, TTL, IPPROTO_UDP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dmac + smac + struct.pack("!H", ETH_P_IP) + ip + udp
