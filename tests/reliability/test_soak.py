"""Load, nothing lost: sustained traffic through the router in every mode.

Every numbered datagram arrives exactly once, in order within its flow,
with TTL decremented by one; the generator's count equals the sink's; and
the counters add up, received = forwarded + passed + dropped, on every
port. `make test` runs a few seconds per mode; `make soak` runs minutes
(XDPFWD_SOAK_SECONDS, XDPFWD_SOAK_RATE).
"""

import os

import pytest

from helpers import stats, xdpfwd
from xdpfwd import traffic

SECONDS = float(os.environ.get("XDPFWD_SOAK_SECONDS", "4"))
RATE = float(os.environ.get("XDPFWD_SOAK_RATE", "5000"))  # datagrams/s the Python sender keeps up
FLOWS = 16


@pytest.fixture(params=["native", "skb", "afpacket"])
def mode(request, lab):
    xdpfwd("detach")
    proc = xdpfwd("attach", "eth1", "eth0", "--mode", request.param)
    assert proc.returncode == 0, proc.stderr
    for family in (4, 6):  # neighbours resolved before anything is counted
        traffic.send_udp(3, "sendbox", "recvbox", family, timeout=3)
        traffic.send_udp(3, "recvbox", "sendbox", family, timeout=3)
    try:
        yield request.param
    finally:
        xdpfwd("detach")


@pytest.mark.parametrize("src,dst,family,ingress,egress", [
    ("sendbox", "recvbox", 4, "eth1", "eth0"),
    ("recvbox", "sendbox", 6, "eth0", "eth1"),
])
def test_soak(mode, src, dst, family, ingress, egress):
    count = int(RATE * SECONDS / 2)
    before = stats()
    d = traffic.send_udp(count, src, dst, family, flows=FLOWS, rate=RATE, timeout=5)
    after = stats()
    assert d.received == d.sent, f"sent {d.sent}, the sink counted {d.received}"
    assert d.exactly_once, f"{d.unique} distinct of {d.sent}, {d.duplicates} duplicates"
    assert d.in_order, "a flow was reordered"
    assert d.ttls == {63}
    delta = {port: {k: v - before[port][k] for k, v in after[port].items() if isinstance(v, int)}
             for port in after}
    assert delta[ingress]["forwarded_packets"] == count
    assert delta[egress]["tx_packets"] == count
    assert delta[ingress]["dropped_packets"] == 0
    for port, r in after.items():
        for unit in ("packets", "bytes"):
            assert r[f"rx_{unit}"] == (r[f"forwarded_{unit}"] + r[f"passed_{unit}"]
                                       + r[f"dropped_{unit}"]), (port, unit)
