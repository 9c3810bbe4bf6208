"""Forwarding through the lab's router with the real CLI, in each mode.

Each command is a new `ip netns exec router xdpfwd ...`, as a user runs it,
so status and stats are read by processes that did not attach.
"""

import json

import pytest

from helpers import assert_forwarded, assert_ping_crosses, attached, stats, xdpfwd
from xdpfwd import traffic

SENDBOX_V4, RECVBOX_V4 = "10.0.10.10", "10.0.11.20"
SENDBOX_V6, RECVBOX_V6 = "fd00:10::10", "fd00:11::20"


@pytest.fixture(scope="module", params=["native", "skb"])
def mode(request, lab):
    with attached(request.param):
        yield request.param


def test_status_from_a_new_process_shows_both_ports(mode):
    proc = xdpfwd("status", "--json")
    assert proc.returncode == 0, proc.stderr
    ifaces = json.loads(proc.stdout)["interfaces"]
    assert ifaces["eth1"]["attached"] and ifaces["eth0"]["attached"]
    assert ifaces["eth1"]["mode"] == ifaces["eth0"]["mode"] == mode
    assert ifaces["eth1"]["prog_id"] == ifaces["eth0"]["prog_id"] > 0


@pytest.mark.parametrize("ns,dst", [("sendbox", RECVBOX_V4), ("sendbox", RECVBOX_V6),
                                    ("recvbox", SENDBOX_V4), ("recvbox", SENDBOX_V6)])
def test_ping_crosses_with_ttl_63(mode, ns, dst):
    # Requests in on one port, replies in on the other: all in XDP.
    assert_ping_crosses(ns, dst)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("src,dst,ingress", [("sendbox", "recvbox", "eth1"),
                                              ("recvbox", "sendbox", "eth0")])
def test_udp_arrives_exactly_once_with_ttl_63_and_is_counted(mode, family, src, dst, ingress):
    count = 500
    before = stats()
    delivery = traffic.send_udp(count, src, dst, family)
    after = stats()
    assert_forwarded(delivery, before, after, ingress)
    # The lab's own chatter (ND, MLD) may pass meanwhile, but no datagram
    # went to the stack for want of a route or neighbour.
    for reason, n in after[ingress]["pass_reasons"].items():
        if reason.startswith("fib_"):
            assert n == before[ingress]["pass_reasons"][reason], reason
