"""doctor's pure logic: header versions, the MTU rule, the line format, and
that a failing check becomes a result instead of an exception."""

import ctypes
import json
import struct
from pathlib import Path
from types import SimpleNamespace

from xdpfwd import datapath, doctor, portcopy
from xdpfwd.doctor import Peer, Result
from xdpfwd.errors import MissingDependency, PermissionDenied
from xdpfwd.layout import PORT_FORMAT

DEBIAN_61 = Path("/usr/src/linux-headers-6.1.0-56-amd64")


# -- kernel headers -----------------------------------------------------------


def test_major_minor_from_release_and_header_dirs():
    assert doctor.major_minor("6.18.44-fc-v657") == (6, 18)
    assert doctor.major_minor("linux-headers-6.1.0-56-amd64") == (6, 1)
    assert doctor.major_minor("linux-6.18") == (6, 18)
    assert doctor.major_minor("kheaders.tar.xz") is None


def test_headers_missing_fails_with_the_package_to_install():
    r = doctor.headers_result(None, "6.18.44-fc-v657")
    assert r.level == "fail"
    assert r.message == "none for 6.18.44-fc-v657"
    assert "install linux-headers-6.18.44-fc-v657" in r.fix and "make setup" in r.fix


def test_headers_of_another_minor_version_warn_and_name_both_versions():
    r = doctor.headers_result(DEBIAN_61, "6.18.44-fc-v657")
    assert r.level == "warn"
    assert str(DEBIAN_61) in r.message
    assert "using 6.1 headers for a 6.18 kernel: uapi-only programs like xdpfwd's work" in r.message


def test_headers_of_the_running_version_are_ok():
    r = doctor.headers_result(DEBIAN_61, "6.1.0-56-amd64")
    assert (r.level, r.message, r.fix) == ("ok", str(DEBIAN_61), None)
    # Same major.minor, other Debian ABI number: still the same API.
    assert doctor.headers_result(DEBIAN_61, "6.1.0-99-amd64").level == "ok"


def test_in_kernel_headers_are_ok():
    r = doctor.headers_result(Path("/sys/kernel/kheaders.tar.xz"), "6.18.44-fc-v657")
    assert r.level == "ok" and "kheaders" in r.message


# -- line and JSON format -------------------------------------------------------


def test_line_has_a_four_column_level_then_check_and_message():
    assert Result("bcc", "ok", "importable (/x/bcc)").line() == "ok   bcc: importable (/x/bcc)"
    assert (Result("kernel headers", "fail", "none for 6.18", "install it").line()
            == "FAIL kernel headers: none for 6.18; fix: install it")


def test_interface_results_are_labelled_by_the_interface():
    r = Result("mtu", "warn", "too big", "shrink it", "eth1")
    assert r.line() == "warn eth1: too big; fix: shrink it"


def test_as_dict_has_exactly_the_json_fields():
    r = Result("mtu", "warn", "too big", None, "eth1")
    d = r.as_dict()
    assert list(d) == ["check", "level", "message", "fix", "interface"]
    assert json.loads(json.dumps(d)) == {"check": "mtu", "level": "warn", "message": "too big",
                                         "fix": None, "interface": "eth1"}


# -- the MTU rule -------------------------------------------------------------------


def test_veth_warns_when_the_peer_mtu_is_over_the_single_buffer_limit():
    r = doctor.mtu_result("dt-c", "veth", 1500, Peer("dt-d", 9000, here=True))
    assert r.level == "warn"
    assert "peer dt-d has 9000" in r.message and "3506" in r.message
    assert r.fix == "ip link set dev dt-d mtu 3506, or --mode skb"


def test_veth_peer_in_another_namespace_says_where_to_fix_it():
    r = doctor.mtu_result("r0", "veth", 1500, Peer("s0", 9000, here=False))
    assert r.level == "warn" and "in the peer's namespace" in r.fix


def test_veth_limit_is_inclusive():
    assert doctor.mtu_result("a", "veth", 9000, Peer("b", 3506, True)).level == "ok"
    assert doctor.mtu_result("a", "veth", 1500, Peer("b", 3507, True)).level == "warn"


