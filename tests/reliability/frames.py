"""Random frames that reach every branch of the forwarding decision:
well-formed and malformed, every EtherType class, TTL edges, good and bad
checksums, options, fragments, extension headers, every kind of
destination the lab's router has a route (or none) for. Deterministic for
a seed, so a failure can be replayed."""

import ipaddress
import random
import struct

# Destinations by what the router's tables (test_differential.ROUTES) make
# of them; the model decides, these only make sure each kind is drawn.
V4_DESTINATIONS = [
    "10.0.11.20", "10.0.11.20", "10.0.11.20",  # forwarded (weighted)
    "10.0.10.10",  # back out of the ingress port
    "10.0.90.7", "10.0.91.7", "10.0.92.7",  # blackhole, unreachable, prohibit
    "10.0.93.5",  # route with MTU 1000
    "10.0.94.2",  # out of an interface that is not a port
    "10.0.11.99",  # on-link, no neighbour
    "10.0.11.10", "10.0.10.20", "127.0.0.1", "10.0.11.255", "255.255.255.255",  # local, broadcast
    "192.0.2.1", "0.0.0.0", "224.0.0.5",  # no route, multicast address with a unicast MAC
]
V6_DESTINATIONS = [
    "fd00:11::20", "fd00:11::20", "fd00:11::20",
    "fd00:10::10",
    "fd00:90::7", "fd00:91::7", "fd00:92::7",
    "fd00:93::5",
    "fd00:11::99",
    "fd00:11::10", "fd00:11::", "::1", "ff02::1", "fe80::1",
    "2001:db8::1",
]
V4_SOURCES = ["10.0.10.10", "10.0.10.10", "10.0.11.20", "10.0.11.20", "192.0.2.77",
              # martians (ip_route_input_slow), the router's own addresses
              # (fib_validate_source), a source whose way back is a blackhole
              "0.0.0.0", "0.1.2.3", "127.0.0.1", "224.0.0.5", "255.255.255.255",
              "10.0.10.20", "10.0.11.10", "10.0.10.255", "10.0.90.9"]
V6_SOURCES = ["fd00:10::10", "fd00:10::10", "fd00:11::20", "fd00:11::20", "fe80::10",
              "2001:db8::77", "::", "::1", "ff02::1", "fd00:11::10"]
TTLS = [0, 1, 2, 64, 255]


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


class FrameGenerator:
    def __init__(self, seed: int, router_mac: bytes, other_macs: list[bytes]):
        self.r = random.Random(seed)
        self.router_mac = router_mac
        self.other_macs = other_macs

    def _dst_mac(self) -> bytes:
        r = self.r.random()
        if r < 0.85:
            return self.router_mac
        return self.r.choice([b"\xff" * 6, bytes.fromhex("01005e000005"),
                              bytes.fromhex("333300000001"), *self.other_macs])

    def _payload(self) -> bytes:
        n = self.r.choice([0, 1, 8, 18, 64, 200, 1000, 1400, self.r.randrange(0, 3000)])
        return self.r.randbytes(n)

    def ipv4(self) -> bytes:
        r = self.r
        ihl = 5 if r.random() < 0.85 else r.randrange(0, 16)
        options = r.randbytes(max(0, ihl - 5) * 4)
        payload = self._payload()
        total = 20 + len(options) + len(payload)
        if r.random() < 0.1:
            total = r.choice([total + r.randrange(1, 100), r.randrange(0, 20), max(0, total - 8)])
        version = 4 if r.random() < 0.95 else r.randrange(0, 16)
        flags_frag = r.choice([0, 0, 0x4000, 0x2000, r.randrange(0, 0x10000)])
        ttl = r.choice(TTLS) if r.random() < 0.5 else r.randrange(0, 256)
        proto = r.choice([17, 6, 1, r.randrange(0, 256)])
        src = ipaddress.IPv4Address(r.choice(V4_SOURCES)).packed
        dst = (ipaddress.IPv4Address(r.choice(V4_DESTINATIONS)).packed if r.random() < 0.95
               else r.randbytes(4))
        header = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, r.randrange(0, 256), total & 0xFFFF,
                             r.randrange(0, 0x10000), flags_frag, ttl, proto, 0, src, dst) + options
        check = _checksum(header) if len(header) % 2 == 0 else 0
        if r.random() < 0.08:
            check = r.randrange(0, 0x10000)
        header = header[:10] + struct.pack("!H", check) + header[12:]
        return b"\x08\x00" + header + payload

    def ipv6(self) -> bytes:
        r = self.r
        payload = self._payload()
        plen = len(payload)
        if r.random() < 0.1:
            plen = r.choice([plen + r.randrange(1, 100), max(0, plen - 8), 0])
        version = 6 if r.random() < 0.95 else r.randrange(0, 16)
        nexthdr = r.choice([17, 17, 6, 58, 0, 43, 44, 60, 59, r.randrange(0, 256)])
        hlim = r.choice(TTLS) if r.random() < 0.5 else r.randrange(0, 256)
        src = ipaddress.IPv6Address(r.choice(V6_SOURCES)).packed
        dst = (ipaddress.IPv6Address(r.choice(V6_DESTINATIONS)).packed if r.random() < 0.95
               else r.randbytes(16))
        first = (version << 28) | (r.randrange(0, 256) << 20) | r.randrange(0, 1 << 20)
        header = struct.pack("!IHBB16s16s", first, plen, nexthdr, hlim, src, dst)
        return b"\x86\xdd" + header + payload

    def frame(self) -> bytes:
        r = self.r
        head = self._dst_mac() + bytes.fromhex("020000000010")
        kind = r.random()
        if kind < 0.45:
            body = self.ipv4()
        elif kind < 0.85:
            body = self.ipv6()
        elif kind < 0.9:
            body = struct.pack("!H", r.choice([0x8100, 0x88A8])) + r.randbytes(2) + self.ipv4()
        elif kind < 0.95:
            body = b"\x08\x06" + r.randbytes(28)  # ARP
        else:
            body = struct.pack("!H", r.randrange(0, 0x10000)) + self._payload()
        frame = head + body
        if r.random() < 0.08:  # cut anywhere past the Ethernet header
            frame = frame[:r.randrange(14, max(15, len(frame)))]
        return frame
