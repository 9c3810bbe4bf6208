"""The exporter in the router's namespace under hostile clients, and with
authentication: stalled TLS clients beside curl scrapes, more of them than
the connection bound, the sockets given back at the deadline; a real
Prometheus scraping through client certificates and basic auth (the job of
deploy/prometheus/prometheus.yml); curl refused without credentials."""

import os
import socket
import ssl
import threading
import time

import pytest

import webpki
from deploy_examples import example_job
from helpers import XDPFWD, inside, run
from helpers import start_in_router, started, stop
from test_exporter import start_prometheus, wait_for
from xdpfwd.exporter import server

PORT = 10424


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return webpki.make(tmp_path_factory.mktemp("pki"))


def sockets_of(pid: int) -> int:
    return sum(1 for fd in os.listdir(f"/proc/{pid}/fd")
               if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))


def curl(url, *extra, timeout=10):
    start = time.monotonic()
    proc = run(["curl", "-sS", "-o", "-", "-w", "\\n%{http_code}", "--max-time", str(timeout),
                *extra, url], timeout=timeout + 5)
    body, _, code = proc.stdout.rpartition("\n")
    return proc.returncode, int(code or 0), body, time.monotonic() - start


class Stalled:
    """Clients in the router's namespace that connect and stall: silent,
    half a ClientHello, a handshake then half a request line, and one that
    dribbles its request line a byte every half second."""

    def __init__(self, pki, port=PORT):
        self.socks, self.stop = [], threading.Event()
        self.addr, self.pki = ("127.0.0.1", port), pki
        self.dribbler = None

    def _ctx(self):
        return ssl.create_default_context(cafile=self.pki.path("ca.pem"))

    def _hello(self) -> bytes:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self._ctx().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return outgoing.read()

    def four(self) -> "Stalled":
        with inside("router"):
            self.socks.append(socket.create_connection(self.addr))
            half = socket.create_connection(self.addr)
            half.sendall(self._hello()[:60])
            self.socks.append(half)
            # A server that blocks in a handshake fails these, not hangs them.
            t = self._ctx().wrap_socket(socket.create_connection(self.addr, timeout=3),
                                        server_hostname="127.0.0.1")
            t.sendall(b"GET /metr")
            self.socks.append(t)
            slow = self._ctx().wrap_socket(socket.create_connection(self.addr, timeout=3),
                                           server_hostname="127.0.0.1")
        self.socks.append(slow)

        def dribble():
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n":
                if self.stop.wait(0.5):
                    return
                try:
                    slow.send(bytes([byte]))
                except OSError:
                    return

        self.dribbler = threading.Thread(target=dribble, daemon=True)
        self.dribbler.start()
        return self

    def silent(self, count: int) -> "Stalled":
        with inside("router"):
            for _ in range(count):
                self.socks.append(socket.create_connection(self.addr))
        return self

    def close(self):
        self.stop.set()
        if self.dribbler:
            self.dribbler.join()
        for s in self.socks:
            s.close()


@pytest.fixture
def tls_exporter(lab, pki):
    with started([XDPFWD, "exporter", "--listen", f"127.0.0.1:{PORT}", "--tls-cert",
                  pki.path("server.pem"), "--tls-key", pki.path("server.key")], "serving https") as proc:
        yield proc


def test_four_stalled_tls_clients_do_not_delay_scrapes(tls_exporter, pki):
    url = f"https://127.0.0.1:{PORT}/metrics"
    baseline = sockets_of(tls_exporter.pid)
    stalled = Stalled(pki).four()
    try:
        time.sleep(0.3)
        assert sockets_of(tls_exporter.pid) == baseline + 4
        for i in range(5):
            rc, code, body, seconds = curl(url, "--cacert", pki.path("ca.pem"))
            print(f"scrape {i + 1} beside 4 stalled TLS clients: {seconds * 1000:.0f} ms")
            assert rc == 0 and code == 200 and "xdpfwd_up" in body
            assert seconds < 2.0
    finally:
        stalled.close()


def test_more_stalled_clients_than_the_bound(tls_exporter, pki):
    url = f"https://127.0.0.1:{PORT}/metrics"
    pid = tls_exporter.pid
    baseline = sockets_of(pid)
    stalled = Stalled(pki).four().silent(server.MAX_CONNECTIONS + 16)
    try:
        time.sleep(0.3)
        assert sockets_of(pid) <= baseline + server.MAX_CONNECTIONS
        for _ in range(5):
            rc, code, _, seconds = curl(url, "--cacert", pki.path("ca.pem"))
            assert rc == 0 and code == 200 and seconds < 2.0
        # Every stalled connection is closed by its deadline.
        deadline = time.monotonic() + server.DEADLINE + 3
        while sockets_of(pid) > baseline and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sockets_of(pid) == baseline
    finally:
        stalled.close()


