"""The exporter's cost: scrape time and resident memory of
`xdpfwd exporter` serving the router's counters."""

import http.client
import time

from xdpfwd import netns

from bench import router

LISTEN_HOST, LISTEN_PORT = "127.0.0.1", 10499
SCRAPES = 50


def _scrape(ns: str) -> float:
    conn = http.client.HTTPConnection(LISTEN_HOST, LISTEN_PORT, timeout=10)
    t0 = time.perf_counter()
    with netns.entered(ns):  # the socket belongs to the router's namespace
        conn.connect()
    conn.request("GET", "/metrics")
    body = conn.getresponse().read()
    seconds = time.perf_counter() - t0
    conn.close()
    if b"xdpfwd_" not in body:
        raise router.RouterError("the exporter's /metrics has no xdpfwd metrics")
    return seconds


def measure(ns: str) -> dict:
    """Start the exporter in ns, scrape it SCRAPES times (after one
    untimed scrape), read its RSS, stop it."""
    proc = router.start_exporter(ns, f"{LISTEN_HOST}:{LISTEN_PORT}")
    try:
        _scrape(ns)
        times = [_scrape(ns) * 1000 for _ in range(SCRAPES)]
        rss = router.rss_mb(proc.pid)
    finally:
        proc.stop()
    return {"scrape_ms": times, "rss_mb": rss}
