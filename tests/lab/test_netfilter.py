"""Netfilter on the forward path, in the lab's router: real nftables and
iptables-legacy rules (made with the real tools inside the router's
namespace, removed in a finally), the real CLI, the real exporter.

The kernel shows every forwarded packet to these rules; xdpfwd's packets
skip them. So attach refuses where they exist, --bypass-netfilter forwards
anyway and says so, and what appears later is reported by doctor, the
exporter and `run`.
"""

import json
import signal
import time
from contextlib import contextmanager

import pytest

from helpers import (XDPFWD, assert_one_line, attached_ports, run, scrape_value, started,
                     stderr_line, xdpfwd)
from xdpfwd import traffic

FORWARD_DROP = "nftables inet xdpfwd_test chain forward (hook forward, policy accept, 1 rule)"
LISTEN = "127.0.0.1:10427"


def nft(*args):
    return run(["nft", *args], check=True)


@contextmanager
def nft_table(family: str, *chains: tuple[str, str, list[str]]):
    """Table `xdpfwd_test` of `family` in the router with the given base
    chains: (name, "type T hook H ... priority P; [policy P;]", [rules])."""
    nft("add", "table", family, "xdpfwd_test")
    try:
        for name, spec, rules in chains:
            nft("add", "chain", family, "xdpfwd_test", name, "{ " + spec + " }")
            for rule in rules:
                nft("add", "rule", family, "xdpfwd_test", name, *rule.split())
        yield
    finally:
        run(["nft", "delete", "table", family, "xdpfwd_test"])


@contextmanager
def forward_udp_drop():
    with nft_table("inet", ("forward", "type filter hook forward priority 0;",
                            ["udp dport 2152 drop"])):
        yield


@contextmanager
def iptables_legacy(*args):
    """An iptables-legacy change in the router; `undo` reverses it."""
    run(["iptables-legacy", *args[0]], check=True)
    try:
        yield
    finally:
        run(["iptables-legacy", *args[1]], check=True)


def refused(proc, *words):
    line = assert_one_line(proc, 7, "--bypass-netfilter", *words)
    assert line.startswith("xdpfwd: netfilter on the forward path would be bypassed: ")
    assert proc.stdout == ""
    assert attached_ports() == [], "nothing may be attached"


