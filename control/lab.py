"""The namespace lab: sendbox -- router -- recvbox on one machine.

Three network namespaces joined by two veth pairs, with the addresses and
routes of lab.json (shared with the VM lab). Every command runs with
`ip -n NS` or `ip netns exec NS`: nothing is added to the root namespace,
and lab traffic cannot leave the namespaces.
"""

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from xdpfwd import netlink, netns
from xdpfwd.errors import MissingDependency, XdpfwdError

TOPOLOGY = json.loads(Path(__file__).with_name("lab.json").read_text())
HOSTS: dict = TOPOLOGY["hosts"]
NAMESPACES = tuple(HOSTS)
ROUTER = TOPOLOGY["router"]
UDP_PORT = TOPOLOGY["udp_port"]


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
        raise MissingDependency(f"{args[0]} not found: apt-get install iproute2 ethtool") from None
    except subprocess.CalledProcessError as e:
        reason = (e.stderr or e.stdout).strip().splitlines()
        raise XdpfwdError(f"lab: '{' '.join(args)}' failed: {reason[-1] if reason else e}") from None


def is_up() -> bool:
    return all(netns.exists(ns) for ns in NAMESPACES)


def up(log: list[str] | None = None) -> bool:
    """Create the lab. False when it was already complete."""
    if is_up():
        return False
    if any(netns.exists(ns) for ns in NAMESPACES):
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
        for ns, host in HOSTS.items():
            with netns.entered(ns):
                links = netlink.links()
            waiting += [f"{ns}/{i}" for i in host["interfaces"] if not links[i].running]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise XdpfwdError(f"lab: {', '.join(waiting)} did not come up")
        time.sleep(0.05)


def _build(log):
    for ns in NAMESPACES:
        _run(["ip", "netns", "add", ns], log)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"], log)
        # No duplicate address detection in a lab: link-local addresses
        # are usable at once, and IPv6 neighbour resolution with them.
        _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"], log)
    for (ns_a, if_a), (ns_b, if_b) in TOPOLOGY["links"]:
        # Both ends are created inside the namespaces, never in the root one.
        _run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth",
              "peer", "name", if_b, "netns", ns_b], log)
    for ns, host in HOSTS.items():
        for ifname, addrs in host["interfaces"].items():
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []  # usable at once
                _run(["ip", "-n", ns, "addr", "add", addr, "dev", ifname, *extra], log)
            _run(["ip", "-n", ns, "link", "set", ifname, "up"], log)
        for dst, via in host["routes"]:
            _run(["ip", "-n", ns, "route", "add", dst, "via", via], log)
        if ns == ROUTER:
            # A router forwards; xdpfwd checks this before it attaches.
            _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], log)
            _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], log)
        else:
            # A frame XDP-redirected into a veth is dropped unless the peer
            # has an XDP program or GRO (lab-findings.md). And veth leaves
            # UDP/TCP checksums to "hardware" that a redirected frame never
            # meets: the hosts compute them themselves, as a NIC would.
            for ifname in host["interfaces"]:
                _run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname, "gro", "on", "tx", "off"], log)


def down(log: list[str] | None = None) -> list[str]:
    """Delete the lab's namespaces (their veths go with them). Safe to
    repeat; returns the namespaces removed."""
    removed = []
    for ns in NAMESPACES:
        if netns.exists(ns):
            _run(["ip", "netns", "del", ns], log)
            removed.append(ns)
    return removed


@dataclass
class HostStatus:
    name: str
    present: bool
    addresses: str  # `ip -br addr` output, for people


def status() -> list[HostStatus]:
    result = []
    for ns in NAMESPACES:
        if not netns.exists(ns):
            result.append(HostStatus(ns, False, ""))
            continue
        out = subprocess.run(["ip", "-n", ns, "-br", "addr", "show"],
                             capture_output=True, text=True).stdout
        lines = [line for line in out.splitlines() if not line.startswith("lo ")]
        result.append(HostStatus(ns, True, "\n".join(lines)))
    return result
