"""The exporter's collector on fixtures (an injected reader), in the manner
of client_python's own process collector tests."""

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from xdpfwd.counters import PortCounters
from xdpfwd.exporter.collector import XdpfwdCollector
from helpers import device, snapshot_of


class Reader:
    def __init__(self, snap):
        self.snap = snap

    def read(self):
        if isinstance(self.snap, Exception):
            raise self.snap
        return self.snap


def registry(snap):
    reg = CollectorRegistry()
    collector = XdpfwdCollector(Reader(snap))
    reg.register(collector)
    return reg, collector


SNAP = snapshot_of(
    devices=[device("eth1", "native", 42), device("eth0", "native", 42)],
    counters={
        "eth1": PortCounters.of({"received": (106, 10444), "forwarded": (100, 10000),
                                 "fib_no_neighbour": (2, 200), "multicast": (3, 180),
                                 "redirect_failed": (1, 64), "transmitted": (7, 700)}),
        "eth0": PortCounters.of({"received": (8, 760), "forwarded": (7, 700),
                                 "transmitted": (100, 10000)}),
    },
)


def test_counters_per_device_and_reason():
    reg, _ = registry(SNAP)
    get = reg.get_sample_value
    assert get("xdpfwd_up") == 1
    assert get("xdpfwd_forwarded_packets_total", {"device": "eth1"}) == 100
    assert get("xdpfwd_forwarded_bytes_total", {"device": "eth1"}) == 10000
    assert get("xdpfwd_passed_packets_total", {"device": "eth1", "reason": "fib_no_neighbour"}) == 2
    assert get("xdpfwd_passed_packets_total", {"device": "eth1", "reason": "ttl_exceeded"}) == 0
    assert get("xdpfwd_dropped_packets_total", {"device": "eth1", "reason": "redirect_failed"}) == 1
    # received is counted on arrival, not summed from the outcomes (eth0's
    # outcomes add up to 7, its received counter says 8); transmitted is
    # the egress side
    assert get("xdpfwd_receive_packets_total", {"device": "eth1"}) == 106
    assert get("xdpfwd_receive_bytes_total", {"device": "eth1"}) == 10444
    assert get("xdpfwd_receive_packets_total", {"device": "eth0"}) == 8
    assert get("xdpfwd_transmit_packets_total", {"device": "eth0"}) == 100
    assert get("xdpfwd_transmit_bytes_total", {"device": "eth1"}) == 700


def test_info_names_device_mode_and_program():
    reg, _ = registry(SNAP)
    assert reg.get_sample_value("xdpfwd_device_info",
                                {"device": "eth1", "mode": "native", "prog_id": "42"}) == 1
    afp, _ = registry(snapshot_of([device("eth1", "afpacket")], counters={}))
    assert afp.get_sample_value("xdpfwd_device_info",
                                {"device": "eth1", "mode": "afpacket", "prog_id": ""}) == 1


def test_nothing_attached_still_answers_with_up_0():
    reg, _ = registry(snapshot_of())
    assert reg.get_sample_value("xdpfwd_up") == 0
    assert reg.get_sample_value("xdpfwd_forwarded_packets_total", {"device": "eth1"}) is None
    assert b"xdpfwd_exporter_build_info" in generate_latest(reg)


def test_unreadable_maps_are_left_out_and_counted():
    reg, collector = registry(snapshot_of([device("eth1", "native", 42)], errors=2))
    assert reg.get_sample_value("xdpfwd_exporter_scrape_errors_total") == 2
    generate_latest(reg)  # a second scrape: the counter only grows
    assert reg.get_sample_value("xdpfwd_exporter_scrape_errors_total") == 6  # 3 scrapes so far
    assert collector.scrape_errors == 6


def test_a_reader_that_raises_gives_up_0_not_an_error():
    reg, _ = registry(OSError("boom"))
    text = generate_latest(reg).decode()
    assert "xdpfwd_up 0.0" in text
    assert reg.get_sample_value("xdpfwd_exporter_scrape_errors_total") >= 1


def test_names_follow_prometheus_conventions():
    reg, _ = registry(SNAP)
    for family in reg.collect():
        assert family.name.startswith("xdpfwd_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        for sample in family.samples:
            assert set(sample.labels) <= {"device", "reason", "mode", "prog_id", "version"}
