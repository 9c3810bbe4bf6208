"""With IPv6 forwarding off (net.ipv6.conf.all.forwarding=0) the kernel
forwards no IPv6 and answers none of it with an ICMP error
(ip6_forward() drops it first thing); attach accepts such ports (IPv4
still forwards) and must do the same for the frames its fast path hands
to the slow path before its own forwarding check: Neighbour Discovery,
long extension-header chains, hop-by-hop options, an expiring hop limit."""

import time

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether

from helpers import sysctls_set, xdpfwd
from test_kernel_rules import MARK, pinned, through_router  # noqa: F401


def frames(router, sendbox) -> dict[str, bytes]:
    eth = Ether(src=sendbox, dst=router)
    ip = IPv6(src="fd00:10::10", dst="fd00:11::20")
    udp = UDP(sport=4000, dport=2152) / MARK
    return {
        "nd": bytes(eth / IPv6(src="fd00:10::10", dst="fd00:11::20", hlim=255)
                    / ICMPv6ND_NS(tgt="fd00:11::20") / ICMPv6NDOptSrcLLAddr(lladdr=sendbox) / MARK),
        "seven_headers": bytes(eth / ip / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
                               / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
                               / IPv6ExtHdrDestOpt() / udp),
        "hop_by_hop": bytes(eth / ip / IPv6ExtHdrHopByHop() / udp),
        "hop_limit_1": bytes(eth / IPv6(src="fd00:10::10", dst="fd00:11::20", hlim=1) / udp),
        "udp": bytes(eth / ip / udp),
    }


@pytest.mark.parametrize("mode", ["kernel", "native", "afpacket"])
def test_ipv6_forwarding_off_forwards_and_answers_no_ipv6(mode, pinned):
    router, sendbox = pinned
    got = {}
    with sysctls_set({"net.ipv6.conf.all.forwarding": "0"}):
        if mode != "kernel":
            proc = xdpfwd("attach", "eth1", "eth0", "--mode", mode)
            assert proc.returncode == 0, proc.stderr
        try:
            time.sleep(0.25)
            for name, frame in frames(router, sendbox).items():
                forwarded, answered = through_router([frame])
                got[name] = (len(forwarded), len(answered))
        finally:
            if mode != "kernel":
                assert xdpfwd("detach").returncode == 0
    assert got == {name: (0, 0) for name in got}, f"{mode}: (forwarded, ICMP errors back) {got}"
