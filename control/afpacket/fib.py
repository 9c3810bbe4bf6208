"""Where a packet goes and with which MACs, from the kernel's own tables.

The AF_PACKET forwarder asks this module what bpf_fib_lookup() would answer
in the XDP path: the egress interface, the next hop and its MAC, or why the
packet cannot be forwarded (an outcome label from bpf/counters.h). Answers
come from rtnetlink and are cached per destination; a second netlink socket
subscribed to every change that can alter an answer drops the cache, so it
is never stale for longer than the packet loop takes to call poll_events();
what changes without a word on rtnetlink (a port's IPv6 MTU, a path MTU
the router learns or forgets, ip_forward_use_pmtu) is seen within MAX_AGE.
"""

import errno
import os
import socket
import time
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTNLGRP_IPV4_IFADDR,
    RTNLGRP_IPV4_ROUTE,
    RTNLGRP_IPV4_RULE,
    RTNLGRP_IPV6_IFADDR,
    RTNLGRP_IPV6_ROUTE,
    RTNLGRP_IPV6_RULE,
    RTNLGRP_LINK,
    RTNLGRP_NEIGH,
)
from pyroute2.netlink.rtnl import ndmsg

from xdpfwd import netlink, sysctl
from xdpfwd.netlink import RTN_UNICAST, drain, event_socket

# Not in pyroute2's list. Deleting a nexthop object (ip nexthop del) silently
# removes the routes that use it: observed, no message at all on the route
# groups, only on this one.
RTNLGRP_NEXTHOP = 32
# What can change a route lookup's answer (icmp.py's caches of routes and
# addresses listen to these)...
ROUTE_EVENT_GROUPS = (
    RTNLGRP_LINK,
    RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR,
    RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE,
    # Policy routing rules change answers as much as routes do.
    RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_RULE,
    RTNLGRP_NEXTHOP,
)
# ... and, for a next hop's MAC, the neighbours.
EVENT_GROUPS = (*ROUTE_EVENT_GROUPS, RTNLGRP_NEIGH)

# Errors of a destination-only `route get`, as observed on 6.18 for both
# IPv4 and IPv6 (ip route get, and pyroute2's NetlinkError.code):
#   blackhole -> EINVAL, unreachable -> EHOSTUNREACH, prohibit -> EACCES
#   (also for `ip rule ... prohibit`), no route at all -> ENETUNREACH.
ROUTE_ERRORS = {
    errno.EINVAL: "fib_blackhole",
    errno.EHOSTUNREACH: "fib_unreachable",
    errno.EACCES: "fib_prohibit",
    errno.ENETUNREACH: "fib_not_forwarded",
}
# The rules every namespace starts with (local, main, default): any other
# makes fib4_has_custom_rules() true, and fib_validate_source() then does
# the full reverse lookup even with rp_filter off.
DEFAULT_RULE_PRIORITIES = {0, 32766, 32767}

# NUD_VALID in include/net/neighbour.h: the states bpf_fib_lookup() accepts.
NUD_VALID = (ndmsg.NUD_PERMANENT | ndmsg.NUD_NOARP | ndmsg.NUD_REACHABLE
             | ndmsg.NUD_STALE | ndmsg.NUD_DELAY | ndmsg.NUD_PROBE)

FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
RESOLVE_INTERVAL = 1.0  # seconds between two resolve() of one next hop
# A flood of distinct destinations must not grow memory without bound;
# starting over costs one netlink round trip per destination in use.
MAX_CACHED = 65536
# The oldest an answer gets: some changes announce nothing on rtnetlink (a
# port's IPv6 MTU, net.ipv6.conf.PORT.mtu; ip_forward_use_pmtu; a path MTU
# learnt from an ICMP error to the router's own traffic, its expiry, `ip
# route flush cache`), and the kernel's own forwarding sees them at once.
MAX_AGE = 1.0
# uapi/linux/rtnetlink.h: `route get` answers with the FIB entry that
# matched (fib_dump_info(): its own metrics), not with the route the lookup
# made (rt_fill_info(): a learnt path MTU in place of the route's MTU).
RTM_F_FIB_MATCH = 0x2000
SYSCTL_SECONDS = 0.1  # how long a read of ip_forward_use_pmtu is trusted, as slowpath's
IPV6_MIN_MTU = 1280


