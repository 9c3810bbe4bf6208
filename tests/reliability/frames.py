"""Random frames that reach every branch of the forwarding decision:
well-formed and malformed, every EtherType class, TTL edges, good and bad
checksums, options, fragments, extension headers, every kind of
destination the lab's router has a route (or none) for. Deterministic for
a seed, so a failure can be replayed."""

import ipaddress
import random
import struct
from dataclasses import dataclass

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
        if proto == 1 and payload and r.random() < 0.7:  # ICMP: errors often, echo, others
            payload = bytes([r.choice([3, 4, 5, 11, 12, 0, 8, r.randrange(256)])]) + payload[1:]
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

    def _ipv6_chain(self, payload: bytes) -> tuple[int, bytes]:
        """(next header, bytes): an ICMPv6 message, Neighbour Discovery
        often, behind up to 8 extension headers of the kinds
        ipv6_skip_exthdr() walks (the datapaths walk 6)."""
        r = self.r
        nexthdr, body = 58, bytes([r.choice([133, 134, 135, 136, 137, 128, 1, 2, 3, 4,
                                             r.randrange(256)])]) + payload
        for _ in range(r.choice([0, 1, 2, 5, 6, 7, 8])):
            kind = r.choice([0, 43, 44, 51, 60])
            if kind == 44:  # fragment offset 0 or not, M flag or not
                header = struct.pack("!BBHI", nexthdr, 0, r.choice([0, 1, 8, r.randrange(0x10000)]),
                                     r.randrange(1 << 32))
            elif kind == 51:  # AH: (length + 2) 4-byte words
                words = r.choice([1, 4])
                header = bytes([nexthdr, words]) + r.randbytes((words + 2) * 4 - 2)
            else:  # (length + 1) 8-byte units
                units = r.choice([0, 1])
                header = bytes([nexthdr, units]) + r.randbytes((units + 1) * 8 - 2)
            nexthdr, body = kind, header + body
        return nexthdr, body

    def ipv6(self) -> bytes:
        r = self.r
        payload = self._payload()
        nexthdr = r.choice([17, 17, 6, 58, 0, 43, 44, 60, 59, r.randrange(0, 256)])
        if nexthdr == 58 and payload and r.random() < 0.7:  # ICMPv6: errors often, echo, ND
            payload = bytes([r.choice([1, 2, 3, 4, 128, 135, r.randrange(256)])]) + payload[1:]
        if r.random() < 0.2:
            nexthdr, payload = self._ipv6_chain(payload)
        plen = len(payload)
        if r.random() < 0.1:
            plen = r.choice([plen + r.randrange(1, 100), max(0, plen - 8), 0])
        version = 6 if r.random() < 0.95 else r.randrange(0, 16)
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


# ---------------------------------------------------------------------------
# Frames for the kernel-oracle test (test_oracle.py): whole, valid-looking
# frames of every kind the kernel's forwarding path treats specially, sent
# through the lab router for real. Each carries a marker (MAGIC + its id)
# right after its transport header, and every fragment at the start of its
# data, so whatever comes out of the router (the frame forwarded, fragments
# of it, an ICMP error quoting it) can be traced back to the frame.

MAGIC = bytes.fromhex("c39ae7f1")  # filler bytes stay below 0x80, so never a false hit
MARKER_LEN = len(MAGIC) + 4
ORACLE_PORT = 2153  # UDP destination of every generated datagram
FLOWS_PER_KIND = 4  # numbered flows per direction, family and protocol


@dataclass(frozen=True)
class Side:
    """One end host of the lab as the router sees it."""
    host_mac: bytes
    router_mac: bytes  # the router port facing this host
    host_v4: str
    host_v6: str
    host_ll6: str  # the host's link-local address
    router_v4: str
    router_v6: str
    subnet_broadcast: str  # directed broadcast of this host's subnet
    unused_v4: str  # an address of this host's subnet nobody has
    unused_v6: str
    pool_v4: str  # a network routed via this host: fresh sources for ip_error()
    mtu_v4_dst: str  # behind this host, on a route with MTU 1000
    mtu_v6_dst: str  # behind this host, on a route with MTU 1300


