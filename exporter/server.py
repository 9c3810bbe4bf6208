"""Serve /metrics over HTTP or HTTPS, to many clients, none of whom can
stall the others.

Loopback by default: the counters describe a router's traffic, and binding
to another address is the operator's explicit choice (--listen).

One thread runs an event loop (epoll) over non-blocking sockets: accept,
TLS handshake, reading the request, answering. prometheus_client's own
server wraps the listening socket in TLS, so a client that connected and
said nothing held up accept(), and every scrape behind it, indefinitely.
Here a handshake is just one more connection waiting for bytes, and:

- every connection has one deadline, DEADLINE seconds from accept to the
  last byte of the answer (handshake, request, authentication, response);
  past it the socket is closed;
- at most MAX_CONNECTIONS are open; one more closes the oldest that has
  not yet been answered (a stalled client is old by the time a scrape,
  which lasts milliseconds, arrives), so more stalled clients than the
  bound still cannot keep a scrape out;
- bcrypt, the one slow step, runs in a thread of its own (auth.py).

Each answer closes its connection (as prometheus_client's HTTP/1.0
handler did): nothing idles between scrapes.
"""

import errno
import gzip
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from xdpfwd.errors import UsageError, XdpfwdError
from xdpfwd.exporter import DEFAULT_PORT, webconfig
from xdpfwd.exporter.auth import BasicAuth
from xdpfwd.exporter.collector import XdpfwdCollector
from xdpfwd.exporter.reader import KernelReader

MAX_CONNECTIONS = 64
DEADLINE = 10.0  # seconds: Prometheus gives up on a scrape after 10 by default
MAX_REQUEST = 8192  # request line and headers

