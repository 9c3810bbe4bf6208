"""The AF_PACKET forwarder in the lab, through the real CLI: forwarding both
ways, exactly once, counted; the sysctls it changes and puts back; the
background process it starts and stops; `run` in the foreground."""

import os
import re
import signal
import subprocess
import time

import pytest

from helpers import (XDPFWD, assert_forwarded, forwarding_sysctls, router_ip, run, stats, status,
                     without_bcc, xdpfwd)
from xdpfwd import lab, traffic

SENDBOX_V4, RECVBOX_V4 = "10.0.10.10", "10.0.11.20"
SENDBOX_V6, RECVBOX_V6 = "fd00:10::10", "fd00:11::20"
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def worker_pids(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture(scope="module")
def afpacket(lab):
    xdpfwd("detach")
    before = forwarding_sysctls()
    proc = xdpfwd("attach", "eth1", "eth0", "--mode", "afpacket")
    assert proc.returncode == 0, proc.stderr
    pid = status()["eth1"]["pid"]
    try:
        yield {"pid": pid, "sysctls": before, "attach": proc}
    finally:
        xdpfwd("detach")


def test_attach_returns_and_status_shows_afpacket_and_pid(afpacket):
    assert re.search(r"eth1: attached pid \d+ in afpacket mode", afpacket["attach"].stdout)
    st = status()
    for port in ("eth1", "eth0"):
        assert st[port]["attached"] and st[port]["mode"] == "afpacket"
        assert st[port]["pid"] == afpacket["pid"] and st[port]["running"] is True
    assert alive(afpacket["pid"])
    assert len(worker_pids(afpacket["pid"])) == len(os.sched_getaffinity(0))


def test_the_kernel_no_longer_forwards_the_ports(afpacket):
    now = forwarding_sysctls()
    assert now["net.ipv4.conf.eth1.forwarding"] == "0"
    assert now["net.ipv4.conf.eth0.forwarding"] == "0"
    assert now["net.ipv6.conf.all.forwarding"] == "0"
    assert afpacket["sysctls"]["net.ipv4.conf.eth1.forwarding"] == "1"


@pytest.mark.parametrize("ns,dst", [("sendbox", RECVBOX_V4), ("sendbox", RECVBOX_V6),
                                    ("recvbox", SENDBOX_V4), ("recvbox", SENDBOX_V6)])
def test_ping_crosses_with_ttl_63_and_no_duplicates(afpacket, ns, dst):
    proc = run(["ping", "-c", "5", "-i", "0.2", "-W", "2", dst], ns=ns)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    replies = [line for line in proc.stdout.splitlines() if "bytes from" in line]
    assert len(replies) == 5, proc.stdout
    assert all(re.search(r"ttl=63\b", line) for line in replies), proc.stdout
    assert "DUP!" not in proc.stdout


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("src,dst,ingress", [("sendbox", "recvbox", "eth1"),
                                              ("recvbox", "sendbox", "eth0")])
def test_udp_arrives_exactly_once_with_ttl_63_and_is_counted(afpacket, family, src, dst, ingress):
    count = 300
    traffic.send_udp(3, src, dst, family)  # neighbours resolved before counting
    before = stats()
    delivery = traffic.send_udp(count, src, dst, family, timeout=3)
    time.sleep(0.3)  # workers publish counters after each batch
    after = stats()
    assert_forwarded(delivery, before, after, ingress)


def test_counters_add_up(afpacket):
    for record in stats().values():
        assert record["rx_packets"] == (record["forwarded_packets"] + record["passed_packets"]
                                        + record["dropped_packets"])


def link_state(ns: str, ifname: str) -> str:
    out = subprocess.run(["ip", "-n", lab.ns(ns), "-o", "link", "show", ifname],
                         capture_output=True, text=True, check=True).stdout
    return re.search(r"state (\S+)", out).group(1)


def recvbox_eth0_up_again():
    """Up, with what going down took away: the IPv6 addresses and the
    routes through eth0 (lab.json's)."""
    n = lab.ns("recvbox")
    subprocess.run(["ip", "-n", n, "link", "set", "eth0", "up"], check=True)
    for addr in lab.HOSTS["recvbox"]["interfaces"]["eth0"]:
        extra = ["nodad"] if ":" in addr else []
        subprocess.run(["ip", "-n", n, "addr", "replace", addr, "dev", "eth0", *extra], check=True)
    for dst, via in lab.HOSTS["recvbox"]["routes"]:
        subprocess.run(["ip", "-n", n, "route", "replace", dst, "via", via], check=True)


def test_frames_the_egress_device_drops_are_dropped_and_the_worker_goes_on(afpacket):
    """With recvbox's end down, the router's eth0 has no carrier and every
    send() on its TX ring fails (ENOBUFS). The kernel's forwarding drops
    those frames; so must the forwarder: no worker dies, and none of them
    arrives once the link is back (tpacket_snd() keeps a refused frame at
    the ring's head and would send it then)."""
    mac = run(["cat", "/sys/class/net/eth0/address"], ns="recvbox", check=True).stdout.strip()
    workers = sorted(worker_pids(afpacket["pid"]))
    # A permanent neighbour: losing the carrier flushes the others, and the
    # kernel queues packets for an unresolved neighbour by design.
    router_ip("neigh", "replace", RECVBOX_V4, "lladdr", mac, "dev", "eth0", "nud", "permanent")
    try:
        subprocess.run(["ip", "-n", lab.ns("recvbox"), "link", "set", "eth0", "down"], check=True)
        try:
            # More than a TX ring's 1024 slots: the fast path then kicks
            # a full ring itself, and the refusal meets that kick first.
            refused = traffic.send_udp(3000, "sendbox", "recvbox", 4, timeout=0.5)
            assert refused.unique == 0
            time.sleep(0.5)  # the workers' flushes meet the refusal
        finally:
            recvbox_eth0_up_again()
        deadline = time.monotonic() + 5
        while link_state("router", "eth0") != "UP" and time.monotonic() < deadline:
            time.sleep(0.1)
        # Numbered from 0 again: a frame of the first 3000 arriving late
        # shows up as a second copy of its number.
        after = traffic.send_udp(400, "sendbox", "recvbox", 4, timeout=3)
        numbers = sorted(seq for _, seq, _ in after.arrivals)
        assert numbers == list(range(400)), (
            f"{len(numbers)} arrivals, {len(set(numbers))} distinct, expected 400")
        assert sorted(worker_pids(afpacket["pid"])) == workers, "a worker died and was restarted"
    finally:
        router_ip("neigh", "del", RECVBOX_V4, "dev", "eth0")


def test_attach_again_is_a_no_op(afpacket):
    proc = xdpfwd("attach", "eth1", "eth0", "--mode", "afpacket")
    assert proc.returncode == 0 and "already attached" in proc.stdout
    proc = xdpfwd("attach", "eth1", "eth0", "--mode", "native")
    assert proc.returncode == 5 and "AF_PACKET forwarder" in proc.stderr


def test_detach_stops_every_process_and_restores_the_sysctls(lab):
    xdpfwd("detach")
    before = forwarding_sysctls()
    assert xdpfwd("attach", "eth1", "eth0", "--mode", "afpacket").returncode == 0
    pid = status()["eth1"]["pid"]
    workers = worker_pids(pid)
    assert workers
    proc = xdpfwd("detach")
    assert proc.returncode == 0 and "eth1: detached" in proc.stdout
    assert not alive(pid) and not any(alive(w) for w in workers)
    assert forwarding_sysctls() == before
    assert not status()["eth1"]["attached"]


def test_auto_falls_back_to_afpacket_where_bcc_is_missing(lab, tmp_path):
    xdpfwd("detach")
    proc = xdpfwd("attach", "eth1", "eth0", env=without_bcc(tmp_path))
    try:
        assert proc.returncode == 0, proc.stderr
        notes = proc.stderr.strip().splitlines()
        assert any("XDP unavailable (bcc is not importable" in n and "using afpacket" in n
                   for n in notes), proc.stderr
        assert status()["eth1"]["mode"] == "afpacket"
        delivery = traffic.send_udp(50, family=4, timeout=3)
        assert delivery.exactly_once and delivery.ttls == {63}, (
            delivery.sent, delivery.unique, delivery.duplicates, delivery.ttls)
    finally:
        xdpfwd("detach")


@pytest.mark.parametrize("mode", ["afpacket", "native"])
def test_run_forwards_then_exits_cleanly_on_sigterm(lab, mode):
    xdpfwd("detach")
    before = forwarding_sysctls()
    proc = subprocess.Popen(["ip", "netns", "exec", lab.ns("router"), XDPFWD, "run", "eth1", "eth0",
                             "--mode", mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert f"in {mode} mode" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert status()["eth1"]["attached"]
        delivery = traffic.send_udp(50, family=6, timeout=3)
        assert delivery.exactly_once and delivery.ttls == {63}, (
            delivery.sent, delivery.unique, delivery.duplicates, delivery.ttls)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not status()["eth1"]["attached"]
    assert forwarding_sysctls() == before
