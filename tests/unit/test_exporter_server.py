"""The exporter's HTTP(S) server on loopback, in this process: stalled
clients beside scrapes, the connection bound and deadline, the five client
certificate policies, basic auth and its cache, certificates re-read
without a restart, malformed requests.

Real sockets, real TLS (pyOpenSSL on the server, Python's ssl module as
the client); only the data source is a fixture (an empty Snapshot: the
server's behaviour does not depend on the counters).
"""

import base64
import os
import socket
import ssl
import time

import pytest

import webpki
from xdpfwd.exporter import auth, server, webconfig
from helpers import snapshot_of


class EmptyReader:
    def read(self):
        return snapshot_of()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return webpki.make(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def serve(tmp_path):
    """serve(web config path or None, **server options) -> a running Server."""
    started = []

    def start(path=None, certfile=None, keyfile=None, **options):
        sock = socket.create_server(("127.0.0.1", 0))
        source = webconfig.Source(str(path) if path else None, certfile, keyfile)
        s = server.Server(sock, source, server.registry(EmptyReader()), **options).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.shutdown()


def client_context(pki, cert=None, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
    if cert:
        ctx.load_cert_chain(pki.path(f"{cert}.pem"), pki.path(f"{cert}.key"))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def get(srv, path="/metrics", tls=None, user=None, password=None, method="GET",
        raw=None, timeout=3.0):
    """(status or None when the connection failed, headers+body bytes, seconds)."""
    start = time.monotonic()
    sock = socket.create_connection(srv.address, timeout=timeout)
    try:
        if tls:
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        request = raw or (f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                          + (f"Authorization: Basic {base64.b64encode(f'{user}:{password}'.encode()).decode()}\r\n"
                             if user is not None else "") + "\r\n").encode()
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ssl.SSLError, OSError):
        return None, b"", time.monotonic() - start
    finally:
        sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, data, time.monotonic() - start


def client_hello(pki) -> bytes:
    ctx = client_context(pki)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def stallers(srv, pki=None, count=1):
    """Clients that connect and then stall: silent; half a ClientHello (TLS)
    or half a request line; a finished handshake, then half a request line."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(srv.address)
        socks.append(s)
        p = socket.create_connection(srv.address)
        p.sendall(client_hello(pki)[:40] if pki else b"GET /metr")
        socks.append(p)
        if pki:
            # A server that blocks in a handshake fails this, not hangs it.
            t = client_context(pki).wrap_socket(socket.create_connection(srv.address, timeout=3),
                                                server_hostname="127.0.0.1")
            t.sendall(b"GET /metrics HT")
            socks.append(t)
    return socks


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- no client stalls the others ---------------------------------------------


@pytest.mark.parametrize("use_tls", [True, False], ids=["https", "http"])
def test_stalled_clients_do_not_delay_scrapes(serve, pki, tmp_path, use_tls):
    path = webpki.web_config(pki, tmp_path / "web.yml") if use_tls else None
    srv = serve(path)
    tls = client_context(pki) if use_tls else None
    socks = stallers(srv, pki if use_tls else None, count=2)
    try:
        assert wait_until(lambda: srv.connections == len(socks))
        for _ in range(5):
            status, body, seconds = get(srv, tls=tls)
            assert status == 200 and b"xdpfwd_up 0.0" in body
            assert seconds < 1.0, f"a scrape took {seconds:.2f} s beside {len(socks)} stalled clients"
    finally:
        for s in socks:
            s.close()


def test_more_stalled_clients_than_the_bound(serve, pki, tmp_path):
    srv = serve(webpki.web_config(pki, tmp_path / "web.yml"), max_connections=8, deadline=1.5)
    tls = client_context(pki)
    socks = stallers(srv, pki, count=6)  # 18 stalled, bound 8
    try:
        assert wait_until(lambda: srv.connections == 8)
        for _ in range(5):
            status, _, seconds = get(srv, tls=tls)
            assert status == 200 and seconds < 1.0
            assert srv.connections <= 8
        # The deadline closes what is left: back to no connection at all.
        assert wait_until(lambda: srv.connections == 0, timeout=3.0)
        assert get(srv, tls=tls)[0] == 200
    finally:
        for s in socks:
            s.close()


def test_a_client_that_does_not_read_is_cut_at_the_deadline(serve):
    srv = serve(deadline=1.0)
    s = socket.create_connection(srv.address)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    # Many requests' worth of headers but never reading the answer.
    s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    try:
        assert wait_until(lambda: srv.connections == 0, timeout=3.0)
        assert get(srv)[0] == 200
    finally:
        s.close()


# -- client certificates: exporter-toolkit's five policies -------------------

# client_auth_type -> which clients get an answer: (none, stranger's CA, our CA)
POLICIES = {
    "NoClientCert": (True, True, True),
    "RequestClientCert": (True, True, True),
    "RequireAnyClientCert": (False, True, True),
    "VerifyClientCertIfGiven": (True, False, True),
    "RequireAndVerifyClientCert": (False, False, True),
}


@pytest.mark.parametrize("policy", POLICIES)
def test_client_auth_type(serve, pki, tmp_path, policy):
    extra = {"client_auth_type": policy}
    if "Verify" in policy:
        extra["client_ca_file"] = pki.path("ca.pem")
    srv = serve(webpki.web_config(pki, tmp_path / "web.yml", **extra))
    got = tuple(get(srv, tls=client_context(pki, cert))[0] == 200
                for cert in (None, "stranger", "client"))
    assert got == POLICIES[policy]


def test_client_allowed_sans(serve, pki, tmp_path):
    srv = serve(webpki.web_config(pki, tmp_path / "web.yml", client_auth_type="RequireAnyClientCert",
                                  client_allowed_sans=["prometheus.test"]))
    assert get(srv, tls=client_context(pki, "client"))[0] == 200
    assert get(srv, tls=client_context(pki, "stranger"))[0] is None


def test_min_version(serve, pki, tmp_path):
    srv = serve(webpki.web_config(pki, tmp_path / "web.yml", min_version="TLS13"))
    assert get(srv, tls=client_context(pki))[0] == 200
    old = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert get(srv, tls=old)[0] is None


def test_plain_http_is_not_served_on_the_tls_port(serve, pki, tmp_path):
    srv = serve(webpki.web_config(pki, tmp_path / "web.yml"))
    status, body, seconds = get(srv)
    assert status is None and b"xdpfwd_" not in body and seconds < 1.0


# -- basic auth ----------------------------------------------------------------


def test_basic_auth(serve, pki, tmp_path):
    srv = serve(webpki.web_config(pki, tmp_path / "web.yml", users={"prom": webpki.bcrypt_hash()},
                                  tls=False))
    for user, password in ((None, None), ("prom", "wrong"), ("nobody", webpki.PASSWORD),
                           ("prom", ""), ("prom", "x" * 100)):
        status, body, _ = get(srv, user=user, password=password)
        assert status == 401, (user, password)
        assert b"WWW-Authenticate: Basic" in body and b"xdpfwd_" not in body
    assert get(srv, user="prom", password=webpki.PASSWORD)[0] == 200
    garbled = b"GET /metrics HTTP/1.1\r\nAuthorization: Basic !!!\r\n\r\n"
    assert get(srv, raw=garbled)[0] == 401


def test_verified_passwords_are_cached(serve, pki, tmp_path, monkeypatch):
    calls = []
    real = auth._check
    monkeypatch.setattr(auth, "_check", lambda p, h: calls.append(p) or real(p, h))
    srv = serve(webpki.web_config(pki, tmp_path / "web.yml", users={"prom": webpki.bcrypt_hash()},
                                  tls=False))
    for _ in range(20):
        assert get(srv, user="prom", password=webpki.PASSWORD)[0] == 200
    for _ in range(5):
        assert get(srv, user="prom", password="guess")[0] == 401
    assert len(calls) == 2, "one bcrypt per (user, password), not one per scrape"


def test_scrapers_arriving_together_share_one_bcrypt(serve, pki, tmp_path, monkeypatch):
    calls = []
    real = auth._check
    monkeypatch.setattr(auth, "_check", lambda p, h: calls.append(p) or real(p, h))
    srv = serve(webpki.web_config(pki, tmp_path / "web.yml", users={"prom": webpki.bcrypt_hash()},
                                  tls=False))
    creds = base64.b64encode(f"prom:{webpki.PASSWORD}".encode()).decode()
    socks = [socket.create_connection(srv.address) for _ in range(20)]
    for s in socks:
        s.sendall(f"GET /metrics HTTP/1.1\r\nAuthorization: Basic {creds}\r\n\r\n".encode())
    for s in socks:
        s.settimeout(5)
        assert s.recv(12) == b"HTTP/1.1 200"
        s.close()
    assert len(calls) == 1


def test_closed_connections_leave_no_bcrypt_queue(serve, pki, tmp_path, monkeypatch):
    calls = []
    real = auth._check
    monkeypatch.setattr(auth, "_check", lambda p, h: calls.append(p) or real(p, h))
    srv = serve(webpki.web_config(pki, tmp_path / "web.yml", users={"prom": webpki.bcrypt_hash()},
                                  tls=False), max_connections=4)
    # Distinct wrong passwords from connections that are then pushed out
    # by newer ones: the evicted ones' checks are dropped, not run.
    socks = []
    for i in range(40):
        s = socket.create_connection(srv.address)
        creds = base64.b64encode(f"prom:guess{i}".encode()).decode()
        s.sendall(f"GET /metrics HTTP/1.1\r\nAuthorization: Basic {creds}\r\n\r\n".encode())
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        s.close()
    assert wait_until(lambda: srv.connections == 0)
    assert len(calls) < 15, f"{len(calls)} bcrypt runs for 40 connections, at most 4 open at once"


def test_bcrypt_does_not_hold_up_other_scrapes(serve, pki, tmp_path):
    # Cost 14: about a second per comparison here; an open scrape must not
    # wait for it.
    srv = serve(webpki.web_config(pki, tmp_path / "web.yml",
                                  users={"slow": webpki.bcrypt_hash(cost=14)}, tls=False))
    slow = socket.create_connection(srv.address)
    creds = base64.b64encode(b"slow:guess").decode()
    slow.sendall(f"GET /metrics HTTP/1.1\r\nAuthorization: Basic {creds}\r\n\r\n".encode())
    try:
        time.sleep(0.1)
        status, _, seconds = get(srv)  # no credentials: no bcrypt to wait for
        assert status == 401 and seconds < 0.5
    finally:
        slow.close()


# -- certificates and users re-read without a restart --------------------------


def _peer_cert(srv, pki):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(srv.address), server_hostname="127.0.0.1") as s:
        return s.getpeercert(binary_form=True)


def test_certificates_are_reread_without_a_restart(serve, pki, tmp_path, capfd):
    other = webpki.make(tmp_path / "other")
    d = tmp_path / "live"
    d.mkdir()
    for name in ("server.pem", "server.key"):
        (d / name).write_bytes((pki.dir / name).read_bytes())
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: live/server.pem\n  key_file: live/server.key\n")
    srv = serve(web)
    first = _peer_cert(srv, pki)
    assert first == (pki.dir / "server.pem").read_bytes() or first  # served
    # Replace certificate and key (a renewal): the next connection sees it.
    for name in ("server.pem", "server.key"):
        tmp = d / f".{name}"
        tmp.write_bytes((other.dir / name).read_bytes())
        os.replace(tmp, d / name)
    assert get(srv, tls=client_context(other))[0] == 200
    assert get(srv, tls=client_context(pki))[0] is None
    # A broken edit keeps the last good configuration, and says so once.
    web.write_text("tls_server_config:\n  cert_file: live/server.pem\n  client_auth_type: Maybe\n")
    assert get(srv, tls=client_context(other))[0] == 200
    assert get(srv, tls=client_context(other))[0] == 200
    err = capfd.readouterr().err
    assert err.count("keeping the previous web configuration") == 1
    assert "tls_server_config.key_file" in err or "client_auth_type" in err


def test_users_are_reread_without_a_restart(serve, pki, tmp_path):
    web = webpki.web_config(pki, tmp_path / "web.yml", users={"a": webpki.bcrypt_hash()}, tls=False)
    srv = serve(web)
    assert get(srv, user="a", password=webpki.PASSWORD)[0] == 200
    time.sleep(0.01)  # a new mtime even on coarse clocks
    webpki.web_config(pki, web, users={"b": webpki.bcrypt_hash()}, tls=False)
    assert get(srv, user="a", password=webpki.PASSWORD)[0] == 401
    assert get(srv, user="b", password=webpki.PASSWORD)[0] == 200


def test_tls_shorthand_options(serve, pki):
    srv = serve(certfile=pki.path("server.pem"), keyfile=pki.path("server.key"))
    assert get(srv, tls=client_context(pki))[0] == 200


# -- requests -------------------------------------------------------------------


@pytest.mark.parametrize("raw, status", [
    (b"GET /metrics HTTP/1.1\r\n\r\n", 200),
    (b"GET /metrics?name[]=xdpfwd_up HTTP/1.0\r\n\r\n", 200),
    (b"GET / HTTP/1.1\r\n\r\n", 200),
    (b"GET /other HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GET /metrics\r\n\r\n", 400),
    (b"\x16\x03\x01\x00\x05hello\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
])
def test_requests(serve, raw, status):
    srv = serve()
    got, body, _ = get(srv, raw=raw)
    assert got == status
    assert (b"xdpfwd_up" in body) == (status == 200 and b"GET /metrics" in raw)


def test_head_and_gzip(serve):
    srv = serve()
    status, body, _ = get(srv, method="HEAD")
    assert status == 200 and body.endswith(b"\r\n\r\n") and b"Content-Length: " in body
    raw = b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n"
    status, body, _ = get(srv, raw=raw)
    import gzip

    assert status == 200 and b"Content-Encoding: gzip" in body
    assert b"xdpfwd_up" in gzip.decompress(body.split(b"\r\n\r\n", 1)[1])


def test_a_failing_collector_answers_500_and_the_server_goes_on(serve, monkeypatch, capfd):
    srv = serve()

    def broken(registry):
        raise RuntimeError("injected")

    monkeypatch.setattr(server, "choose_encoder", lambda accept: (broken, "text/plain"))
    assert get(srv)[0] == 500
    monkeypatch.undo()
    assert get(srv)[0] == 200
    assert "internal error while serving a connection: RuntimeError: injected" in capfd.readouterr().err
