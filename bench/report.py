"""The benchmark's arithmetic and its tables: pure functions of the samples,
no kernel needed (tests/unit/test_bench_report.py).

Ratios are paired: each round's row is compared with the same round's
kernel (or ceiling, or naive) row, and the median of those ratios is
reported, so drift of the machine between rounds cancels out. What is
compared depends on the row and on what limited the rows (decide()): the
user-space rows always by router CPU per forwarded packet at the rate they
carry (bench/rate.py: flooded, they share the router's CPU with a receive
path that mostly receives what their full ring drops), against the kernel
and XDP rows' router CPU per forwarded packet flooded (where they are
CPU-bound and what they cannot take costs them nothing: it is dropped on
the generator's CPU); the others by delivered packets/s when the router
limited them; by packets per second of the router's own CPU time when
other people's processes took part of the machine; by forwarding cost per
packet above the ceiling when the generator did.
"""

import statistics
from dataclasses import dataclass, field

from bench.rate import LOSS_LIMIT, PACE_BURST, PACE_GROUP, PROBE_SECONDS, STEP

# The targets of issue 12, 64-byte UDP: (name, row, against, goal, by, the
# traffics it must hold at). by None: the figure decide() picks (delivered
# packets/s on a quiet machine); "cpu": router CPU per forwarded packet,
# receive path included, a user-space row's at the rate it carries. A
# target that names two traffics is judged by the worse of them.
ONE_FLOW, MANY_FLOWS = "64B-1flow", "64B-1000flows"
TARGET_TRAFFICS = [ONE_FLOW, MANY_FLOWS]
RATIO_TARGETS = [
    ("xdp_native_vs_kernel", "xdp_native", "kernel", 2.2, None, [ONE_FLOW, MANY_FLOWS]),
    ("afpacket_vs_kernel", "afpacket", "kernel", 0.8, "cpu", [ONE_FLOW]),
    ("afpacket_vs_naive", "afpacket", "naive", 3.0, "cpu", [ONE_FLOW]),
]
# The XDP program's own run time (bpf_stats), rp_filter off, at both traffics.
PROG_NS_GOAL = 200
TARGET_TRAFFIC = ONE_FLOW  # the one that decides how the ratios are compared
# Rows compared by router CPU per forwarded packet at the rate they carry,
# whatever decide() says.
USERSPACE = ("afpacket", "naive")
EXPORTER_SCRAPE_GOAL_MS = 10
EXPORTER_RSS_GOAL_MB = 60
# The performance issue: an attach after a detach, served by the compile cache.
ATTACH_WARM_GOAL_MS = 500

# A row is limited by the router, not the generator, when the generator
# offered at least this many times what the row handled: the rest was
# dropped because the router could not take it. (The router's CPU is
# usually saturated then, but need not be: a forwarder that sleeps while
# its queue overflows is still the bottleneck.)
OFFERED_MIN = 1.2
# ...and only while the router's CPU is this busy: below it, something past
# the router (recvbox's sink, on the generator's CPU) limited the row, and
# its delivered packets/s understates the router's capacity.
BUSY_MIN = 0.95
# Other people's processes may use this much of a CPU in a window before
# the window counts as disturbed (and is measured again while time allows).
FOREIGN_LIMIT = 0.05


# -- statistics ---------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def spread(values: list[float]) -> tuple[float, float] | None:
    return (min(values), max(values)) if values else None


def rate(packets: int, seconds: float) -> float:
    return packets / seconds if seconds > 0 else 0.0


def cost_ns(cpu_seconds: float, packets: int) -> float | None:
    """CPU nanoseconds per packet; None when nothing was handled."""
    return cpu_seconds * 1e9 / packets if packets > 0 else None


def above(cost: float | None, ceiling: float | None) -> float | None:
    """A row's cost beyond the ceiling's: what forwarding adds to merely
    receiving (and dropping) the packet on the router's CPU."""
    if cost is None or ceiling is None:
        return None
    return cost - ceiling


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def paired(per_round_a: dict[int, float], per_round_b: dict[int, float]) -> list[float]:
    """a/b for every round that has both."""
    out = []
    for r in sorted(per_round_a.keys() & per_round_b.keys()):
        q = ratio(per_round_a[r], per_round_b[r])
        if q is not None:
            out.append(q)
    return out


# -- the summary of one (traffic, row) ------------------------------------------


