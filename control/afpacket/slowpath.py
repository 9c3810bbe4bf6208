"""What the kernel's forwarding would have done with a frame the fast path
(packet.decide, the same checks as the XDP program) leaves to the kernel.

In XDP mode such a frame goes to the stack (XDP_PASS) and the kernel's own
forwarding decides. In AF_PACKET mode the kernel's forwarding is off on the
ports, so the kernel's copy of the frame is dropped, or delivered locally,
but never forwarded, and no ICMP error is sent for it (ip_error() and
ip6_forward() need forwarding on). So the forwarder does here, for those
frames only, what the forward path would have done, in the kernel's order:

  route lookup    no route / unreachable / prohibit -> ICMP error, blackhole
                  -> nothing (ip_route_input_slow(), ip_error(),
                  ip6_pkt_discard()); local, broadcast, multicast -> nothing
                  here (the kernel delivers its own copy)
  source check    IPv4: fib_validate_source() with the rp_filter,
                  accept_local and send_redirects the sysctls say now
  hop limit       TTL / hop limit <= 1 -> Time Exceeded (ip_forward(),
                  ip6_forward())
  IPv6 source     link-local -> Unreachable, not a neighbour (ip6_forward())
  MTU             too big with DF, or IPv6 -> Frag Needed / Packet Too Big;
                  IPv4 without DF -> fragmented (ip_forward(),
                  ip_do_fragment())
  neighbour       not resolved -> held until it is (the worker's queue)
  transmit        out of any interface, a port or not, and back out of the
                  ingress port (hairpin) too

What it does not do (README, LIMITATIONS): IPv4 options and IPv6
hop-by-hop options are not processed (such packets are not forwarded in
AF_PACKET mode), and no ICMP redirect is sent for hairpinned packets.
"""

import socket
import time
from pathlib import Path

from xdpfwd.afpacket import packet

# The fast path's outcomes that the kernel's forwarding may still forward
# or answer with an ICMP error. The others (frames for other hosts,
# martians, malformed, multicast, not IP...) the kernel never forwards, and
# it handles its own copy of them itself.
SLOW = frozenset({
    packet.TTL, packet.LINK_LOCAL, packet.OUTCOME_INDEX["fib_unreachable"],
    packet.OUTCOME_INDEX["fib_prohibit"], packet.OUTCOME_INDEX["fib_not_forwarded"],
    packet.FRAG_NEEDED, packet.NOT_A_PORT, packet.SAME_PORT, packet.REVERSE_PATH,
    packet.NO_NEIGH,
})

RTN_UNICAST, RTN_LOCAL = 1, 2  # rtnetlink route types
ROUTE_ICMP = {"fib_unreachable": "unreachable", "fib_prohibit": "prohibit"}
IP_DF = 0x4000
IPV6_MIN_MTU = 1280
SYSCTL_SECONDS = 0.1  # how long a read of the ingress port's sysctls is trusted


