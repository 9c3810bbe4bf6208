"""`status`, `stats` and the exporter's scrapes read the kernel without the
compiler (bcc: seconds and ~190 MB) and without pyroute2: in real
processes, with xdpfwd attached in each datapath, nothing imports them.
A sitecustomize on PYTHONPATH notes every import of the three."""

import sys

import pytest

from helpers import XDPFWD, attached, import_tripwire, run, started, xdpfwd

HEAVY = ("bcc", "pyroute2", "xdpfwd.compiler")
LISTEN = "127.0.0.1:10428"


@pytest.fixture(params=["native", "afpacket"])
def forwarding(request, lab):
    xdpfwd("detach")
    with attached(request.param) as mode:
        yield mode


def test_the_tripwire_sees_an_import(tmp_path, lab):
    env, log = import_tripwire(tmp_path, HEAVY)
    proc = run([sys.executable, "-c", "import xdpfwd.compiler"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().split() == ["xdpfwd.compiler"]


def test_status_stats_and_a_scrape_import_no_compiler_nor_pyroute2(tmp_path, forwarding):
    env, log = import_tripwire(tmp_path, HEAVY)
    for args in (["status"], ["stats"], ["stats", "--json"]):
        proc = xdpfwd(*args, env=env)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "eth1" in proc.stdout
        assert log.read_text() == "", f"xdpfwd {' '.join(args)} imported {log.read_text().split()}"
    with started([XDPFWD, "exporter", "--listen", LISTEN], "serving", env=env):
        body = run(["curl", "-sS", "--fail", f"http://{LISTEN}/metrics"], check=True).stdout
        assert f'xdpfwd_device_info{{device="eth1",mode="{forwarding}"' in body
        assert 'xdpfwd_receive_packets_total{device="eth1"}' in body
    assert log.read_text() == "", f"a scrape imported {log.read_text().split()}"