@dataclass(frozen=True)
class Hop:
    outcome: str       # a label from counters.h: "forwarded" when the packet can go out,
                       # else fib_unreachable / fib_blackhole / fib_prohibit / fib_not_forwarded /
                       # fib_no_neighbour, or fib_other for an error the kernel should not give
    ifindex: int = 0   # egress interface (also set for fib_no_neighbour)
    dmac: bytes = b""  # 6 bytes, next hop's MAC (forwarded only)
    smac: bytes = b""  # 6 bytes, egress interface's MAC (forwarded only)
    mtu: int = 0       # the largest packet that goes out whole: IPv4: what ip_forward() checks
                       # (ip_dst_mtu_maybe_forward(): the route's own if set, or with
                       # ip_forward_use_pmtu a path MTU learnt below it, else the link's);
                       # IPv6: the smaller of forward_mtu and what the output path checks
                       # (ip6_mtu(): the route's or a learnt path MTU, locked or not, else
                       # the port's IPv6 MTU; not raised to 1280); also set for
                       # fib_no_neighbour: like bpf_fib_lookup(), a packet too big is
                       # fib_frag_needed before any neighbour question
    nexthop: bytes = b""  # gateway address, or the destination itself when on-link (packed, 4 or 16 bytes)
    no_route: bool = False  # fib_not_forwarded because nothing matched (the kernel's ENETUNREACH)
    forward_mtu: int = 0  # IPv6 only: what ip6_forward() checks first (ip6_dst_mtu_maybe_forward(dst,
                          # true): a locked route MTU, else the port's IPv6 MTU; at least 1280)


def _ipv6_mtus(route_mtu: int, locked: bool, port_mtu6: int) -> tuple[int, int]:
    """(forward_mtu, mtu) of an IPv6 Hop, from the RTAX_MTU `route get`
    reports (0 for none) and the egress port's IPv6 MTU (idev->cnf.mtu6,
    net.ipv6.conf.PORT.mtu, which can be set below the link's).

    A forwarded IPv6 packet is checked twice. ip6_forward() checks
    ip6_dst_mtu_maybe_forward(dst, true): the route's MTU only when it is
    locked, else the port's IPv6 MTU, raised to IPV6_MIN_MTU, and answers
    Packet Too Big with it before `hdr->hop_limit--`. Then the output path,
    __ip6_finish_output(), checks ip6_skb_dst_mtu() = dst_mtu() = ip6_mtu()
    (ip6_dst_mtu_maybe_forward(dst, false)): the RTAX_MTU whether locked or
    not, else the port's IPv6 MTU, with no floor; ip6_fragment() answers a
    forwarded packet over it (no socket, !ignore_df) with Packet Too Big
    carrying that MTU, below 1280 too, quoting the packet with its hop limit
    already decremented. A learnt path MTU is the RTAX_MTU of an exception
    route (rt6_do_update_pmtu()), whose metrics, lock bit included, are its
    route's; a lock does not stop learning (__ip6_rt_update_pmtu(): "IPv6
    pmtu discovery isn't optional"); `route get` reports the exception's
    (rt6_fill_node()), so both checks see it as the kernel does."""
    forward_mtu = max(route_mtu if locked and route_mtu else port_mtu6, IPV6_MIN_MTU)
    return forward_mtu, min(forward_mtu, route_mtu or port_mtu6)


def _mac(text: str | None) -> bytes:
    # Devices without link-layer addresses (NOARP, tun) report none or "".
    return bytes.fromhex(text.replace(":", "")) if text else bytes(6)