class Sysctls:
    """The IPv4 conf values fib_validate_source() reads, per interface,
    re-read at most every SYSCTL_SECONDS so that a change takes effect
    while the forwarder runs, as it does in the kernel."""

    def __init__(self):
        self._cache: dict[str, tuple[float, dict[str, int]]] = {}

    @staticmethod
    def _read(ifname: str, key: str) -> int:
        try:
            return int(Path(f"/proc/sys/net/ipv4/conf/{ifname}/{key}").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def conf(self, ifname: str) -> dict[str, int]:
        now = time.monotonic()
        hit = self._cache.get(ifname)
        if hit and now - hit[0] < SYSCTL_SECONDS:
            return hit[1]
        r = lambda key: (self._read("all", key), self._read(ifname, key))  # noqa: E731
        rp, local, redirects = r("rp_filter"), r("accept_local"), r("send_redirects")
        conf = {"rp_filter": max(rp),               # IN_DEV_RPFILTER: IN_DEV_MAXCONF
                "accept_local": int(any(local)),    # IN_DEV_ACCEPT_LOCAL: IN_DEV_ORCONF
                "send_redirects": int(any(redirects))}  # IN_DEV_TX_REDIRECTS: IN_DEV_ORCONF
        self._cache[ifname] = (now, conf)
        return conf


def source_valid(fib, conf: dict[str, int], src: bytes, ingress: int, egress: int) -> bool:
    """fib_validate_source() and __fib_validate_source() (net/ipv4/
    fib_frontend.c) for a packet to be forwarded from ingress to egress.
    The reverse lookup is an output route lookup of the source (the kernel
    looks it up as if it came in through egress: the same answer unless
    policy rules select on the input interface)."""
    rpf, accept_local = conf["rp_filter"], conf["accept_local"]
    addrs, custom_rules = fib.ipv4_state()
    if not rpf and (ingress != egress or not conf["send_redirects"]):
        if accept_local:
            return True
        if not custom_rules:
            return src not in addrs  # inet_lookup_ifaddr_rcu(): a local source is a martian
    kind, oif = fib.route_back(src)
    if kind == 0:
        return not rpf  # last_resort
    if kind != RTN_UNICAST and not (kind == RTN_LOCAL and accept_local):
        return False
    if oif == ingress:
        return True
    if ingress not in addrs.values():  # no_addr: the port has no IPv4 address
        return not rpf
    return rpf != 1  # loose mode accepts any unicast way back


class SlowPath:
    """Owned by one worker. transmit(ifindex, frame) -> bool sends out of
    an interface; icmp.reply(frame, ingress, cause, mtu) answers with an
    ICMP error as the kernel would (and within its rate limits);
    fragment(ip_packet, mtu) splits an IPv4 packet as ip_do_fragment()."""

    def __init__(self, fib, icmp, fragment, transmit, hold):
        self.fib = fib
        self.icmp = icmp
        self.fragment = fragment
        self.transmit = transmit
        self.hold = hold  # hold(frame, ingress, vlan, since, hop) -> bool
        self.sysctls = Sysctls()
        self._names: dict[int, str] = {}

    def _name(self, ifindex: int) -> str:
        name = self._names.get(ifindex)
        if name is None:
            name = self._names[ifindex] = socket.if_indextoname(ifindex)
        return name

    def handle(self, frame: bytes, ingress: int, vlan: bool, since: float | None) -> int:
        """Do what the kernel's forward path would. Returns the number of
        frames sent: 0 when it dropped the frame or answered it with an
        ICMP error, -1 when it holds it for its neighbour."""
        if frame[12:14] == packet.ETH_IPV4:
            family, total, ttl = 4, (frame[16] << 8) | frame[17], frame[22]
            src, dst = frame[26:30], frame[30:34]
            if frame[14] & 0xF != 5:
                return 0  # options: not processed here (LIMITATIONS)
        else:
            family, total, ttl = 6, 40 + ((frame[18] << 8) | frame[19]), frame[21]
            src, dst = frame[22:38], frame[38:54]
            if frame[20] == packet.IPPROTO_HOPOPTS:
                return 0  # hop-by-hop options: not processed here (LIMITATIONS)
            if dst[0] == 0xFE and dst[1] & 0xC0 == 0x80:
                return 0  # link-local destination: never routed off the link
        hop = self.fib.lookup(family, dst)
        if hop.outcome in ROUTE_ICMP:
            self.icmp.reply(frame, ingress, ROUTE_ICMP[hop.outcome])
            return 0
        if hop.outcome == "fib_not_forwarded" or hop.outcome == "fib_other":
            if hop.no_route:
                self.icmp.reply(frame, ingress, "no_route")
            return 0  # local, broadcast...: the kernel has its own copy
        if hop.outcome == "fib_blackhole":
            return 0
        if family == 4 and not source_valid(self.fib, self.sysctls.conf(self._name(ingress)),
                                            src, ingress, hop.ifindex):
            return 0
        if ttl <= 1:
            self.icmp.reply(frame, ingress, "time_exceeded")
            return 0
        if family == 6 and src[0] == 0xFE and src[1] & 0xC0 == 0x80:
            self.icmp.reply(frame, ingress, "source_link_local")
            return 0
        mtu = hop.mtu if family == 4 else max(hop.mtu, IPV6_MIN_MTU)
        too_big = total > mtu
        if too_big and (family == 6 or (frame[20] << 8 | frame[21]) & IP_DF):
            self.icmp.reply(frame, ingress, "frag_needed", mtu)
            return 0
        if hop.outcome == "fib_no_neighbour":
            return -1 if self.hold(frame, ingress, vlan, since, hop) else 0
        if hop.outcome != "forwarded":
            return 0
        # ip_forward() decrements the TTL, then ip_output() fragments.
        ip = decremented(frame[14:14 + total], family)
        pieces = self.fragment(ip, mtu) if too_big else [ip]
        ethertype = packet.ETH_IPV4 if family == 4 else packet.ETH_IPV6
        return sum(self.transmit(hop.ifindex, hop.dmac + hop.smac + ethertype + p) for p in pieces)

    def expired(self, frame: bytes, ingress: int) -> None:
        """A held frame whose next hop never answered: the kernel's
        neighbour code answers each queued packet with Host Unreachable
        (IPv6: Address Unreachable)."""
        self.icmp.reply(frame, ingress, "neighbour_failed")


def decremented(ip: bytes, family: int) -> bytes:
    """An IP packet as forwarded: TTL / hop limit down by one, the IPv4
    checksum updated as ip_decrease_ttl() does."""
    if family == 4:
        check = packet.decrement_ttl_checksum((ip[10] << 8) | ip[11])
        return b"".join((ip[:8], bytes((ip[8] - 1, ip[9])), check.to_bytes(2, "big"), ip[12:]))
    return ip[:7] + bytes((ip[7] - 1,)) + ip[8:]