@dataclass
class RowSummary:
    row: str
    label: str
    userspace: bool = False  # forwarder processes sharing the router's CPU with the receive
    pps: dict[int, float] = field(default_factory=dict)   # round -> handled packets/s
    cost: dict[int, float] = field(default_factory=dict)  # round -> router CPU ns per packet
    loss: list[float] = field(default_factory=list)       # share of what the router took, never arrived
    receive_ns: list[float] = field(default_factory=list)  # the NAPI thread, ns per received frame
    prog_ns: list[float] = field(default_factory=list)    # the row's XDP program, ns per run
    sink_ns: list[float] = field(default_factory=list)    # the sink's program, ns per run
    process_ns: list[float] = field(default_factory=list)  # forwarder processes, ns per packet
    busy: list[float] = field(default_factory=list)       # router CPU busy share
    offered: list[float] = field(default_factory=list)    # packets/s the generator made
    offered_over_handled: list[float] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)    # other people's share of a CPU
    retried: int = 0
    # Paced at the rate the row carries (user-space rows; bench/rate.py):
    probes: list[dict] = field(default_factory=list)  # the search: rate, offered, delivered, loss
    carried_rate: list[float] = field(default_factory=list)   # pps the generator was paced at
    carried_pps: dict[int, float] = field(default_factory=dict)   # round -> delivered packets/s
    carried_offered: list[float] = field(default_factory=list)  # packets/s the generator sent
    carried_cost: dict[int, float] = field(default_factory=dict)  # round -> router CPU ns/pkt
    carried_loss: list[float] = field(default_factory=list)  # share of what was sent, lost
    carried_receive_ns: list[float] = field(default_factory=list)
    carried_process_ns: list[float] = field(default_factory=list)
    paced_foreign: list[float] = field(default_factory=list)  # probe and carried windows

    @property
    def pps_median(self) -> float | None:
        return median(list(self.pps.values()))

    @property
    def pps_spread(self) -> tuple[float, float] | None:
        return spread(list(self.pps.values()))

    @property
    def cost_median(self) -> float | None:
        return median(list(self.cost.values()))

    @property
    def router_bound(self) -> bool:
        return bool(self.offered_over_handled) and min(self.offered_over_handled) >= OFFERED_MIN

    @property
    def carried_median(self) -> float | None:
        return median(list(self.carried_pps.values()))

    @property
    def carried_cost_median(self) -> float | None:
        return median(list(self.carried_cost.values()))

    @property
    def carries_nothing(self) -> bool:
        """Searched, and not even the lowest rate probed got through."""
        return bool(self.probes) and not self.carried_rate

    @property
    def cpu_cost(self) -> dict[int, float]:
        """Per round, the router CPU per forwarded packet that compares this
        row by CPU: a user-space row's at the rate it carries (none when it
        carries nothing), any other row's flooded."""
        return self.carried_cost if self.userspace else self.cost


def summarize_row(row: str, label: str, samples: list[dict]) -> RowSummary:
    """Packets and CPU from the ordinary windows; the XDP program's run
    time only from the windows with bpf_stats on (whose clock reads would
    slow every packet of the others)."""
    s = RowSummary(row, label, userspace=any(x.get("userspace") for x in samples))
    for x in samples:
        if x.get("bpf_stats"):
            if x["prog_runs"] > 0:
                s.prog_ns.append(x["prog_ns"] / x["prog_runs"])
            if x["sink_runs"] > 0:
                s.sink_ns.append(x["sink_ns"] / x["sink_runs"])
            continue
        secs = x["seconds"]
        window = x.get("window", "flood")
        if window != "flood":
            _paced(s, x, window)
            continue
        s.pps[x["round"]] = rate(x["handled"], secs)
        c = cost_ns(x["router_task_s"], x["handled"])
        if c is not None:
            s.cost[x["round"]] = c
        if row != "ceiling" and x["received"] > 0:
            s.loss.append(max(0, x["received"] - x["handled"]) / x["received"])
        r = cost_ns(x["receive_s"], x["received"])
        if r is not None:
            s.receive_ns.append(r)
        p = cost_ns(x["process_cpu_s"], x["handled"]) if x["process_cpu_s"] > 0 else None
        if p is not None:
            s.process_ns.append(p)
        s.busy.append(x["router_cpu_s"] / secs if secs > 0 else 0.0)
        s.offered.append(rate(x["offered"], secs))
        s.offered_over_handled.append(x["offered"] / x["handled"] if x["handled"] else float("inf"))
        s.foreign.append(x["foreign_cpu_s"] / secs if secs > 0 else 0.0)
        s.retried += x.get("retried", 0)
    return s


def sent_loss(offered: int, handled: int) -> float:
    """The share of the frames the generator sent that the sink never saw
    (1.0 when it sent none: nothing was carried)."""
    return max(0, offered - handled) / offered if offered > 0 else 1.0