@dataclass(frozen=True)
class OracleFrame:
    id: int
    direction: str  # "fwd" (sendbox -> recvbox) or "rev"
    family: int
    category: str
    variant: str
    data: bytes
    flow: tuple | None = None  # (direction, family, proto, index) for numbered frames
    seq: int | None = None


def marker(frame_id: int) -> bytes:
    return MAGIC + struct.pack("!I", frame_id)


def find_marker(data: bytes) -> int | None:
    at = data.find(MAGIC)
    if at < 0 or at + MARKER_LEN > len(data):
        return None
    return struct.unpack_from("!I", data, at + len(MAGIC))[0]


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _inet_checksum(data: bytes) -> int:
    return 0xFFFF - _sum16(data)


def _pseudo(family: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if family == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def _l4_checksum(family, src, dst, proto, segment: bytes) -> int:
    check = _inet_checksum(_pseudo(family, src, dst, proto, len(segment)) + segment)
    return check or 0xFFFF  # UDP sends a computed 0 as 0xFFFF


def _addr(family: int, text: str) -> bytes:
    return (ipaddress.IPv4Address(text) if family == 4 else ipaddress.IPv6Address(text)).packed


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int = 64,
                ident: int = 0, frag: int = 0, options: bytes = b"", tos: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + payload_len, ident, frag, ttl,
                         proto, 0, src, dst) + options
    return header[:10] + struct.pack("!H", _inet_checksum(header)) + header[12:]


def ipv6_header(src: bytes, dst: bytes, nexthdr: int, payload_len: int, hlim: int = 64,
                flow: int = 0) -> bytes:
    return struct.pack("!IHBB16s16s", (6 << 28) | flow, payload_len, nexthdr, hlim, src, dst)


