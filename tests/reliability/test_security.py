"""What xdpfwd exposes and who may act: root only, root-only files,
the exporter on loopback with counters and nothing else."""

import os
import stat

from helpers import XDPFWD, run, start_in_router, stop, xdpfwd


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_xdpfwd_writes_are_root_only(lab):
    xdpfwd("detach")
    assert xdpfwd("attach", "eth1", "eth0", "--mode", "afpacket").returncode == 0
    try:
        assert mode_of("/run/xdpfwd") == 0o700
        # the router namespace's own directory, named after its inode
        path = f"/run/xdpfwd/netns-{os.stat('/run/netns/' + lab.ns('router')).st_ino}"
        assert mode_of(path) == 0o700
        assert sorted(os.listdir(path)) == ["afpacket.counters", "afpacket.json", "afpacket.log",
                                            "lock"]
        for name in os.listdir(path):
            assert mode_of(os.path.join(path, name)) == 0o600, name
            assert os.stat(os.path.join(path, name)).st_uid == 0
    finally:
        xdpfwd("detach")


def test_exporter_binds_loopback_and_serves_only_metrics(lab):
    proc = start_in_router([XDPFWD, "exporter"], "127.0.0.1:10420")
    try:
        listening = run(["ss", "-ltnH"]).stdout.split("\n")
        local = [line.split()[3] for line in listening if line.strip()]
        assert local == ["127.0.0.1:10420"], local
        body = run(["curl", "-sS", "--fail", "http://127.0.0.1:10420/metrics"]).stdout
        names = {line.split("{")[0].split()[0] for line in body.splitlines()
                 if line and not line.startswith("#")}
        assert names and all(n.startswith(("xdpfwd_", "process_")) for n in names), names
    finally:
        assert stop(proc) == 0