def _paced(s: RowSummary, x: dict, window: str) -> None:
    """A window with the generator paced: a probe of the search, or one at
    the rate the search found."""
    secs = x["seconds"]
    s.paced_foreign.append(x["foreign_cpu_s"] / secs if secs > 0 else 0.0)
    s.retried += x.get("retried", 0)
    if window == "probe":
        s.probes.append({"rate": x["rate"], "offered": rate(x["offered"], secs),
                         "delivered": rate(x["handled"], secs),
                         "loss": sent_loss(x["offered"], x["handled"])})
        return
    s.carried_rate.append(x["rate"])
    s.carried_pps[x["round"]] = rate(x["handled"], secs)
    s.carried_offered.append(rate(x["offered"], secs))
    s.carried_loss.append(sent_loss(x["offered"], x["handled"]))
    c = cost_ns(x["router_task_s"], x["handled"])
    if c is not None:
        s.carried_cost[x["round"]] = c
    r = cost_ns(x["receive_s"], x["received"])
    if r is not None:
        s.carried_receive_ns.append(r)
    p = cost_ns(x["process_cpu_s"], x["handled"]) if x["process_cpu_s"] > 0 else None
    if p is not None:
        s.carried_process_ns.append(p)


@dataclass
class TrafficSummary:
    traffic: str
    label: str
    rows: dict[str, RowSummary]

    by: str = "pps"  # the figure that decides this traffic's ratios (decide())

    def figure(self, row: str) -> str:
        """What compares `row` with others: router CPU per forwarded packet
        (at the rate it carries) for a user-space forwarder, else what
        decide() chose."""
        r = self.rows.get(row)
        return "cpu" if r is not None and r.userspace else self.by

    def vs(self, row: str, against: str, by: str | None = None) -> list[float]:
        """Per-round ratios of row to against, by `by` or figure(row):
        "pps": delivered packets/s, row over against;
        "cpu": packets per second of router CPU time the row's work used,
               row over against (against's cost per packet over row's;
               a user-space row's at the rate it carries, RowSummary.cpu_cost);
        "cost": against's forwarding cost above the ceiling over row's (how
               many times cheaper row forwards; against "ceiling": the
               ceiling's whole cost over row's)."""
        by = by or self.figure(row)
        a, b = self.rows.get(row), self.rows.get(against)
        if a is None or b is None:
            return []
        if by == "pps":
            return paired(a.pps, b.pps)
        if by == "cpu":
            return paired(b.cpu_cost, a.cpu_cost)
        ceiling = self.rows.get("ceiling")
        if ceiling is None:
            return []
        if against == "ceiling":  # the ceiling's cost over the row's cost
            return paired(ceiling.cost, a.cost)
        over_a, over_b = self.forwarding_cost(row), self.forwarding_cost(against)
        return paired({r: v for r, v in over_b.items() if v > 0},
                      {r: v for r, v in over_a.items() if v > 0})

    def forwarding_cost(self, row: str) -> dict[int, float]:
        """Per round, what forwarding costs the router's CPU per packet: the
        row's cost above the ceiling's (the same receive path, on the same
        CPU, for every row)."""
        a, ceiling = self.rows.get(row), self.rows.get("ceiling")
        if a is None or row == "ceiling" or ceiling is None:
            return {}
        return {r: v for r, c in a.cost.items() if (v := above(c, ceiling.cost.get(r))) is not None}

    def above_ceiling(self, row: str) -> list[float]:
        if row not in self.rows:
            return []
        return [v for _, v in sorted(self.forwarding_cost(row).items())]

    @property
    def router_bound(self) -> bool:
        """Every row but the ceiling was limited by the router's CPU."""
        forwarders = [s for k, s in self.rows.items() if k != "ceiling" and not s.userspace]
        return bool(forwarders) and all(s.router_bound for s in forwarders)

    @property
    def disturbed(self) -> int:
        """Flooded windows in which other people's processes took more than
        FOREIGN_LIMIT of a CPU."""
        return sum(f > FOREIGN_LIMIT for s in self.rows.values() for f in s.foreign)


def summarize(samples: list[dict], labels: dict[str, str], traffic_labels: dict[str, str]
              ) -> list[TrafficSummary]:
    out = []
    for t, tlabel in traffic_labels.items():
        rows = {}
        for key, label in labels.items():
            mine = [x for x in samples if x["traffic"] == t and x["row"] == key]
            if mine:
                rows[key] = summarize_row(key, label, mine)
        out.append(TrafficSummary(t, tlabel, rows))
    return out


# -- targets --------------------------------------------------------------------


def target_line(name: str, value: float | None, goal: float, unit: str = "x",
                at_most: bool = False) -> str:
    """`TARGET name 2.31x (goal >= 2.0x): met`, the form scripts read. The
    judgement takes the value unrounded; where the shown figure would equal
    the goal without meeting it, it gets the digits that tell them apart."""
    if value is None:
        met = False
    else:
        met = value <= goal if at_most else value >= goal
    digits = 2 if unit == "x" else 1
    if value is not None and not met:
        while digits < 6 and round(value, digits) == goal:
            digits += 1
    if unit == "x":
        shown = "n/a" if value is None else f"{value:.{digits}f}x"
        goal_text = f"{goal:.1f}x"
    else:
        shown = "n/a" if value is None else f"{value:.{digits}f}{unit}"
        goal_text = f"{goal:g}{unit}"
    op = "<=" if at_most else ">="
    return f"TARGET {name} {shown} (goal {op} {goal_text}): {'met' if met else 'not met'}"


