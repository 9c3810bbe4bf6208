"""The live view's arithmetic and layout."""

import io

from xdpfwd import watch
from xdpfwd.counters import PortCounters


def test_human_units():
    assert watch.human(412345) == "412.3k"
    assert watch.human(2_500_000_000) == "2.5G"
    assert watch.human(12) == "12"


def test_rates_per_outcome_and_reason():
    before = {"eth1": PortCounters.of({"received": (101, 10_100), "forwarded": (100, 10_000),
                                       "fib_no_neighbour": (1, 100)})}
    after = {"eth1": PortCounters.of({"received": (305, 30_500), "forwarded": (300, 30_000),
                                      "fib_no_neighbour": (5, 500), "transmitted": (0, 0)})}
    rows = {row: (pps, bps) for row, pps, bps in watch.rates(before, after, 2.0)["eth1"]}
    assert rows["received"] == (102.0, 8 * 20_400 / 2)
    assert rows["forwarded"] == (100.0, 80_000.0)
    assert rows["passed"] == (2.0, 1600.0)
    assert rows["  fib_no_neighbour"] == (2.0, 1600.0)
    assert "  multicast" not in rows  # only reasons that moved


def test_watch_prints_frames():
    readings = iter([{"eth1": PortCounters.of({"forwarded": (n, 100 * n)})} for n in (0, 10, 20)])
    out = io.StringIO()
    watch.watch(lambda: next(readings), interval=0.01, out=out, frames=2)
    text = out.getvalue()
    assert text.count("PKT/S") == 2 and "forwarded" in text and "eth1" in text
