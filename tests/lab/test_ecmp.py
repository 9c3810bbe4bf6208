"""Multipath routes: every packet leaves by the next hop the kernel's own
forwarding picks for it. The router gets routes with two next hops on
eth0 (recvbox and a second neighbour, a permanent entry with a MAC of its
own); frames of many flows are sent from sendbox, first with plain kernel
forwarding, then through xdpfwd, and the next hop each frame reached
(its destination MAC, seen by a packet socket on recvbox's end of the
link) must be the same.

ICMP errors are the case the kernel hashes differently: by the addresses
of the packet they quote (ip_multipath_l3_keys(), ip6_multipath_l3_keys()),
so that an error takes its flow's path; bpf_fib_lookup() hashes the outer
header. Native and skb mode only: the AF_PACKET forwarder routes by
destination alone and picks a next hop by the router's own hash (README,
LIMITATIONS)."""

from contextlib import contextmanager

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6TimeExceeded, IPv6
from scapy.layers.l2 import Ether

from helpers import pin_neighbours, router_ip, sysctls_set, xdpfwd
from test_kernel_rules import MARK, Capture, macs, send

SECOND_HOP = "02:00:00:00:99:21"
FLOWS = 48


@contextmanager
def two_next_hops():
    """10.0.99.0/24 and fd00:99::/64 over recvbox and a second neighbour."""
    router_ip("neigh", "replace", "10.0.11.21", "lladdr", SECOND_HOP, "dev", "eth0", "nud", "permanent")
    router_ip("neigh", "replace", "fd00:11::21", "lladdr", SECOND_HOP, "dev", "eth0", "nud", "permanent")
    router_ip("route", "replace", "10.0.99.0/24", "nexthop", "via", "10.0.11.20", "dev", "eth0",
              "nexthop", "via", "10.0.11.21", "dev", "eth0")
    router_ip("-6", "route", "replace", "fd00:99::/64", "nexthop", "via", "fd00:11::20", "dev", "eth0",
              "nexthop", "via", "fd00:11::21", "dev", "eth0")
    try:
        yield
    finally:
        router_ip("route", "del", "10.0.99.0/24")
        router_ip("-6", "route", "del", "fd00:99::/64")
        router_ip("neigh", "del", "10.0.11.21", "dev", "eth0")
        router_ip("neigh", "del", "fd00:11::21", "dev", "eth0")


@pytest.fixture(scope="module")
def ecmp(lab):
    pin_neighbours()
    with two_next_hops():
        yield macs()


def frames(router: str, sendbox: str) -> dict[str, list[bytes]]:
    """Each kind's frames, numbered by the byte after MARK."""
    def eth(l3, n):
        return bytes(Ether(src=sendbox, dst=router) / l3 / (MARK + bytes([n])))

    out = {"udp": [], "icmp errors": [], "udp6": [], "icmpv6 errors": []}
    for i in range(FLOWS):
        out["udp"].append(eth(IP(src=f"10.0.10.{10 + i % 4}", dst=f"10.0.99.{1 + i // 4}")
                              / UDP(sport=40000 + i, dport=2152), len(out["udp"])))
        out["udp6"].append(eth(IPv6(src=f"fd00:10::{10 + i % 4:x}", dst=f"fd00:99::{1 + i // 4:x}")
                               / UDP(sport=40000 + i, dport=2152), 64 + i))
        # An error a router on sendbox's side sends back about a packet
        # 10.0.99.x sent to somewhere else: the quoted addresses are not
        # the outer ones.
        out["icmp errors"].append(eth(IP(src="10.0.10.10", dst=f"10.0.99.{1 + i}") / ICMP(type=3, code=1)
                                      / IP(src=f"10.0.99.{1 + i}", dst=f"192.0.2.{1 + i}")
                                      / UDP(sport=53, dport=40000), 128 + i))
        kind = ICMPv6DestUnreach() if i % 2 else ICMPv6TimeExceeded()
        out["icmpv6 errors"].append(eth(IPv6(src="fd00:10::10", dst=f"fd00:99::{1 + i:x}") / kind
                                        / IPv6(src=f"fd00:99::{1 + i:x}", dst=f"2001:db8::{1 + i:x}")
                                        / UDP(sport=53, dport=40000), 192 + i))
    return out


def next_hops(sent: list[bytes]) -> dict[int, str]:
    """{frame number: the destination MAC it left the router with}."""
    capture = Capture("recvbox")
    try:
        send(sent)
        got = capture.frames()
    finally:
        capture.close()
    hops = {}
    for f in got:
        at = f.find(MARK)
        if at >= 0:
            hops[f[at + len(MARK)]] = f[:6].hex(":")
    return hops


@pytest.mark.parametrize("policy", ["0", "1"], ids=["l3-hash", "l4-hash"])
@pytest.mark.parametrize("mode", ["native", "skb"])
def test_each_packet_takes_the_kernels_next_hop(ecmp, mode, policy):
    router, sendbox = ecmp
    kinds = frames(router, sendbox)
    sent = [f for fs in kinds.values() for f in fs]
    with sysctls_set({"net.ipv4.fib_multipath_hash_policy": policy,
                      "net.ipv6.fib_multipath_hash_policy": policy}):
        kernel = next_hops(sent)
        assert xdpfwd("attach", "eth1", "eth0", "--mode", mode).returncode == 0
        try:
            ours = next_hops(sent)
        finally:
            assert xdpfwd("detach").returncode == 0
    assert len(kernel) == len(sent), "the kernel did not forward every frame"
    assert len(set(kernel.values())) == 2, "the kernel used one next hop only: nothing was tested"
    for kind, fs in kinds.items():
        numbers = [f[f.find(MARK) + len(MARK)] for f in fs]
        other = [n for n in numbers if ours.get(n) != kernel[n]]
        assert not other, (f"{kind}: {len(other)} of {len(fs)} left by another next hop than the kernel's",
                           {n: (kernel[n], ours.get(n)) for n in other})