def attach_warm_ms(native_attach_seconds: list[float]) -> float | None:
    """The median native attach after a detach, in ms: every attach of the
    run but the first, which compiles into the run's empty compile cache."""
    later = native_attach_seconds[1:]
    return median(later) * 1000 if later else None


def _worst(values: list[float | None], at_most: bool = False) -> float | None:
    """The value that decides a goal held at several traffics: the worst,
    or None when one of them was not measured."""
    if not values or any(v is None for v in values):
        return None
    return max(values) if at_most else min(values)


def ratio_targets(summaries: list[TrafficSummary]
                  ) -> list[tuple[str, float | None, float, dict[str, float | None]]]:
    """(name, value, goal, value per traffic) of each ratio target."""
    by_key = {s.traffic: s for s in summaries}
    out = []
    for name, row, against, goal, by, traffics in RATIO_TARGETS:
        each = {}
        for t in traffics:
            s = by_key.get(t)
            each[t] = median(s.vs(row, against, by)) if s else None
        out.append((name, _worst(list(each.values())), goal, each))
    return out


def prog_ns_target(summaries: list[TrafficSummary], row: str = "xdp_native"
                   ) -> tuple[float | None, dict[str, float | None]]:
    """The XDP program's run time (bpf_stats windows) at each target
    traffic, and the worst of them."""
    by_key = {s.traffic: s for s in summaries}
    each = {}
    for t in TARGET_TRAFFICS:
        r = by_key[t].rows.get(row) if t in by_key else None
        each[t] = median(r.prog_ns) if r else None
    return _worst(list(each.values()), at_most=True), each


def _each(values: dict[str, float | None], fmt: str) -> str:
    return ", ".join(f"{t} {'n/a' if v is None else fmt.format(v)}" for t, v in values.items())


def _beside(summaries: list[TrafficSummary], row: str, label: str) -> str | None:
    """One row's figures at the target traffics, for the lines beside the
    targets (no goal): vs kernel, its program's run time, and its router
    CPU per packet beside plain native XDP's, same rounds."""
    by_key = {s.traffic: s for s in summaries}
    vs, prog, extra = {}, {}, {}
    for t in TARGET_TRAFFICS:
        s = by_key.get(t)
        if s is None or row not in s.rows:
            continue
        vs[t] = median(s.vs(row, "kernel"))
        prog[t] = median(s.rows[row].prog_ns)
        if "xdp_native" in s.rows:
            a, b = s.rows[row].cost, s.rows["xdp_native"].cost
            extra[t] = median([a[r] - b[r] for r in sorted(a.keys() & b.keys())])
    if not vs:
        return None
    return (f"{label}: vs kernel {_each(vs, '{:.2f}x')}; its XDP program {_each(prog, '{:.0f} ns')}"
            f"/pkt; router CPU per packet minus native XDP's (rp_filter off) {_each(extra, '{:+.0f} ns')}")


def targets(summaries: list[TrafficSummary], scrape_ms: float | None, rss_mb: float | None,
            native_attach_s: list[float]) -> tuple[list[str], list[str]]:
    """The TARGET lines of issue 12, and the notes that go beside them
    (each target's figure per traffic, rp_filter=1's cost, the peer)."""
    lines, notes = [], []
    for name, value, goal, each in ratio_targets(summaries):
        lines.append(target_line(name, value, goal))
        if len(each) > 1:
            notes.append(f"{name}, the worse of: {_each(each, '{:.3f}x')}")
    worst, each = prog_ns_target(summaries)
    lines.append(target_line("xdp_prog_ns", worst, PROG_NS_GOAL, "ns", at_most=True))
    notes.append(f"xdp_prog_ns, the worse of: {_each(each, '{:.1f} ns')}")
    lines.append(target_line("attach_warm_ms", attach_warm_ms(native_attach_s), ATTACH_WARM_GOAL_MS,
                             "ms", at_most=True))
    lines.append(target_line("exporter_scrape_ms", scrape_ms, EXPORTER_SCRAPE_GOAL_MS, "ms",
                             at_most=True))
    lines.append(target_line("exporter_rss_mb", rss_mb, EXPORTER_RSS_GOAL_MB, "MB", at_most=True))
    for row, label in (("xdp_native_rp1", "rp_filter=1 (native XDP; the kernel row with "
                                          "rp_filter off), no goal"),
                       ("peer", "peer, xdp-tools' xdp-forward (fib mode, native), no goal")):
        line = _beside(summaries, row, label)
        if line:
            notes.append(line)
    return lines, notes


