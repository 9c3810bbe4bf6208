"""Interfaces of the current network namespace, rtnetlink event sockets,
and the one parser of netlink attributes that netfilter.py and ipsec.py
read raw replies with.

Links come from netlink (pyroute2) rather than from parsing `ip` output or
/sys, which `ip netns exec` remounts and a setns() thread does not see.
"""

import errno
import socket
import struct
from dataclasses import dataclass

from xdpfwd.errors import UsageError

IFF_LOOPBACK = 0x8
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
# rtnetlink multicast groups (uapi/linux/rtnetlink.h, enum rtnetlink_groups)
RTNLGRP_LINK = 1
RTNLGRP_IPV6_IFADDR = 9
RTNLGRP_IPV6_ROUTE = 11


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


def ipv6_disabled(msg) -> bool:
    """Link.ipv6_disabled, from a link's rtnetlink message."""
    # The same devconf values as /proc/sys/net/ipv6/conf/IF/, in the link's
    # own message (IFLA_AF_SPEC / AF_INET6 / IFLA_INET6_CONF): no path by
    # name, and read in one go with the MAC.
    spec = msg.get_attr("IFLA_AF_SPEC")
    inet6 = spec.get_attr("AF_INET6") if spec else None
    conf = inet6.get_attr("IFLA_INET6_CONF") if inet6 else None
    return conf is None or bool(conf["disable_ipv6"])


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


def event_socket(groups) -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to these groups, in the
    calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                         socket.NETLINK_ROUTE)
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
