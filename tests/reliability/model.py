"""The forwarding decision written once, in plain Python, from the spec:
bpf/redirect.c's checks and the kernel's bpf_fib_lookup() rules. Both
datapaths (the XDP program, the AF_PACKET packet function) are checked
against it on generated frames.

Input: a frame, the ingress ifindex, and Tables (routes, neighbours,
links, forwarding switches), read from a network namespace with `ip -j`.
Output: a Verdict (action, outcome label, the frame to send).
"""

import ipaddress
import json
import subprocess
from dataclasses import dataclass, field

LBCAST = ipaddress.IPv4Address("255.255.255.255")
ZERONET = ipaddress.IPv4Network("0.0.0.0/32")  # ipv4_is_zeronet(): the rest of 0/8 is routable
NUD_VALID = {"PERMANENT", "NOARP", "REACHABLE", "PROBE", "STALE", "DELAY"}


@dataclass(frozen=True)
class Route:
    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network
    kind: str  # unicast, local, broadcast, anycast, multicast, blackhole, unreachable, prohibit
    oif: int = 0
    gateway: str | None = None
    mtu: int | None = None


@dataclass
class Tables:
    local: list[Route] = field(default_factory=list)  # the local table: looked up first
    main: list[Route] = field(default_factory=list)
    neighbours: dict[tuple[int, str], bytes] = field(default_factory=dict)  # (ifindex, addr) -> MAC
    mtu: dict[int, int] = field(default_factory=dict)
    mac: dict[int, bytes] = field(default_factory=dict)
    forwarding: dict[tuple[int, int], bool] = field(default_factory=dict)  # (family, ifindex)
    ipv6_disabled: set[int] = field(default_factory=set)  # ifindexes with disable_ipv6 set
    ports: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Verdict:
    action: str  # redirect, pass, drop
    outcome: str
    frame: bytes | None = None  # what goes out, for redirect
    egress: int = 0


def _ip_json(ns: str, *args) -> list:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout or "[]")


def read_tables(ns: str, ports: set[int]) -> Tables:
    """The namespace's routing state, as the model consumes it."""
    t = Tables(ports=frozenset(ports))
    index = {}
    for link in _ip_json(ns, "link", "show"):
        index[link["ifname"]] = link["ifindex"]
        t.mtu[link["ifindex"]] = link["mtu"]
        t.mac[link["ifindex"]] = bytes.fromhex(link.get("address", "00:00:00:00:00:00").replace(":", ""))
    for family in ("-4", "-6"):
        for r in _ip_json(ns, family, "route", "show", "table", "all"):
            dst = r["dst"]
            if dst == "default":
                dst = "0.0.0.0/0" if family == "-4" else "::/0"
            metrics = {k: v for m in r.get("metrics", []) for k, v in m.items()} if isinstance(
                r.get("metrics"), list) else {}
            route = Route(ipaddress.ip_network(dst, strict=False), r.get("type", "unicast"),
                          index.get(r.get("dev"), 0), r.get("gateway"), metrics.get("mtu"))
            table = r.get("table", "main")
            if table == "local":
                t.local.append(route)
            elif table == "main":
                t.main.append(route)
    for n in _ip_json(ns, "neigh", "show"):
        if "lladdr" in n and set(n.get("state", [])) & NUD_VALID:
            t.neighbours[(index[n["dev"]], n["dst"])] = bytes.fromhex(n["lladdr"].replace(":", ""))
    for name, ifindex in index.items():
        for fam, key in ((4, "ipv4"), (6, "ipv6")):
            path = f"/proc/sys/net/{key}/conf/{name}/forwarding"
            value = subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True,
                                   text=True).stdout.strip()
            t.forwarding[(fam, ifindex)] = value == "1"
        path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
        value = subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True,
                               text=True).stdout.strip()
        if value != "0":  # "1", or no such file: no IPv6 on the link
            t.ipv6_disabled.add(ifindex)
    return t