def decide(summary: TrafficSummary | None) -> tuple[str, str]:
    """Which figure decides the ratios (and the targets), and why, in one
    sentence; also sets summary.by."""
    if summary is None:
        return "cost", "no measurement of the target traffic"
    forwarders = [s for k, s in summary.rows.items() if k != "ceiling" and not s.userspace]
    if not forwarders:
        summary.by = "cost"
        return "cost", "no kernel or XDP row was measured"
    if not summary.router_bound:
        slow = [s.row for s in forwarders if not s.router_bound]
        summary.by = "cost"
        return "cost", (
            f"cost per packet decides: the generator offered less than {OFFERED_MIN}x what "
            f"{', '.join(slow)} delivered in some windows, so delivered packets/s says more about "
            "the generator than about the forwarder; ratios are forwarding costs above the "
            "ceiling (the kernel's cost over the row's)")
    busy = min(min(s.busy) for s in forwarders)
    margin = min(min(s.offered_over_handled) for s in forwarders)
    bound = (f"in every window of every kernel and XDP row the generator offered at least "
             f"{margin:.1f}x what the row delivered (the router's CPU {busy:.0%} busy or more), "
             "so the forwarder, not the generator, set the rate")
    idle = [s.row for s in forwarders if min(s.busy) < BUSY_MIN]
    if idle:
        summary.by = "cpu"
        return "cpu", (
            f"packets per second of router CPU decides (delivered packets over the CPU time the "
            f"router's work used): the generator offered at least {margin:.1f}x what each row "
            f"delivered, but the router's CPU was under {BUSY_MIN:.0%} busy in some windows of "
            f"{', '.join(idle)} (down to {busy:.0%}): what took the packets away (recvbox's sink, "
            "on the generator's CPU) set their rate, not the router, so delivered packets/s "
            "would understate those rows")
    if summary.disturbed:
        summary.by = "cpu"
        total = sum(len(s.foreign) for s in summary.rows.values())
        return "cpu", (
            f"packets per second of router CPU decides (delivered packets over the CPU time the "
            f"router's work used; on a machine of its own that is delivered packets/s): {bound}, "
            f"but other people's processes took part of the machine in {summary.disturbed} of "
            f"{total} windows, which lowers delivered packets/s and not this")
    summary.by = "pps"
    return "pps", f"delivered packets/s decides: {bound}"


# -- tables ---------------------------------------------------------------------


def si(value: float | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}" if unit == "M" else f"{value / scale:.0f}{unit}"
    return f"{value:.0f}"


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def _pct(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0%}" if value >= 0.01 or value == 0 else f"{value:.2%}"


def carried_cell(s: RowSummary) -> str:
    """The carried-rate column: "—" for a row not searched (kernel, XDP),
    "nothing" for one that carried not even the lowest rate probed."""
    if s.carries_nothing:
        return "nothing"
    return si(s.carried_median)


def traffic_table(summary: TrafficSummary) -> list[str]:
    head = ("| path | delivered pps, flooded | min–max | vs kernel | lost in router "
            "| router CPU ns/pkt | carried pps | router CPU ns/pkt carried "
            "| receive ns/pkt | above ceiling ns/pkt | XDP prog ns/pkt | process CPU ns/pkt |")
    lines = [head, "| --- |" + " ---: |" * 11]
    for key, s in summary.rows.items():
        lo_hi = s.pps_spread
        vs_kernel = median(summary.vs(key, "kernel"))  # by the row's figure
        lines.append(
            f"| {s.label}{' †' if s.userspace else ''} | {si(s.pps_median)} | "
            f"{si(lo_hi[0]) + '–' + si(lo_hi[1]) if lo_hi else '—'} | "
            f"{_num(vs_kernel, '{:.2f}x')} | "
            f"{_pct(median(s.loss)) if key != 'ceiling' else '(all dropped)'} | "
            f"{_num(s.cost_median)} | {carried_cell(s)} | {_num(s.carried_cost_median)} | "
            f"{_num(median(s.receive_ns))} | "
            f"{_num(median(summary.above_ceiling(key)))} | "
            f"{_num(median(s.prog_ns))} | {_num(median(s.process_ns))} |")
    return lines


def control_table(cp: dict) -> list[str]:
    lines = ["| step | median | min–max | n |", "| --- | ---: | ---: | ---: |"]
    for label, values, unit in cp["rows"]:
        if not values:
            lines.append(f"| {label} | — | — | 0 |")
            continue
        lo, hi = spread(values)
        scale = 1000 if unit == "s->ms" else 1  # attach and detach are timed in seconds
        fmt = {"s->ms": "{:.0f} ms", "ms": "{:.2f} ms", "MB": "{:.1f} MB"}[unit]
        lines.append(f"| {label} | {fmt.format(median(values) * scale)} | "
                     f"{fmt.format(lo * scale)}–{fmt.format(hi * scale)} | {len(values)} |")
    return lines


