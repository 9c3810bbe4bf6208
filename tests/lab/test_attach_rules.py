"""attach and detach keep their promises: idempotent, all or nothing, never
touching another tool's program, refusing a router that does not forward."""

import json
import subprocess

import pytest

from helpers import XDPFWD, assert_one_line, run, status, sysctl, xdpfwd
from xdpfwd import lab


def xdp_line(ns, ifname):
    """What `ip link` says of XDP on an interface ('' when nothing)."""
    out = run(["ip", "-d", "link", "show", "dev", ifname], ns=ns, check=True).stdout
    return " ".join(w for w in out.split() if w.startswith("xdp") or w.startswith("prog/xdp"))


def test_attach_twice_is_a_no_op_that_says_so(clean):
    first = xdpfwd("attach", "eth1", "eth0")
    assert first.returncode == 0, first.stderr
    prog_id = status()["eth1"]["prog_id"]
    again = xdpfwd("attach", "eth1", "eth0")
    assert again.returncode == 0, again.stderr
    assert "already attached" in again.stdout and "not reattaching" in again.stdout
    assert status()["eth1"]["prog_id"] == prog_id


def test_attach_in_another_mode_is_refused(clean):
    assert xdpfwd("attach", "eth1", "eth0", "--mode", "native").returncode == 0
    assert_one_line(xdpfwd("attach", "eth1", "eth0", "--mode", "skb"), 5, "detach first")
    assert status()["eth1"]["mode"] == "native"


def test_detach_leaves_no_program_and_says_when_nothing_was_there(clean):
    assert xdpfwd("attach", "eth1", "eth0").returncode == 0
    assert xdp_line("router", "eth1") and xdp_line("router", "eth0")
    proc = xdpfwd("detach")
    assert proc.returncode == 0
    assert proc.stdout.split() == ["eth1:", "detached", "eth0:", "detached"]
    assert xdp_line("router", "eth1") == "" and xdp_line("router", "eth0") == ""
    again = xdpfwd("detach")
    assert again.returncode == 0 and "nothing to detach" in again.stdout


def test_detaching_one_port_removes_it_from_the_other_ports_devmap(clean):
    assert xdpfwd("attach", "eth1", "eth0").returncode == 0
    assert xdpfwd("detach", "eth0").returncode == 0
    st = status()
    assert st["eth1"]["attached"] and not st["eth0"]["attached"]
    # eth1 may no longer redirect into eth0: the kernel forwards instead.
    run(["ping", "-c", "1", "10.0.11.20"], ns="sendbox", check=True)  # neighbours resolved
    before = json.loads(xdpfwd("stats", "--json").stdout)["eth1"]
    run(["ping", "-c", "2", "-i", "0.2", "10.0.11.20"], ns="sendbox", check=True)
    after = json.loads(xdpfwd("stats", "--json").stdout)["eth1"]
    assert after["forwarded_packets"] == before["forwarded_packets"]
    assert after["pass_reasons"]["egress_not_a_port"] - before["pass_reasons"]["egress_not_a_port"] == 2


def test_a_foreign_program_is_never_replaced(foreign):
    line = assert_one_line(xdpfwd("attach", "eth1", "eth0"), 5, str(foreign), "foreign_pass")
    assert "another tool" in line
    st = status()
    assert not st["eth1"]["attached"], "eth1 must be left as it was"
    assert st["eth0"]["foreign"] == {"prog_id": foreign, "name": "foreign_pass"}


def test_a_foreign_program_is_never_detached(foreign):
    assert_one_line(xdpfwd("detach", "eth0"), 5, "not attached by xdpfwd")
    assert "nothing to detach" in xdpfwd("detach").stdout
    assert status()["eth0"]["foreign"]["prog_id"] == foreign


@pytest.fixture
def big_peer_mtu(clean):
    """recvbox's eth0 at MTU 9000: veth then refuses native XDP on the
    router's eth0 ("Peer MTU is too large to set XDP")."""
    run(["ip", "link", "set", "dev", "eth0", "mtu", "9000"], ns="recvbox", check=True)
    try:
        yield
    finally:
        run(["ip", "link", "set", "dev", "eth0", "mtu", "1500"], ns="recvbox", check=True)