def _lookup(routes: list[Route], addr) -> Route | None:
    best = None
    for r in routes:
        if r.prefix.version == addr.version and addr in r.prefix:
            if best is None or r.prefix.prefixlen > best.prefix.prefixlen:
                best = r
    return best


def fib(t: Tables, family: int, ingress: int, dst: bytes, tot_len: int):
    """bpf_fib_lookup(): (outcome, route) with outcome one of the fib_*
    labels, or "ok" with the route and next hop's MAC."""
    if not t.forwarding.get((family, ingress), False):
        return "fib_forwarding_disabled", None, None
    addr = ipaddress.ip_address(dst)
    route = _lookup(t.local, addr) or _lookup(t.main, addr)
    if route is None:
        return "fib_not_forwarded", None, None
    if route.kind in ("blackhole", "unreachable", "prohibit"):
        return f"fib_{route.kind}", route, None
    if route.kind != "unicast":
        return "fib_not_forwarded", route, None
    mtu = route.mtu or t.mtu[route.oif]
    if tot_len > mtu:
        return "fib_frag_needed", route, None
    nexthop = route.gateway or str(addr)
    mac = t.neighbours.get((route.oif, nexthop))
    if mac is None:
        return "fib_no_neighbour", route, None
    return "ok", route, mac


def decide(frame: bytes, ingress: int, t: Tables) -> Verdict:
    """What xdpfwd must do with frame arriving on ingress."""
    def passed(outcome):
        return Verdict("pass", outcome)

    if len(frame) < 14:
        return passed("malformed")
    if frame[0] & 1:
        return passed("multicast")
    if frame[0:6] != t.mac[ingress]:  # eth_type_trans(): PACKET_OTHERHOST
        return passed("other_host")
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype in (0x8100, 0x88A8):
        return passed("vlan")
    if ethertype == 0x0800:
        if len(frame) < 34:
            return passed("malformed")
        version, ihl = frame[14] >> 4, frame[14] & 0xF
        total = int.from_bytes(frame[16:18], "big")
        if version != 4 or ihl < 5 or 14 + total > len(frame) or total < ihl * 4:
            return passed("malformed")
        if ihl != 5:
            return passed("ip_options")
        if _ones_complement_sum(frame[14:34]) != 0xFFFF:
            return passed("bad_checksum")
        src4, dst4 = ipaddress.IPv4Address(frame[26:30]), ipaddress.IPv4Address(frame[30:34])
        # ip_route_input_slow()'s martians, before any lookup
        if src4.is_multicast or src4 == LBCAST or src4 in ZERONET or src4.is_loopback:
            return passed("martian_source")
        if dst4.is_multicast or dst4 == LBCAST:
            return passed("multicast")
        if dst4 in ZERONET or dst4.is_loopback:
            return passed("martian_destination")
        ttl = frame[22]
        if ttl <= 1:
            return passed("ttl_exceeded")
        # ip_multipath_l3_keys(): an ICMP error (not a later fragment)
        # hashes by the header it quotes; the kernel's to route.
        offset = int.from_bytes(frame[20:22], "big") & 0x1FFF
        if frame[23] == 1 and offset == 0 and total > 20 and frame[34] in ICMP_ERRORS:
            return passed("icmp_error")
        family, dst, l3_len = 4, frame[30:34], total
    elif ethertype == 0x86DD:
        if ingress in t.ipv6_disabled:  # ip6_rcv_core(), first of all
            return passed("ipv6_disabled")
        if len(frame) < 54:
            return passed("malformed")
        payload = int.from_bytes(frame[18:20], "big")
        if frame[14] >> 4 != 6 or 54 + payload > len(frame):
            return passed("malformed")
        if frame[20] == 0:  # hop-by-hop options
            return passed("ip_options")
        src, dst = ipaddress.IPv6Address(frame[22:38]), ipaddress.IPv6Address(frame[38:54])
        # ip6_rcv_core() and ip6_forward()
        if src.is_multicast or src.is_loopback or src.is_unspecified:
            return passed("martian_source")
        if dst.is_loopback or dst.is_unspecified:
            return passed("martian_destination")
        if dst.is_multicast:
            return passed("multicast")
        if src.is_link_local or dst.is_link_local:
            return passed("link_local")
        ttl = frame[21]
        if ttl <= 1:
            return passed("ttl_exceeded")
        upper = _ipv6_upper_layer(frame[14:54 + payload])
        if upper == "too deep":
            return passed("ip_options")
        if upper[0] == 58 and len(upper[1]) >= 1 and upper[1][0] in ND_TYPES:
            return passed("ndp")  # ip6_forward_proxy_check(): the kernel's to answer if proxied
        if frame[20] == 58 and payload > 0 and frame[54] in ICMPV6_ERRORS:
            return passed("icmp_error")  # ip6_multipath_l3_keys(), right behind the fixed header
        if frame[20] in (43, 44, 60):  # the flow dissector walks past these to the ports
            return passed("ip_options")
        family, dst, l3_len = 6, frame[38:54], 40 + payload
    else:
        return passed("not_ip")

    outcome, route, mac = fib(t, family, ingress, dst, l3_len)
    if outcome != "ok":
        return passed(outcome)
    if route.oif not in t.ports:
        return passed("egress_not_a_port")
    if route.oif == ingress:
        return passed("egress_is_ingress")
    if family == 4:
        # fib_validate_source() as strict rp_filter asks: a unicast route
        # back to the source out of the ingress port; anything else is
        # left to the kernel's own rp_filter.
        back = _lookup(t.local, src4) or _lookup(t.main, src4)
        if back is None or back.kind != "unicast" or back.oif != ingress:
            return passed("reverse_path")
    frame = frame[:14 + l3_len]  # ip_rcv_core() trims to the IP length
    return Verdict("redirect", "forwarded", _rewrite(frame, family, mac, t.mac[route.oif]), route.oif)


