"""The kernel's forwarding switches decide in every mode: with IPv6
forwarding off for the namespace (net.ipv6.conf.all.forwarding=0, which
ip6_forward() asks), no IPv6 crosses the router, whichever datapath
forwards IPv4."""

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from helpers import sysctl, xdpfwd
from test_kernel_rules import MARK, pinned, through_router  # noqa: F401  (pinned: a fixture)


@pytest.mark.parametrize("mode", ["kernel", "native", "skb", "afpacket"])
def test_ipv6_off_for_the_namespace_is_not_forwarded(pinned, mode):  # noqa: F811
    router, sendbox = pinned
    sysctl("net.ipv6.conf.all.forwarding", "0")
    try:
        if mode != "kernel":
            proc = xdpfwd("attach", "eth1", "eth0", "--mode", mode)
            assert proc.returncode == 0, proc.stderr
            assert "ipv6 forwarding is off" in proc.stderr
        v4 = Ether(src=sendbox, dst=router) / IP(src="10.0.10.10", dst="10.0.11.20") / UDP(dport=2152) / MARK
        v6 = (Ether(src=sendbox, dst=router) / IPv6(src="fd00:10::10", dst="fd00:11::20")
              / UDP(dport=2152) / MARK)
        got, _ = through_router([bytes(v4)] * 3 + [bytes(v6)] * 3)
        families = sorted(Ether(f).type for f in got)
        assert families == [0x0800] * 3, f"{mode}: arrived {families}"
    finally:
        if mode != "kernel":
            assert xdpfwd("detach").returncode == 0
        sysctl("net.ipv6.conf.all.forwarding", "1")


@pytest.mark.parametrize("mode", ["kernel", "native", "skb", "afpacket"])
def test_ipv6_forced_on_a_port_crosses_exactly_once(pinned, mode):  # noqa: F811
    """force_forwarding on the ingress port (6.17 and later): ip6_forward()
    forwards what arrives there whatever "all" says. The AF_PACKET
    forwarder must turn it off while it forwards (else the kernel's copy
    crosses too) and give it back after."""
    router, sendbox = pinned
    sysctl("net.ipv6.conf.eth1.force_forwarding", "1")
    # Not a port, but writing "all" resets every interface's: given back too.
    sysctl("net.ipv6.conf.lo.force_forwarding", "1")
    try:
        if mode != "kernel":
            proc = xdpfwd("attach", "eth1", "eth0", "--mode", mode)
            assert proc.returncode == 0, proc.stderr
        v6 = (Ether(src=sendbox, dst=router) / IPv6(src="fd00:10::10", dst="fd00:11::20")
              / UDP(dport=2152) / MARK)
        got, _ = through_router([bytes(v6)] * 3)
        assert len(got) == 3, f"{mode}: {len(got)} of 3 arrived"
    finally:
        if mode != "kernel":
            assert xdpfwd("detach").returncode == 0
            assert sysctl("net.ipv6.conf.eth1.force_forwarding") == "1"
            assert sysctl("net.ipv6.conf.lo.force_forwarding") == "1"
        sysctl("net.ipv6.conf.eth1.force_forwarding", "0")
        sysctl("net.ipv6.conf.lo.force_forwarding", "0")