SETUP = (
    "the namespace lab (`xdpfwd lab up`, namespaces bench-sendbox, bench-router, "
    "bench-recvbox), veth links. **Generator**: an XDP program run by BPF_PROG_TEST_RUN in "
    "live-frame mode in sendbox on CPU 0, transmitting into the router's eth1; what the "
    "eth1's ring (256 frames) has no room for is dropped there, as a NIC drops at a full RX "
    "ring. **Pacing**: for the user-space rows the generator is also paced (a token bucket in "
    f"the program: a group of {PACE_GROUP} frames per interval, the devmap bulk in which the "
    f"flooding generator's frames reach the router too; at most {PACE_BURST} back to back "
    "after a stall; frames beyond the rate are recycled unsent and do not count as offered), "
    "to find the "
    f"highest rate each carries with under {LOSS_LIMIT:.0%} of what was sent lost: from what "
    f"it delivered flooded, up by {STEP}x while under {LOSS_LIMIT:.0%} (down while not), then "
    f"one bisection step, {PROBE_SECONDS:g}-second probes, in the first round; every round "
    "then measures it at that rate too. **Receive path**: "
    "the router's eth1 runs threaded NAPI, its thread pinned to CPU 1: "
    "veth's receive, the XDP program, the kernel's forwarding, the packet socket's copy into "
    "a user-space forwarder's ring and the transmit into recvbox all run there, for every "
    "row alike. User-space forwarders are pinned to CPU 1 too, beside that thread. **Sink**: "
    "recvbox's eth0 runs threaded NAPI too, its thread pinned to CPU 0 (SCHED_FIFO, ahead of "
    "the generator), with an XDP program that counts and drops IPv4/UDP and passes ARP. "
    "**Router CPU** is the NAPI thread's, ksoftirqd's and the forwarder processes' CPU time "
    "on CPU 1 (/proc), so neither the generator's transmit nor the sink is in it. **Compared** "
    "by router CPU per forwarded packet (user-space rows): each at the rate it carries, "
    "against the kernel row flooded, where it is CPU-bound and what it cannot take costs it "
    "nothing (the generator's side of the veth drops it, on CPU 0). GRO is on "
    "on the router's eth1 (veth needs NAPI there to accept redirected frames). The XDP "
    "programs' run times come from separate 1-second windows with kernel.bpf_stats_enabled=1 "
    "(first round); every other window runs with it off, since its clock reads slow every "
    "XDP program on the path")

BY_TEXT = {
    "pps": "delivered packets/s",
    "cpu": "packets per second of router CPU (other people's processes disturbed some windows)",
    "cost": "forwarding cost per packet above the ceiling (the generator limited some rows)",
}
USERSPACE_BY = ("router CPU per forwarded packet, receive path included, at the rate the row "
                "carries, against the kernel's flooded")

USERSPACE_NOTE = (
    "† The user-space rows share the router's CPU with their own receive path (the NAPI "
    "thread: veth, the packet socket's copy into the ring, the kernel dropping its own copy). "
    "Flooded, that thread spends most of the CPU receiving frames their full ring then drops "
    "(receive livelock): their delivered pps, flooded, is what they deliver under overload, "
    "a fact of its own, not the cost of forwarding a packet. Their vs kernel is by router CPU "
    "per forwarded packet (NAPI thread, ksoftirqd and forwarder processes over packets "
    "delivered) with the generator paced at the rate they carry (under "
    f"{LOSS_LIMIT:.0%} lost), the kernel's (flooded) over theirs; vs each other likewise, "
    "both at their carried rates.")