def test_veth_with_unknown_peer_judges_its_own_mtu():
    r = doctor.mtu_result("eth1", "veth", 9000, None)
    assert r.level == "warn"
    assert r.message == "native XDP up to MTU 3506 on veth, MTU is 9000"
    assert r.fix.startswith("ip link set dev eth1 mtu 3506")
    assert doctor.mtu_result("eth1", "veth", 1500, None).level == "ok"


def test_virtio_net_limits():
    assert doctor.mtu_result("eth0", "virtio_net", 1500).level == "ok"
    big = doctor.mtu_result("eth0", "virtio_net", 9000)
    assert big.level == "warn" and "up to MTU 3506" in big.message
    mid = doctor.mtu_result("eth0", "virtio_net", 3000, cpus=4)
    assert mid.level == "warn" and "offloads" in mid.message
    assert "ethtool -K eth0 lro off" in mid.fix and "combined 4" in mid.fix


def test_other_drivers_just_report_the_mtu():
    r = doctor.mtu_result("enp1s0", "ixgbe", 9000)
    assert (r.level, r.message) == ("ok", "MTU 9000")


def test_other_page_sizes_are_not_judged():
    r = doctor.mtu_result("a", "veth", 9000, Peer("b", 9000, True), page_size=65536)
    assert r.level == "ok" and "64 KiB" in r.message


# -- driver, forwarding, XDP ------------------------------------------------------


def test_driver_table():
    assert doctor.driver_result("eth0", "virtio_net").level == "ok"
    assert doctor.driver_result("bond0", "bond").level == "ok"
    r = doctor.driver_result("br0", "bridge")
    assert r.level == "warn" and "no native XDP in driver bridge" in r.message
    assert "--mode auto will use skb mode" in r.message
    unknown = doctor.driver_result("x0", None, "ETHTOOL_GDRVINFO: Operation not supported")
    assert unknown.level == "warn" and "Operation not supported" in unknown.message


def test_ethtool_structs_match_the_kernel_abi():
    assert ctypes.sizeof(doctor._DrvInfo) == 196  # struct ethtool_drvinfo
    assert ctypes.sizeof(doctor._IfReq) == 40  # struct ifreq on 64-bit


def _forwarding(monkeypatch, states):
    monkeypatch.setattr(doctor.sysctl, "forwarding", lambda fam, ifname, saved=None: states[fam])
    return {r.message.split(".")[1]: r for r in doctor.check_forwarding("eth1")}


def test_forwarding_all_off_says_attach_refuses(monkeypatch):
    got = _forwarding(monkeypatch, {"ipv4": False, "ipv6": False})
    for fam in ("ipv4", "ipv6"):
        assert got[fam].level == "warn"
        assert got[fam].message == f"net.{fam}.conf.eth1.forwarding=0: attach will refuse"
        assert got[fam].fix == (f"sysctl -w net.{fam}.conf.eth1.forwarding=1, "
                                "or attach --enable-forwarding")


def test_forwarding_one_off_leaves_that_family_to_the_kernel(monkeypatch):
    got = _forwarding(monkeypatch, {"ipv4": True, "ipv6": False})
    assert (got["ipv4"].level, got["ipv4"].message) == ("ok", "net.ipv4.conf.eth1.forwarding=1")
    assert got["ipv6"].level == "warn" and "ipv6 is left to the kernel" in got["ipv6"].message


def _link(name="eth1"):
    # check_xdp reads only the name; inspect() is replaced in these tests.
    return SimpleNamespace(name=name, index=7)


def test_foreign_program_warns(monkeypatch):
    state = datapath.PortState("eth1", 7, mode="native",
                               foreign=datapath.Foreign(42, "xdp_firewall"))
    monkeypatch.setattr(doctor.xdp, "inspect", lambda link: state)
    [r] = doctor.check_xdp(_link())
    assert r.level == "warn"
    assert r.message.startswith("foreign XDP program 42 (xdp_firewall) attached: xdpfwd will refuse")


def test_own_program_is_ok(monkeypatch):
    state = datapath.PortState("eth1", 7, mode="native", prog_id=9)
    monkeypatch.setattr(doctor.xdp, "inspect", lambda link: state)
    monkeypatch.setattr(doctor.xdp, "stale_ports", lambda prog_id: {"eth0": ["not this port's"]})
    [r] = doctor.check_xdp(_link())
    assert (r.level, r.message) == ("ok", "xdpfwd program 9 (native)")


