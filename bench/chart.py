"""The report's picture: an SVG bar chart of delivered packets/s and router
CPU ns per packet, per row, one pair of panels per kind of traffic; a
user-space row has a second bar in each, at the rate it carries
(bench/rate.py), under its bar flooded.
Plain SVG text, no plotting library; each bar carries its row, traffic,
metric and value as data-* attributes, so a test (or a script) can read
the numbers back (tests/unit/test_bench_chart.py).
"""

from xml.sax.saxutils import escape

from bench.report import TrafficSummary, si

LABEL_W = 280   # the rows' names
BAR_W = 300     # the longest bar of a panel
VALUE_W = 70    # the figure after a bar
ROW_H = 18
PANEL_GAP = 30
TITLE_H = 22
COLOURS = {"pps": "#4c78a8", "ns": "#f58518", "carried_pps": "#9ecae9", "carried_ns": "#ffbf79"}
# (metric of the panel, its title, the metric of a user-space row's bar at the carried rate)
METRICS = [("pps", "delivered packets/s", "carried_pps"),
           ("ns", "router CPU ns per packet", "carried_ns")]
CARRIED = "at carried rate"


def values(summary: TrafficSummary, metric: str) -> list[tuple[str, str, str, float | None]]:
    """(row key, label, metric, value) of one panel's bars, in the table's
    order: every row flooded, a user-space row then at its carried rate
    (value None when it carries nothing)."""
    carried = dict((m, c) for m, _, c in METRICS)[metric]
    out = []
    for key, r in summary.rows.items():
        label = f"{r.label} † flooded" if r.userspace else r.label
        out.append((key, label, metric, r.pps_median if metric == "pps" else r.cost_median))
        if r.userspace:
            v = r.carried_median if metric == "pps" else r.carried_cost_median
            out.append((key, f"{r.label} † {CARRIED}", carried, v))
    return out


def _panel(x: float, y: float, summary: TrafficSummary, metric: str, title: str) -> list[str]:
    rows = values(summary, metric)
    top = max((v for _, _, _, v in rows if v), default=0.0)
    out = [f'<text x="{x}" y="{y + 15}" class="title">{escape(summary.label)}: '
           f'{escape(title)}</text>']
    y += TITLE_H
    for i, (key, label, metric, v) in enumerate(rows):
        cy = y + i * ROW_H
        width = BAR_W * v / top if v and top else 0.0
        shown = "—" if v is None else (si(v) if metric.endswith("pps") else f"{v:.0f}")
        if v is None and metric == "carried_pps" and summary.rows[key].carries_nothing:
            shown = "nothing"
        out.append(f'<text x="{x + LABEL_W - 6}" y="{cy + 13}" class="label">{escape(label)}</text>')
        if v is not None:
            out.append(f'<rect x="{x + LABEL_W}" y="{cy + 2}" width="{width:.2f}" '
                       f'height="{ROW_H - 4}" fill="{COLOURS[metric]}" data-row="{escape(key)}" '
                       f'data-traffic="{escape(summary.traffic)}" data-metric="{metric}" '
                       f'data-value="{v!r}"/>')
        out.append(f'<text x="{x + LABEL_W + width + 4:.2f}" y="{cy + 13}" class="value">'
                   f'{shown}</text>')
    return out


def svg(summaries: list[TrafficSummary], title: str) -> str:
    """Two panels side by side (packets/s, ns/packet) per kind of traffic,
    one under the other. Bars of one panel share a scale: the longest is
    the panel's largest value."""
    panel_w = LABEL_W + BAR_W + VALUE_W
    heights = [TITLE_H + ROW_H * len(values(s, "pps")) for s in summaries]
    width = 2 * panel_w + PANEL_GAP + 20
    height = 40 + sum(h + PANEL_GAP for h in heights)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           "<style>.title{font-weight:bold}.label{text-anchor:end}.value{fill:#333}</style>",
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="24" class="title" font-size="15">{escape(title)}</text>']
    y = 40.0
    for s, h in zip(summaries, heights):
        for i, (metric, name, _) in enumerate(METRICS):
            out += _panel(10 + i * (panel_w + PANEL_GAP), y, s, metric, name)
        y += h + PANEL_GAP
    out.append("</svg>")
    return "\n".join(out) + "\n"
