"""The benchmark's SVG chart (bench/chart.py): parsed back, its bars match
the report's numbers. No kernel needed."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from test_bench_report import LABELS, lab_samples, sample  # noqa: E402

from bench import chart, report  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def summaries():
    data = lab_samples() + lab_samples("64B-1000flows", native=2_000_000)
    return report.summarize(data, LABELS, {"64B-1flow": "64 B, 1 flow",
                                           "64B-1000flows": "64 B, 1000 flows"})


def bars(svg: str) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(traffic, metric, row) -> (data-value, drawn width)."""
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    out = {}
    for rect in root.iter(SVG + "rect"):
        if "data-row" in rect.attrib:
            key = (rect.get("data-traffic"), rect.get("data-metric"), rect.get("data-row"))
            out[key] = (float(rect.get("data-value")), float(rect.get("width")))
    return out


def test_every_row_has_a_bar_per_metric_and_traffic():
    got = bars(chart.svg(summaries(), "title"))
    rows = set(LABELS)
    for traffic in ("64B-1flow", "64B-1000flows"):
        for metric in ("pps", "ns"):
            assert {r for t, m, r in got if (t, m) == (traffic, metric)} == rows


def test_userspace_rows_have_a_second_bar_at_the_carried_rate():
    got = bars(chart.svg(summaries(), "title"))
    for traffic in ("64B-1flow", "64B-1000flows"):
        for metric in ("carried_pps", "carried_ns"):
            assert {r for t, m, r in got if (t, m) == (traffic, metric)} == {"afpacket", "naive"}
    # 280k and 224k delivered at the carried rate; 2000 and 2500 ns/pkt there.
    assert got[("64B-1flow", "carried_pps", "afpacket")][0] == pytest.approx(252_000)
    assert got[("64B-1flow", "carried_ns", "afpacket")][0] == pytest.approx(2250)


def test_bars_carry_the_report_numbers_and_scale_with_them():
    sums = summaries()
    got = bars(chart.svg(sums, "title"))
    for s in sums:
        for metric, _, carried in chart.METRICS:
            numbers = {(metric, key): (r.pps_median if metric == "pps" else r.cost_median)
                       for key, r in s.rows.items()}
            numbers.update({(carried, key): (r.carried_median if metric == "pps"
                                             else r.carried_cost_median)
                            for key, r in s.rows.items() if r.userspace})
            # One scale per panel, flooded and carried bars alike.
            top = max(numbers.values())
            for (m, key), value in numbers.items():
                shown, width = got[(s.traffic, m, key)]
                assert shown == pytest.approx(value)
                # The panel's largest value gets the full bar; the rest in proportion.
                assert width == pytest.approx(chart.BAR_W * value / top, abs=0.01)
    # Concretely: 1 flow, native XDP delivers 2.25M (median of 2.5M and 2.0M) of
    # the ceiling's 4.5M: half the ceiling's bar.
    assert got[("64B-1flow", "pps", "xdp_native")][1] == pytest.approx(chart.BAR_W / 2, abs=0.01)


def test_a_row_that_carries_nothing_has_no_carried_bar():
    data = [x for x in lab_samples() if not (x["row"] == "naive" and x["window"] != "flood")]
    data.append(sample("naive", 0, 500, offered=1000, userspace=True, rate=1000, window="probe"))
    (s,) = report.summarize(data, LABELS, {"64B-1flow": "64 B, 1 flow"})
    svg = chart.svg([s], "title")
    got = bars(svg)
    assert ("64B-1flow", "carried_pps", "naive") not in got
    assert ("64B-1flow", "carried_pps", "afpacket") in got
    texts = [t.text for t in ET.fromstring(svg).iter(SVG + "text")]
    assert "naive AF_PACKET loop † at carried rate" in texts and "nothing" in texts


def test_labels_are_escaped():
    data = lab_samples()
    s = report.summarize(data, dict(LABELS, kernel="kernel <&> forwarding"),
                         {"64B-1flow": "64 B, 1 flow"})
    root = ET.fromstring(chart.svg(s, "a & b"))  # parses: nothing unescaped
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "kernel <&> forwarding" in texts and "a & b" in texts