def doctor_netfilter() -> list[dict]:
    proc = xdpfwd("doctor", "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    return [r for r in json.loads(proc.stdout) if r["check"] == "netfilter"]


@pytest.fixture
def clean(clean):
    """conftest's clean, and no nftables table left behind."""
    yield
    assert run(["nft", "list", "tables"], check=True).stdout.strip() == "", "a table was left"


@pytest.mark.parametrize("mode", ["native", "skb", "afpacket"])
def test_a_forward_drop_rule_makes_attach_refuse(clean, mode):
    with forward_udp_drop():
        refused(xdpfwd("attach", "eth1", "eth0", "--mode", mode), FORWARD_DROP)


def test_run_refuses_too(clean):
    with forward_udp_drop():
        refused(xdpfwd("run", "eth1", "eth0", "--mode", "skb", timeout=30), FORWARD_DROP)


@pytest.mark.parametrize("mode", ["native", "afpacket"])
def test_bypass_netfilter_attaches_warns_and_really_bypasses(clean, mode):
    with forward_udp_drop():
        # The kernel's own forwarding obeys the rule: nothing arrives.
        assert traffic.send_udp(5, family=4, timeout=1).received == 0
        proc = xdpfwd("attach", "eth1", "eth0", "--mode", mode, "--bypass-netfilter")
        assert proc.returncode == 0, proc.stderr
        assert f"xdpfwd: warning: bypassing netfilter: {FORWARD_DROP}" in proc.stderr.splitlines()
        assert "eth1: attached" in proc.stdout
        # ...and xdpfwd's does not: the warning was no exaggeration. The
        # neighbour is resolved by the router's own ping: a packet XDP
        # leaves to the kernel for that (fib_no_neighbour) meets the rule.
        run(["ping", "-c1", "-W2", "10.0.11.20"], check=True)
        assert traffic.send_udp(20, family=4, timeout=2).exactly_once
        # The same attach again is still a quiet no-op.
        again = xdpfwd("attach", "eth1", "eth0", "--mode", mode)
        assert again.returncode == 0, again.stderr
        assert "already attached" in again.stdout


def test_empty_accepting_chains_are_no_finding_even_nat(clean):
    # nft_do_chain() with no rule returns the policy; an empty nat chain
    # does not even run without conntrack (nf_nat_inet_fn()).
    with nft_table("inet", ("forward", "type filter hook forward priority 0; policy accept;", []),
                   ("pre", "type filter hook prerouting priority 0;", [])), \
            nft_table("ip", ("nat", "type nat hook prerouting priority -100;", [])):
        assert [r["level"] for r in doctor_netfilter()] == ["ok"]
        proc = xdpfwd("attach", "eth1", "eth0", "--mode", "skb")
        assert proc.returncode == 0, proc.stderr
        assert "netfilter" not in proc.stderr


def test_a_prerouting_nat_rule_is_a_finding(clean):
    with nft_table("ip", ("nat", "type nat hook prerouting priority -100;",
                          ["udp dport 9999 dnat to 10.0.11.20"])):
        refused(xdpfwd("attach", "eth1", "eth0"),
                "nftables ip xdpfwd_test chain nat (type nat hook prerouting, policy accept, 1 rule)")


def test_a_netdev_ingress_chain_on_a_port_is_a_finding(clean):
    with nft_table("netdev", ("in", "type filter hook ingress device eth1 priority 0;",
                              ["udp dport 2152 counter"])):
        line = ("nftables netdev xdpfwd_test chain in (hook ingress device eth1, policy accept, "
                "1 rule)")
        refused(xdpfwd("attach", "eth1", "eth0", "--mode", "afpacket"), line)
        (found,) = doctor_netfilter()
        assert found["level"] == "warn" and found["interface"] == "eth1"
        assert found["message"] == f"{line}: attach refuses"


def test_iptables_legacy_forward_policy_drop_is_a_finding(clean):
    with iptables_legacy(["-P", "FORWARD", "DROP"], ["-P", "FORWARD", "ACCEPT"]):
        refused(xdpfwd("attach", "eth1", "eth0", "--mode", "skb"),
                "iptables-legacy filter chain FORWARD (hook forward, policy drop, 0 rules)")
    # Loaded but empty and accepting again: nothing to bypass.
    assert "filter" in run(["cat", "/proc/net/ip_tables_names"]).stdout
    assert [r["level"] for r in doctor_netfilter()] == ["ok"]


def scrape_gauge() -> float | None:
    return scrape_value(LISTEN, "xdpfwd_netfilter_bypassed_chains")


def test_a_rule_added_after_attach_shows_in_doctor_and_the_gauge(clean):
    assert xdpfwd("attach", "eth1", "eth0", "--mode", "skb").returncode == 0
    with started([XDPFWD, "exporter", "--listen", LISTEN], "serving", 20):
        assert scrape_gauge() == 0
        assert [r["level"] for r in doctor_netfilter()] == ["ok"]
        with forward_udp_drop():
            (found,) = doctor_netfilter()
            assert found["level"] == "warn"
            assert found["message"] == f"{FORWARD_DROP}: xdpfwd's packets skip it"
            assert scrape_gauge() == 1
        assert scrape_gauge() == 0


@pytest.mark.parametrize("mode", ["skb", "afpacket"])
def test_run_logs_the_forward_path_gaining_and_losing_rules(clean, mode):
    with started([XDPFWD, "run", "eth1", "eth0", "--mode", mode], "attached", 20) as proc:
        with forward_udp_drop():
            # nftables: an event, so well before the legacy re-read.
            t0 = time.monotonic()
            assert stderr_line(proc, "forward path gained", 5) == (
                f"xdpfwd: warning: netfilter: forward path gained {FORWARD_DROP}: bypassed by xdpfwd")
            assert time.monotonic() - t0 < 2.5
        assert stderr_line(proc, "forward path lost", 5).startswith(
            f"xdpfwd: netfilter: forward path lost {FORWARD_DROP}")
        with iptables_legacy(["-A", "FORWARD", "-p", "udp", "-j", "DROP"],
                             ["-D", "FORWARD", "-p", "udp", "-j", "DROP"]):
            # iptables-legacy: no events; re-read every 3 s.
            assert stderr_line(proc, "forward path gained", 8) == (
                "xdpfwd: warning: netfilter: forward path gained iptables-legacy filter chain "
                "FORWARD (hook forward, policy accept, 1 rule): bypassed by xdpfwd")
        assert "forward path lost" in stderr_line(proc, "forward path lost", 8)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    assert attached_ports() == []
