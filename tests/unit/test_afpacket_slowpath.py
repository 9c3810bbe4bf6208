"""fib_validate_source() as the AF_PACKET slow path reproduces it, on a
fake FIB: pure logic. The lab test (tests/lab/test_kernel_rules.py) holds
it against the kernel itself."""

import socket

import pytest

from xdpfwd.afpacket.slowpath import RTN_LOCAL, RTN_UNICAST, source_valid

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
