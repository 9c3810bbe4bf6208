"""fib_validate_source() and the IPv6 MTU checks as the AF_PACKET slow
path reproduces them, on a fake FIB: pure logic. The lab test
(tests/lab/test_kernel_rules.py) holds them against the kernel itself."""

import socket

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xdpfwd.afpacket.fib import Hop, _ipv6_mtus
from xdpfwd.afpacket.slowpath import RTN_LOCAL, RTN_UNICAST, SlowPath, source_valid

ETH1, ETH0 = 2, 3
A = socket.inet_aton


class Fib:
    def __init__(self, back, addrs=None, custom=False):
        self.back = back  # src -> (type, oif)
        self.addrs = addrs if addrs is not None else {A("10.0.10.20"): ETH1, A("10.0.11.10"): ETH0}
        self.custom = custom

    def ipv4_state(self):
        return self.addrs, self.custom

    def route_back(self, src):
        return self.back.get(src, (0, 0))


BACK = {A("10.0.10.10"): (RTN_UNICAST, ETH1), A("10.0.11.99"): (RTN_UNICAST, ETH0),
        A("10.0.10.20"): (RTN_LOCAL, 1), A("10.0.11.10"): (RTN_LOCAL, 1)}


def conf(rp=0, accept_local=0, send_redirects=1):
    return {"rp_filter": rp, "accept_local": accept_local, "send_redirects": send_redirects}


@pytest.mark.parametrize("src,rp,valid", [
    ("10.0.10.10", 0, True), ("10.0.10.10", 1, True), ("10.0.10.10", 2, True),
    ("10.0.11.99", 0, True), ("10.0.11.99", 1, False), ("10.0.11.99", 2, True),
    ("192.0.2.77", 0, True), ("192.0.2.77", 1, False), ("192.0.2.77", 2, False),
    ("10.0.11.10", 0, False), ("10.0.11.10", 1, False), ("10.0.11.10", 2, False),
])
def test_rp_filter_modes(src, rp, valid):
    assert source_valid(Fib(BACK), conf(rp), A(src), ETH1, ETH0) is valid


def test_accept_local_lets_a_local_source_through():
    assert source_valid(Fib(BACK), conf(0, accept_local=1), A("10.0.11.10"), ETH1, ETH0)
    # with rp_filter on, the local route back must still lead to the ingress port
    assert not source_valid(Fib(BACK), conf(1, accept_local=1), A("10.0.11.10"), ETH1, ETH0)


def test_custom_rules_make_the_full_check_even_with_rp_filter_off():
    blackhole = {**BACK, A("10.0.90.9"): (6, 0)}  # RTN_BLACKHOLE
    assert source_valid(Fib(blackhole), conf(0), A("10.0.90.9"), ETH1, ETH0)
    assert not source_valid(Fib(blackhole, custom=True), conf(0), A("10.0.90.9"), ETH1, ETH0)


def test_hairpin_with_redirects_on_takes_the_full_check():
    # dev->ifindex == oif and send_redirects: the fast accept does not apply
    assert not source_valid(Fib(BACK), conf(0), A("10.0.11.10"), ETH1, ETH1)
    assert source_valid(Fib(BACK), conf(0, send_redirects=0), A("10.0.11.99"), ETH1, ETH1)


# -- IPv6: ip6_forward()'s MTU, then the output path's ---------------------

@pytest.mark.parametrize("route_mtu,locked,mtu6,mtus", [
    (0, False, 1500, (1500, 1500)),
    (1400, False, 1500, (1500, 1400)),   # only the output path sees it
    (1400, True, 1500, (1400, 1400)),
    (1000, False, 1500, (1500, 1000)),   # dst_mtu() has no floor...
    (1000, True, 1500, (1280, 1000)),    # ... ip6_forward()'s has
    (1450, False, 1400, (1400, 1400)),   # the port's IPv6 MTU first
    (1300, False, 1400, (1400, 1300)),
])
def test_ipv6_mtus(route_mtu, locked, mtu6, mtus):
    assert _ipv6_mtus(route_mtu, locked, mtu6) == mtus


class Fib6:
    def __init__(self, hop):
        self.hop = hop

    def lookup(self, family, dst):
        return self.hop


class Icmp:
    def __init__(self):
        self.sent = []

    def reply(self, frame, ingress, cause, mtu=0, pkt_type=None, pointer=0):
        self.sent.append((cause, mtu))


@pytest.mark.parametrize("forward_mtu,mtu,size,outcome", [
    (1500, 1400, 1450, ("output_too_big", 1400)),  # ip6_fragment(): quoted as forwarded
    (1500, 1400, 1400, "sent"),
    (1400, 1400, 1450, ("frag_needed", 1400)),     # ip6_forward(): quoted as received
    (1280, 1000, 1100, ("output_too_big", 1000)),
    (1280, 1000, 1300, ("frag_needed", 1280)),
    (1400, 1300, 1350, ("output_too_big", 1300)),
])
def test_ipv6_too_big(forward_mtu, mtu, size, outcome):
    hop = Hop("forwarded", ETH0, bytes(6), bytes(6), mtu, bytes(16), forward_mtu=forward_mtu)
    sent, icmp = [], Icmp()
    s = SlowPath(Fib6(hop), icmp, None, lambda ifindex, frame: sent.append(frame) or True, None)
    try:
        frame = bytes(Ether() / IPv6(src="fd00:10::10", dst="fd00:97::5", hlim=64) / UDP()
                      / bytes(size - 48))
        assert s.handle(frame, ETH1, False, None) == (1 if outcome == "sent" else 0)
    finally:
        s.close()
    if outcome == "sent":
        assert icmp.sent == [] and len(sent) == 1 and Ether(sent[0])[IPv6].hlim == 63
    else:
        assert icmp.sent == [outcome] and sent == []
