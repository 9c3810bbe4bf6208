"""The shared map layout and the counter arithmetic: pure logic."""

import re
import struct

import pytest

from xdpfwd.counters import PortCounters
from xdpfwd.layout import COUNT_SIZE, HEADER, SOURCE, layout, parse


def test_header_parses_to_the_program_and_map_names():
    lay = layout()
    assert lay.prog_name == "xdpfwd_redirect"
    assert (lay.stats_map, lay.ports_map, lay.config_map) == \
        ("xdpfwd_stats", "xdpfwd_ports", "xdpfwd_config")
    # The kernel keeps 15 characters of a name; longer would not match.
    assert all(len(n) <= 15 for n in (lay.prog_name, lay.stats_map, lay.ports_map, lay.config_map))


def test_outcomes_are_unique_and_start_with_forwarded():
    lay = layout()
    labels = [o.label for o in lay.outcomes]
    assert len(labels) == len(set(labels))
    assert lay.outcomes[0].label == "forwarded"
    assert [o.index for o in lay.outcomes] == list(range(len(labels)))
    assert lay.value_size == COUNT_SIZE * (len(labels) + 2)  # + received, transmitted


def test_every_outcome_is_used_by_the_program():
    # An outcome the C never produces would be a counter that cannot move.
    source = SOURCE.read_text()
    for o in layout().outcomes:
        assert re.search(rf"\b(XDPFWD_)?{o.enum}\b", source), f"{o.enum} unused in redirect.c"


def test_unknown_kind_is_refused():
    text = HEADER.read_text().replace('X(FORWARDED,            forwarded,', 'X(FORWARDED, sideways,')
    with pytest.raises(ValueError, match="unknown kind"):
        parse(text)


def _value(lay, counts):
    raw = bytearray(lay.value_size)
    for label, (packets, nbytes) in counts.items():
        index = {"transmitted": lay.transmitted_index, "received": lay.received_index}.get(label)
        if index is None:
            index = lay.outcome_index(next(o.index for o in lay.outcomes if o.label == label))
        struct.pack_into("=QQ", raw, index * COUNT_SIZE, packets, nbytes)
    return bytes(raw)


def test_decode_sums_per_cpu_values():
    lay = layout()
    cpu0 = _value(lay, {"received": (11, 1060), "forwarded": (10, 1000), "ttl_exceeded": (1, 60)})
    cpu1 = _value(lay, {"received": (7, 620), "forwarded": (5, 500), "redirect_failed": (2, 120),
                        "transmitted": (7, 70)})
    totals = PortCounters.decode([cpu0, cpu1]).as_dict()
    assert totals["received"] == (18, 1680)
    assert totals["transmitted"] == (7, 70)
    assert totals["forwarded"] == (15, 1500)
    assert totals["ttl_exceeded"] == (1, 60)
    assert totals["redirect_failed"] == (2, 120)
    assert totals["not_ip"] == (0, 0)


def test_summarize_takes_rx_from_the_received_counter():
    counts = {"received": (21, 1860), "forwarded": (15, 1500), "ttl_exceeded": (1, 60),
              "fib_no_neighbour": (3, 180), "redirect_failed": (2, 120), "transmitted": (9, 900)}
    s = PortCounters.of(counts).record()
    assert (s["tx_packets"], s["tx_bytes"]) == (9, 900)
    assert s["rx_packets"] == 21 and s["rx_bytes"] == 1860
    assert (s["forwarded_packets"], s["forwarded_bytes"]) == (15, 1500)
    assert (s["passed_packets"], s["passed_bytes"]) == (4, 240)
    assert (s["dropped_packets"], s["dropped_bytes"]) == (2, 120)
    assert s["pass_reasons"]["fib_no_neighbour"] == 3
    assert s["drop_reasons"] == {"redirect_failed": 2}
    assert s["rx_packets"] == s["forwarded_packets"] + s["passed_packets"] + s["dropped_packets"]
    # rx is not the sum of the outcomes: a path that counts no outcome shows
    lost = PortCounters.of({**counts, "received": (22, 1900)}).record()
    assert lost["rx_packets"] == 22 != lost["forwarded_packets"] + lost["passed_packets"] + \
        lost["dropped_packets"]


def test_the_package_is_the_checkout():
    """`make setup` installs editable: the code the tests run is this tree's
    (control/, exporter/, bpf/), so an edit needs no reinstall."""
    from pathlib import Path

    import xdpfwd
    import xdpfwd.exporter
    from xdpfwd import layout as layout_module

    tree = Path(__file__).resolve().parents[2]
    assert Path(xdpfwd.__file__).resolve() == tree / "control" / "__init__.py"
    assert Path(xdpfwd.exporter.__file__).resolve() == tree / "exporter" / "__init__.py"
    assert layout_module.BPF_DIR.resolve() == tree / "bpf"
    assert layout_module.HEADER.is_file() and layout_module.SOURCE.is_file()
