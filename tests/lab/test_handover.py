"""Handover under traffic: attach and detach, again and again, while
numbered datagrams flow sendbox -> recvbox in both families, and every
datagram arrives exactly once. Each attach takes the traffic from the
kernel's own forwarding and each detach gives it back, in every mode: the
XDP modes (the program takes a frame or passes it to the kernel), and the
AF_PACKET forwarder, which turns the kernel's forwarding off while it runs
and must neither drop the frames around that switch nor forward one the
kernel forwarded too.

XDPFWD_HANDOVER_CYCLES sets the attach/detach cycles per mode (3 here).
"""

import os
import threading
import time

import pytest

from helpers import xdpfwd
from xdpfwd import traffic

CYCLES = int(os.environ.get("XDPFWD_HANDOVER_CYCLES", "3"))
RATE = 1000.0   # datagrams/s per family: steady, and well within what every mode forwards
FLOWS = 8       # source ports, so that every AF_PACKET worker gets a share
PAUSE = 0.2     # seconds of traffic between a switch and the next
# Traffic must outlast the cycles: an attach and a detach take about 0.6 s
# each here, more on a busy machine.
SECONDS = CYCLES * (2 * PAUSE + 1.8) + 1.5


def _report(family: int, d: traffic.Delivery) -> str:
    return (f"IPv{family}: sent {d.sent}, lost {d.sent - d.unique}, "
            f"duplicated {d.duplicates}, TTLs {sorted(d.ttls)}")


@pytest.mark.parametrize("mode", ["native", "skb", "afpacket"])
def test_attach_and_detach_under_traffic_lose_and_duplicate_nothing(lab, mode):
    xdpfwd("detach")
    for family in (4, 6):  # neighbours resolved before the count starts
        traffic.send_udp(3, family=family, timeout=3)
    count = int(RATE * SECONDS)
    results: dict[int, traffic.Delivery] = {}

    def send(family):
        results[family] = traffic.send_udp(count, family=family, flows=FLOWS, rate=RATE, timeout=3)

    senders = [threading.Thread(target=send, args=(family,)) for family in (4, 6)]
    for t in senders:
        t.start()
    switches = []
    try:
        time.sleep(PAUSE)
        for _ in range(CYCLES):
            for args in (("attach", "eth1", "eth0", "--mode", mode), ("detach",)):
                proc = xdpfwd(*args)
                assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr.strip()}"
                switches.append(all(t.is_alive() for t in senders))
                time.sleep(PAUSE)
    finally:
        for t in senders:
            t.join()
        xdpfwd("detach")
    assert all(switches), "traffic ended before the last switch: raise SECONDS"
    report = "; ".join(_report(f, results[f]) for f in (4, 6))
    for family in (4, 6):
        d = results[family]
        assert d.exactly_once and d.ttls == {63}, f"{mode}: {report}"
