"""Fib against the kernel's real routing and neighbour tables.

A namespace pair of our own, a <-veth-> b; the Fib under test lives in a,
and every change is made from outside with `ip -n a`, as an administrator
would, so only netlink events can tell the Fib about it.
"""

import json
import os
import socket
import subprocess
import time

import pytest

from xdpfwd import netns
from xdpfwd.afpacket.fib import RESOLVE_INTERVAL, Fib, Hop

A = f"fibtest-a-{os.getpid()}"
B = f"fibtest-b-{os.getpid()}"
VETH_A, VETH_B = "fibveth-a", "fibveth-b"
PEER_MAC = "02:00:00:00:00:99"


def ip(ns, *args, check=True):
    proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=10)
    if check:
        assert proc.returncode == 0, f"ip -n {ns} {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def packed(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def lookup(fib, dst: str) -> Hop:
    return fib.lookup(6 if ":" in dst else 4, packed(dst))


def link(ns, name):
    (info,) = json.loads(ip(ns, "-j", "link", "show", name))
    return info


def neighbour(addr: str) -> str:
    return ip(A, "neigh", "show", addr, "dev", VETH_A).strip()


def forget_neighbours():
    ip(A, "neigh", "flush", "dev", VETH_A, "nud", "all")  # nud all: permanent ones too


def resolved(fib, dst: str) -> Hop:
    """Look dst up, resolve its next hop if needed, and wait up to 2 s for
    the answer to become "forwarded" through events alone. Pending events
    are read before returning, so that the next change a test makes is the
    only news the Fib can get."""
    hop = lookup(fib, dst)
    if hop.outcome == "fib_no_neighbour":
        fib.resolve(hop)
    deadline = time.monotonic() + 2
    while hop.outcome != "forwarded" and time.monotonic() < deadline:
        time.sleep(0.02)
        fib.poll_events()
        hop = lookup(fib, dst)
    fib.poll_events()
    return lookup(fib, dst)


@pytest.fixture(scope="module")
def pair():
    made = []
    try:
        for ns in (A, B):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            # A solicitation without a packet behind it (NTF_USE) goes out
            # from the link-local address only, and not while that is still
            # tentative: skip DAD, or IPv6 resolution waits a second or more.
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            "net.ipv6.conf.default.accept_dad=0"], check=True)
        ip(A, "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B, "netns", B)
        for ns, dev, v4, v6 in ((A, VETH_A, "10.9.0.1/24", "fd09::1/64"),
                                (B, VETH_B, "10.9.0.2/24", "fd09::2/64")):
            ip(ns, "addr", "add", v4, "dev", dev)
            ip(ns, "addr", "add", v6, "dev", dev, "nodad")
            ip(ns, "link", "set", "lo", "up")
            ip(ns, "link", "set", dev, "up")
        for route in (["10.9.1.0/24", "via", "10.9.0.2"],
                      ["blackhole", "10.9.2.0/24"],
                      ["unreachable", "10.9.3.0/24"],
                      ["prohibit", "10.9.4.0/24"],
                      ["10.9.5.0/24", "via", "10.9.0.2", "mtu", "lock", "1000"],
                      ["10.9.8.0/24", "via", "10.9.0.2", "mtu", "1100"],
                      ["fd09:5::/64", "via", "fd09::2", "mtu", "lock", "1300"],
                      ["fd09:7::/64", "via", "fd09::2", "mtu", "1400"],
                      ["10.9.6.0/24", "via", "inet6", "fd09::2", "dev", VETH_A],
                      ["fd09:1::/64", "via", "fd09::2"],
                      ["blackhole", "fd09:2::/64"],
                      ["unreachable", "fd09:3::/64"],
                      ["prohibit", "fd09:4::/64"]):
            ip(A, "route", "add", *route)
        a, b = link(A, VETH_A), link(B, VETH_B)
        yield {"ifindex": a["ifindex"],
               "smac": bytes.fromhex(a["address"].replace(":", "")),
               "dmac": bytes.fromhex(b["address"].replace(":", ""))}
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns])


@pytest.fixture
def fib(pair):
    # Opened in a, used from the root namespace: its sockets stay in a.
    with netns.entered(A):
        f = Fib()
    try:
        yield f
    finally:
        f.close()