class OracleGenerator:
    """Deterministic for a seed. `ordinary(n)` gives numbered UDP and echo
    frames between the two hosts; `frames(n)` a mix of every category
    (ordinary ones included). Frame ids and flow sequence numbers run on
    across calls, and so does the pool of fresh source addresses, so one
    generator's frames never share an id or a pool source."""

    def __init__(self, seed: int, sides: dict[str, Side], other_mac: bytes):
        self.r = random.Random(seed)
        self.sides = sides
        self.other_mac = other_mac
        self.next_id = 0
        self.seqs: dict[tuple, int] = {}
        self.pool_next = {name: 1 for name in sides}
        self.ident = 0x1000

    # -- building blocks ------------------------------------------------
    def _filler(self, n: int) -> bytes:
        return bytes(b & 0x7F for b in self.r.randbytes(n))

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _pool_source(self, side: str) -> str:
        # ip_error() (net/ipv4/route.c) answers each source from a token
        # bucket of its own (ip_rt_error_burst: 5 tokens; ip_rt_error_cost:
        # one per error, back after a second; global sysctls of the root
        # namespace, left alone). Two frames of one run from one source
        # could find it empty, so every frame that may end in ip_error
        # takes a source of its own, from a pool the router routes back to
        # the sending host; test_oracle keeps a second between two runs of
        # the same frames, so the one token each run takes is always back.
        net = ipaddress.IPv4Network(self.sides[side].pool_v4)
        n = self.pool_next[side]
        self.pool_next[side] += 1
        if n >= net.num_addresses - 1:
            raise ValueError(f"source pool {net} used up: fewer frames, or a larger pool")
        return str(net[n])

    def _ends(self, direction: str) -> tuple[Side, Side]:
        near, far = ("sendbox", "recvbox") if direction == "fwd" else ("recvbox", "sendbox")
        return self.sides[near], self.sides[far]

    def _l4(self, family, proto, src, dst, frame_id, size, flow_index=0, seq=0) -> tuple[int, bytes]:
        """(IP protocol, transport segment) with the marker and `size`
        bytes of payload in all."""
        payload = marker(frame_id) + struct.pack("!HI", flow_index, seq)
        payload += self._filler(max(0, size - len(payload)))
        if proto == "udp":
            seg = struct.pack("!HHHH", 40000 + flow_index, ORACLE_PORT, 8 + len(payload), 0) + payload
            check = _l4_checksum(family, src, dst, 17, seg)
            return 17, seg[:6] + struct.pack("!H", check) + seg[8:]
        kind, ipproto = (8, 1) if family == 4 else (128, 58)
        seg = struct.pack("!BBHHH", kind, 0, 0, 0x4000 + flow_index, seq & 0xFFFF) + payload
        check = (_inet_checksum(seg) if family == 4
                 else _l4_checksum(family, src, dst, 58, seg))
        return ipproto, seg[:2] + struct.pack("!H", check) + seg[4:]

    def _packet(self, family, src, dst, proto, frame_id, size, ttl=64, frag=None, options=b"",
                hbh=None, flow_index=0, seq=0) -> bytes:
        """An IP packet (no Ethernet header). frag: None, or an IPv4
        flags/offset word."""
        s, d = _addr(family, src), _addr(family, dst)
        ipproto, seg = self._l4(family, proto, s, d, frame_id, size, flow_index, seq)
        if family == 4:
            self.ident = (self.ident + 1) & 0xFFFF
            flags = 0x4000 if frag is None else frag
            return ipv4_header(s, d, ipproto, len(seg), ttl, self.ident, flags, options) + seg
        if hbh is not None:
            ext = bytes([ipproto]) + hbh[1:]
            return ipv6_header(s, d, 0, len(ext) + len(seg), ttl) + ext + seg
        return ipv6_header(s, d, ipproto, len(seg), ttl) + seg

    def _frame(self, near: Side, packet: bytes, family: int, dst_mac: bytes | None = None) -> bytes:
        ethertype = b"\x08\x00" if family == 4 else b"\x86\xdd"
        return (dst_mac or near.router_mac) + near.host_mac + ethertype + packet

    def _make(self, direction, family, category, variant, build, **kw) -> OracleFrame:
        frame_id = self._new_id()
        return OracleFrame(frame_id, direction, family, category, variant, build(frame_id), **kw)

    # -- the categories ---------------------------------------------------
    def ordinary(self, n: int) -> list[OracleFrame]:
        return [self._ordinary(self.r.choice(("fwd", "rev")), self.r.choice((4, 6)))
                for _ in range(n)]

    def _ordinary(self, direction, family) -> OracleFrame:
        near, far = self._ends(direction)
        proto = self.r.choice(("udp", "udp", "echo"))
        index = self.r.randrange(FLOWS_PER_KIND)
        flow = (direction, family, proto, index)
        seq = self.seqs.get(flow, 0)
        self.seqs[flow] = seq + 1
        size = self.r.choice([8, 18, 64, 200, 512, 1000, self.r.randrange(8, 1400)])
        src, dst = (near.host_v4, far.host_v4) if family == 4 else (near.host_v6, far.host_v6)
        return self._make(direction, family, "ordinary", proto, lambda i: self._frame(
            near, self._packet(family, src, dst, proto, i, size, flow_index=index, seq=seq), family),
            flow=flow, seq=seq)

    def frames(self, n: int) -> list[OracleFrame]:
        out: list[OracleFrame] = []
        makers = [(w, m) for m, w in self._categories()]
        total = sum(w for w, _ in makers)
        while len(out) < n:
            pick = self.r.uniform(0, total)
            for w, make in makers:
                pick -= w
                if pick <= 0:
                    break
            out += make(self.r.choice(("fwd", "rev")))
        return out

    def _categories(self):
        return [(self._cat_ordinary, 30), (self._cat_other_mac, 4), (self._cat_l2_group, 2),
                (self._cat_martian_src, 7), (self._cat_martian_dst, 6), (self._cat_spoofed, 6),
                (self._cat_router_src, 3), (self._cat_router_dst, 3), (self._cat_broadcast, 2),
                (self._cat_ttl, 6), (self._cat_route_kind, 8), (self._cat_mtu, 6),
                (self._cat_options, 6), (self._cat_fragments, 4), (self._cat_bad_checksum, 2),
                (self._cat_padding, 3)]

    def _simple(self, direction, family, category, variant, src, dst, dst_mac=None, ttl=64,
                size=None, proto=None, **kw) -> OracleFrame:
        near, _ = self._ends(direction)
        proto = proto or self.r.choice(("udp", "echo"))
        size = size if size is not None else self.r.choice([16, 64, 300])
        return self._make(direction, family, category, f"{variant} {proto}", lambda i: self._frame(
            near, self._packet(family, src, dst, proto, i, size, ttl=ttl, **kw), family, dst_mac))

    def _family(self):
        return self.r.choice((4, 6))

    def _cat_ordinary(self, direction):
        return [self._ordinary(direction, self._family())]

    def _far(self, direction, family):
        near, far = self._ends(direction)
        return (near.host_v4, far.host_v4) if family == 4 else (near.host_v6, far.host_v6)

    def _cat_other_mac(self, direction):
        # Unicast, but another host's: the stack sees PACKET_OTHERHOST and
        # drops it in ip_rcv_core() / ip6_rcv_core().
        family = self._family()
        return [self._simple(direction, family, "other_host_mac", "to 02:..:99",
                             *self._far(direction, family), dst_mac=self.other_mac)]

    def _cat_l2_group(self, direction):
        # A unicast IP packet in a broadcast or multicast frame: ip_forward()
        # and ip6_forward() forward only PACKET_HOST.
        family = self._family()
        group = bytes.fromhex("01005e000001" if family == 4 else "333300000001")
        mac = self.r.choice([b"\xff" * 6, group])
        return [self._simple(direction, family, "l2_group_mac", f"to {mac.hex(':')}",
                             *self._far(direction, family), dst_mac=mac)]

    V4_MARTIAN_SOURCES = ["0.0.0.0", "0.1.2.3", "127.0.0.1", "127.9.9.9", "224.0.0.5", "239.1.2.3",
                          "255.255.255.255", "240.0.0.1"]
    V6_MARTIAN_SOURCES = ["::", "::1", "ff02::1", "ff0e::1", "ff05::2", "::ffff:10.0.10.10",
                          "::10.0.10.10", "LINKLOCAL"]

    def _cat_martian_src(self, direction):
        # ip_route_input_slow(): multicast, limited broadcast, 0/8, 127/8
        # (no route_localnet) are martian sources; ip6_rcv_core(): ::1 and
        # multicast sources; ip6_forward(): ::, and link-local sources get
        # Destination Unreachable (beyond scope). 240/4 and the v4-mapped
        # and v4-compatible forms are in for whatever the kernel does.
        near, far = self._ends(direction)
        family = self._family()
        if family == 4:
            src = self.r.choice(self.V4_MARTIAN_SOURCES)
            return [self._simple(direction, 4, "martian_src", f"src {src}", src, far.host_v4)]
        src = self.r.choice(self.V6_MARTIAN_SOURCES)
        src = near.host_ll6 if src == "LINKLOCAL" else src
        return [self._simple(direction, 6, "martian_src", f"src {src}", src, far.host_v6)]

    V4_MARTIAN_DESTINATIONS = ["0.0.0.0", "0.1.2.3", "127.0.0.1", "255.255.255.255", "224.0.0.1",
                               "224.0.0.5", "239.1.2.3"]
    V6_MARTIAN_DESTINATIONS = ["::1", "::", "ff01::1", "ff00::1", "ff02::1", "ff0e::1",
                               "::ffff:10.0.11.20"]

    def _cat_martian_dst(self, direction):
        # Sent in a frame to the router's own MAC, as a spoofer would.
        near, _ = self._ends(direction)
        family = self._family()
        if family == 4:
            # Some of these end in ip_error() (0/8 is routed on newer
            # kernels): a fresh source each, as for the route kinds.
            dst = self.r.choice(self.V4_MARTIAN_DESTINATIONS)
            src = self._pool_source("sendbox" if direction == "fwd" else "recvbox")
            return [self._simple(direction, 4, "martian_dst", f"dst {dst}", src, dst)]
        dst = self.r.choice(self.V6_MARTIAN_DESTINATIONS)
        return [self._simple(direction, 6, "martian_dst", f"dst {dst}", near.host_v6, dst)]

    def _cat_spoofed(self, direction):
        # A source of the far subnet arriving on the near port (rp_filter 1
        # drops it, 2 and 0 forward it), or one with no route at all
        # (rp_filter 1 and 2 drop it).
        near, far = self._ends(direction)
        family = self._family()
        if family == 4:
            src = self.r.choice([far.unused_v4, "192.0.2.77"])
            return [self._simple(direction, 4, "spoofed_src", f"src {src}", src, far.host_v4)]
        src = self.r.choice([far.unused_v6, "2001:db8::77"])
        return [self._simple(direction, 6, "spoofed_src", f"src {src}", src, far.host_v6)]

    def _cat_router_src(self, direction):
        # fib_validate_source(): a source that is one of our own addresses.
        near, far = self._ends(direction)
        family = self._family()
        if family == 4:
            src = self.r.choice([near.router_v4, far.router_v4])
            return [self._simple(direction, 4, "router_src", f"src {src}", src, far.host_v4)]
        src = self.r.choice([near.router_v6, far.router_v6])
        return [self._simple(direction, 6, "router_src", f"src {src}", src, far.host_v6)]

    def _cat_router_dst(self, direction):
        # For the router itself: echo replies and port unreachables.
        near, far = self._ends(direction)
        family = self._family()
        if family == 4:
            dst = self.r.choice([near.router_v4, far.router_v4])
            return [self._simple(direction, 4, "router_dst", f"dst {dst}", near.host_v4, dst)]
        dst = self.r.choice([near.router_v6, far.router_v6])
        return [self._simple(direction, 6, "router_dst", f"dst {dst}", near.host_v6, dst)]

    def _cat_broadcast(self, direction):
        # Directed broadcast: RTN_BROADCAST in ip_route_input_slow(), local
        # delivery unless bc_forwarding.
        near, far = self._ends(direction)
        return [self._simple(direction, 4, "directed_broadcast", f"dst {far.subnet_broadcast}",
                             near.host_v4, far.subnet_broadcast)]

    def _cat_ttl(self, direction):
        # ip_forward() / ip6_forward(): TTL <= 1 gets Time Exceeded.
        family = self._family()
        ttl = self.r.choice([0, 1, 2])
        return [self._simple(direction, family, "ttl", f"ttl {ttl}", *self._far(direction, family),
                             ttl=ttl)]

    ROUTE_KINDS = {4: [("no_route", "192.0.2.1"), ("unreachable", "10.0.91.7"),
                       ("prohibit", "10.0.92.7"), ("blackhole", "10.0.90.7")],
                   6: [("no_route", "2001:db8::1"), ("unreachable", "fd00:91::7"),
                       ("prohibit", "fd00:92::7"), ("blackhole", "fd00:90::7")]}

    def _cat_route_kind(self, direction):
        near, _ = self._ends(direction)
        family = self._family()
        kind, dst = self.r.choice(self.ROUTE_KINDS[family])
        if family == 4 and kind != "blackhole":
            src = self._pool_source("sendbox" if direction == "fwd" else "recvbox")
        else:
            src = near.host_v4 if family == 4 else near.host_v6
        return [self._simple(direction, family, f"route_{kind}", f"dst {dst}", src, dst)]

    def _cat_mtu(self, direction):
        # ip_forward(): larger than the route's MTU with DF gets Frag Needed,
        # without DF is fragmented; ip6_forward(): Packet Too Big.
        near, far = self._ends(direction)
        family = self._family()
        if family == 4:
            df = self.r.random() < 0.5
            length = self.r.choice([1000, 1001, 1200, 1500])  # IP total length; MTU 1000
            size = length - 20 - 8
            return [self._simple(direction, 4, "mtu_v4_df" if df else "mtu_v4_nodf",
                                 f"len {length}", near.host_v4, far.mtu_v4_dst, size=size,
                                 frag=0x4000 if df else 0)]
        length = self.r.choice([1300, 1301, 1500])  # MTU 1300
        return [self._simple(direction, 6, "mtu_v6", f"len {length}", near.host_v6, far.mtu_v6_dst,
                             size=length - 40 - 8)]

    V4_OPTIONS = {  # (kernel handling in ip_options_compile / ip_forward_options)
        "nop,eol": bytes([1, 1, 1, 0]),
        "record-route": bytes([7, 11, 4]) + bytes(8) + b"\0",
        "router-alert": bytes([148, 4, 0, 0]),
        "lsrr": bytes([131, 7, 4]) + ipaddress.IPv4Address("10.0.11.20").packed + b"\0",
        "bad-length": bytes([7, 2, 4, 0]),
        # No timestamp option: the router writes the time into it.
    }
    V6_HBH = {  # ip6_parse_tlv(): unknown option types act on their top two bits
        "padn": bytes([0, 0, 1, 4, 0, 0, 0, 0]),
        "router-alert": bytes([0, 0, 5, 2, 0, 0, 1, 0]),
        "unknown-skip": bytes([0, 0, 0x1E, 4, 0, 0, 0, 0]),
        "unknown-discard": bytes([0, 0, 0x5E, 4, 0, 0, 0, 0]),
        "unknown-icmp": bytes([0, 0, 0x9E, 4, 0, 0, 0, 0]),
    }

    def _cat_options(self, direction):
        family = self._family()
        src, dst = self._far(direction, family)
        if family == 4:
            name = self.r.choice(sorted(self.V4_OPTIONS))
            return [self._simple(direction, 4, "ip_options", name, src, dst,
                                 options=self.V4_OPTIONS[name])]
        name = self.r.choice(sorted(self.V6_HBH))
        return [self._simple(direction, 6, "ip_options", f"hbh {name}", src, dst,
                             hbh=self.V6_HBH[name])]

    def _cat_fragments(self, direction):
        """Both fragments of one UDP datagram (the far host reassembles
        them quietly); each fragment carries its own marker."""
        near, _ = self._ends(direction)
        family = self._family()
        src, dst = self._far(direction, family)
        s, d = _addr(family, src), _addr(family, dst)
        first_id, second_id = self._new_id(), self._new_id()
        split = 8 * self.r.choice([3, 8, 40])  # fragment data length of the first, a multiple of 8
        body = marker(first_id) + self._filler(split - 8 - MARKER_LEN) + marker(second_id)
        body += self._filler(self.r.choice([16, 100, 600]))
        seg = struct.pack("!HHHH", 40099, ORACLE_PORT, 8 + len(body), 0) + body
        seg = seg[:6] + struct.pack("!H", _l4_checksum(family, s, d, 17, seg)) + seg[8:]
        parts = [(0, seg[:split], True), (split, seg[split:], False)]
        out = []
        self.ident = (self.ident + 1) & 0xFFFF
        for (offset, data, more), fid in zip(parts, (first_id, second_id)):
            if family == 4:
                packet = ipv4_header(s, d, 17, len(data), 64, self.ident,
                                     (0x2000 if more else 0) | offset // 8) + data
            else:
                fh = struct.pack("!BBHI", 17, 0, offset | int(more), 0xF0000000 | self.ident)
                packet = ipv6_header(s, d, 44, len(fh) + len(data)) + fh + data
            variant = f"{'first' if offset == 0 else 'last'} of {len(seg)}"
            out.append(OracleFrame(fid, direction, family, "fragments", variant,
                                   self._frame(near, packet, family)))
        return out

    def _cat_bad_checksum(self, direction):
        # ip_rcv_core() drops a bad IPv4 header checksum.
        frame = self._simple(direction, 4, "bad_checksum", "header checksum", *self._far(direction, 4))
        data = bytearray(frame.data)
        data[24] ^= 0x5A
        return [OracleFrame(frame.id, direction, 4, frame.category, frame.variant, bytes(data))]

    def _cat_padding(self, direction):
        # Bytes after the IP packet, as a NIC delivers a short frame padded
        # to 60 bytes: ip_rcv_core() / ip6_rcv_core() trim the packet to
        # its IP length before forwarding it.
        family = self._family()
        frame = self._simple(direction, family, "eth_padding", "", *self._far(direction, family),
                             size=16)
        pad = self.r.choice([max(1, 60 - len(frame.data)), 4, 20])
        return [OracleFrame(frame.id, direction, family, frame.category,
                            f"{frame.variant.strip()} +{pad} bytes", frame.data + bytes(pad))]