def test_attach_is_all_or_nothing(big_peer_mtu):
    line = assert_one_line(xdpfwd("attach", "eth1", "eth0", "--mode", "native"), 6, "eth0")
    assert "MTU" in line
    assert xdp_line("router", "eth1") == "", "eth1 was attached first and must be undone"
    assert xdp_line("router", "eth0") == ""


def test_auto_falls_back_to_skb_per_interface_and_says_why(big_peer_mtu):
    proc = xdpfwd("attach", "eth1", "eth0")
    assert proc.returncode == 0, proc.stderr
    assert "eth1: attached" in proc.stdout and "native mode" in proc.stdout
    assert "eth0: native XDP unavailable" in proc.stderr and "using skb mode" in proc.stderr
    st = status()
    assert (st["eth1"]["mode"], st["eth0"]["mode"]) == ("native", "skb")


@pytest.fixture
def forwarding_off(clean):
    keys = [f"net.{fam}.conf.eth1.forwarding" for fam in ("ipv4", "ipv6")]
    for key in keys:
        sysctl(key, "0")
    try:
        yield keys
    finally:
        for key in keys:
            sysctl(key, "1")


def test_forwarding_disabled_is_refused_then_enabled_on_request(forwarding_off):
    assert_one_line(xdpfwd("attach", "eth1", "eth0"), 6, "eth1", "forwarding is disabled",
                   "--enable-forwarding")
    assert xdp_line("router", "eth1") == ""
    proc = xdpfwd("attach", "eth1", "eth0", "--enable-forwarding")
    assert proc.returncode == 0, proc.stderr
    for key in forwarding_off:
        assert sysctl(key) == "1"
        assert f"set {key}=1" in proc.stderr


def test_status_and_stats_work_from_a_new_netns_exec_without_bpffs(clean):
    assert xdpfwd("attach", "eth1", "eth0").returncode == 0
    # A new `ip netns exec` has no /sys/fs/bpf: nothing may depend on pins.
    mounts = run(["cat", "/proc/self/mounts"]).stdout
    assert " /sys/fs/bpf " not in mounts
    assert status()["eth0"]["attached"]
    assert set(json.loads(xdpfwd("stats", "--json").stdout)) == {"eth1", "eth0"}


def test_concurrent_attaches_one_wins(clean):
    cmd = ["ip", "netns", "exec", lab.ns("router"), XDPFWD, "attach", "eth1", "eth0"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    winners = [r for r in results if r[0] == 0 and "attached program" in r[1]]
    assert len(winners) == 1, results
    loser = next(r for r in results if r is not winners[0])
    # The other one either lost the lock, or came after and found it done.
    assert (loser[0] == 5 and "another xdpfwd" in loser[2]) or \
        (loser[0] == 0 and "already attached" in loser[1]), loser
    st = status()
    assert st["eth1"]["prog_id"] == st["eth0"]["prog_id"] > 0


@pytest.fixture
def ipv6_port_on_namespace_off(clean):
    """The kernel forwards IPv6 by net.ipv6.conf.all.forwarding (ip6_forward());
    bpf_fib_lookup() asks the port's own value: here they disagree."""
    sysctl("net.ipv6.conf.all.forwarding", "0")  # sets every port's to 0 too
    sysctl("net.ipv6.conf.eth1.forwarding", "1")
    sysctl("net.ipv6.conf.eth0.forwarding", "1")
    try:
        yield
    finally:
        sysctl("net.ipv6.conf.all.forwarding", "1")


def test_ipv6_forwarding_off_for_the_namespace_is_not_overridden(ipv6_port_on_namespace_off):
    assert_one_line(xdpfwd("attach", "eth1", "eth0"), 6, "net.ipv6.conf.eth1.forwarding=1",
                   "net.ipv6.conf.all.forwarding=0", "--enable-forwarding")
    assert xdp_line("router", "eth1") == ""
    proc = xdpfwd("attach", "eth1", "eth0", "--enable-forwarding")
    assert proc.returncode == 0, proc.stderr
    assert "set net.ipv6.conf.all.forwarding=1" in proc.stderr
    assert sysctl("net.ipv6.conf.all.forwarding") == "1"