ND_TYPES = {133, 134, 135, 136, 137}  # RS, RA, NS, NA, Redirect
ICMP_ERRORS = {3, 4, 5, 11, 12}  # icmp_is_err()
ICMPV6_ERRORS = {1, 2, 3, 4}  # icmpv6_is_err()
WALKED = 6  # extension headers the datapaths walk; a longer chain is left to the kernel


def _ipv6_upper_layer(ip: bytes):
    """ipv6_skip_exthdr() on an IPv6 packet: (protocol, the bytes from
    its header on); (None, b"") where the kernel's walk fails or stops at a
    fragment other than the first; "too deep" past WALKED headers."""
    protocol, rest = ip[6], ip[40:]
    for walked in range(WALKED + 1):
        if protocol not in (0, 43, 44, 51, 60):
            return (None, b"") if protocol == 59 else (protocol, rest)
        if walked == WALKED:
            return "too deep"
        if len(rest) < 2 or (protocol == 44 and len(rest) < 4):
            return None, b""
        if protocol == 44:
            if int.from_bytes(rest[2:4], "big") >> 3:  # the fragment offset
                return None, b""
            size = 8
        else:
            size = (rest[1] + 2) * 4 if protocol == 51 else (rest[1] + 1) * 8
        protocol, rest = rest[0], rest[size:]
    raise AssertionError("unreachable")


def _ones_complement_sum(data: bytes) -> int:
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _rewrite(frame: bytes, family: int, dmac: bytes, smac: bytes) -> bytes:
    out = bytearray(dmac + smac + frame[12:])
    if family == 4:
        out[22] -= 1
        # Recomputed from scratch (RFC 1071), not incrementally: an
        # independent check of the datapaths' incremental update.
        out[24:26] = b"\0\0"
        out[24:26] = (0xFFFF - _ones_complement_sum(bytes(out[14:34]))).to_bytes(2, "big")
    else:
        out[21] -= 1
    return bytes(out)
