"""IPsec (xfrm) on the forward path, in the lab's router: real policies and
default policies (made with `ip xfrm` inside the router's namespace,
removed in a finally), the real CLI.

The kernel asks xfrm about every packet it forwards (ip_forward():
xfrm4_policy_check() for dir fwd, xfrm4_route_forward() for dir out);
xdpfwd's packets never get there. So attach refuses where policies or a
blocking default exist, --bypass-ipsec forwards anyway and says so, and
doctor reports them. This kernel has no ESP, AH or IPcomp (no SA can be
made here), so the SA rule is covered by the unit tests only
(tests/unit/test_ipsec_logic.py).
"""

import json
import sys
import time
from contextlib import contextmanager

import pytest

from helpers import (XDPFWD, assert_one_line, attached_ports, run, scrape_value, started,
                     stderr_line, xdpfwd)
from xdpfwd import traffic

# Tunnel-mode policies for the lab's two networks, as an IPsec gateway
# would have them; no SA exists for their template.
OUT = ["src", "10.0.10.0/24", "dst", "10.0.11.0/24", "dir", "out"]
FWD = ["src", "10.0.10.0/24", "dst", "10.0.11.0/24", "dir", "fwd"]
LISTEN = "127.0.0.1:10428"
TMPL = ["tmpl", "src", "10.0.11.10", "dst", "10.0.11.20", "proto", "esp", "mode", "tunnel"]


def xfrm(*args):
    return run(["ip", "xfrm", *args], check=True)


@contextmanager
def policy(selector: list[str]):
    xfrm("policy", "add", *selector, *TMPL)
    try:
        yield
    finally:
        run(["ip", "xfrm", "policy", "delete", *selector])


@contextmanager
def default(direction: str, action: str):
    xfrm("policy", "setdefault", direction, action)
    try:
        yield
    finally:
        run(["ip", "xfrm", "policy", "setdefault", direction, "accept"])


@pytest.fixture
def clean(clean):
    """conftest's clean, and no policy or blocking default left behind."""
    yield
    assert xfrm("policy", "count").stdout.split() == \
        ["SPD", "IN", "0", "OUT", "0", "FWD", "0"], "a policy was left"
    assert "block" not in xfrm("policy", "getdefault").stdout, "a blocking default was left"


def refused(proc, *words):
    line = assert_one_line(proc, 8, "--bypass-ipsec", *words)
    assert line.startswith("xdpfwd: IPsec (xfrm) on the forward path would be bypassed: ")
    assert proc.stdout == ""
    assert attached_ports() == [], "nothing may be attached"


