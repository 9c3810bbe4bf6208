"""Interfaces and forwarding sysctls of the current network namespace.

Links come from netlink (pyroute2) rather than from parsing `ip` output or
/sys, which `ip netns exec` remounts and a setns() thread does not see.
"""

from dataclasses import dataclass
from pathlib import Path

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


def _sysctl_path(family: str, ifname: str) -> Path:
    return Path(f"/proc/sys/net/{family}/conf/{ifname}/forwarding")


def sysctl_name(family: str, ifname: str) -> str:
    return f"net.{family}.conf.{ifname}.forwarding"


def forwarding(family: str, ifname: str) -> bool:
    """Whether the kernel forwards `family` (ipv4, ipv6) arriving on ifname.
    bpf_fib_lookup() answers FWD_DISABLED when this is off."""
    try:
        return _sysctl_path(family, ifname).read_text().strip() == "1"
    except FileNotFoundError:  # IPv6 disabled on the interface or the box
        return False


def kernel_forwards(family: str, ifname: str) -> bool:
    """Whether the kernel's own forwarding forwards `family` arriving on
    ifname. IPv4: the port's switch (ip_route_input_slow()). IPv6:
    ip6_forward() asks net.ipv6.conf.all.forwarding, or the port's
    force_forwarding (6.17 and later); the port's own forwarding value is
    only what bpf_fib_lookup() asks."""
    if family == "ipv4":
        return forwarding(family, ifname)
    force = Path(f"/proc/sys/net/ipv6/conf/{ifname}/force_forwarding")
    try:
        forced = force.read_text().strip() == "1"
    except FileNotFoundError:
        forced = False
    return forwarding("ipv6", "all") or forced


def set_forwarding(family: str, ifname: str, on: bool) -> None:
    _sysctl_path(family, ifname).write_text("1\n" if on else "0\n")


def set_sysctl(name: str, value: str) -> None:
    """net.ipv4.conf.all.rp_filter -> /proc/sys/net/ipv4/conf/all/rp_filter,
    in the calling thread's network namespace."""
    Path("/proc/sys", *name.split(".")).write_text(value + "\n")