@pytest.mark.parametrize("dst,outcome", [
    ("10.9.2.1", "fib_blackhole"), ("10.9.3.1", "fib_unreachable"), ("10.9.4.1", "fib_prohibit"),
    ("fd09:2::1", "fib_blackhole"), ("fd09:3::1", "fib_unreachable"), ("fd09:4::1", "fib_prohibit"),
])
def test_reject_routes(fib, dst, outcome):
    assert lookup(fib, dst) == Hop(outcome)


@pytest.mark.parametrize("dst", ["10.9.0.1", "fd09::1", "10.9.0.255"])
def test_local_and_broadcast_are_not_forwarded(fib, dst):
    assert lookup(fib, dst) == Hop("fib_not_forwarded")


@pytest.mark.parametrize("dst", ["192.0.2.1", "2001:db8::1"])
def test_no_route_is_not_forwarded(fib, dst):
    # no_route: the slow path answers with Net Unreachable (local and
    # broadcast destinations above get none)
    assert lookup(fib, dst) == Hop("fib_not_forwarded", no_route=True)


NEXT_HOPS = [("10.9.1.1", "10.9.0.2"),   # via a gateway
             ("10.9.0.2", "10.9.0.2"),   # on-link: the destination itself
             ("fd09:1::1", "fd09::2"),
             ("10.9.6.1", "fd09::2")]    # IPv4 via an IPv6 gateway (RTA_VIA)


@pytest.mark.parametrize("dst,nexthop", NEXT_HOPS)
def test_no_neighbour_yet(fib, pair, dst, nexthop):
    forget_neighbours()
    hop = lookup(fib, dst)
    assert hop.outcome == "fib_no_neighbour"
    assert (hop.ifindex, hop.nexthop, hop.dmac, hop.smac) == (pair["ifindex"], packed(nexthop), b"", b"")


@pytest.mark.parametrize("dst,nexthop", NEXT_HOPS)
def test_resolve_makes_it_forwarded(fib, pair, dst, nexthop):
    forget_neighbours()
    assert neighbour(nexthop) == ""
    hop = resolved(fib, dst)
    assert "REACHABLE" in neighbour(nexthop)
    assert hop == Hop("forwarded", pair["ifindex"], pair["dmac"], pair["smac"], 1500, packed(nexthop),
                      forward_mtu=1500 if ":" in dst else 0)


@pytest.mark.parametrize("dst,mtu,forward_mtu", [
    ("10.9.5.1", 1000, 0), ("10.9.8.1", 1100, 0),  # IPv4 forwarding honours any route MTU
    ("10.9.1.1", 1500, 0), ("fd09:1::1", 1500, 1500),
    # IPv6: ip6_forward() only a locked one (ip6_dst_mtu_maybe_forward()),
    # the output path any (ip6_mtu())
    ("fd09:5::1", 1300, 1300), ("fd09:7::1", 1400, 1500),
])
def test_mtu_from_route_else_link(fib, dst, mtu, forward_mtu):
    hop = resolved(fib, dst)
    assert (hop.outcome, hop.mtu, hop.forward_mtu) == ("forwarded", mtu, forward_mtu)


def test_link_mtu_change_is_seen(fib):
    assert resolved(fib, "10.9.1.1").mtu == 1500
    try:
        ip(A, "link", "set", VETH_A, "mtu", "1400")
        assert lookup(fib, "10.9.1.1").mtu == 1500  # cached until the event is read
        assert fib.poll_events() > 0
        assert lookup(fib, "10.9.1.1").mtu == 1400
    finally:
        ip(A, "link", "set", VETH_A, "mtu", "1500")


def test_route_delete_and_add_are_seen(fib):
    hop = resolved(fib, "10.9.1.1")
    assert hop.outcome == "forwarded"
    try:
        ip(A, "route", "del", "10.9.1.0/24")
        assert lookup(fib, "10.9.1.1") is hop  # cached until the event is read
        assert fib.poll_events() > 0
        assert lookup(fib, "10.9.1.1") == Hop("fib_not_forwarded", no_route=True)
    finally:
        ip(A, "route", "replace", "10.9.1.0/24", "via", "10.9.0.2")
    assert fib.poll_events() > 0
    assert lookup(fib, "10.9.1.1") == hop