COLUMNS = [
    ("delivered pps, flooded", "packets/s counted by the sink on recvbox (the ceiling row: "
                               "dropped by its program on the router's eth1) while the "
                               "generator floods the router; median over rounds. For † rows "
                               "their throughput under overload, receive livelock included"),
    ("vs kernel", "this row over kernel forwarding in the same round, median of the rounds: "
                  "by the figure that decides (said under each table), for † rows by router "
                  "CPU per forwarded packet at the rate they carry against the kernel's "
                  "flooded (n/a for a row that carries nothing)"),
    ("lost in router", "frames the router's eth1 took from its ring but the sink never saw. "
                       "What the router cannot take never gets that far: the generator's "
                       "transmit drops it at the full ring, as a NIC drops at a full RX ring"),
    ("router CPU ns/pkt", "CPU time of the router's work per delivered packet, flooded: "
                          "the router's eth1 NAPI thread, CPU 1's ksoftirqd and the "
                          "forwarder's processes with their children (/proc/PID/stat; other "
                          "people's processes on that CPU are not counted). Neither the "
                          "generator's transmit nor recvbox's sink runs there"),
    ("carried pps", "† rows: packets/s delivered with the generator paced at the highest "
                    "rate the search found them to carry with under "
                    f"{LOSS_LIMIT:.0%} of what it sent lost (first round's search, every "
                    "round's window; median over rounds); \"nothing\" when not even the "
                    "lowest rate probed got through. Not searched for the kernel and XDP "
                    "rows (—)"),
    ("router CPU ns/pkt carried", "† rows: router CPU ns/pkt (as above) in the windows at "
                                  "the carried rate; what their vs kernel compares"),
    ("receive ns/pkt", "the NAPI thread's and ksoftirqd's CPU time per frame the router's "
                       "eth1 received: for the kernel and XDP rows all of their work, for † "
                       "rows their receive path"),
    ("above ceiling ns/pkt", "router CPU ns/pkt minus the ceiling's, same round: the cost of "
                             "forwarding beyond receiving and dropping"),
    ("XDP prog ns/pkt", "the row's XDP program alone: run_time_ns / run_cnt from "
                        "kernel.bpf_stats_enabled (includes the stats' own clock reads)"),
    ("process CPU ns/pkt", "user+system time of the forwarder's processes (afpacket "
                           "supervisor and workers, naive loop) per packet, softirq work "
                           "done in their context included"),
]


def _notes(summary: TrafficSummary) -> str:
    rows = summary.rows.values()
    offered = [o for r in rows for o in r.offered]
    busy = [b for r in rows for b in r.busy]
    foreign = [f for r in rows for f in r.foreign]
    sink = [n for r in rows for n in r.sink_ns]
    retried = sum(r.retried for r in rows)
    parts = []
    cheaper = [f"{r.label.removeprefix('xdpfwd ')} {q:.2f}x" for k, r in summary.rows.items()
               if k not in ("kernel", "ceiling") and not r.userspace
               and (q := median(summary.vs(k, "kernel", by="cost"))) is not None]
    if cheaper:
        parts.append("forwarding cost per packet above the ceiling, kernel's over the row's: "
                     + ", ".join(cheaper))
    if summary.by != "cpu":
        per_cpu = [f"{r.label.removeprefix('xdpfwd ')} {q:.2f}x" for k, r in summary.rows.items()
                   if k != "kernel" and not r.userspace
                   and (q := median(summary.vs(k, "kernel", by="cpu"))) is not None]
        if per_cpu:
            parts.append("by router CPU per packet instead: " + ", ".join(per_cpu))
    if sink:
        parts.append(f"the sink's own program: {median(sink):.0f} ns/pkt")
    if offered:
        parts.append(f"the generator offered {si(min(offered))}–{si(max(offered))} pps")
    if busy:
        parts.append(f"router CPU busy {min(busy):.0%}–{max(busy):.0%}")
    if foreign:
        parts.append(f"other people's processes took up to {_share(max(foreign))} of a CPU in a "
                     "window" + (f" ({retried} window(s) measured again)" if retried else ""))
    return "; ".join(parts) + "."


def carried_lines(summary: TrafficSummary) -> list[str]:
    """For each † row: the rate it carries, how the search got there, and
    its CPU at that rate beside its figures flooded."""
    out = []
    for r in summary.rows.values():
        if not r.userspace or not (r.probes or r.carried_rate):
            continue
        trail = ", ".join(f"{si(p['rate'])} {_pct(p['loss'])}" for p in r.probes)
        searched = f"; searched (paced pps, share lost): {trail}" if trail else ""
        if r.carries_nothing:
            head = f"{r.label}: carries nothing{searched}"
        else:
            head = (f"{r.label}: carries {si(r.carried_median)} pps (the generator paced at "
                    f"{si(median(r.carried_rate))} sent {si(median(r.carried_offered))}, "
                    f"{_pct(median(r.carried_loss))} lost)"
                    f"{searched}; there router CPU {_num(r.carried_cost_median)} ns/pkt, "
                    f"receive {_num(median(r.carried_receive_ns))} ns/frame, its processes "
                    f"{_num(median(r.carried_process_ns))} ns/pkt")
        out.append(f"{head}. Flooded (overload): {si(r.pps_median)} pps delivered at "
                   f"{_num(r.cost_median)} ns/pkt.")
    return out


def _share(cpus: float) -> str:
    """A share of a CPU. The estimate counts a process that ends in a window
    with its whole life's CPU time, so it can exceed what the machine has."""
    return f"{cpus:.0%}" if cpus <= 2 else "over 200%"


