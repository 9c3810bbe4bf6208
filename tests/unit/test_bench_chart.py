"""The benchmark's SVG chart (bench/chart.py): parsed back, its bars match
the report's numbers. No kernel needed."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from test_bench_report import LABELS, lab_samples  # noqa: E402

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


def test_bars_carry_the_report_numbers_and_scale_with_them():
    sums = summaries()
    got = bars(chart.svg(sums, "title"))
    for s in sums:
        for metric in ("pps", "ns"):
            numbers = {key: (r.pps_median if metric == "pps" else r.cost_median)
                       for key, r in s.rows.items()}
            top = max(numbers.values())
            for key, value in numbers.items():
                shown, width = got[(s.traffic, metric, key)]
                assert shown == pytest.approx(value)
                # The panel's largest value gets the full bar; the rest in proportion.
                assert width == pytest.approx(chart.BAR_W * value / top, abs=0.01)
    # Concretely: 1 flow, native XDP delivers 2.25M (median of 2.5M and 2.0M) of
    # the ceiling's 4.5M: half the ceiling's bar.
    assert got[("64B-1flow", "pps", "xdp_native")][1] == pytest.approx(chart.BAR_W / 2, abs=0.01)


def test_labels_are_escaped():
    data = lab_samples()
    s = report.summarize(data, dict(LABELS, kernel="kernel <&> forwarding"),
                         {"64B-1flow": "64 B, 1 flow"})
    root = ET.fromstring(chart.svg(s, "a & b"))  # parses: nothing unescaped
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "kernel <&> forwarding" in texts and "a & b" in texts
