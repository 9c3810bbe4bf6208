"""The kernel's forwarding switches decide in every mode: with IPv6
forwarding off for the namespace (net.ipv6.conf.all.forwarding=0, which
ip6_forward() asks), no IPv6 crosses the router, whichever datapath
forwards IPv4. And `run` keeps the XDP program's copies of its ports'
switches (disable_ipv6) and addresses current."""

import json

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from helpers import (XDPFWD, ipv6_disabled, router_mac_changed, started, stats, stderr_line, sysctl,
                     xdpfwd)
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


@pytest.mark.parametrize("mode", ["native", "skb"])
def test_run_keeps_the_ports_current(pinned, mode):  # noqa: F811
    """The XDP program decides by copies of its ports' MAC and IPv6 switch
    (it cannot read either from the kernel); `run` keeps them current and
    logs each change, an event away, with no attach again."""
    router, sendbox = pinned
    v4 = Ether(src=sendbox, dst=router) / IP(src="10.0.10.10", dst="10.0.11.20") / UDP(dport=2152) / MARK
    v6 = (Ether(src=sendbox, dst=router) / IPv6(src="fd00:10::10", dst="fd00:11::20")
          / UDP(dport=2152) / MARK)
    with started([XDPFWD, "run", "eth1", "eth0", "--mode", mode], "attached", 20) as proc:
        with ipv6_disabled("eth1"):
            # How fast (the events, not the re-read every 3 s):
            # tests/datapath/test_verdicts.py, test_follow_ports_acts_on_the_kernels_events.
            assert stderr_line(proc, "eth1: IPv6", 5) == (
                "xdpfwd: eth1: IPv6 disabled (disable_ipv6, or no IPv6): its IPv6 goes to the stack")
            got, _ = through_router([bytes(v6)] * 3)
            assert got == [], f"{mode}: IPv6 on a port with disable_ipv6 crossed"
        assert stderr_line(proc, "eth1: IPv6", 5) == (
            "xdpfwd: eth1: IPv6 enabled again: its IPv6 is forwarded")
        got, _ = through_router([bytes(v6)] * 3)
        assert len(got) == 3, f"{mode}: IPv6 did not come back"

        new = "02:00:00:00:10:20"
        with router_mac_changed("eth1", new):
            assert stderr_line(proc, "eth1: MAC", 5) == (
                f"xdpfwd: eth1: MAC address now {new}: frames to it are forwarded, "
                f"frames to {router} go to the stack")
            before = stats()["eth1"]["forwarded_packets"]
            to_new = Ether(src=sendbox, dst=new) / v4.payload
            got, _ = through_router([bytes(to_new)] * 3)
            assert len(got) == 3 and stats()["eth1"]["forwarded_packets"] - before == 3
            got, _ = through_router([bytes(v4)] * 3)
            assert got == [], f"{mode}: frames to the old MAC were forwarded"
        assert stderr_line(proc, "eth1: MAC", 5).startswith(f"xdpfwd: eth1: MAC address now {router}")


def doctor_xdp(port: str) -> list[dict]:
    proc = xdpfwd("doctor", "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    return [r for r in json.loads(proc.stdout) if r["check"] == "xdp" and r["interface"] == port]


def test_doctor_finds_what_a_plain_attach_left_stale(pinned):  # noqa: F811
    """A plain attach copies the ports' state once; doctor compares the
    copy with the ports, and attach again puts it right (and says what)."""
    assert xdpfwd("attach", "eth1", "eth0", "--mode", "native").returncode == 0
    try:
        assert [r["level"] for r in doctor_xdp("eth1")] == ["ok"]
        with ipv6_disabled("eth1"):
            ok, stale = doctor_xdp("eth1")
            assert (ok["level"], stale["level"]) == ("ok", "warn")
            assert stale["message"] == ("disable_ipv6 is set (or IPv6 gone), but the program still "
                                        "forwards the port's IPv6, which the kernel drops")
            proc = xdpfwd("attach", "eth1", "eth0", "--mode", "native")
            assert proc.returncode == 0
            assert proc.stderr == ("xdpfwd: eth1: IPv6 disabled (disable_ipv6, or no IPv6): its IPv6 "
                                   "goes to the stack\n")
            assert "already attached" in proc.stdout
            assert [r["level"] for r in doctor_xdp("eth1")] == ["ok"]
        assert [r["level"] for r in doctor_xdp("eth1")] == ["ok", "warn"]
    finally:
        assert xdpfwd("detach").returncode == 0
