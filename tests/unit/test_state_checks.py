"""The AF_PACKET state file's checks, as pure logic: validate() on bytes,
sysctl.checked() on paths, and sysctl.restore() refusing to write outside
/proc/sys/net/ (a file of this test stands in for the target)."""

import json
from pathlib import Path

import pytest

from xdpfwd import sysctl
from xdpfwd.afpacket import state

GOOD = {"pid": 4242, "ports": {"eth1": 2, "eth0": 3}, "workers": 2,
        "sysctls": {"/proc/sys/net/ipv4/conf/eth1/forwarding": "1",
                    "/proc/sys/net/ipv6/conf/all/forwarding": "0"},
        "pid_start": 77}


def test_what_the_forwarder_writes_is_accepted():
    st = state.validate(json.dumps(GOOD).encode(), Path("x"))
    assert st.ports == GOOD["ports"] and st.sysctls == GOOD["sysctls"]
    # ... and a State saved by this version reads back as itself.
    again = state.validate(json.dumps(state.asdict(st)).encode(), Path("x"))
    assert again == st


def test_a_field_of_an_earlier_version_is_ignored():
    # A forwarder started before an upgrade must still be found and stopped.
    old = {**GOOD, "started": 1.5}
    assert state.validate(json.dumps(old).encode(), Path("x")) == \
        state.validate(json.dumps(GOOD).encode(), Path("x"))


@pytest.mark.parametrize("change, reason", [
    ({"pid": True}, "'pid'"),
    ({"pid": 2**40}, "'pid'"),
    ({"ports": {}}, "'ports'"),
    ({"ports": {"eth0 ": 3}}, "'ports'"),
    ({"ports": {"a" * 16: 3}}, "'ports'"),
    ({"ports": {"eth0": 0}}, "'ports'"),
    ({"workers": 0}, "'workers'"),
    ({"sysctls": {"/proc/sys/kernel/core_pattern": "|/bin/sh"}}, "outside /proc/sys/net/"),
    ({"sysctls": {"proc/sys/net/x": "1"}}, "not an absolute path"),
    ({"sysctls": {"/proc/sys/net/ipv4/ip_forward": 1}}, "'sysctls'"),
    ({"sysctls": {"/proc/sys/net/ipv4/ip_forward": "\x1b[2J"}}, "'sysctls'"),
    ({"extra": 1}, "unknown field 'extra'"),
])
def test_impossible_values_are_refused(change, reason):
    with pytest.raises(state.StateFileError, match=reason) as e:
        state.validate(json.dumps({**GOOD, **change}).encode(), Path("/run/xdpfwd/x/afpacket.json"))
    assert "\n" not in str(e.value) and str(e.value).startswith("/run/xdpfwd/x/afpacket.json: ")


@pytest.mark.parametrize("path, ok", [
    ("/proc/sys/net/ipv4/conf/eth1/forwarding", True),
    ("/proc/sys/net/ipv6/conf/all/forwarding", True),
    ("/proc/sys/net/ipv4/conf/gone0/forwarding", True),  # an interface that left
    ("/proc/sys/net/../kernel/core_pattern", False),
    ("/proc/sys/net/ipv4/../../../../etc/passwd", False),
    ("/proc/sys/net/../../self/root/etc/passwd", False),
    ("/proc/self/root/proc/sys/net/ipv4/ip_forward", True),  # leads there after all
    ("/etc/passwd", False),
    ("/proc/sys/netfilter/x", False),
])
def test_sysctl_path(path, ok):
    if ok:
        assert sysctl.checked(path).startswith("/proc/sys/net/")
    else:
        with pytest.raises(ValueError):
            sysctl.checked(path)


def test_restore_sysctls_writes_nothing_outside(tmp_path, capfd):
    target = tmp_path / "target"
    target.write_text("before\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    sysctl.restore({str(target): "after", f"/proc/sys/net/../../..{target}": "after",
                             str(link): "after"})
    assert target.read_text() == "before\n"
    err = capfd.readouterr().err
    assert err.count("not restoring a sysctl") == 3
