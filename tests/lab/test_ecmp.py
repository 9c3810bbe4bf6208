"""Multipath routes: every packet leaves by the next hop the kernel's own
forwarding picks for it. The router gets routes with two next hops on
eth0 (recvbox and a second neighbour, a permanent entry with a MAC of its
own); frames of many flows are sent from sendbox, first with plain kernel
forwarding, then through xdpfwd, and the next hop each frame reached
(its destination MAC, seen by a packet socket on recvbox's end of the
link) must be the same.

The kernel hashes with the packet in hand, bpf_fib_lookup() without it;
the frames are the cases where that differs (docs/kernel-facts.md): ICMP
errors (hashed by the packet they quote), IPv6 behind extension headers
the flow dissector walks, ports cut off by the IP length, tunnels and
flow labels under policy 2, everything under policy 3. The program
leaves those to the kernel. Native and skb mode only: the AF_PACKET forwarder routes by
destination alone and picks a next hop by the router's own hash (README,
LIMITATIONS)."""

import struct
from contextlib import contextmanager

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6TimeExceeded, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

from helpers import XDPFWD, pin_neighbours, router_ip, started, stderr_line, sysctl, sysctls_set, xdpfwd
from test_kernel_rules import MARK, Capture, macs, send

SECOND_HOP = "02:00:00:00:99:21"
CUT_SHORT_ID = 0xEC00
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

    out = {"udp": [], "icmp errors": [], "udp6": [], "icmpv6 errors": [],
           "udp6 behind a destination options header": [], "udp6 fragments": [],
           "udp cut short, ports in the padding": [], "ipip": []}
    for i in range(FLOWS):
        out["udp"].append(eth(IP(src=f"10.0.10.{10 + i % 4}", dst=f"10.0.99.{1 + i // 4}")
                              / UDP(sport=40000 + i, dport=2152), len(out["udp"])))
        # Flow labels set, as Linux senders set them (part of the L3 hash).
        out["udp6"].append(eth(IPv6(src=f"fd00:10::{10 + i % 4:x}", dst=f"fd00:99::{1 + i // 4:x}",
                                    fl=0x9A000 + 7 * i)
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
    for i in range(16):
        # The kernel's flow dissector walks past these headers to the
        # protocol and ports (policy rules, hash policy 1).
        src, dst = f"fd00:10::{10 + i % 4:x}", f"fd00:99::{1 + i // 4:x}"
        out["udp6 behind a destination options header"].append(
            eth(IPv6(src=src, dst=dst) / IPv6ExtHdrDestOpt() / UDP(sport=41000 + i, dport=2152), 48 + i))
        out["udp6 fragments"].append(
            eth(IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(m=1, id=i) / UDP(sport=41000 + i, dport=2152),
                112 + i))
        # A UDP header cut short by the IP length, what looks like ports
        # in the Ethernet padding after it: the kernel trims the packet
        # before it hashes, so it has no ports. Known by the IP id: the
        # trimmed frame carries no MARK.
        ip = IP(src=f"10.0.10.{10 + i % 4}", dst=f"10.0.99.{1 + i}", proto=17, len=22,
                id=CUT_SHORT_ID + i) / struct.pack("!H", 40000)
        # IPv4 in IPv4: policy 2 hashes the inner addresses.
        out["ipip"].append(eth(IP(src="10.0.10.10", dst=f"10.0.99.{1 + i}")
                               / IP(src=f"192.0.2.{1 + 3 * i}", dst=f"198.51.100.{1 + 5 * i}")
                               / UDP(sport=53, dport=53), 240 + i))
        out["udp cut short, ports in the padding"].append(
            bytes(Ether(src=sendbox, dst=router) / ip) + struct.pack("!HH", 41000 + 97 * i, 2152))
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
        n = number(f)
        if n is not None:
            hops[n] = f[:6].hex(":")
    return hops


def number(f: bytes) -> int | None:
    """The number a frame was sent with: the byte after MARK, or for the
    cut-short ones 176 and up by their IP id."""
    at = f.find(MARK)
    if at >= 0:
        return f[at + len(MARK)]
    if f[12:14] == b"\x08\x00" and len(f) >= 20 and f[18] == CUT_SHORT_ID >> 8:
        return 176 + f[19]
    return None


@pytest.mark.parametrize("policy", ["0", "1", "2", "3"], ids=["l3-hash", "l4-hash", "inner-l3", "custom"])
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
            detached = xdpfwd("detach")
        assert detached.returncode == 0, detached.stderr
    assert len(kernel) == len(sent), "the kernel did not forward every frame"
    assert len(set(kernel.values())) == 2, "the kernel used one next hop only: nothing was tested"
    for kind, fs in kinds.items():
        numbers = [number(f) for f in fs]
        assert len({kernel[n] for n in numbers}) == 2, f"{kind}: the kernel used one next hop only"
        other = [n for n in numbers if ours.get(n) != kernel[n]]
        assert not other, (f"{kind}: {len(other)} of {len(fs)} left by another next hop than the kernel's",
                           {n: (kernel[n], ours.get(n)) for n in other})


def test_attach_doctor_and_run_say_what_the_policy_leaves_to_the_kernel(ecmp):
    """The program goes by the policies user space copies in: attach says
    what it leaves to the kernel, doctor warns when the policy changed
    after a plain attach, `run` follows a change (its re-read, every 3 s)."""
    names = ("net.ipv4.fib_multipath_hash_policy", "net.ipv6.fib_multipath_hash_policy")
    with sysctls_set({names[0]: "3", names[1]: "0"}):
        attached = xdpfwd("attach", "eth1", "eth0")
        try:
            assert attached.returncode == 0, attached.stderr
            assert ("IPv4: fib_multipath_hash_policy 3 hashes otherwise than bpf_fib_lookup(): every "
                    "IPv4 packet goes to the stack, which picks the next hop") in attached.stderr
            assert "IPv6: fib_multipath_hash_policy" not in attached.stderr
            sysctl(names[0], "0")
            doctor = xdpfwd("doctor")
            assert ("fib_multipath_hash_policy for IPv4 is now 0, but the program still passes every "
                    "IPv4 packet to the stack") in doctor.stdout, doctor.stdout
        finally:
            detached = xdpfwd("detach")
        assert detached.returncode == 0, detached.stderr
        with started([XDPFWD, "run", "eth1", "eth0"], "attached", 20) as proc:
            sysctl(names[1], "2")
            assert stderr_line(proc, "IPv6: fib_multipath_hash_policy", 8) == (
                "xdpfwd: IPv6: fib_multipath_hash_policy 2 hashes otherwise than bpf_fib_lookup(): every IPv6 "
                "packet goes to the stack, which picks the next hop")