def test_neighbour_change_is_seen(fib, pair):
    assert resolved(fib, "10.9.1.1").dmac == pair["dmac"]
    try:
        ip(A, "neigh", "replace", "10.9.0.2", "lladdr", PEER_MAC, "dev", VETH_A, "nud", "permanent")
        assert lookup(fib, "10.9.1.1").dmac == pair["dmac"]
        assert fib.poll_events() > 0
        assert lookup(fib, "10.9.1.1").dmac == bytes.fromhex(PEER_MAC.replace(":", ""))
    finally:
        forget_neighbours()


def test_rule_change_is_seen(fib):
    assert resolved(fib, "10.9.1.1").outcome == "forwarded"
    try:
        ip(A, "rule", "add", "to", "10.9.1.0/24", "prohibit", "pref", "100")
        assert fib.poll_events() > 0
        assert lookup(fib, "10.9.1.1") == Hop("fib_prohibit")
    finally:
        ip(A, "rule", "del", "pref", "100", check=False)
    assert fib.poll_events() > 0
    assert lookup(fib, "10.9.1.1").outcome == "forwarded"


def test_nexthop_object_delete_is_seen(fib):
    # Deleting a nexthop object takes its routes with it, and the kernel says
    # so only on the nexthop group, not on the route groups.
    try:
        ip(A, "nexthop", "add", "id", "9", "via", "10.9.0.2", "dev", VETH_A)
        ip(A, "route", "add", "10.9.7.0/24", "nhid", "9")
        assert resolved(fib, "10.9.7.1").outcome == "forwarded"
        ip(A, "nexthop", "del", "id", "9")
        assert fib.poll_events() > 0
        assert lookup(fib, "10.9.7.1") == Hop("fib_not_forwarded", no_route=True)
    finally:
        ip(A, "nexthop", "del", "id", "9", check=False)


def test_poll_events_is_quiet_and_does_not_block(fib):
    hop = lookup(fib, "10.9.1.1")
    fib.poll_events()  # whatever happened before this test
    start = time.monotonic()
    assert fib.poll_events() == 0
    assert time.monotonic() - start < 0.05
    assert lookup(fib, "10.9.1.1") is hop  # nothing happened: the cache stays


def test_resolve_is_rate_limited_per_next_hop(fib, pair):
    # NTF_USE creates the entry before the kernel acknowledges, so the
    # neighbour table shows at once whether a request was sent.
    forget_neighbours()
    hop = lookup(fib, "10.9.0.3")  # no such host: stays INCOMPLETE, then FAILED
    assert hop.outcome == "fib_no_neighbour"
    first = time.monotonic()
    fib.resolve(hop)
    assert neighbour("10.9.0.3") != ""
    ip(A, "neigh", "del", "10.9.0.3", "dev", VETH_A)

    fib.resolve(hop)
    assert time.monotonic() - first < RESOLVE_INTERVAL, "too slow to test the rate limit"
    assert neighbour("10.9.0.3") == ""  # nothing sent

    other = lookup(fib, "10.9.0.4")  # another next hop has its own budget
    fib.resolve(other)
    assert neighbour("10.9.0.4") != ""

    time.sleep(max(0.0, first + RESOLVE_INTERVAL - time.monotonic()) + 0.05)
    fib.resolve(hop)
    assert neighbour("10.9.0.3") != ""
    forget_neighbours()


def test_lost_events_still_drop_the_cache(fib):
    hop = resolved(fib, "10.9.1.1")
    # A receive buffer this small overflows after a few events (ENOBUFS).
    with socket.fromfd(fib.fileno(), socket.AF_NETLINK, socket.SOCK_RAW) as events:
        events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    routes = [f"10.9.8.{i}/32" for i in range(200)]
    try:
        subprocess.run(["ip", "-n", A, "-batch", "-"], check=True, text=True,
                       input="".join(f"route add {r} dev {VETH_A}\n" for r in routes))
        assert fib.poll_events() > 0
        assert lookup(fib, "10.9.1.1") is not hop
    finally:
        subprocess.run(["ip", "-n", A, "-force", "-batch", "-"], text=True, capture_output=True,
                       input="".join(f"route del {r}\n" for r in routes))
