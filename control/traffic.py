"""Numbered UDP datagrams between two lab hosts, with the TTL they arrive with.

Each datagram carries its sequence number, so the receiver can tell lost
from duplicated from reordered; the IP TTL (IPv6 hop limit) of each comes
from the IP_RECVTTL / IPV6_RECVHOPLIMIT control messages. Both sockets are
opened inside the lab's namespaces (netns.entered), then used from here.
"""

import select
import socket
import struct
import time
from dataclasses import dataclass, field

from xdpfwd import lab, netns

IP_TTL, IP_RECVTTL = 2, 12
IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT = 51, 52
SEQ = struct.Struct("!I")


@dataclass
class Delivery:
    sent: int
    src: str
    dst: str
    port: int
    arrivals: list[tuple[int, int]] = field(default_factory=list)  # (seq, ttl)

    @property
    def received(self) -> int:
        return len(self.arrivals)

    @property
    def unique(self) -> int:
        return len({seq for seq, _ in self.arrivals})

    @property
    def duplicates(self) -> int:
        return self.received - self.unique

    @property
    def ttls(self) -> set[int]:
        return {ttl for _, ttl in self.arrivals}

    @property
    def in_order(self) -> bool:
        seqs = [seq for seq, _ in self.arrivals]
        return seqs == sorted(seqs)

    @property
    def exactly_once(self) -> bool:
        return sorted(seq for seq, _ in self.arrivals) == list(range(self.sent))


def _receiver(ns: str, family: int, addr: str, port: int) -> socket.socket:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    with netns.entered(lab.ns(ns)):
        sock = socket.socket(af, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    if family == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    sock.bind((addr, port))
    return sock


def _ttl(ancdata) -> int:
    for level, kind, data in ancdata:
        if (level, kind) in ((socket.IPPROTO_IP, IP_TTL), (socket.IPPROTO_IPV6, IPV6_HOPLIMIT)):
            return struct.unpack("=i", data[:4])[0]
    return -1


def send_udp(count: int, src: str = "sendbox", dst: str = "recvbox", family: int = 4,
             port: int = lab.UDP_PORT, size: int = 64, gap: float = 0.0,
             timeout: float = 1.0) -> Delivery:
    """Send `count` numbered datagrams from lab host src to dst and collect
    what arrives. `size` is the UDP payload length (at least 4)."""
    dst_addr = lab.address(dst, family=family)
    rx = _receiver(dst, family, dst_addr, port)
    af = rx.family
    with netns.entered(lab.ns(src)):
        tx = socket.socket(af, socket.SOCK_DGRAM)
    result = Delivery(count, lab.address(src, family=family), dst_addr, port)
    pad = bytes(max(0, size - SEQ.size))
    try:
        for seq in range(count):
            tx.sendto(SEQ.pack(seq) + pad, (dst_addr, port))
            _drain(rx, result, 0)
            if gap:
                time.sleep(gap)
        deadline = time.monotonic() + timeout
        while result.unique < count and time.monotonic() < deadline:
            _drain(rx, result, deadline - time.monotonic())
        _drain(rx, result, 0.05)  # a duplicate may trail the last original
    finally:
        tx.close()
        rx.close()
    return result


def _drain(rx: socket.socket, result: Delivery, wait: float) -> None:
    while select.select([rx], [], [], max(wait, 0))[0]:
        data, anc, _, _ = rx.recvmsg(2048, socket.CMSG_SPACE(4))
        if len(data) >= SEQ.size:
            result.arrivals.append((SEQ.unpack_from(data)[0], _ttl(anc)))
        wait = 0
