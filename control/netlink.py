"""Interfaces of the current network namespace, rtnetlink event sockets,
and the one parser of netlink attributes that netfilter.py and ipsec.py
read raw replies with.

Links come from netlink (pyroute2) rather than from parsing `ip` output or
/sys, which `ip netns exec` remounts and a setns() thread does not see.
"""

import errno
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from xdpfwd.errors import UsageError

IFF_LOOPBACK = 0x8
RTN_UNICAST = 1
RTAX_MTU = 2  # the metric's number, also its bit in RTAX_LOCK
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
# rtnetlink multicast groups (uapi/linux/rtnetlink.h, enum rtnetlink_groups)
RTNLGRP_LINK = 1
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV6_IFADDR = 9
RTNLGRP_IPV6_ROUTE = 11
RTNLGRP_NEXTHOP = 32


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    mtu: int
    kind: str  # rtnetlink link kind: veth, bridge, ...; "" for a physical NIC
    mac: str
    loopback: bool
    running: bool  # operationally up: carrier, and the peer of a veth up
    # IPv6 off on it: disable_ipv6 set, or no IPv6 at all (an MTU below
    # 1280 removes it). ip6_rcv_core() drops its IPv6 either way.
    ipv6_disabled: bool = False


def _iproute():
    from pyroute2 import IPRoute  # imported late: it costs ~0.2 s

    return IPRoute()


def _inet6_conf(msg) -> dict | None:
    # The same devconf values as /proc/sys/net/ipv6/conf/IF/, in the link's
    # own message (IFLA_AF_SPEC / AF_INET6 / IFLA_INET6_CONF): no path by
    # name, and read in one go with the MAC. None: no inet6_dev
    # (inet6_fill_link_af() leaves AF_INET6 out).
    spec = msg.get_attr("IFLA_AF_SPEC")
    inet6 = spec.get_attr("AF_INET6") if spec else None
    return inet6.get_attr("IFLA_INET6_CONF") if inet6 else None


def ipv6_disabled(msg) -> bool:
    """Link.ipv6_disabled, from a link's rtnetlink message."""
    conf = _inet6_conf(msg)
    return conf is None or bool(conf["disable_ipv6"])


def ipv6_mtu(msg) -> int:
    """The link's IPv6 MTU (net.ipv6.conf.IF.mtu, idev->cnf.mtu6), 0 where
    it has no IPv6."""
    conf = _inet6_conf(msg)
    return conf["mtu"] if conf is not None else 0


def _to_link(msg) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") if info else None) or ""
    return Link(
        name=msg.get_attr("IFLA_IFNAME"),
        index=msg["index"],
        mtu=msg.get_attr("IFLA_MTU"),
        kind=kind,
        mac=msg.get_attr("IFLA_ADDRESS") or "",
        loopback=bool(msg["flags"] & IFF_LOOPBACK),
        running=msg.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN"),
        ipv6_disabled=ipv6_disabled(msg),
    )


def links() -> dict[str, Link]:
    with _iproute() as ipr:
        return {link.name: link for link in map(_to_link, ipr.get_links())}


def link(name: str) -> Link:
    found = links().get(name)
    if found is None:
        raise UsageError(f"{name}: no such interface in this network namespace")
    return found


def link_names_by_index() -> dict[int, str]:
    return {link.index: link.name for link in links().values()}


def route_mtu(route) -> tuple[int, bool]:
    """(the MTU set on a route, 0 for none; whether it is locked), from a
    pyroute2 route message."""
    metrics = route.get_attr("RTA_METRICS")
    if not metrics:
        return 0, False
    return metrics.get_attr("RTAX_MTU") or 0, bool((metrics.get_attr("RTAX_LOCK") or 0) & (1 << RTAX_MTU))


def route_key(family: int, table: int, dst_len: int, dst: bytes) -> tuple[int, int, int, bytes]:
    """A route by what its dump and its notifications both carry: the
    family, RTA_TABLE, the prefix length, RTA_DST (b"" for a default
    route)."""
    return family, table, dst_len, dst


RTM_GETROUTE = 26
RTAX_LOCK = 1


def _unlocked_mtu(body: bytes):
    """(route_key(), MTU) of one route message (struct rtmsg, then its
    attributes) whose MTU is set without `lock`, else None."""
    if len(body) < 12 or body[7] != RTN_UNICAST:
        return None
    attrs = attributes(body, 12)
    if RTA_METRICS not in attrs:
        return None
    values = attributes(attrs[RTA_METRICS])
    mtu = struct.unpack("=I", values[RTAX_MTU][:4])[0] if RTAX_MTU in values else 0
    lock = struct.unpack("=I", values[RTAX_LOCK][:4])[0] if RTAX_LOCK in values else 0
    if not mtu or lock & (1 << RTAX_MTU):
        return None
    table = struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else body[4]
    return route_key(body[0], table, body[1], attrs.get(RTA_DST, b"")), mtu


