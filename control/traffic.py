"""Numbered UDP datagrams between two lab hosts, with the TTL they arrive with.

Each datagram carries its flow and sequence number, so the receiver can
tell lost from duplicated from reordered; a flow is one sending socket
(one source port). The IP TTL (IPv6 hop limit) of each comes from the
IP_RECVTTL / IPV6_RECVHOPLIMIT control messages. Both ends are opened
inside the lab's namespaces (netns.entered), then used from here.
"""

import select
import socket
import struct
import time
from collections import defaultdict
from dataclasses import dataclass, field

from xdpfwd import lab, netns

IP_TTL, IP_RECVTTL = 2, 12
IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT = 51, 52
HEADER = struct.Struct("!HI")  # flow, sequence number


@dataclass
class Delivery:
    sent: int
    src: str
    dst: str
    port: int
    flows: int = 1
    arrivals: list[tuple[int, int, int]] = field(default_factory=list)  # (flow, seq, ttl)

    @property
    def received(self) -> int:
        return len(self.arrivals)

    @property
    def unique(self) -> int:
        return len({(flow, seq) for flow, seq, _ in self.arrivals})

    @property
    def duplicates(self) -> int:
        return self.received - self.unique

    @property
    def ttls(self) -> set[int]:
        return {ttl for _, _, ttl in self.arrivals}

    def _per_flow(self) -> dict[int, list[int]]:
        seqs = defaultdict(list)
        for flow, seq, _ in self.arrivals:
            seqs[flow].append(seq)
        return seqs

    @property
    def in_order(self) -> bool:
        """Within each flow, every datagram arrived after the ones before it."""
        return all(s == sorted(s) for s in self._per_flow().values())

    @property
    def exactly_once(self) -> bool:
        """Every datagram sent arrived, and none twice. Datagram i went out
        on flow i % flows as that flow's number i // flows."""
        per_flow = self._per_flow()
        for flow in range(self.flows):
            expected = len(range(flow, self.sent, self.flows))
            if sorted(per_flow.get(flow, [])) != list(range(expected)):
                return False
        return set(per_flow) <= set(range(self.flows))


def _receiver(host: str, family: int, addr: str, port: int) -> socket.socket:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    with netns.entered(lab.ns(host)):
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
             port: int = lab.UDP_PORT, size: int = 64, flows: int = 1, rate: float | None = None,
             timeout: float = 1.0) -> Delivery:
    """Send `count` numbered datagrams from lab host src to dst over
    `flows` source ports, at most `rate` per second (None: as fast as the
    receiver keeps up), and collect what arrives. `size` is the UDP
    payload length (at least 6)."""
    dst_addr = lab.address(dst, family=family)
    rx = _receiver(dst, family, dst_addr, port)
    with netns.entered(lab.ns(src)):
        txs = [socket.socket(rx.family, socket.SOCK_DGRAM) for _ in range(flows)]
    result = Delivery(count, lab.address(src, family=family), dst_addr, port, flows)
    pad = bytes(max(0, size - HEADER.size))
    start = time.monotonic()
    try:
        for i in range(count):
            flow = i % flows
            txs[flow].sendto(HEADER.pack(flow, i // flows) + pad, (dst_addr, port))
            _drain(rx, result, 0)
            if rate:
                ahead = start + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    _drain(rx, result, ahead)
        deadline = time.monotonic() + timeout
        while result.unique < count and time.monotonic() < deadline:
            _drain(rx, result, deadline - time.monotonic())
        _drain(rx, result, 0.05)  # a duplicate may trail the last original
    finally:
        for tx in txs:
            tx.close()
        rx.close()
    return result


def _drain(rx: socket.socket, result: Delivery, wait: float) -> None:
    """Read what has arrived; wait up to `wait` seconds for the first."""
    deadline = time.monotonic() + wait
    while select.select([rx], [], [], max(0.0, deadline - time.monotonic()))[0]:
        data, anc, _, _ = rx.recvmsg(2048, socket.CMSG_SPACE(4))
        if len(data) >= HEADER.size:
            flow, seq = HEADER.unpack_from(data)
            result.arrivals.append((flow, seq, _ttl(anc)))
        deadline = 0  # then only what is already there