# -- authentication --------------------------------------------------------------


@pytest.fixture
def web_exporter(lab, pki, tmp_path):
    """The exporter with the deploy example's policy: a client certificate
    from our CA and the password."""
    path = webpki.web_config(pki, tmp_path / "web.yml", client_auth_type="RequireAndVerifyClientCert",
                             client_ca_file=pki.path("ca.pem"),
                             users={"prometheus": webpki.bcrypt_hash()})
    with started([XDPFWD, "exporter", "--listen", f"127.0.0.1:{PORT}",
                  "--web.config.file", str(path)], "serving https") as proc:
        yield proc


def test_curl_is_refused_without_credentials(web_exporter, pki):
    url = f"https://127.0.0.1:{PORT}/metrics"
    ca = ["--cacert", pki.path("ca.pem")]
    ours = ["--cert", pki.path("client.pem"), "--key", pki.path("client.key")]
    stranger = ["--cert", pki.path("stranger.pem"), "--key", pki.path("stranger.key")]
    password = ["--user", f"prometheus:{webpki.PASSWORD}"]
    for name, args, refusal in (
            ("no certificate", ca + password, "tls"),
            ("another CA's certificate", ca + stranger + password, "tls"),
            ("no password", ca + ours, 401),
            ("a wrong password", ca + ours + ["--user", "prometheus:guess"], 401),
            ("an unknown user", ca + ours + ["--user", f"root:{webpki.PASSWORD}"], 401)):
        rc, code, body, _ = curl(url, *args)
        print(f"{name}: curl exit {rc}, HTTP {code}")
        assert "xdpfwd_" not in body, f"{name}: counters shown"
        if refusal == "tls":
            assert rc != 0 and code == 0, f"{name}: the handshake must fail"
        else:
            assert rc == 0 and code == 401, f"{name}: expected 401"
    rc, code, body, _ = curl(url, *ca, *ours, *password)
    assert rc == 0 and code == 200 and "xdpfwd_up" in body


@pytest.mark.parametrize("policy", ["certificate", "password", "deploy example (both)"])
def test_prometheus_scrapes_through_authentication(lab, pki, tmp_path, policy):
    password_file = tmp_path / "password"
    password_file.write_text(webpki.PASSWORD)
    tls = {}
    users = None
    if policy != "password":
        tls = {"client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": pki.path("ca.pem")}
    if policy != "certificate":
        users = {"prometheus": webpki.bcrypt_hash()}
    web = webpki.web_config(pki, tmp_path / "web.yml", users=users, **tls)
    target = f"127.0.0.1:{PORT}"
    if policy.startswith("deploy"):
        job = example_job("mTLS and basic auth example", {
            "/etc/prometheus/xdpfwd/ca.pem": pki.path("ca.pem"),
            "/etc/prometheus/xdpfwd/prometheus.pem": pki.path("client.pem"),
            "/etc/prometheus/xdpfwd/prometheus.key": pki.path("client.key"),
            "/etc/prometheus/xdpfwd/password": str(password_file),
            "router:10420": target})
    else:
        job = (f"  - job_name: xdpfwd\n    scheme: https\n    tls_config:\n"
               f"      ca_file: {pki.path('ca.pem')}\n")
        if policy == "certificate":
            job += f"      cert_file: {pki.path('client.pem')}\n      key_file: {pki.path('client.key')}\n"
        else:
            job += f"    basic_auth:\n      username: prometheus\n      password_file: {password_file}\n"
        job += f"    static_configs:\n      - targets: ['{target}']"
    exporter = start_in_router([XDPFWD, "exporter", "--listen", target, "--web.config.file", str(web)],
                               "serving https")
    prom = start_prometheus(tmp_path, job)
    try:
        wait_for('up{job="xdpfwd"}', lambda v: v == 1)
        assert wait_for('xdpfwd_up{job="xdpfwd"}', lambda v: True) == 0
        # The same exporter, scraped without what the policy asks: refused.
        rc, code, body, _ = curl(f"https://{target}/metrics", "--cacert", pki.path("ca.pem"))
        assert "xdpfwd_" not in body and (rc != 0 or code == 401)
    finally:
        stop(prom)
        assert stop(exporter) == 0
