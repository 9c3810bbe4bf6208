"""A small load test of the exporter: 50 concurrent scrapers for 10 s on
the router's loopback, beside stalled clients, over plain HTTP and over
HTTPS with a client certificate policy and basic auth. Every scrape must
be answered and the exporter's peak RSS stay under the benchmark's goal;
the latency percentiles are printed, not asserted (2 shared CPUs)."""

import json
import sys
from pathlib import Path

import pytest

import webpki
from helpers import XDPFWD, run, xdpfwd
from helpers import start_in_router, stop
from test_exporter_hostile import Stalled

PORT = 10425
EXPORTER_RSS_GOAL_MB = 60  # the benchmark's goal (bench/report.py), the same number
CLIENTS, SECONDS = 50, 10
SCRAPERS = Path(__file__).with_name("scrapers.py")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.mark.parametrize("scheme", ["http", "https+auth"])
def test_fifty_scrapers_beside_stalled_clients(lab, tmp_path, scheme):
    pki = webpki.make(tmp_path / "pki")
    xdpfwd("detach")
    assert xdpfwd("attach", "eth1", "eth0").returncode == 0  # real counters to read
    args = [XDPFWD, "exporter", "--listen", f"127.0.0.1:{PORT}"]
    client = []
    if scheme != "http":
        web = webpki.web_config(pki, tmp_path / "web.yml", client_auth_type="VerifyClientCertIfGiven",
                                client_ca_file=pki.path("ca.pem"),
                                users={"prometheus": webpki.bcrypt_hash()})
        args += ["--web.config.file", str(web)]
        client = [pki.path("ca.pem"), "prometheus", webpki.PASSWORD]
    proc = start_in_router(args, "serving")
    stalled, failed = Stalled(pki, PORT), True
    try:
        if scheme == "http":
            stalled.silent(8)
        else:
            stalled.four().silent(4)
        url = f"{'https' if client else 'http'}://127.0.0.1:{PORT}/metrics"
        out = run([sys.executable, str(SCRAPERS), url, str(CLIENTS), str(SECONDS), *client],
                  timeout=SECONDS + 60)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        rss = peak_rss_mb(proc.pid)
        print(f"\n{scheme}: {CLIENTS} scrapers x {SECONDS} s beside {len(stalled.socks)} stalled "
              f"clients: {result['answered']} answered "
              f"({result['answered'] / SECONDS:.0f}/s), {result['failures']} failed, "
              f"p50 {result['p50'] * 1000:.1f} ms, p99 {result['p99'] * 1000:.1f} ms, "
              f"max {result['max'] * 1000:.1f} ms; exporter peak RSS {rss:.1f} MB")
        failed = result["failures"] != 0
        assert not failed, (result["failure_reasons"], sockets(PORT))
        assert result["answered"] >= CLIENTS
        assert rss < EXPORTER_RSS_GOAL_MB
    finally:
        stalled.close()
        status = stop(proc)
        if failed:  # what the exporter said, for a failure that is rare
            print("exporter stderr:", proc.stderr.read()[-2000:])
        assert status == 0
        xdpfwd("detach")


def sockets(port: int) -> dict:
    """How many of the router's TCP sockets on the port are in each
    state (a scrape that timed out: never accepted, or never answered?)."""
    out = run(["ss", "-Htan", f"( sport = :{port} or dport = :{port} )"]).stdout
    states: dict = {}
    for line in out.splitlines():
        states[line.split()[0]] = states.get(line.split()[0], 0) + 1
    return states