def _packed(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


class Fib:
    def __init__(self):
        # Both sockets belong to the network namespace of the calling thread.
        # The event socket comes first, so that every change after any of
        # our answers is waiting in it.
        self._events = event_socket(EVENT_GROUPS)
        self._ipr = IPRoute()
        self._hops: dict[tuple[int, bytes], Hop] = {}
        self._back: dict[bytes, int] = {}  # IPv4 source -> egress of the unicast route to it, or 0
        self._v4: tuple[dict[bytes, int], bool] | None = None  # (local address -> ifindex, custom rules)
        self._links: dict[int, tuple[bytes, int, bool, int]] = {}  # ifindex -> (MAC, MTU, IPv6 off, mtu6)
        self._since = time.monotonic()  # when the answers were last dropped
        self._resolved: dict[tuple[bytes, int], float] = {}  # (nexthop, ifindex) -> monotonic time
        # Opened here, in the namespace the sockets belong to (a /proc/sys/net
        # file is its opener's namespace's); None: the kernel lacks it (off).
        self._use_pmtu_fd = sysctl.opened(sysctl.path("ipv4", "ip_forward_use_pmtu"))
        self._use_pmtu, self._use_pmtu_at = False, -SYSCTL_SECONDS

    def lookup(self, family: int, dst: bytes) -> Hop:
        hop = self._hops.get((family, dst))
        if hop is None:
            if len(self._hops) >= MAX_CACHED:
                self._hops.clear()
            hop = self._hops[(family, dst)] = self._ask(FAMILIES[family], dst)
        return hop

    def mac(self, ifindex: int) -> bytes:
        """The interface's own address: a frame to any other is not ours."""
        return self._link(ifindex)[0]

    def ipv6_disabled(self, ifindex: int) -> bool:
        """disable_ipv6 set on the interface, or no IPv6 on it at all:
        ip6_rcv_core() drops the IPv6 it receives."""
        return self._link(ifindex)[2]

    def reverse_ok(self, src: bytes, dst: bytes, ingress: int, egress: int) -> bool:
        """The XDP program's reverse-path check (redirect.c): the way back
        to an IPv4 source is a unicast route out of the ingress port. What
        fails it is left to the kernel's rules (the slow path)."""
        back = self._back.get(src)
        if back is None:
            if len(self._back) >= MAX_CACHED:
                self._back.clear()
            back = self._back[src] = self._unicast_oif(socket.AF_INET, src)
        return back == ingress

    def route_back(self, src: bytes) -> tuple[int, int]:
        """(route type, egress) of the route to an IPv4 source: what
        fib_validate_source() looks up; type 0 when there is none."""
        try:
            (route,) = self._ipr.route("get", family=socket.AF_INET, dst=socket.inet_ntop(socket.AF_INET, src))
        except NetlinkError:
            return 0, 0
        return route["type"], route.get_attr("RTA_OIF") or 0

    def ipv4_state(self) -> tuple[dict[bytes, int], bool]:
        """({local IPv4 address: ifindex}, whether custom rules exist)."""
        if self._v4 is None:
            # IFA_LOCAL is the box's own address (IFA_ADDRESS is the peer's
            # on a point-to-point link): what inet_lookup_ifaddr_rcu() finds.
            addrs = {_packed(a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")): a["index"]
                     for a in self._ipr.get_addr(family=socket.AF_INET)}
            custom = any((r.get_attr("FRA_PRIORITY") or 0) not in DEFAULT_RULE_PRIORITIES
                         for r in self._ipr.get_rules(family=socket.AF_INET))
            self._v4 = (addrs, custom)
        return self._v4

    def _unicast_oif(self, af: int, dst: bytes) -> int:
        try:
            (route,) = self._ipr.route("get", family=af, dst=socket.inet_ntop(af, dst))
        except NetlinkError:
            return 0
        return route.get_attr("RTA_OIF") if route["type"] == RTN_UNICAST else 0

    def fileno(self) -> int:
        return self._events.fileno()

    def poll_events(self) -> int:
        # Whatever changed, dropping every answer is always right; working out
        # which ones a change affects is not worth its bugs.
        events = drain(self._events)
        if not events and time.monotonic() - self._since > MAX_AGE and (self._hops or self._links):
            events = 1
        if events:
            self._since = time.monotonic()
            self._hops.clear()
            self._back.clear()
            self._v4 = None
            self._links.clear()
        return events

    def resolve(self, hop: Hop) -> None:
        key = (hop.nexthop, hop.ifindex)
        now = time.monotonic()
        if now - self._resolved.get(key, -RESOLVE_INTERVAL) < RESOLVE_INTERVAL:
            return
        if len(self._resolved) >= MAX_CACHED:
            self._resolved = {k: t for k, t in self._resolved.items()
                              if now - t < RESOLVE_INTERVAL}
        self._resolved[key] = now
        family = socket.AF_INET if len(hop.nexthop) == 4 else socket.AF_INET6
        # NTF_USE makes neigh_add() call neigh_event_send() instead of setting
        # a state: the kernel starts ARP/ND exactly as for an outgoing packet,
        # creating the entry if needed (NLM_F_CREATE), and never overwrites a
        # valid one. pyroute2's neigh() takes the flag as is; state=0 keeps
        # its default NUD_PERMANENT out, which would make a new entry exempt
        # from garbage collection.
        try:
            self._ipr.neigh("replace", family=family, ifindex=hop.ifindex,
                            dst=socket.inet_ntop(family, hop.nexthop),
                            flags=ndmsg.NTF_USE, state=ndmsg.NUD_NONE)
        except NetlinkError:
            pass  # a hint only, like a packet that fails to trigger ARP; the next one asks again

    def close(self) -> None:
        self._ipr.close()
        self._events.close()
        if self._use_pmtu_fd is not None:
            os.close(self._use_pmtu_fd)
            self._use_pmtu_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _ask(self, af: int, dst: bytes) -> Hop:
        try:
            return self._route(af, dst)
        except NetlinkError as e:
            if e.code in ROUTE_ERRORS:
                return Hop(ROUTE_ERRORS[e.code], no_route=e.code == errno.ENETUNREACH)
            # E.g. the egress link vanished between two requests: its event
            # is already queued and will drop this answer.
            return Hop("fib_other")

    def _route(self, af: int, dst: bytes) -> Hop:
        # Destination only, no iif: the forwarder turns the ports' forwarding
        # sysctls off, and an input-route lookup would then fail.
        (route,) = self._ipr.route("get", family=af, dst=socket.inet_ntop(af, dst))
        if route["type"] != RTN_UNICAST:  # local, broadcast, multicast, anycast, nat
            return Hop("fib_not_forwarded")
        ifindex = route.get_attr("RTA_OIF")
        # RTA_VIA carries a gateway of the other family (IPv4 via inet6).
        via = route.get_attr("RTA_VIA")
        gateway = via["addr"] if via else route.get_attr("RTA_GATEWAY")
        nexthop = _packed(gateway) if gateway else dst
        smac, link_mtu, _, mtu6 = self._link(ifindex)
        forward_mtu = 0
        if af == socket.AF_INET:
            mtu = self._route_mtu4(route, dst) or link_mtu
        else:
            forward_mtu, mtu = _ipv6_mtus(*netlink.route_mtu(route), mtu6 or link_mtu)
        dmac = self._neighbour(nexthop, ifindex)
        if dmac is None:
            return Hop("fib_no_neighbour", ifindex=ifindex, mtu=mtu, nexthop=nexthop, forward_mtu=forward_mtu)
        return Hop("forwarded", ifindex, dmac, smac, mtu, nexthop, forward_mtu=forward_mtu)

    def _route_mtu4(self, route, dst: bytes) -> int:
        """The MTU ip_forward() checks against, 0 for the link's, given the
        `route get` answer for dst."""
        mtu, locked = netlink.route_mtu(route)
        # rt_fill_info() puts a learnt path MTU (rt_pmtu, until it expires)
        # in place of the route's own RTAX_MTU, locked when it was learnt
        # below net.ipv4.route.min_pmtu (rt_mtu_locked). When forwarding,
        # ip_dst_mtu_maybe_forward() takes that value (dst_mtu()) only with
        # ip_forward_use_pmtu set or the MTU locked (a locked route MTU
        # learns nothing: __ip_rt_update_pmtu()); otherwise the route's own
        # RTAX_MTU, else the device's, which only the FIB entry tells. No
        # MTU in the answer: neither a route MTU nor a learnt one, one
        # request is enough.
        if not mtu or locked or self._forward_uses_pmtu():
            return mtu
        (entry,) = self._ipr.route("get", family=socket.AF_INET, dst=socket.inet_ntop(socket.AF_INET, dst),
                                   flags=RTM_F_FIB_MATCH)
        return netlink.route_mtu(entry)[0]

    def _forward_uses_pmtu(self) -> bool:
        """net.ipv4.ip_forward_use_pmtu, read again at most every
        SYSCTL_SECONDS: a change takes effect while the forwarder runs."""
        now = time.monotonic()
        if now - self._use_pmtu_at >= SYSCTL_SECONDS:
            self._use_pmtu_at = now
            self._use_pmtu = self._use_pmtu_fd is not None and sysctl.pread(self._use_pmtu_fd) != "0"
        return self._use_pmtu

    def _neighbour(self, nexthop: bytes, ifindex: int) -> bytes | None:
        family = socket.AF_INET if len(nexthop) == 4 else socket.AF_INET6
        try:
            (neigh,) = self._ipr.neigh("get", family=family, ifindex=ifindex,
                                       dst=socket.inet_ntop(family, nexthop))
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                return None
            raise
        if not neigh["state"] & NUD_VALID:  # INCOMPLETE, FAILED, NONE
            return None
        return _mac(neigh.get_attr("NDA_LLADDR"))

    def _link(self, ifindex: int) -> tuple[bytes, int, bool, int]:
        link = self._links.get(ifindex)
        if link is None:
            (msg,) = self._ipr.link("get", index=ifindex)
            link = self._links[ifindex] = (_mac(msg.get_attr("IFLA_ADDRESS")), msg.get_attr("IFLA_MTU"),
                                           netlink.ipv6_disabled(msg), netlink.ipv6_mtu(msg))
        return link