def doctor_ipsec() -> list[dict]:
    proc = xdpfwd("doctor", "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    return [r for r in json.loads(proc.stdout) if r["check"] == "ipsec"]


@pytest.mark.parametrize("mode", ["native", "skb", "afpacket"])
def test_an_out_policy_makes_attach_refuse(clean, mode):
    with policy(OUT):
        refused(xdpfwd("attach", "eth1", "eth0", "--mode", mode), "1 policy dir out")


def test_fwd_policies_and_blocking_defaults_are_findings_too(clean):
    with policy(FWD), default("fwd", "block"), default("out", "block"):
        refused(xdpfwd("attach", "eth1", "eth0"),
                ": 1 policy dir fwd, default policy fwd block, default policy out block;")
        (found,) = doctor_ipsec()
        assert found["level"] == "warn"
        assert found["message"] == ("IPsec (xfrm): 1 policy dir fwd, default policy fwd block, "
                                    "default policy out block: attach refuses")


def test_in_policies_and_defaults_are_no_finding(clean):
    # Only the box's own traffic meets dir in (ip_local_deliver_finish()).
    with policy(["src", "10.0.10.0/24", "dst", "10.0.11.0/24", "dir", "in"]), \
            default("in", "block"):
        assert [r["level"] for r in doctor_ipsec()] == ["ok"]
        proc = xdpfwd("attach", "eth1", "eth0", "--mode", "skb")
        assert proc.returncode == 0, proc.stderr
        assert "IPsec" not in proc.stderr


def test_run_refuses_too(clean):
    with policy(OUT):
        refused(xdpfwd("run", "eth1", "eth0", "--mode", "skb", timeout=30), "1 policy dir out")


@contextmanager
def out_policy():
    with policy(OUT):
        yield


@pytest.mark.parametrize("configured, finding", [
    (lambda: default("fwd", "block"), "default policy fwd block"),
    # Its template names an SA that does not exist: the kernel holds the
    # packets for a key manager that never answers (xfrm_lookup()).
    (out_policy, "1 policy dir out"),
], ids=["fwd-block", "out-policy"])
@pytest.mark.parametrize("mode", ["native", "afpacket"])
def test_bypass_ipsec_attaches_warns_and_really_bypasses(clean, mode, configured, finding):
    # The neighbour is resolved first, by the router's own ping (its source,
    # 10.0.11.10, is outside the policy): a packet XDP leaves to the kernel
    # for that (fib_no_neighbour) would meet the policy.
    run(["ping", "-c1", "-W2", "10.0.11.20"], check=True)
    with configured():
        # The kernel's own forwarding obeys the policy: nothing arrives.
        assert traffic.send_udp(5, family=4, timeout=1).received == 0
        proc = xdpfwd("attach", "eth1", "eth0", "--mode", mode, "--bypass-ipsec")
        assert proc.returncode == 0, proc.stderr
        assert f"xdpfwd: warning: bypassing IPsec: {finding}" in proc.stderr.splitlines()
        assert "eth1: attached" in proc.stdout
        # ...and xdpfwd's does not: the warning was no exaggeration.
        assert traffic.send_udp(20, family=4, timeout=2).exactly_once
        (found,) = doctor_ipsec()
        assert found["message"] == f"IPsec (xfrm): {finding}: xdpfwd's packets skip it"


def test_without_cap_net_admin_the_kernel_says_no_and_so_do_we(clean):
    proc = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c",
                "from xdpfwd import ipsec\n"
                "try:\n    ipsec.read()\nexcept ipsec.PermissionDenied as e:\n    print(e)"])
    assert proc.stdout.strip() == "reading IPsec (xfrm) needs CAP_NET_ADMIN; run as root", \
        proc.stderr


def scrape_gauge() -> float | None:
    return scrape_value(LISTEN, "xdpfwd_ipsec_bypassed")


def test_a_policy_added_after_attach_shows_in_doctor_and_the_gauge(clean):
    assert xdpfwd("attach", "eth1", "eth0", "--mode", "skb").returncode == 0
    with started([XDPFWD, "exporter", "--listen", LISTEN], "serving", 20):
        assert scrape_gauge() == 0
        assert [r["level"] for r in doctor_ipsec()] == ["ok"]
        with policy(OUT):
            (found,) = doctor_ipsec()
            assert found["message"] == "IPsec (xfrm): 1 policy dir out: xdpfwd's packets skip it"
            assert scrape_gauge() == 1
        assert scrape_gauge() == 0


@pytest.mark.parametrize("mode", ["skb", "afpacket"])
def test_run_logs_ipsec_joining_and_leaving_the_forward_path(clean, mode):
    with started([XDPFWD, "run", "eth1", "eth0", "--mode", mode], "attached", 20) as proc:
        # Each change is announced (a policy: km_policy_notify() in
        # xfrm_add_policy(); a default: xfrm_notify_userpolicy()), so each line
        # comes well before the periodic re-read, 3 s.
        with policy(OUT):
            t0 = time.monotonic()
            assert stderr_line(proc, "IPsec", 5) == (
                "xdpfwd: warning: IPsec: forward path now meets 1 policy dir out: "
                "bypassed by xdpfwd")
            assert time.monotonic() - t0 < 2.5
        assert stderr_line(proc, "IPsec", 5) == (
            "xdpfwd: IPsec: forward path meets none any more: nothing bypassed")
        with default("fwd", "block"):
            t0 = time.monotonic()
            assert stderr_line(proc, "IPsec", 5) == (
                "xdpfwd: warning: IPsec: forward path now meets default policy fwd block: "
                "bypassed by xdpfwd")
            assert time.monotonic() - t0 < 2.5
        assert "meets none" in stderr_line(proc, "IPsec", 5)
    # started() has stopped it and seen it end cleanly.
    assert attached_ports() == []
