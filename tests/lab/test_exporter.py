"""The exporter with real parts: the lab forwarding, the exporter in the
router's namespace, curl, and a real Prometheus server scraping it."""

import json
import subprocess
import time
import urllib.parse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import XDPFWD, run, start_in_router, started, stop, xdpfwd
from xdpfwd import lab
from xdpfwd import traffic

LISTEN = "127.0.0.1:10420"


def scrape(url=f"http://{LISTEN}/metrics", extra=()):
    proc = run(["curl", "-sS", "--fail", *extra, url])
    assert proc.returncode == 0, proc.stderr
    samples = {}
    for family in text_string_to_metric_families(proc.stdout):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def exporter(lab):
    xdpfwd("detach")
    with started([XDPFWD, "exporter", "--listen", LISTEN], "serving") as proc:
        yield proc
    xdpfwd("detach")


def warm_up():
    # Neighbours resolved, so every counted datagram is forwarded.
    traffic.send_udp(3, family=4)


def test_nothing_attached_answers_up_0(exporter):
    samples = scrape()
    assert value(samples, "xdpfwd_up") == 0
    assert value(samples, "xdpfwd_exporter_build_info", version=__import__("xdpfwd").__version__) == 1


@pytest.mark.parametrize("mode", ["native", "afpacket"])
def test_counters_match_what_was_sent(exporter, mode):
    assert xdpfwd("attach", "eth1", "eth0", "--mode", mode).returncode == 0
    warm_up()
    time.sleep(0.3)
    before = scrape()
    assert value(before, "xdpfwd_up") == 1
    assert any(k[0] == "xdpfwd_device_info" and ("mode", mode) in k[1] for k in before)
    count = 400
    delivery = traffic.send_udp(count, family=4, timeout=3)
    assert delivery.exactly_once
    time.sleep(0.3)  # afpacket workers publish after each batch
    after = scrape()
    for name, device in (("xdpfwd_forwarded_packets_total", "eth1"),
                         ("xdpfwd_transmit_packets_total", "eth0")):
        assert value(after, name, device=device) - value(before, name, device=device) == count


def test_counters_continue_across_exporter_restarts(lab):
    xdpfwd("detach")
    assert xdpfwd("attach", "eth1", "eth0").returncode == 0
    try:
        warm_up()
        first = start_in_router([XDPFWD, "exporter", "--listen", LISTEN], "serving")
        traffic.send_udp(100, family=4)
        seen = value(scrape(), "xdpfwd_forwarded_packets_total", device="eth1")
        assert stop(first) == 0
        traffic.send_udp(100, family=4)
        second = start_in_router([XDPFWD, "exporter", "--listen", LISTEN], "serving")
        try:
            again = value(scrape(), "xdpfwd_forwarded_packets_total", device="eth1")
        finally:
            stop(second)
        assert again == seen + 100, "the kernel's counters, not the exporter's, are the source"
    finally:
        xdpfwd("detach")


def test_tls(lab, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    proc = start_in_router([XDPFWD, "exporter", "--listen", "127.0.0.1:10422",
                            "--tls-cert", str(cert), "--tls-key", str(key)], "serving https")
    try:
        samples = scrape("https://127.0.0.1:10422/metrics", extra=["--cacert", str(cert)])
        assert value(samples, "xdpfwd_up") is not None
        plain = run(["curl", "-sS", "--fail", "http://127.0.0.1:10422/metrics"])
        assert plain.returncode != 0, "plain HTTP must not be served on the TLS port"
    finally:
        assert stop(proc) == 0


def test_run_serves_metrics_while_forwarding(lab):
    xdpfwd("detach")
    proc = start_in_router([XDPFWD, "run", "eth1", "eth0", "--metrics", "127.0.0.1:10423"],
                           "serving http")
    try:
        samples = scrape("http://127.0.0.1:10423/metrics")
        assert value(samples, "xdpfwd_up") == 1
    finally:
        assert stop(proc) == 0
    assert not json.loads(xdpfwd("status", "--json").stdout)["interfaces"]["eth1"]["attached"]


def start_prometheus(tmp_path, job: str) -> subprocess.Popen:
    """A real Prometheus server in the router's namespace, scraping with
    `job` (one scrape_configs entry, YAML) every second."""
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                      f"scrape_configs:\n{job}\n")
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("router"), "prometheus", f"--config.file={config}",
         f"--storage.tsdb.path={tmp_path / 'data'}", "--web.listen-address=127.0.0.1:19090"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def prometheus(lab, tmp_path):
    proc = start_prometheus(tmp_path, "  - job_name: xdpfwd\n    static_configs:\n"
                                      f"      - targets: ['{LISTEN}']")
    try:
        yield proc
    finally:
        stop(proc)


def query(expr: str):
    url = "http://127.0.0.1:19090/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    proc = run(["curl", "-sS", "--fail", url])
    if proc.returncode != 0:
        return None
    result = json.loads(proc.stdout)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for(expr: str, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = query(expr)
        if got is not None and predicate(got):
            return got
        time.sleep(0.5)
    raise AssertionError(f"{expr}: last value {got}")


def settled(expr: str, timeout: float = 30.0) -> float:
    """The value once two queries two scrapes apart agree: nothing in flight."""
    deadline = time.monotonic() + timeout
    prev = wait_for(expr, lambda v: True)
    while time.monotonic() < deadline:
        time.sleep(2)
        cur = query(expr)
        if cur == prev:
            return cur
        prev = cur
    raise AssertionError(f"{expr} did not settle")


def test_prometheus_sees_the_forwarded_packets(exporter, prometheus):
    assert xdpfwd("attach", "eth1", "eth0").returncode == 0
    warm_up()
    wait_for('up{job="xdpfwd"}', lambda v: v == 1)
    expr = 'xdpfwd_forwarded_packets_total{job="xdpfwd",device="eth1"}'
    start = settled(expr)
    count = 1000
    delivery = traffic.send_udp(count, family=4, timeout=3)
    assert delivery.exactly_once
    wait_for(expr, lambda v: v >= start + count)
    assert settled(expr) - start == count
    assert query('xdpfwd_up{job="xdpfwd"}') == 1
