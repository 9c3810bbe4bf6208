"""Interfaces of the current network namespace, and the one parser of
netlink attributes that netfilter.py and ipsec.py read raw replies with.

Links come from netlink (pyroute2) rather than from parsing `ip` output or
/sys, which `ip netns exec` remounts and a setns() thread does not see.
"""

import struct
from dataclasses import dataclass

from xdpfwd.errors import UsageError

IFF_LOOPBACK = 0x8


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    mtu: int
    kind: str  # rtnetlink link kind: veth, bridge, ...; "" for a physical NIC
    mac: str
    loopback: bool
    running: bool  # operationally up: carrier, and the peer of a veth up


def _iproute():
    from pyroute2 import IPRoute  # imported late: it costs ~0.2 s

    return IPRoute()


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
