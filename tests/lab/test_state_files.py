"""Bad AF_PACKET state files planted in the router's namespace directory
(/run/xdpfwd/netns-INODE/afpacket.json): every command that reads it
refuses with one line and acts on nothing in it; detach removes it without
writing any sysctl it lists; the directory is made 0700 again."""

import json
import os
from pathlib import Path

import pytest

from helpers import assert_one_line, xdpfwd
from xdpfwd import lab as labmod
from xdpfwd import netns
from xdpfwd.afpacket import state

GOOD = {"pid": 999999, "ports": {"eth1": 2, "eth0": 3}, "workers": 1,
        "sysctls": {"/proc/sys/net/ipv4/conf/eth1/forwarding": "1"}, "started": 0.0, "pid_start": 0}


def router_dir():
    ino = os.stat(os.path.join("/run/netns", labmod.ns("router"))).st_ino
    return netns.RUN_DIR / f"netns-{ino}"


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary"
    path.write_text("untouched\n")
    return path


def plants(canary):
    """name -> function that plants the file at path."""
    def text(content, mode=0o600):
        def plant(path):
            path.write_text(content)
            path.chmod(mode)
        return plant

    def doc(**changes):
        return text(json.dumps({**GOOD, **changes}))

    def symlink(path):
        target = canary.with_name("elsewhere.json")
        target.write_text(json.dumps(GOOD))
        path.symlink_to(target)

    def foreign_owner(path):
        text(json.dumps(GOOD))(path)
        os.chown(path, 65534, 65534)

    return {
        "not JSON": text("{\"pid\": "),
        "not an object": text("[1, 2]"),
        "empty": text(""),
        "binary": text("\x00\xff\x00"),
        "a field missing": text(json.dumps({k: v for k, v in GOOD.items() if k != "ports"})),
        "an unknown field": doc(command="rm -rf /"),
        "ports not a mapping": doc(ports=["eth1", "eth0"]),
        "an impossible interface name": doc(ports={"../../etc": 2}),
        "pid 0": doc(pid=0),
        "pid a string": doc(pid="1"),
        "workers negative": doc(workers=-1),
        "a sysctl outside /proc/sys/net": doc(sysctls={str(canary): "pwned"}),
        "a sysctl that climbs out": doc(sysctls={f"/proc/sys/net/../../..{canary}": "pwned"}),
        "a sysctl through /proc/self/root": doc(sysctls={f"/proc/sys/net/../../self/root{canary}": "pwned"}),
        "a sysctl value with a newline": doc(sysctls={"/proc/sys/net/ipv4/ip_forward": "1\n0"}),
        "a symbolic link": symlink,
        "writable by others": text(json.dumps(GOOD), 0o666),
        "another owner": foreign_owner,
    }


CASES = list(plants(Path("/nonexistent")))


@pytest.mark.parametrize("case", CASES)
def test_planted_state_file(lab, canary, case):
    xdpfwd("detach")
    d = router_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / "afpacket.json"
    plants(canary)[case](path)
    try:
        # Every command that reads it says the same; each costs a CLI start,
        # so the whole set for one case.
        commands = [["status"]]
        if case == "a sysctl that climbs out":
            commands += [["stats"], ["status", "--json"], ["attach", "eth1", "eth0", "--mode", "afpacket"]]
        for args in commands:
            err = assert_one_line(xdpfwd(*args), 1)
            assert str(path) in err and "'xdpfwd detach' removes it" in err, err
            assert os.path.lexists(path), "left for detach"
        proc = xdpfwd("detach")
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and f"removed {path}" in proc.stderr
        assert not os.path.lexists(path)
        assert canary.read_text() == "untouched\n"
    finally:
        if os.path.lexists(path):
            path.unlink()


def test_a_short_counters_file_is_one_line(lab):
    xdpfwd("detach")
    d = router_dir()
    d.mkdir(parents=True, exist_ok=True)
    # A live-looking record (this very test process) whose counters are cut short.
    me = {**GOOD, "pid": os.getpid(), "pid_start": state.start_time(os.getpid()), "sysctls": {}}
    (d / "afpacket.json").write_text(json.dumps(me))
    (d / "afpacket.json").chmod(0o600)
    (d / "afpacket.counters").write_bytes(b"\0" * 8)
    try:
        err = assert_one_line(xdpfwd("stats"), 1)
        assert "afpacket.counters" in err
    finally:
        for name in ("afpacket.json", "afpacket.counters"):
            (d / name).unlink(missing_ok=True)


def test_namespace_directory_made_private_again(lab):
    d = router_dir()
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)
    netns.RUN_DIR.chmod(0o755)
    assert xdpfwd("detach").returncode == 0
    assert d.stat().st_mode & 0o777 == 0o700
    assert netns.RUN_DIR.stat().st_mode & 0o777 == 0o700


def test_a_well_formed_record_is_still_cleaned_up(lab):
    # No false refusal: a dead forwarder's record, as the forwarder writes
    # it, is repaired by detach (its network sysctls restored) as before.
    xdpfwd("detach")
    d = router_dir()
    d.mkdir(parents=True, exist_ok=True)
    (d / "afpacket.json").write_text(json.dumps(GOOD))
    (d / "afpacket.json").chmod(0o600)
    assert xdpfwd("status").returncode == 0
    proc = xdpfwd("detach")
    assert proc.returncode == 0 and "removed" not in proc.stderr, proc.stderr
    assert not (d / "afpacket.json").exists()
