"""Attach after detach with a warm compile cache, through the real CLI in
the lab: the program comes from the cache, forwards like a compiled one,
and the attach takes less time than the compiling one.

The cache directory is the test's own (XDPFWD_CACHE_DIR), empty at the
start, so the first attach compiles.
"""

import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from helpers import assert_forwarded, assert_ping_crosses, run, stats, xdpfwd
from xdpfwd import traffic

SENDBOX_V4, RECVBOX_V4 = "10.0.10.10", "10.0.11.20"
SENDBOX_V6, RECVBOX_V6 = "fd00:10::10", "fd00:11::20"


def timed_attach(env, *extra):
    t0 = time.perf_counter()
    proc = xdpfwd("--verbose", "attach", "eth1", "eth0", "--mode", "native", *extra, env=env)
    ms = (time.perf_counter() - t0) * 1000
    assert proc.returncode == 0, proc.stderr
    return proc, ms


@pytest.fixture(scope="module")
def warm(lab):
    cache = Path(tempfile.mkdtemp(prefix="xdpfwd-cache-lab-"))
    env = {"XDPFWD_CACHE_DIR": str(cache)}
    try:
        xdpfwd("detach")
        cold, cold_ms = timed_attach(env)
        assert "compile cache: stored" in cold.stderr, cold.stderr
        assert xdpfwd("detach").returncode == 0
        warm, warm_ms = timed_attach(env)
        # -s shows the figures; the report quotes them.
        print(f"\nattach, native, lab: cold {cold_ms:.0f} ms, warm (from the cache) {warm_ms:.0f} ms")
        for ns, dst in (("sendbox", RECVBOX_V4), ("sendbox", RECVBOX_V6),
                        ("recvbox", SENDBOX_V4), ("recvbox", SENDBOX_V6)):
            run(["ping", "-c", "1", "-W", "1", dst], ns=ns)
        yield {"cold": cold, "warm": warm, "cold_ms": cold_ms, "warm_ms": warm_ms}
    finally:
        xdpfwd("detach")
        shutil.rmtree(cache)


def test_the_warm_attach_loads_from_the_cache_and_is_faster(warm):
    assert "compile cache: loaded xdpfwd_redirect from" in warm["warm"].stderr, warm["warm"].stderr
    assert re.search(r"eth1: attached program \d+ in native mode", warm["warm"].stdout)
    assert warm["warm_ms"] < warm["cold_ms"]


@pytest.mark.parametrize("ns,dst", [("sendbox", RECVBOX_V4), ("sendbox", RECVBOX_V6),
                                    ("recvbox", SENDBOX_V4), ("recvbox", SENDBOX_V6)])
def test_ping_crosses_with_ttl_63(warm, ns, dst):
    assert_ping_crosses(ns, dst)


@pytest.mark.parametrize("family", [4, 6])
def test_udp_arrives_exactly_once_and_is_counted(warm, family):
    before = stats()
    delivery = traffic.send_udp(500, "sendbox", "recvbox", family)
    after = stats()
    assert_forwarded(delivery, before, after, "eth1")
