"""Serve /metrics over HTTP (or HTTPS with a certificate and key).

Loopback by default: the counters describe a router's traffic, and binding
to another address is the operator's explicit choice (--listen).
"""

import ipaddress
import signal

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from xdpfwd.errors import UsageError, XdpfwdError
from xdpfwd.exporter import DEFAULT_PORT
from xdpfwd.exporter.collector import XdpfwdCollector
from xdpfwd.exporter.reader import KernelReader


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (loopback) into (host, port)."""
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
            raise UsageError(f"--listen {text}: give an IP address, e.g. 127.0.0.1:{DEFAULT_PORT}") from None
    return host, int(port)


def registry(reader=None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=True)
    reg.register(XdpfwdCollector(reader or KernelReader()))
    reg.register(ProcessCollector(registry=None))  # the exporter's own RSS and CPU
    return reg


def start(listen: str, certfile: str | None = None, keyfile: str | None = None):
    """Start serving in a background thread; returns the server."""
    host, port = parse_listen(listen)
    if bool(certfile) != bool(keyfile):
        raise UsageError("TLS needs both --tls-cert and --tls-key")
    try:
        server, _ = start_http_server(port, host, registry(), certfile=certfile, keyfile=keyfile)
    except OSError as e:
        raise XdpfwdError(f"cannot listen on {listen}: {e.strerror or e}") from None
    except Exception as e:  # ssl errors: a bad certificate or key
        raise UsageError(f"cannot use the TLS certificate or key: {e}") from None
    return server


def serve_forever(listen: str, certfile: str | None = None, keyfile: str | None = None,
                  on_ready=None) -> None:
    """Serve until SIGTERM or SIGINT."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = start(listen, certfile, keyfile)
    if on_ready:
        on_ready()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.shutdown()