def _disturbed(summaries: list[TrafficSummary]) -> str:
    """A warning when other people's processes took more than
    FOREIGN_LIMIT of a CPU in some windows, or an empty string."""
    shares = [f for s in summaries for r in s.rows.values() for f in r.foreign + r.paced_foreign]
    bad = [f for f in shares if f > FOREIGN_LIMIT]
    if not bad:
        return ""
    return (f"other people's processes took more than {FOREIGN_LIMIT:.0%} of a CPU in "
            f"{len(bad)} of {len(shares)} windows (up to {_share(max(bad))}; this machine is "
            "shared): those figures are disturbed, and the medians less so")


def markdown(m: dict, command: str, plan: str, summaries: list[TrafficSummary], why: str,
             cp: dict, errors: list[str], targets: list[str], elapsed: float,
             notes: list[str] = (), where: list[str] = (), chart: str | None = None,
             absent: dict[str, str] | None = None) -> str:
    """notes: beside the targets; where: where the kernel's, native XDP's and AF_PACKET's time goes;
    chart: the SVG's file name; absent: rows that could not run, and why."""
    from bench.machine import one_line

    keys = list(dict.fromkeys(k for s in summaries for k in s.rows))
    out = ["# xdpfwd benchmark: forwarding through the router, side by side", "",
           f"- **date**: {m['date']}",
           f"- **machine**: {one_line(m)}",
           f"- **command**: `{command}` ({plan}; {elapsed:.0f} s in all)",
           f"- **setup**: {SETUP}.",
           f"- **rows**: {', '.join(keys)} in turn, for each kind of "
           "traffic in each round (each row attached, measured, detached), so drift hits them "
           "alike and the rows of one ratio are measured within a minute of each other; "
           "medians over rounds, min–max spread.",
           f"- **what decides**: {why}.", ""]
    for key, reason in (absent or {}).items():
        out[-1:-1] = [f"- **{key}**: not available: {reason}"]
    if chart:
        out += [f"![delivered packets/s and router CPU ns per packet, per row]({chart})", ""]
    disturbed = _disturbed(summaries)
    if disturbed:
        out[-1:-1] = [f"- **warning**: {disturbed}"]
    for s in summaries:
        out += [f"## {s.label}", ""] + traffic_table(s) + ["", f"Ratios by {BY_TEXT[s.by]} († rows: "
                                                            f"by {USERSPACE_BY}). " + _notes(s), ""]
        if any(r.userspace for r in s.rows.values()):
            out += [USERSPACE_NOTE, ""] + [f"- {line}" for line in carried_lines(s)] + [""]
    out += ["## Control plane", ""] + control_table(cp) + [""]
    out += ["## Columns", ""] + [f"- **{name}**: {text}." for name, text in COLUMNS] + [""]
    if errors:
        out += ["## Errors", ""] + [f"- {e}" for e in errors] + [""]
    if where:
        out += ["## Where the router's CPU goes (kernel, native XDP, AF_PACKET)", ""] + \
            [f"- {w}" for w in where] + [""]
    out += ["## Targets (64 B; 1 flow, and 1000 flows where named)", "", "```"] + targets + ["```", ""]
    out += [f"- {n}" for n in notes] + ([""] if notes else [])
    return "\n".join(out)


def summary_json(summaries: list[TrafficSummary]) -> dict:
    out = {}
    for s in summaries:
        rows = {}
        for key, r in s.rows.items():
            rows[key] = {
                "label": r.label,
                "pps_median": r.pps_median, "pps_spread": r.pps_spread,
                "vs_kernel": median(s.vs(key, "kernel")), "vs_kernel_by": s.figure(key),
                "loss_median": median(r.loss) if key != "ceiling" else None,
                "router_ns_per_pkt": r.cost_median,
                "receive_ns_per_pkt": median(r.receive_ns),
                "above_ceiling_ns_per_pkt": median(s.above_ceiling(key)),
                "prog_ns_per_pkt": median(r.prog_ns),
                "process_ns_per_pkt": median(r.process_ns),
                "router_bound": r.router_bound,
            }
            if r.userspace:
                rows[key].update({
                    "carried_pps": r.carried_median, "carried_rate_pps": median(r.carried_rate),
                    "carried_offered_pps": median(r.carried_offered),
                    "carries_nothing": r.carries_nothing,
                    "carried_loss_median": median(r.carried_loss),
                    "carried_router_ns_per_pkt": r.carried_cost_median,
                    "carried_receive_ns_per_pkt": median(r.carried_receive_ns),
                    "carried_process_ns_per_pkt": median(r.carried_process_ns),
                    "probes": r.probes,
                })
        out[s.traffic] = {"label": s.label, "router_bound": s.router_bound,
                          "disturbed_windows": s.disturbed, "ratios_by": s.by, "rows": rows}
    return out
