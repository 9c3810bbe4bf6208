"""Counters that can be checked: xdpfwd counts every frame as received on
arrival, apart from its outcome, in the XDP program and in the AF_PACKET
worker. So received = forwarded + passed + dropped is a real check (a path
that ends without an outcome breaks it), and the received count must equal
the interface's own receive counter over the same window."""

import json
import subprocess
import time

import pytest

from helpers import assert_forwarded, attached, run, stats
from xdpfwd import lab, traffic


def interface_rx(ifname: str) -> int:
    """The router interface's own receive counter (veth keeps one)."""
    out = subprocess.run(["ip", "-n", lab.ns("router"), "-s", "-j", "link", "show", "dev", ifname],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["stats64"]["rx"]["packets"]


def quiet_reading(ifname: str) -> tuple[int, dict]:
    """(interface rx, xdpfwd stats) read while nothing arrived in between:
    the lab's own chatter (ND, MLD) is rare, and a reading it splits is
    taken again."""
    for _ in range(20):
        first = interface_rx(ifname)
        counted = stats()[ifname]
        if interface_rx(ifname) == first:
            return first, counted
        time.sleep(0.05)
    raise AssertionError(f"{ifname} never stayed quiet for one reading")


@pytest.fixture(params=["native", "skb", "afpacket"])
def mode(request, lab):
    with attached(request.param):
        yield request.param


def test_received_equals_the_interface_counter_and_the_outcomes(mode):
    iface_before, before = quiet_reading("eth1")
    full_before = stats()
    delivery = traffic.send_udp(300, "sendbox", "recvbox", 4)
    assert_forwarded(delivery, full_before, stats(), "eth1")
    # Odd frames too, each with its own outcome: for another host, a
    # martian source, a spoofed source.
    run(["python3", "-c", ODD_FRAMES], ns="sendbox", check=True)
    time.sleep(0.3)
    iface_after, after = quiet_reading("eth1")
    received = after["rx_packets"] - before["rx_packets"]
    assert received == iface_after - iface_before, \
        f"xdpfwd counted {received} received, the interface {iface_after - iface_before}"
    outcomes = sum(after[f"{k}_packets"] - before[f"{k}_packets"]
                   for k in ("forwarded", "passed", "dropped"))
    assert outcomes == received, f"outcomes {outcomes} != received {received}"
    for reason in ("other_host", "martian_source", "reverse_path"):
        assert after["pass_reasons"][reason] - before["pass_reasons"][reason] == 5, reason


# Five each: another host's MAC, source 0.0.0.0, source 10.0.11.99 on eth1.
ODD_FRAMES = """
import socket, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
mine = s.getsockname()[4]
def csum(h):
    t = sum(struct.unpack("!10H", h)); t = (t & 0xFFFF) + (t >> 16); t = (t & 0xFFFF) + (t >> 16)
    return 0xFFFF - t
def frame(dmac, src, dst):
    udp = struct.pack("!HHHH", 4000, 2152, 12, 0) + b"odd!"
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return dmac + mine + b"\\x08\\x00" + h + udp
router = bytes.fromhex(open("/proc/net/arp").read().split("10.0.10.20")[1].split()[2].replace(":", ""))
for _ in range(5):
    s.send(frame(bytes.fromhex("020000000099"), "10.0.10.10", "10.0.11.20"))
    s.send(frame(router, "0.0.0.0", "10.0.11.20"))
    s.send(frame(router, "10.0.11.99", "10.0.11.20"))
"""
