"""`xdpfwd doctor` as a user runs it, in a namespace of this module's own
(never the lab's sendbox/router/recvbox):

    doctest-PID:       dt-a -- dt-b   (forwarding on / off)
                       dt-c -- dt-d   (dt-c ipv4 only; dt-d MTU 9000)
                       dt-e --------- dt-f in doctest-PID-peer (MTU 9000)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

XDPFWD = str(Path(sys.executable).with_name("xdpfwd"))
NS = f"doctest-{os.getpid()}"
PEER_NS = f"{NS}-peer"
IFACES = {"dt-a", "dt-b", "dt-c", "dt-d", "dt-e"}
FORWARDING = {  # interface: (ipv4, ipv6)
    "dt-a": (1, 1), "dt-b": (0, 0), "dt-c": (1, 0), "dt-d": (0, 0), "dt-e": (1, 1),
}


def sh(*args, check=True, env=None, ns=NS):
    prefix = ["ip", "netns", "exec", ns] if ns else []
    proc = subprocess.run(prefix + list(args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


@pytest.fixture(scope="module")
def netns():
    try:
        sh("ip", "netns", "add", NS, ns=None)
        sh("ip", "netns", "add", PEER_NS, ns=None)
        sh("ip", "link", "add", "dt-a", "type", "veth", "peer", "name", "dt-b")
        sh("ip", "link", "add", "dt-c", "type", "veth", "peer", "name", "dt-d")
        sh("ip", "link", "add", "dt-e", "type", "veth", "peer", "name", "dt-f", "netns", PEER_NS)
        sh("ip", "link", "set", "dt-d", "mtu", "9000")
        sh("ip", "link", "set", "dt-f", "mtu", "9000", ns=PEER_NS)
        # The kernel forwards IPv6 by all.forwarding (ip6_forward()); it
        # also sets every interface's, which the loop then sets as listed.
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for name, (v4, v6) in FORWARDING.items():
            sh("sysctl", "-qw", f"net.ipv4.conf.{name}.forwarding={v4}",
               f"net.ipv6.conf.{name}.forwarding={v6}")
        yield NS
    finally:
        sh("ip", "netns", "del", NS, ns=None, check=False)
        sh("ip", "netns", "del", PEER_NS, ns=None, check=False)


def doctor_json(env=None):
    proc = sh(XDPFWD, "doctor", "--json", check=False, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_interface(results, check):
    return {r["interface"]: r for r in results if r["check"] == check}


def test_machine_checks_come_first_in_order(netns):
    rc, results = doctor_json()
    assert [r["check"] for r in results[:6]] == [
        "privileges", "bcc", "kernel headers", "libbpf", "btf", "bpffs"]
    assert all(r["interface"] is None for r in results[:6])
    assert results[0]["level"] == "ok"  # root
    assert rc == (1 if any(r["level"] == "fail" for r in results) else 0)


def test_every_interface_but_loopback_is_checked(netns):
    _, results = doctor_json()
    namespace = ("netfilter", "ipsec")  # the namespace's checks, last
    per_interface = [r for r in results[6:] if r["check"] not in namespace]
    assert {r["interface"] for r in per_interface} == IFACES
    assert [r["check"] for r in results[-2:]] == list(namespace)
    for check in ("driver", "mtu", "xdp"):
        assert set(by_interface(results, check)) == IFACES


def test_forwarding_sysctls_are_reported_per_interface_and_family(netns):
    _, results = doctor_json()
    forwarding = [r for r in results if r["check"] == "forwarding"]
    assert len(forwarding) == 2 * len(IFACES)
    for r in forwarding:
        fam = r["message"].split(".")[1]
        on = FORWARDING[r["interface"]][0 if fam == "ipv4" else 1]
        name = f"net.{fam}.conf.{r['interface']}.forwarding"
        assert r["message"].startswith(f"{name}={on}"), r
        assert r["level"] == ("ok" if on else "warn"), r
        if not on:
            assert r["fix"] == f"sysctl -w {name}=1, or attach --enable-forwarding"
    both_off = [r for r in forwarding if r["interface"] == "dt-b"]
    assert all(r["message"].endswith(": attach will refuse") for r in both_off)
    [v6] = [r for r in forwarding if r["interface"] == "dt-c" and ".ipv6." in r["message"]]
    assert v6["message"].endswith("ipv6 is left to the kernel")


def test_veth_driver_from_link_kind_and_no_program_attached(netns):
    _, results = doctor_json()
    for name in IFACES:
        driver = by_interface(results, "driver")[name]
        assert (driver["level"], driver["message"]) == ("ok", "veth: native XDP supported")
        xdp = by_interface(results, "xdp")[name]
        assert (xdp["level"], xdp["message"]) == ("ok", "no XDP program attached")


def test_mtu_rule_judges_the_veth_peer(netns):
    # The kernel refuses native XDP on a veth whose PEER's MTU is too big.
    _, results = doctor_json()
    mtu = by_interface(results, "mtu")
    assert mtu["dt-c"]["level"] == "warn"
    assert mtu["dt-c"]["message"] == "native XDP up to peer MTU 3506 on veth, peer dt-d has 9000"
    assert mtu["dt-c"]["fix"] == "ip link set dev dt-d mtu 3506, or --mode skb"
    # dt-d itself has MTU 9000, but what reaches it comes from dt-c (1500).
    assert mtu["dt-d"]["level"] == "ok" and "MTU 9000, peer dt-c MTU 1500" in mtu["dt-d"]["message"]
    for name in ("dt-a", "dt-b"):
        assert mtu[name]["level"] == "ok"


def test_mtu_rule_finds_a_peer_in_another_namespace(netns):
    _, results = doctor_json()
    r = by_interface(results, "mtu")["dt-e"]
    assert r["level"] == "warn" and "peer dt-f has 9000" in r["message"]
    assert r["fix"] == "ip link set dev dt-f mtu 3506 (in the peer's namespace), or --mode skb"


def test_human_output_lines(netns):
    proc = sh(XDPFWD, "doctor", check=False)
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "ok   privileges: root"
    assert all(l[:5] in ("ok   ", "warn ", "FAIL ") for l in lines), lines
    assert ("warn dt-c: native XDP up to peer MTU 3506 on veth, peer dt-d has 9000; "
            "fix: ip link set dev dt-d mtu 3506, or --mode skb") in lines
    assert "ok   dt-a: net.ipv4.conf.dt-a.forwarding=1" in lines


def test_ethtool_ioctl_reads_the_driver_name(netns):
    code = ("from xdpfwd import doctor\n"
            "print(doctor.ethtool_driver('dt-a'))\n"
            "try:\n    doctor.ethtool_driver('lo')\n"
            "except OSError as e:\n    print(e.errno)\n")
    out = sh(sys.executable, "-c", code).stdout.split()
    assert out == ["veth", "95"]  # lo has no get_drvinfo: EOPNOTSUPP


def snapshot():
    links = sh("ip", "-d", "link", "show").stdout
    sysctls = sh("sysctl", "-a", "--pattern", r"net\.ipv[46]\.conf\.dt-").stdout
    return links, sysctls


def test_doctor_changes_nothing(netns):
    before = snapshot()
    assert doctor_json()[1]
    assert snapshot() == before


def test_hidden_bcc_is_one_fail_line_and_no_traceback(netns, tmp_path):
    (tmp_path / "bcc").mkdir()
    (tmp_path / "bcc" / "__init__.py").write_text('raise ImportError("hidden for the test")\n')
    env = {"PYTHONPATH": str(tmp_path)}
    proc = sh(XDPFWD, "doctor", check=False, env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    fails = [l for l in proc.stdout.splitlines() if l.startswith("FAIL ")]
    assert fails == ["FAIL bcc: bcc is not importable; fix: apt-get install python3-bpfcc, and run "
                     "xdpfwd with a Python that sees it (/usr/bin/python3, or a venv made with "
                     "--system-site-packages)"]
    # The other checks still ran.
    assert any(l.startswith("ok   dt-a: veth") for l in proc.stdout.splitlines())
    rc, results = doctor_json(env)
    assert rc == 1 and by_interface(results, "xdp").keys() == IFACES


def test_without_privileges_doctor_still_answers(netns):
    proc = sh("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
              XDPFWD, "doctor", check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("FAIL privileges: ") and "run as root" in lines[0]
    assert "ok   dt-a: veth: native XDP supported" in lines
