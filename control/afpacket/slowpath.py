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
  proxy NDP       IPv6 Neighbour Discovery for an address the box proxies
                  -> nothing (ip6_forward() hands it to local input)
  IPv6 source     link-local -> Unreachable, not a neighbour (ip6_forward())
  MTU             too big with DF, or IPv6 -> Frag Needed / Packet Too Big;
                  IPv4 without DF -> fragmented (ip_forward(),
                  ip_do_fragment()); IPv6 within ip6_forward()'s MTU but
                  over the output path's -> Packet Too Big quoting it as
                  forwarded (ip6_fragment())
  neighbour       not resolved -> held until it is (the worker's queue)
  transmit        out of any interface, a port or not, and back out of the
                  ingress port (hairpin) too

IPv4 options and IPv6 hop-by-hop headers (the fast path stops at them, as
the XDP program does) come here whole: first what the fast path did not
check yet (checksum, martians, multicast). A hop-by-hop header the kernel
refuses (ipv6_parse_hopopts()) is dropped before routing: the kernel's own
copy already got its Parameter Problem if any. IPv4 options go through
ip_rcv_options() after the route lookup, as in ip_rcv_finish_core():
options the kernel refuses are dropped (the kernel's copy answers them),
source routes follow accept_source_route and ip_options_rcv_srr() (a
strict route through this router -> Parameter Problem, a route that names
this router as the destination -> its next hop), then ip_forward()'s
strict-route check (Source Route Failed) and, on the way out,
ip_forward_options() (record route, the source route hop) - see
ipoptions.py. The ICMP errors quote the packet as the kernel holds it by
then (with the record-route and timestamp entries it filled in).

What it does not do (README, LIMITATIONS): no ICMP redirect is sent for
hairpinned packets; router-alert packets are forwarded as when no socket
asked for them (ip_call_ra_chain(), ip6_call_ra_chain()); ICMP errors do
not echo IPv4 options.
"""

import socket
import time

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xdpfwd import netlink, sysctl
from xdpfwd.afpacket import ipoptions, packet

# The fast path's outcomes that the kernel's forwarding may still forward
# or answer with an ICMP error. The others (frames for other hosts,
# martians, malformed, multicast, not IP...) the kernel never forwards, and
# it handles its own copy of them itself.
SLOW = frozenset({
    packet.TTL, packet.LINK_LOCAL, packet.OUTCOME_INDEX["fib_unreachable"],
    packet.OUTCOME_INDEX["fib_prohibit"], packet.OUTCOME_INDEX["fib_not_forwarded"],
    packet.FRAG_NEEDED, packet.NOT_A_PORT, packet.SAME_PORT, packet.REVERSE_PATH,
    packet.NO_NEIGH, packet.IP_OPTIONS, packet.NDP, packet.ICMP_ERROR,
})

RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, RTN_MULTICAST = 1, 2, 3, 5  # rtnetlink route types
ROUTE_ICMP = {"fib_unreachable": "unreachable", "fib_prohibit": "prohibit"}
IP_DF = 0x4000
SYSCTL_SECONDS = 0.1  # how long a read of the ingress port's sysctls is trusted


class Sysctls:
    """The conf values the slow path's rules read, per interface, re-read at
    most every SYSCTL_SECONDS so that a change takes effect while the
    forwarder runs, as it does in the kernel."""

    def __init__(self):
        self._cache: dict[tuple[int, str], tuple[float, dict[str, int]]] = {}

    def _cached(self, key: tuple[int, str], read):
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit and now - hit[0] < SYSCTL_SECONDS:
            return hit[1]
        conf = read()
        self._cache[key] = (now, conf)
        return conf

    def conf(self, ifname: str) -> dict[str, int]:
        """IPv4: what fib_validate_source() and ip_rcv_options() read."""
        def read():
            r = lambda key: (sysctl.read_int(sysctl.path("ipv4", "conf", "all", key)),  # noqa: E731
                             sysctl.read_int(sysctl.path("ipv4", "conf", ifname, key)))
            rp, local, redirects = r("rp_filter"), r("accept_local"), r("send_redirects")
            return {"rp_filter": max(rp),               # IN_DEV_RPFILTER: IN_DEV_MAXCONF
                    "accept_local": int(any(local)),    # IN_DEV_ACCEPT_LOCAL: IN_DEV_ORCONF
                    "send_redirects": int(any(redirects)),  # IN_DEV_TX_REDIRECTS: IN_DEV_ORCONF
                    # IN_DEV_SOURCE_ROUTE: IN_DEV_ANDCONF
                    "accept_source_route": int(all(r("accept_source_route")))}
        return self._cached((4, ifname), read)

    def conf6(self, ifname: str) -> dict[str, int]:
        """IPv6: what ipv6_parse_hopopts() reads (the namespace's limits,
        the ingress interface's ioam6_enabled) and ip6_forward() (the
        namespace's proxy_ndp: devconf_all's, not the interface's)."""
        def read():
            # IP6_DEFAULT_MAX_HBH_OPTS_CNT, IP6_DEFAULT_MAX_HBH_OPTS_LEN
            return {"max_hbh_opts_number": sysctl.read_int(sysctl.path("ipv6", "max_hbh_opts_number"), 8),
                    "max_hbh_length": sysctl.read_int(sysctl.path("ipv6", "max_hbh_length"), 2**31 - 1),
                    "ioam6_enabled": sysctl.read_int(sysctl.path("ipv6", "conf", ifname, "ioam6_enabled")),
                    "proxy_ndp": sysctl.read_int(sysctl.path("ipv6", "conf", "all", "proxy_ndp"))}
        return self._cached((6, ifname), read)

    def ipv6_proxies(self) -> set[tuple[int, bytes]]:
        """netlink.ipv6_proxies(), re-read at most every SYSCTL_SECONDS
        (the kernel announces no change to them)."""
        return self._cached((6, ""), netlink.ipv6_proxies)


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

    def __init__(self, fib, icmp, fragment, transmit, hold, disabled: frozenset = frozenset()):
        self.fib = fib
        self.disabled = disabled  # worker.kernel_forwarding_off(): (family, ingress) the kernel forwards nothing for
        self.icmp = icmp
        self.fragment = fragment
        self.transmit = transmit
        self.hold = hold  # hold(frame, ingress, vlan, since, hop) -> bool
        self.sysctls = Sysctls()
        self._names: dict[int, str] = {}
        # Opened now: opening it for the first options packet stalled the
        # worker for up to a quarter of a second (measured under load).
        self._ipr = IPRoute()
        self._sources: dict[tuple[bytes, int], tuple] = {}  # (dst, oif) -> (FIB hop, prefsrc)

    def _name(self, ifindex: int) -> str:
        name = self._names.get(ifindex)
        if name is None:
            name = self._names[ifindex] = socket.if_indextoname(ifindex)
        return name

    def handle(self, frame: bytes, ingress: int, vlan: bool, since: float | None) -> int:
        """Do what the kernel's forward path would. Returns the number of
        frames sent: 0 when it dropped the frame or answered it with an
        ICMP error, -1 when it holds it for its neighbour."""
        received, options = frame, False
        if frame[12:14] == packet.ETH_IPV4:
            family, total, ttl = 4, (frame[16] << 8) | frame[17], frame[22]
            src, dst = frame[26:30], frame[30:34]
            options = frame[14] & 0xF != 5
            if options and not receivable_v4(frame):
                return 0  # ip_rcv_core() / ip_route_input_slow(): the kernel drops its copy
        else:
            family, total, ttl = 6, 40 + ((frame[18] << 8) | frame[19]), frame[21]
            src, dst = frame[22:38], frame[38:54]
            if frame[20] == packet.IPPROTO_HOPOPTS:
                if total == 40:
                    total = len(frame) - 14  # ip6_rcv_core(): no trim, a jumbogram's length is elsewhere
                if not receivable_v6(src, dst) or self._hbh_refusal(frame, ingress, total):
                    return 0
            if dst[0] == 0xFE and dst[1] & 0xC0 == 0x80:
                return 0  # link-local destination: never routed off the link
        if (family, ingress) in self.disabled:
            # ip6_forward() (devconf_all forwarding 0) and ip_route_input_slow()
            # (!IN_DEV_FORWARD) drop it without an ICMP error; the fast path's
            # earlier outcomes (ndp, ip_options, ttl...) come here before its
            # fwd_disabled check.
            return 0
        hop = self.fib.lookup(family, dst)
        opts = None

        def reply(cause: str, mtu: int = 0, pointer: int = 0) -> None:
            # The error quotes the packet as the kernel holds it by then,
            # spec_dst included.
            quote = frame
            if opts and opts.spec_slots:
                ipoptions.fill_spec_dst(opts, self._spec_dst(received, ingress, hop))
                quote = frame[:14] + bytes(opts.header) + frame[14 + len(opts.header):]
            self.icmp.reply(quote, ingress, cause, mtu, pointer=pointer)

        if options:
            # ip_rcv_finish_core(): the route first, then ip_rcv_options().
            opts = self._compile(frame, ingress, hop)
            if opts is None:
                return 0
            frame = frame[:14] + opts.header + frame[14 + len(opts.header):]
            if opts.srr:
                if not self.sysctls.conf(self._name(ingress))["accept_source_route"]:
                    return 0  # ip_rcv_options(): IN_DEV_SOURCE_ROUTE off
                if hop.outcome not in ("forwarded", "fib_no_neighbour"):
                    # ip_options_rcv_srr(): only a route to one of our
                    # addresses goes on; every other type is dropped.
                    hop = self._srr_local(opts, src, dst, ingress)
                    if hop is None:
                        return 0
                    frame = frame[:14] + bytes(opts.header) + frame[14 + len(opts.header):]
                    dst = opts.nexthop
        if hop.outcome in ROUTE_ICMP:
            reply(ROUTE_ICMP[hop.outcome])
            return 0
        if hop.outcome == "fib_not_forwarded" or hop.outcome == "fib_other":
            if hop.no_route:
                reply("no_route")
            return 0  # local, broadcast...: the kernel has its own copy
        if hop.outcome == "fib_blackhole":
            return 0
        # An options packet did not meet the fast path's reverse check:
        # the same cached answer first (a unicast way back out of the
        # ingress port passes every rp_filter mode), the full rules only
        # when it fails.
        if family == 4 and not (options and self.fib.reverse_ok(src, dst, ingress, hop.ifindex)) \
                and not source_valid(self.fib, self.sysctls.conf(self._name(ingress)),
                                     src, ingress, hop.ifindex):
            return 0
        if opts and opts.srr and opts.is_strictroute and not opts.srr_is_hit:
            # ip_options_rcv_srr(): a strict route may not pass through.
            reply("param_problem", pointer=ipoptions.SSRR_NOT_LOCAL)
            return 0
        if ttl <= 1:
            reply("time_exceeded")
            return 0
        if family == 6 and self._proxied_nd(frame, total, dst, ingress):
            # ip6_forward(): ND for an address the box proxies goes to its
            # own input (ip6_forward_proxy_check()), never out. With IPv6
            # forwarding off, the kernel does not answer it either
            # (ndisc_recv_ns() proxies only on a forwarding interface).
            return 0
        if family == 6 and src[0] == 0xFE and src[1] & 0xC0 == 0x80:
            reply("source_link_local")
            return 0
        if opts and opts.is_strictroute and hop.nexthop != dst:
            reply("sr_failed")  # ip_forward(): rt_uses_gateway
            return 0
        too_big = total > hop.mtu
        if too_big and family == 6:
            # ip6_forward() checks its MTU on the packet as received; one
            # within it goes on (hop limit down, the FORWARD hook) to the
            # output path, whose ip6_fragment() answers it over dst_mtu()
            # (fib._ipv6_mtus()). Both raise Packet Too Big: IPv6 routers
            # never fragment.
            if total > hop.forward_mtu:
                reply("frag_needed", hop.forward_mtu)
            else:
                reply("output_too_big", hop.mtu)
            return 0
        if too_big and (frame[20] << 8 | frame[21]) & IP_DF:
            reply("frag_needed", hop.mtu)
            return 0
        if hop.outcome == "fib_no_neighbour":
            # Held as received: it comes back here whole once resolved.
            return -1 if self.hold(received, ingress, vlan, since, hop) else 0
        if hop.outcome != "forwarded":
            return 0
        if opts and opts.ts_needaddr and not opts.srr_is_hit:
            # The only spec_dst that leaves the router: a timestamp's
            # address (forwarding overwrites the record-route one).
            ipoptions.fill_spec_dst(opts, self._spec_dst(received, ingress, hop))
            frame = frame[:14] + bytes(opts.header) + frame[14 + len(opts.header):]
        # ip_forward() decrements the TTL, ip_forward_finish() completes
        # the options, then ip_output() fragments.
        ip = decremented(frame[14:14 + total], family)
        if opts:
            ip = ipoptions.forward_v4(opts, ip, lambda d: self._rt_source(d, hop.ifindex))
        pieces = self.fragment(ip, hop.mtu) if too_big else [ip]
        ethertype = packet.ETH_IPV4 if family == 4 else packet.ETH_IPV6
        return sum(self.transmit(hop.ifindex, hop.dmac + hop.smac + ethertype + p) for p in pieces)

    def _proxied_nd(self, frame: bytes, total: int, dst: bytes, ingress: int) -> bool:
        """ip6_forward(): proxy_ndp on for the namespace, a proxy entry for
        the destination on the ingress interface (pneigh_lookup(); an IPv6
        entry always names one: pndisc_constructor() refuses none), and a
        Neighbour Discovery message past every extension header."""
        return (packet.ipv6_nd_message(frame, 14 + total, limit=None) == packet.ND
                and bool(self.sysctls.conf6(self._name(ingress))["proxy_ndp"])
                and (ingress, dst) in self.sysctls.ipv6_proxies())

    # -- options ---------------------------------------------------------------

    def _hbh_refusal(self, frame: bytes, ingress: int, total: int) -> str:
        conf = self.sysctls.conf6(self._name(ingress))
        return ipoptions.hbh_refusal(frame[14:14 + total], conf["max_hbh_opts_number"],
                                     conf["max_hbh_length"], bool(conf["ioam6_enabled"]))

    def _compile(self, frame: bytes, ingress: int, hop) -> ipoptions.V4Options | None:
        """ip_options_compile() on the kernel's terms; None when it refuses
        the options (the kernel's own copy sends the Parameter Problem)."""
        ihl = (frame[14] & 0xF) * 4
        opts = ipoptions.compile_v4(frame[14:14 + ihl], self._addr_type, now_ms)
        return None if opts.problem is not None else opts

    def _spec_dst(self, frame: bytes, ingress: int, hop) -> bytes:
        """fib_compute_spec_dst() for the frame as received: a packet for
        us records the address it was sent to, any other the preferred
        source of the route back to its sender."""
        src, dst = frame[26:30], frame[30:34]
        if not hop.no_route and hop.outcome in ("fib_not_forwarded", "fib_other") \
                and self.fib.route_back(dst)[0] == RTN_LOCAL:
            return dst
        return self._prefsrc(src, 0) or self._select_addr(ingress, src)

    def _srr_local(self, opts, src: bytes, dst: bytes, ingress: int):
        """A source-routed packet not routed as unicast: only a route to one
        of our addresses goes on (ip_options_rcv_srr()), to the first
        address of the list that is not ours. Returns that next hop's route,
        or None when the packet is not forwarded."""
        if self.fib.route_back(dst)[0] != RTN_LOCAL:
            return None
        conf = self.sysctls.conf(self._name(ingress))
        if not source_valid(self.fib, conf, src, ingress, 0):
            return None  # ip_route_input_slow(): fib_validate_source() for local input
        hops = {}

        def route_input(nexthop: bytes) -> int:
            # ip_route_input() with forwarding on, as the kernel would route it.
            if packet.ipv4_martian_source(nexthop) or nexthop[0] >> 4 == 0xE:
                return 0
            hop = self.fib.lookup(4, nexthop)
            if hop.outcome in ("forwarded", "fib_no_neighbour"):
                hops[nexthop] = hop
                return RTN_UNICAST
            if hop.outcome == "fib_not_forwarded" and not hop.no_route \
                    and self.fib.route_back(nexthop)[0] == RTN_LOCAL:
                return RTN_LOCAL
            return 0

        verdict, nexthop = ipoptions.srr_next_hop(opts, route_input)
        # "deliver": the kernel delivers its copy; "problem": its copy got
        # the Parameter Problem.
        return hops[nexthop] if verdict == "forward" else None

    def _iproute(self):
        return self._ipr

    def close(self) -> None:
        self._ipr.close()

    def _prefsrc(self, dst: bytes, oif: int) -> bytes | None:
        """The source the route to dst (out of oif, if given) prefers:
        fib_result_prefsrc(), as an output route lookup reports it. Kept
        while the FIB's own answer for dst stays the same object: the FIB
        cache starts over on any routing change."""
        key, current = (dst, oif), self.fib.lookup(4, dst)
        hit = self._sources.get(key)
        if hit is not None and hit[0] is current:
            return hit[1]
        req = {"family": socket.AF_INET, "dst": socket.inet_ntop(socket.AF_INET, dst)}
        if oif:
            req["oif"] = oif
        try:
            (route,) = self._iproute().route("get", **req)
            pref = route.get_attr("RTA_PREFSRC")
            answer = socket.inet_aton(pref) if pref else None
        except NetlinkError:
            answer = None  # no route: the caller falls back as the kernel does
        if len(self._sources) >= 4096:
            self._sources.clear()
        self._sources[key] = (current, answer)
        return answer

    def _select_addr(self, ifindex: int, dst: bytes) -> bytes:
        """inet_select_addr(dev, dst, RT_SCOPE_UNIVERSE): the device's first
        primary address in dst's subnet, else its first primary address."""
        first = bytes(4)
        for msg in self._iproute().get_addr(family=socket.AF_INET, index=ifindex):
            if msg["flags"] & 0x01 or msg["scope"] > 0:  # IFA_F_SECONDARY, not universe
                continue
            local = socket.inet_aton(msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
            plen = msg["prefixlen"]
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
            if int.from_bytes(local, "big") & mask == int.from_bytes(dst, "big") & mask:
                return local
            if first == bytes(4):
                first = local
        return first

    def _rt_source(self, daddr: bytes, egress: int) -> bytes:
        """ip_rt_get_source() for a forwarded packet: the preferred source of
        the route to daddr out of the egress interface, else the egress'
        own address."""
        return self._prefsrc(daddr, egress) or self._select_addr(egress, daddr)

    def _addr_type(self, addr: bytes) -> int:
        """inet_addr_type()."""
        if addr == bytes(4) or addr == b"\xff\xff\xff\xff":
            return RTN_BROADCAST
        if addr[0] >> 4 == 0xE:
            return RTN_MULTICAST
        kind = self.fib.route_back(addr)[0]
        return kind if kind in (RTN_LOCAL, RTN_BROADCAST) else RTN_UNICAST

    def expired(self, frame: bytes, ingress: int) -> None:
        """A held frame whose next hop never answered: the kernel's
        neighbour code answers each queued packet with Host Unreachable
        (IPv6: Address Unreachable)."""
        self.icmp.reply(frame, ingress, "neighbour_failed")


def receivable_v4(frame: bytes) -> bool:
    """What packet.decide() checks after the options, where it stops:
    ip_rcv_core()'s checksum over the whole header, and the martians and
    group destinations ip_route_input_slow() never forwards as unicast."""
    ihl = (frame[14] & 0xF) * 4
    if packet.checksum(frame[14:14 + ihl]) != 0:
        return False
    src, dst = frame[26:30], frame[30:34]
    if packet.ipv4_martian_source(src):
        return False
    return not (dst[0] >> 4 == 0xE or dst == b"\xff\xff\xff\xff" or dst == bytes(4)
                or dst[0] == 127)


def receivable_v6(src: bytes, dst: bytes) -> bool:
    """packet.decide()'s address checks after the hop-by-hop header:
    ip6_rcv_core() drops multicast and loopback sources and loopback
    destinations; multicast is not forwarded as unicast."""
    return not (src[0] == 0xFF or packet.ipv6_any_or_loopback(src)
                or packet.ipv6_any_or_loopback(dst) or dst[0] == 0xFF)


def now_ms() -> int:
    """inet_current_timestamp(): milliseconds since midnight UTC."""
    return time.time_ns() // 1_000_000 % 86_400_000


def decremented(ip: bytes, family: int) -> bytes:
    """An IP packet as forwarded: TTL / hop limit down by one, the IPv4
    checksum updated as ip_decrease_ttl() does."""
    if family == 4:
        check = packet.decrement_ttl_checksum((ip[10] << 8) | ip[11])
        return b"".join((ip[:8], bytes((ip[8] - 1, ip[9])), check.to_bytes(2, "big"), ip[12:]))
    return ip[:7] + bytes((ip[7] - 1,)) + ip[8:]