HANDSHAKE, READ, AUTH, WRITE = "handshake", "read", "auth", "write"
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}
_LANDING = b"xdpfwd exporter: the metrics are at /metrics\n"


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (loopback) into (host, port)."""
    import ipaddress

    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text}: the port must be a number from 1 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise UsageError(f"--listen {text}: not an IP address", hint=f"give one, e.g. 127.0.0.1:{DEFAULT_PORT}") from None
    return host, int(port)


def registry(reader=None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=True)
    reg.register(XdpfwdCollector(reader or KernelReader()))
    reg.register(ProcessCollector(registry=None))  # the exporter's own RSS and CPU
    return reg


def _log(text: str) -> None:
    print(f"xdpfwd exporter: {text}", file=sys.stderr, flush=True)


@dataclass
class Settings:
    """What `exporter` and `run --metrics` were told, checked before anything
    binds or attaches."""
    listen: str
    host: str
    port: int
    source: webconfig.Source

    @property
    def scheme(self) -> str:
        return "https" if self.source.config.tls else "http"


def prepare(listen: str, web_config: str | None = None, certfile: str | None = None,
            keyfile: str | None = None) -> Settings:
    host, port = parse_listen(listen)
    if web_config and (certfile or keyfile):
        raise UsageError("give either --web.config.file or --tls-cert/--tls-key, not both")
    if bool(certfile) != bool(keyfile):
        raise UsageError("TLS needs both --tls-cert and --tls-key")
    return Settings(listen, host, port, webconfig.Source(web_config, certfile, keyfile))


class _Conn:
    __slots__ = ("sock", "tls", "config", "deadline", "state", "inbuf", "out", "sent", "future",
                 "events", "head_only", "target", "headers", "auth_key")

    def __init__(self, sock, config, deadline):
        self.sock, self.tls, self.config, self.deadline = sock, None, config, deadline
        self.state, self.inbuf, self.out, self.sent = READ, bytearray(), b"", 0
        self.future, self.events, self.head_only = None, 0, False
        self.target, self.headers, self.auth_key = "", {}, b""

    @property
    def stream(self):
        return self.tls or self.sock


class Server:
    def __init__(self, sock: socket.socket, source: webconfig.Source, reg: CollectorRegistry,
                 max_connections: int = MAX_CONNECTIONS, deadline: float = DEADLINE):
        self._listener = sock
        self._source, self._registry = source, reg
        self.max_connections, self.deadline = max_connections, deadline
        self._sel = selectors.DefaultSelector()
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, "listen")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._done: deque = deque()  # (conn, future) from the bcrypt thread
        self._conns: dict[int, _Conn] = {}  # in accept order
        self._auth = BasicAuth()
        self._ctx, self._ctx_generation = None, -1
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._accept_paused_until = 0.0

    @property
    def address(self) -> tuple:
        return self._listener.getsockname()

    @property
    def connections(self) -> int:
        """Connections open now (read from another thread: a len())."""
        return len(self._conns)

    # -- life cycle ---------------------------------------------------------

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self._loop, name="exporter", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread:
            self._thread.join(timeout=5)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full: the loop is awake already

    # -- the loop -----------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._stopping:
                now = time.monotonic()
                soonest = min((c.deadline for c in self._conns.values()), default=now + 1.0)
                if self._accept_paused_until:
                    soonest = min(soonest, self._accept_paused_until)
                events = self._sel.select(max(0.0, min(soonest - now, 1.0)))
                for key, _ in events:
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._woken()
                    else:
                        self._guarded(key.data, self._step)
                self._expire(time.monotonic())
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._sel.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()
            self._auth.close()

    def _guarded(self, conn: _Conn, action) -> None:
        """One connection's bug never reaches the others: a line on stderr,
        a 500 where the answer has not started, the connection closed."""
        try:
            action(conn)
        except Exception as e:  # noqa: BLE001 - the loop must go on
            _log(f"internal error while serving a connection: {type(e).__name__}: {e}")
            if conn.state != WRITE and self._conns.get(id(conn)) is conn:
                try:
                    self._respond(conn, 500, b"Internal Server Error\n")
                    return
                except Exception:  # noqa: BLE001
                    pass
            self._close(conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self._close(conn)
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._sel.register(self._listener, selectors.EVENT_READ, "listen")

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: free the oldest unanswered one,
                    # else stop accepting for a moment rather than spin.
                    if not self._evict():
                        self._pause_accept()
                        return
                    continue
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            sock.setblocking(False)
            if len(self._conns) >= self.max_connections and not self._evict():
                sock.close()  # every slot is answering right now
                continue
            self._add(sock)

    def _pause_accept(self) -> None:
        self._accept_paused_until = time.monotonic() + 0.1
        self._sel.unregister(self._listener)

    def _evict(self) -> bool:
        for conn in self._conns.values():  # oldest first
            if conn.state != WRITE:
                self._close(conn)
                return True
        return False

    def _add(self, sock: socket.socket) -> None:
        config = self._source.current()
        conn = _Conn(sock, config, time.monotonic() + self.deadline)
        self._conns[id(conn)] = conn
        if config.tls:
            from OpenSSL import SSL

            if self._ctx_generation != self._source.generation:
                from xdpfwd.exporter import tls

                self._ctx = tls.context(config.tls)
                self._ctx_generation = self._source.generation
            conn.tls = SSL.Connection(self._ctx, sock)
            conn.tls.set_accept_state()
            conn.state = HANDSHAKE
        self._guarded(conn, self._step)

    def _want(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if not events:
            self._sel.unregister(conn.sock)
        elif not conn.events:
            self._sel.register(conn.sock, events, conn)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(id(conn), None) is None:
            return
        if conn.future is not None:
            self._auth.release(conn.auth_key)
        self._want(conn, 0)
        if conn.tls is not None and conn.state == WRITE:
            try:
                conn.tls.shutdown()  # close_notify, if the socket takes it now
            except Exception:  # noqa: BLE001 - the peer may be gone
                pass
        conn.sock.close()

    # -- one connection -----------------------------------------------------

    def _step(self, conn: _Conn) -> None:
        if conn.state == HANDSHAKE:
            self._handshake(conn)
        if conn.state == READ:
            self._read(conn)
        elif conn.state == WRITE:
            self._write(conn)

    def _io(self, conn: _Conn, call):
        """call() on the socket or TLS connection: (result, None), or
        (None, events to wait for), or (None, 0) when the connection is
        finished (closed, reset, a TLS alert)."""
        from_tls = conn.tls is not None
        try:
            return call(), None
        except BlockingIOError:
            return None, selectors.EVENT_READ if conn.state != WRITE else selectors.EVENT_WRITE
        except OSError:
            return None, 0
        except Exception as e:
            if not from_tls:
                raise
            from OpenSSL import SSL

            if isinstance(e, SSL.WantReadError):
                return None, selectors.EVENT_READ
            if isinstance(e, SSL.WantWriteError):
                return None, selectors.EVENT_WRITE
            if isinstance(e, SSL.Error):  # alerts, resets, close_notify
                return None, 0
            raise

    def _handshake(self, conn: _Conn) -> None:
        _, wait = self._io(conn, conn.tls.do_handshake)
        if wait == 0:
            self._close(conn)
        elif wait:
            self._want(conn, wait)
        else:
            conn.state = READ

    def _read(self, conn: _Conn) -> None:
        while b"\r\n\r\n" not in conn.inbuf and len(conn.inbuf) <= MAX_REQUEST:
            data, wait = self._io(conn, lambda: conn.stream.recv(16384))
            if wait:
                self._want(conn, wait)
                return
            if not data:  # EOF, reset or alert before a whole request
                self._close(conn)
                return
            conn.inbuf += data
        self._want(conn, 0)
        self._request(conn)

    def _request(self, conn: _Conn) -> None:
        head, sep, _ = bytes(conn.inbuf).partition(b"\r\n\r\n")
        if not sep or len(head) > MAX_REQUEST:
            self._respond(conn, 431, b"Request Header Fields Too Large\n")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._respond(conn, 400, b"Bad Request\n")
            return
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                self._respond(conn, 400, b"Bad Request\n")
                return
            headers[name.strip().lower()] = value.strip()
        conn.head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            self._respond(conn, 405, b"Method Not Allowed\n", extra={"Allow": "GET, HEAD"})
            return
        conn.target, conn.headers = target, headers
        if conn.config.users:
            verdict = self._auth.check(conn.config.users, headers.get("authorization"))
            if not isinstance(verdict, bool):
                conn.state, (conn.future, conn.auth_key) = AUTH, verdict
                conn.future.add_done_callback(lambda f, c=conn: self._posted(c, f))
                return
            if not verdict:
                self._unauthorized(conn)
                return
        self._route(conn)

    def _posted(self, conn: _Conn, future) -> None:
        # In the bcrypt thread: hand the outcome to the loop.
        self._done.append((conn, future))
        self._wake()

    def _woken(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._done:
            conn, future = self._done.popleft()
            if self._conns.get(id(conn)) is not conn or conn.state != AUTH or future.cancelled():
                continue
            conn.future = None
            ok = future.result()
            self._guarded(conn, self._route if ok else self._unauthorized)

    def _unauthorized(self, conn: _Conn) -> None:
        self._respond(conn, 401, b"Unauthorized\n", extra={"WWW-Authenticate": "Basic"})

    def _route(self, conn: _Conn) -> None:
        headers = conn.headers
        path = conn.target.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept"))
            body = encoder(self._registry)
            extra = {}
            if "gzip" in headers.get("accept-encoding", ""):
                body = gzip.compress(body, compresslevel=6)
                extra["Content-Encoding"] = "gzip"
            self._respond(conn, 200, body, content_type, extra)
        elif path == "/":
            self._respond(conn, 200, _LANDING)
        else:
            self._respond(conn, 404, b"Not Found\n")

    def _respond(self, conn: _Conn, code: int, body: bytes,
                 content_type: str = "text/plain; charset=utf-8", extra: dict | None = None) -> None:
        lines = [f"HTTP/1.1 {code} {_REASONS[code]}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in {**conn.config.headers, **(extra or {})}.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn.out = memoryview(head if conn.head_only else head + body)
        conn.sent, conn.state = 0, WRITE
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        while conn.sent < len(conn.out):
            chunk = conn.out[conn.sent:conn.sent + 65536]
            n, wait = self._io(conn, lambda: conn.stream.send(chunk))
            if wait == 0:
                self._close(conn)
                return
            if wait:
                self._want(conn, wait)
                return
            conn.sent += n
        self._close(conn)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # [::] serves IPv4 too, as it did before; a specific address, itself only.
    return socket.create_server((host, port), family=family, backlog=128,
                                dualstack_ipv6=host == "::")


def start(settings: Settings, reg: CollectorRegistry | None = None) -> Server:
    """Bind and start serving in a background thread; returns the server."""
    try:
        sock = _listen(settings.host, settings.port)
    except OSError as e:
        raise XdpfwdError(f"cannot listen on {settings.listen}: {e.strerror or e}") from None
    return Server(sock, settings.source, reg or registry()).start()


def serve_forever(settings: Settings, on_ready=None) -> None:
    """Serve until SIGTERM or SIGINT."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = start(settings)
    if on_ready:
        on_ready()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.shutdown()