def test_a_stale_copy_of_the_port_warns(monkeypatch):
    state = datapath.PortState("eth1", 7, mode="native", prog_id=9)
    monkeypatch.setattr(doctor.xdp, "inspect", lambda link: state)
    old = struct.pack(PORT_FORMAT, 7, bytes.fromhex("020000000001"), 0, 0, 0, 0)
    new = struct.pack(PORT_FORMAT, 7, bytes.fromhex("020000000001"), 1, 0, 0, 0)
    monkeypatch.setattr(doctor.xdp, "stale_ports",
                        lambda prog_id: {"eth1": portcopy.drift(old, new)})
    ok, stale = doctor.check_xdp(_link())
    assert ok.level == "ok"
    assert (stale.level, stale.interface) == ("warn", "eth1")
    assert stale.message == ("disable_ipv6 is set (or IPv6 gone), but the program still forwards "
                             "the port's IPv6, which the kernel drops")
    assert stale.fix.startswith("attach the same interfaces again")


def test_the_copy_is_read_once_per_program_for_all_its_ports(monkeypatch):
    monkeypatch.setattr(doctor.xdp, "inspect",
                        lambda link: datapath.PortState(link.name, 7, mode="native", prog_id=9))
    calls = []
    monkeypatch.setattr(doctor.xdp, "stale_ports",
                        lambda prog_id: calls.append(prog_id) or {"eth0": ["stale"]})
    stale = doctor.stale_reader()
    assert [r.message for r in doctor.check_xdp(_link("eth1"), stale)] == ["xdpfwd program 9 (native)"]
    assert [r.message for r in doctor.check_xdp(_link("eth0"), stale)][1:] == ["stale"]
    assert calls == [9]


def test_an_unreadable_copy_of_the_port_warns(monkeypatch):
    state = datapath.PortState("eth1", 7, mode="native", prog_id=9)
    monkeypatch.setattr(doctor.xdp, "inspect", lambda link: state)

    def refuse(prog_id):
        raise PermissionDenied("failed to open BPF map 4: permission denied")

    monkeypatch.setattr(doctor.xdp, "stale_ports", refuse)
    ok, stale = doctor.check_xdp(_link())
    assert stale.level == "warn" and "map 4" in stale.message


def test_unreadable_programs_warn_instead_of_raising(monkeypatch):
    def refuse(link):
        raise PermissionDenied("failed to open BPF program 3: permission denied", hint="run as root")

    monkeypatch.setattr(doctor.xdp, "inspect", refuse)
    [r] = doctor.check_xdp(_link())
    assert r.level == "warn" and r.fix == "run as root" and "program 3" in r.message


# -- nothing escapes -------------------------------------------------------------


def test_missing_bcc_is_a_fail_with_the_hint(monkeypatch):
    def missing():
        raise MissingDependency("bcc is not importable", hint=doctor.compiler.BCC_HINT)

    monkeypatch.setattr(doctor.compiler, "import_bcc", missing)
    r = doctor.check_bcc()
    assert (r.level, r.message, r.fix) == ("fail", "bcc is not importable",
                                           doctor.compiler.BCC_HINT)


def test_a_broken_bcc_is_a_fail_too(monkeypatch):
    def broken():
        raise OSError("libbcc.so.0: cannot open shared object file")

    monkeypatch.setattr(doctor.compiler, "import_bcc", broken)
    r = doctor.check_bcc()
    assert r.level == "fail" and "libbcc.so.0" in r.message


def test_no_privileges_fails_with_run_as_root(monkeypatch):
    def refuse():
        raise PermissionDenied("no")

    monkeypatch.setattr(doctor.forwarder, "require_privileges", refuse)
    r = doctor.check_privileges()
    assert r.level == "fail" and "root" in r.fix


def test_a_crashing_check_becomes_a_fail_and_the_rest_still_run(monkeypatch):
    def crash():
        raise RuntimeError("boom")

    fine = lambda: Result("btf", "ok", "present")  # noqa: E731
    monkeypatch.setattr(doctor, "CHECKS", [("privileges", crash), ("btf", fine)])
    results = doctor.run()
    assert [(r.check, r.level) for r in results] == [("privileges", "fail"), ("btf", "ok")]
    assert "RuntimeError: boom" in results[0].message
