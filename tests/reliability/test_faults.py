"""Faults survived: a controller killed mid-attach, an interface deleted
and created again, the AF_PACKET forwarder killed, the exporter restarted
under load, another tool's program in every mode. Each test checks what
the datapath does afterwards and what status says, and that attach or
detach repairs it."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from helpers import XDPFWD, forwarding_sysctls, run, start_in_router, status, stop, sysctl, xdpfwd
from xdpfwd import lab, traffic


def delivered(count=50, family=4):
    d = traffic.send_udp(count, family=family, timeout=3)
    return d.exactly_once and d.ttls == {63}


def attach_again():
    """attach repairs what was left: one program on both ports."""
    again = xdpfwd("attach", "eth1", "eth0")
    assert again.returncode == 0, again.stderr
    st = status()
    assert st["eth1"]["prog_id"] == st["eth0"]["prog_id"] > 0


@pytest.mark.parametrize("point,attached", [
    ("attach:before", set()),
    ("attach:between", {"eth1"}),
    ("attach:after", {"eth1", "eth0"}),
])
@pytest.mark.parametrize("repair", ["attach", "detach"])
def test_controller_killed_during_attach(clean, point, attached, repair):
    proc = xdpfwd("attach", "eth1", "eth0", env={"XDPFWD_FAILPOINT": point})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    st = status()
    # status tells the truth about what the dead controller left
    assert {name for name in ("eth1", "eth0") if st[name]["attached"]} == attached
    if repair == "attach":
        attach_again()
        assert delivered()
    else:
        assert xdpfwd("detach").returncode == 0
        st = status()
        assert not st["eth1"]["attached"] and not st["eth0"]["attached"]
        assert delivered(), "with xdpfwd gone, the kernel forwards again"


def recreate_router_eth0():
    """The veth between router and recvbox, as `xdpfwd lab up` makes it."""
    host = lab.HOSTS
    run(["ip", "-n", lab.ns("router"), "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
         "netns", lab.ns("recvbox")], ns=None, check=True)
    for name, peer in (("router", "recvbox"), ("recvbox", "router")):
        for addr in host[name]["interfaces"]["eth0"]:
            extra = ["nodad"] if ":" in addr else []
            run(["ip", "addr", "add", addr, "dev", "eth0", *extra], ns=name, check=True)
        run(["ip", "link", "set", "eth0", "up"], ns=name, check=True)
    for dst, via in host["recvbox"]["routes"]:
        run(["ip", "route", "add", dst, "via", via], ns="recvbox", check=True)
    run(["ethtool", "-K", "eth0", "gro", "on", "tx", "off"], ns="recvbox", check=True)
    sysctl("net.ipv4.conf.eth0.forwarding", "1")
    sysctl("net.ipv6.conf.eth0.forwarding", "1")
    time.sleep(0.5)  # carrier up


def test_interface_deleted_while_attached_and_created_again(clean):
    assert xdpfwd("attach", "eth1", "eth0").returncode == 0
    run(["ip", "link", "del", "eth0"], check=True)
    st = status()
    assert "eth0" not in st and st["eth1"]["attached"]
    proc = xdpfwd("stats", "--json")
    assert proc.returncode == 0, proc.stderr
    assert any(name.startswith("unknown:") for name in json.loads(proc.stdout)), \
        "the gone port's counters are shown under its old ifindex"
    try:
        recreate_router_eth0()
        assert not status()["eth0"]["attached"]
        attach_again()
        traffic.send_udp(3, family=4, timeout=3)
        assert delivered()
    finally:
        xdpfwd("detach")
        # leave the lab as the other tests expect it
        if "eth0" not in status():
            recreate_router_eth0()


def test_afpacket_forwarder_killed(clean):
    before = forwarding_sysctls()
    assert xdpfwd("attach", "eth1", "eth0", "--mode", "afpacket").returncode == 0
    pid = status()["eth1"]["pid"]
    workers = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True).stdout.split()
    assert workers
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{w}") for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{w}") for w in workers), "workers outlived the supervisor"
    st = status()["eth1"]
    assert st["mode"] == "afpacket" and st["running"] is False and not st["attached"]
    assert "not running" in xdpfwd("status").stdout
    assert forwarding_sysctls()["net.ipv4.conf.eth1.forwarding"] == "0", "still as the forwarder left it"
    proc = xdpfwd("detach")
    assert proc.returncode == 0 and "eth1: detached" in proc.stdout
    assert forwarding_sysctls() == before
    assert "pid" not in status()["eth1"]
    assert delivered(), "the kernel forwards again"


def test_exporter_restarted_under_load(clean):
    assert xdpfwd("attach", "eth1", "eth0").returncode == 0
    traffic.send_udp(3, family=4)
    done = threading.Event()

    def load():
        while not done.is_set():
            traffic.send_udp(500, family=4, rate=5000, timeout=0.2)

    sender = threading.Thread(target=load)
    sender.start()
    values = []
    try:
        for _ in range(3):
            exporter = start_in_router([XDPFWD, "exporter", "--listen", "127.0.0.1:10430"], "serving")
            for _ in range(5):
                out = run(["curl", "-sS", "--fail", "http://127.0.0.1:10430/metrics"]).stdout
                line = next(l for l in out.splitlines()
                            if l.startswith('xdpfwd_forwarded_packets_total{device="eth1"}'))
                values.append(float(line.split()[-1]))
                time.sleep(0.1)
            assert stop(exporter) == 0
    finally:
        done.set()
        sender.join()
    assert values == sorted(values), f"went backwards: {values}"
    assert values[-1] > values[0], "the load was counted"


@pytest.mark.parametrize("mode", ["auto", "native", "skb", "afpacket"])
def test_foreign_program_never_touched(foreign, mode):
    proc = xdpfwd("attach", "eth1", "eth0", "--mode", mode)
    assert proc.returncode == 5 and f"XDP program {foreign} (foreign_pass)" in proc.stderr
    for args in (["detach"], ["detach", "eth1"]):
        assert xdpfwd(*args).returncode == 0
    assert xdpfwd("detach", "eth0").returncode == 5
    st = status()
    assert st["eth0"]["foreign"]["prog_id"] == foreign and not st["eth1"]["attached"]