def unlocked_route_mtus(family: int) -> dict[tuple[int, int, int, bytes], int]:
    """{route_key(): MTU} of the unicast routes of a family, every table,
    whose MTU is set without `lock`. A raw dump, each route read only as
    far as its type and metrics and then let go: a router with a full
    Internet table holds a million routes (pyroute2 took 6 s and 420 MB
    for 100 000 of them)."""
    request = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)  # struct rtmsg: all tables
    found = _rtnl_dump(RTM_GETROUTE, request, _unlocked_mtu)
    mtus = {}
    for key, mtu in found:
        mtus[key] = min(mtu, mtus.get(key, mtu))
    return mtus


def event_socket(groups) -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to these groups, in the
    calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                         socket.NETLINK_ROUTE)
    # Room for a routing daemon's burst of changes: ENOBUFS costs a re-read.
    for option in (33, socket.SO_RCVBUF):  # SO_RCVBUFFORCE (root) past rmem_max, else up to it
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
            break
        except OSError:
            pass
    sock.bind((0, 0))
    for group in groups:
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    return sock


def drain(sock: socket.socket) -> int:
    """Read every waiting notification; how many there were. rtnetlink
    sends each as a datagram of its own; ENOBUFS (the kernel dropped some
    it could not queue) counts as one unknown change."""
    events = 0
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return events
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
        events += 1


RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_DELNEXTHOP = 105
RTA_DST, RTA_OIF, RTA_METRICS, RTA_MULTIPATH, RTA_TABLE, RTA_NH_ID = 1, 4, 8, 9, 15, 30


def messages(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each netlink message in a datagram."""
    out, offset = [], 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        out.append((kind, data[offset + 16:offset + length]))
        offset += (length + 3) & ~3
    return out


def read_events(sock: socket.socket, timeout: float) -> list[bytes] | None:
    """The notifications on sock within timeout (waiting for the first,
    then 50 ms for those a change sends with it), as datagrams; None when
    the kernel dropped some it could not queue (ENOBUFS): anything may
    have changed."""
    if not select.select([sock], [], [], timeout)[0]:
        return []
    time.sleep(0.05)
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(1 << 16))
        except BlockingIOError:
            return datagrams
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            drain(sock)
            return None


NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3


def dump(sock: socket.socket, kind: int, request: bytes, seq: int,
         keep=lambda body: body) -> tuple[list, bool]:
    """(keep(body) of each message answering a dump request of this type,
    where it is not None; whether what was dumped changed meanwhile:
    NLM_F_DUMP_INTR). request is the body the request carries; keep lets
    a large dump be read without holding it whole. OSError for an error
    the kernel answers."""
    sock.send(struct.pack("=IHHII", 16 + len(request), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
              + request)
    out, interrupted = [], False
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(data):
            length, mtype, flags, _, _ = struct.unpack_from("=IHHII", data, offset)
            body = data[offset + 16:offset + length]
            offset += (length + 3) & ~3
            if mtype == NLMSG_DONE:
                return out, interrupted
            if mtype == NLMSG_ERROR:
                code = -struct.unpack_from("=i", body)[0]
                if code:
                    raise OSError(code, os.strerror(code))
                continue
            interrupted |= bool(flags & NLM_F_DUMP_INTR)
            kept = keep(body)
            if kept is not None:
                out.append(kept)


def _rtnl_dump(kind: int, request: bytes, keep=lambda body: body) -> list:
    """dump() on a socket of its own in the calling thread's namespace;
    a table that keeps changing during the dump: the third answer stands."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        for seq in range(1, 4):
            found, interrupted = dump(sock, kind, request, seq, keep)
            if not interrupted:
                break
    return found


RTM_GETNEIGH = 30
NTF_PROXY = 0x08
NDA_DST = 1


def ipv6_proxies() -> set[tuple[int, bytes]]:
    """The IPv6 proxy entries (`ip -6 neigh show proxy`), as (ifindex,
    address). pyroute2's neighbour
    dump does not ask for them: the kernel dumps its proxy table
    (pneigh_dump_table()) only for a request whose ndm_flags are exactly
    NTF_PROXY."""
    request = struct.pack("=BBHiHBB", socket.AF_INET6, 0, 0, 0, 0, NTF_PROXY, 0)  # struct ndmsg
    proxies = set()
    for body in _rtnl_dump(RTM_GETNEIGH, request):
        dst = attributes(body, 12).get(NDA_DST)
        if dst is not None and len(dst) == 16:
            proxies.add((struct.unpack_from("=i", body, 4)[0], dst))
    return proxies


def attributes(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """{type: payload} of a run of netlink attributes (last one wins)."""
    out = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]  # drop NESTED / BYTEORDER
        offset += (length + 3) & ~3
    return out
