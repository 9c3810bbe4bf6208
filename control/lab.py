"""The namespace lab: sendbox -- router -- recvbox on one machine.

Three network namespaces joined by two veth pairs, with the addresses and
routes of lab.json (shared with the VM lab). Every command runs with
`ip -n NS` or `ip netns exec NS`: nothing is added to the root namespace,
and lab traffic cannot leave the namespaces.
"""

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from xdpfwd import netlink, netns
from xdpfwd.errors import MissingDependency, XdpfwdError

TOPOLOGY = json.loads(Path(__file__).with_name("lab.json").read_text())
HOSTS: dict = TOPOLOGY["hosts"]
ROUTER = TOPOLOGY["router"]
UDP_PORT = TOPOLOGY["udp_port"]
# A second lab beside the first (the benchmark's) gets its own namespaces.
PREFIX = os.environ.get("XDPFWD_LAB_PREFIX", "")


def ns(host: str) -> str:
    """The network namespace of a lab host."""
    return PREFIX + host


NAMESPACES = tuple(ns(h) for h in HOSTS)


def address(host: str, ifname: str = "eth0", family: int = 4) -> str:
    """A lab host's address without the prefix length."""
    addrs = HOSTS[host]["interfaces"][ifname]
    return next(a for a in addrs if (":" in a) == (family == 6)).split("/")[0]


def _run(args: list[str], log: list[str] | None) -> None:
    if log is not None:
        log.append(" ".join(args))
    try:
        subprocess.run(args, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise MissingDependency(f"{args[0]} not found", hint="apt-get install iproute2 ethtool") from None
    except subprocess.CalledProcessError as e:
        reason = (e.stderr or e.stdout).strip().splitlines()
        raise XdpfwdError(f"lab: '{' '.join(args)}' failed: {reason[-1] if reason else e}") from None


def is_up() -> bool:
    return all(netns.exists(n) for n in NAMESPACES)


def up(log: list[str] | None = None) -> bool:
    """Create the lab. False when it was already complete."""
    if is_up():
        return False
    if any(netns.exists(n) for n in NAMESPACES):
        down(log)  # a half-made lab from an interrupted run: start clean
    try:
        _build(log)
        _wait_running()
    except BaseException:
        down()
        raise
    return True


def _wait_running(timeout: float = 5.0) -> None:
    """Links come up a moment after `ip link set up`; the lab is ready
    when every one of them is operationally up."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = []
        for name, host in HOSTS.items():
            with netns.entered(ns(name)):
                links = netlink.links()
            waiting += [f"{ns(name)}/{i}" for i in host["interfaces"] if not links[i].running]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise XdpfwdError(f"lab: {', '.join(waiting)} did not come up")
        time.sleep(0.05)


def _build(log):
    for name in HOSTS:
        _run(["ip", "netns", "add", ns(name)], log)
        _run(["ip", "-n", ns(name), "link", "set", "lo", "up"], log)
        # No duplicate address detection in a lab: link-local addresses
        # are usable at once, and IPv6 neighbour resolution with them.
        _run(["ip", "netns", "exec", ns(name), "sysctl", "-qw",
              "net.ipv6.conf.default.accept_dad=0"], log)
    for (host_a, if_a), (host_b, if_b) in TOPOLOGY["links"]:
        # Both ends are created inside the namespaces, never in the root one.
        _run(["ip", "-n", ns(host_a), "link", "add", if_a, "type", "veth",
              "peer", "name", if_b, "netns", ns(host_b)], log)
    for name, host in HOSTS.items():
        n = ns(name)
        for ifname, addrs in host["interfaces"].items():
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []  # usable at once
                _run(["ip", "-n", n, "addr", "add", addr, "dev", ifname, *extra], log)
            _run(["ip", "-n", n, "link", "set", ifname, "up"], log)
        for dst, via in host["routes"]:
            _run(["ip", "-n", n, "route", "add", dst, "via", via], log)
        if name == ROUTER:
            # A router forwards; xdpfwd checks this before it attaches.
            _run(["ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1"], log)
            _run(["ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], log)
        else:
            # A frame XDP-redirected into a veth is dropped unless the peer
            # has an XDP program or GRO (docs/kernel-facts.md). And veth leaves
            # UDP/TCP checksums to "hardware" that a redirected frame never
            # meets: the hosts compute them themselves, as a NIC would.
            for ifname in host["interfaces"]:
                _run(["ip", "netns", "exec", n, "ethtool", "-K", ifname, "gro", "on", "tx", "off"], log)


def down(log: list[str] | None = None) -> list[str]:
    """Delete the lab's namespaces (their veths go with them). Safe to
    repeat; returns the namespaces removed."""
    removed = []
    for name in NAMESPACES:
        if netns.exists(name):
            _run(["ip", "netns", "del", name], log)
            removed.append(name)
    return removed


@dataclass
class HostStatus:
    name: str
    present: bool
    addresses: str  # `ip -br addr` output, for people


def status() -> list[HostStatus]:
    result = []
    for name in NAMESPACES:
        if not netns.exists(name):
            result.append(HostStatus(name, False, ""))
            continue
        out = subprocess.run(["ip", "-n", name, "-br", "addr", "show"],
                             capture_output=True, text=True).stdout
        lines = [line for line in out.splitlines() if not line.startswith("lo ")]
        result.append(HostStatus(name, True, "\n".join(lines)))
    return result
