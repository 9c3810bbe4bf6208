"""The benchmark run: in every round, for every kind of traffic, each row
in turn (started, measured, stopped: A B C D E F, A B C D E F, ...), so
the rows compared in one ratio were measured within a minute of each
other; then the report.

Every row is measured flooded. A user-space row is measured a second time
with the generator paced at the rate it carries (bench/rate.py says why),
which the first round searches for and later rounds reuse.

    make bench            # 5 rounds x 5 s, 64 and 1500 bytes x 1 and 1000 flows
    make bench QUICK=1    # 2 rounds x 3 s, 64 bytes x 1 and 1000 flows (about 4 minutes)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import chart, cpu, exporter, frames, machine, peer, profile, rate, report, router
from bench.measure import Sample, measure
from bench.rows import PORTS, Row, all_rows
from bench.testbed import GENERATOR_CPU, ROUTER_CPU, Testbed

RESULTS = Path(__file__).parent / "results"
FOREIGN_LIMIT = report.FOREIGN_LIMIT  # of a CPU, other people's, before a window is redone
MAX_TRIES = 3         # windows per sample at most
STATS_SECONDS = 1.0   # the window that times the XDP programs (first round only)
# Rows whose router CPU is profiled on the NAPI thread (first round): the
# kernel beside native XDP shows what both pay that a NIC would not (the
# wake-up of recvbox's NAPI thread), the ceiling what receiving alone costs.
PROFILED = ("kernel", "xdp_native", "ceiling")
# A large routing table for one attach at the end: a full Internet table
# is about a million IPv4 routes; this many shows how attach scales.
BIG_TABLE, BIG_TABLE_ROUTES = 200, 100_000


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Plan:
    def __init__(self, quick: bool, rounds: int | None = None, seconds: float | None = None,
                 rows: list[str] | None = None):
        self.quick = quick
        self.rows = rows
        self.rounds = rounds or (2 if quick else 5)
        self.seconds = seconds or (3.0 if quick else 5.0)
        # Both kinds of traffic the targets name, also when quick.
        sizes, flows = ([64], [1, frames.MANY_FLOWS]) if quick else ([64, 1500],
                                                                     [1, frames.MANY_FLOWS])
        self.traffics = [frames.Traffic(s, f) for s in sizes for f in flows]
        self.retry_budget = 25.0 if quick else 40.0  # seconds of measuring again, at most
        self.spent = 0.0
        self.carried: dict[tuple[str, str], float] = {}  # (traffic, row) -> pps; 0: nothing

    def describe(self) -> str:
        kinds = ", ".join(t.label for t in self.traffics)
        return f"{self.rounds} rounds x {self.seconds:g} s per row and traffic ({kinds})"


def _quiet(bed, limit_s: float) -> None:
    """Wait (at most limit_s) until other people's processes use less than
    FOREIGN_LIMIT of a CPU over half a second."""
    ours = cpu.namespace_inodes(bed.namespaces)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        a = cpu.snapshot(ours)
        time.sleep(0.5)
        b = cpu.snapshot(ours)
        if cpu.foreign_seconds(a, b) / (b.when - a.when) < FOREIGN_LIMIT:
            return


def _measure(bed, row, traffic, rnd, plan, spent, seconds=None, **paced) -> tuple[Sample, float]:
    """One sample. When other people's processes took more than
    FOREIGN_LIMIT of a CPU during it, wait for them to calm down and measure
    again (up to MAX_TRIES, while the budget lasts); keep the least
    disturbed window. paced: measure()'s rate and window."""
    seconds = seconds or plan.seconds
    sample = measure(bed, row, traffic, rnd, seconds, **paced)
    tries = 1
    while (sample.foreign_cpu_s / sample.seconds > FOREIGN_LIMIT and tries < MAX_TRIES
           and spent < plan.retry_budget):
        log(f"  other processes took {sample.foreign_cpu_s / sample.seconds:.0%} of a CPU: "
            "measuring again")
        t0 = time.monotonic()
        _quiet(bed, 5.0)
        again = measure(bed, row, traffic, rnd, seconds, **paced)
        spent += time.monotonic() - t0
        tries += 1
        if again.foreign_cpu_s / again.seconds < sample.foreign_cpu_s / sample.seconds:
            sample = again
    sample.retried = tries - 1
    return sample, spent


def _carried(bed, row, traffic, rnd, plan, samples, flooded: Sample) -> None:
    """A user-space row at the rate it carries: searched for (from what it
    delivered flooded) the first time, every probe kept as a sample; then
    one window at that rate. A row that carries nothing gets no window."""
    key = (traffic.key, row.key)
    if key not in plan.carried:
        def probe(pps: float) -> rate.Probe:
            s, plan.spent = _measure(bed, row, traffic, rnd, plan, plan.spent, rate.PROBE_SECONDS,
                                     rate=pps, window="probe")
            samples.append(s)
            return rate.Probe(pps, s.offered / s.seconds, s.handled / s.seconds)

        plan.carried[key], probes = rate.search(probe, flooded.handled / flooded.seconds)
        trail = ", ".join(f"{report.si(p.rate)} {report._pct(p.loss)}" for p in probes)
        found = report.si(plan.carried[key]) if plan.carried[key] else "nothing"
        log(f"  {row.key} carries {found} (< {rate.LOSS_LIMIT:.0%} lost; probed {trail})")
    if plan.carried[key]:
        s, plan.spent = _measure(bed, row, traffic, rnd, plan, plan.spent,
                                 rate=plan.carried[key], window="carried")
        samples.append(s)
        log(f"round {rnd + 1}/{plan.rounds} {traffic.key:<16} {row.key:<10} "
            f"{report.si(s.handled / s.seconds):>6} pps  at {report.si(plan.carried[key])} pps "
            f"offered, lost {report._pct(report.sent_loss(s.offered, s.handled))}, router "
            f"CPU {report._num(report.cost_ns(s.router_task_s, s.handled))} ns/pkt")


def _row(bed, row, traffic, rnd, plan, samples, errors, where) -> dict | None:
    """Start a row, measure it with one kind of traffic, stop it. The first
    round also times its XDP program, profiles the router's CPU into `where`
    (the PROFILED rows and AF_PACKET), and for native XDP times attaching
    again and the exporter.
    Returns the exporter's figures when it measured them."""
    exp = None
    first = rnd == 0 and traffic == plan.traffics[0]
    bed.resolve_neighbours()
    try:
        row.start(bed)
        s, plan.spent = _measure(bed, row, traffic, rnd, plan, plan.spent)
        samples.append(s)
        log(f"round {rnd + 1}/{plan.rounds} {traffic.key:<16} {row.key:<10} "
            f"{report.si(s.handled / s.seconds):>6} pps  router CPU {s.router_cpu_s / s.seconds:.0%}")
        if row.userspace:
            _carried(bed, row, traffic, rnd, plan, samples, s)
            carried = plan.carried.get((traffic.key, row.key))
            if rnd == 0 and row.key == "afpacket" and carried:
                shares = profile.profile(bed, traffic, cpu=ROUTER_CPU, rate_pps=carried)
                if shares:
                    where[(traffic.key, row.key)] = shares
        if rnd == 0 and row.prog_id:
            samples.append(measure(bed, row, traffic, rnd, STATS_SECONDS, bpf_stats=True))
        if rnd == 0 and row.key in PROFILED:
            shares = profile.profile(bed, traffic)
            if shares:
                where[(traffic.key, row.key)] = shares
        if first and row.key == "xdp_native":
            row.attach_again(bed)
            exp = exporter.measure(bed.router)
    except router.RouterError as e:
        errors.append(f"round {rnd + 1}, {traffic.key}, {row.key}: {e}")
        log(f"round {rnd + 1} {traffic.key} {row.key}: FAILED: {e}")
    finally:
        try:
            row.stop(bed)
        except router.RouterError as e:
            errors.append(f"round {rnd + 1}, {traffic.key}, {row.key} stop: {e}")
    return exp


def run(plan: Plan, command: str) -> int:
    started = time.monotonic()
    rows = [r for r in all_rows() if plan.rows is None or r.key in plan.rows]
    samples: list[Sample] = []
    errors: list[str] = []
    where: dict = {}
    absent: dict[str, str] = {}
    exporter_result = None
    if any(r.key == "peer" for r in rows):
        try:
            peer.command()
        except (peer.PeerUnavailable, OSError) as e:
            absent["peer"] = f"xdp-tools' xdp-forward: {e}"
            log(f"peer row: not available: {e}")
            rows = [r for r in rows if r.key != "peer"]
    # A compile cache of the run's own (root's, 0700), empty at the start:
    # the first attach compiles (the cold figure) whatever earlier runs left
    # in /var/cache/xdpfwd, and the later ones load from it (attach_warm_ms).
    cache = tempfile.mkdtemp(prefix="xdpfwd-bench-cache-")
    os.environ["XDPFWD_CACHE_DIR"] = cache
    try:
        with Testbed(plan.traffics, log=log) as bed:
            for rnd in range(plan.rounds):
                for t in plan.traffics:
                    for row in rows:
                        exp = _row(bed, row, t, rnd, plan, samples, errors, where)
                        exporter_result = exporter_result or exp
            native = next((r for r in rows if r.key == "xdp_native"), None)
            if native:
                try:
                    _attach_with_routes(bed, native)
                except (router.RouterError, subprocess.SubprocessError) as e:
                    errors.append(f"attach with {BIG_TABLE_ROUTES} routes: {e}")
    finally:
        del os.environ["XDPFWD_CACHE_DIR"]
        shutil.rmtree(cache, ignore_errors=True)
    elapsed = time.monotonic() - started
    return _report(plan, command, rows, samples, errors, exporter_result, elapsed, where, absent)


def _attach_with_routes(bed, row: Row) -> None:
    """A warm native attach, and its detach, on a router holding
    BIG_TABLE_ROUTES more routes in a table of their own, as a router with
    a large table does: attach reads every route's MTU (its copy of the
    unlocked ones)."""
    batch = "".join(f"route add 100.{i >> 16}.{(i >> 8) & 255}.{i & 255}/32 dev eth0 table {BIG_TABLE}\n"
                    for i in range(BIG_TABLE_ROUTES))
    subprocess.run(["ip", "-n", bed.router, "-batch", "-"], input=batch, text=True, check=True,
                   capture_output=True)
    try:
        t = router.xdpfwd(bed.router, "attach", *PORTS, "--mode", "native")
        row._time("attach_routes", t.seconds)
        t = router.xdpfwd(bed.router, "detach")
        row._time("detach_routes", t.seconds)
    finally:
        subprocess.run(["ip", "-n", bed.router, "route", "flush", "table", str(BIG_TABLE)],
                       capture_output=True)


def _control_plane(rows: list[Row], exp: dict | None) -> dict:
    t = {r.key: r.timings for r in rows}
    native = t.get("xdp_native", {}).get("attach", [])
    many = f"{BIG_TABLE_ROUTES:,}".replace(",", " ")
    cp = [
        ("attach, native: cold (the run's first: bcc import + compile)", native[:1], "s->ms"),
        ("attach, native: warm (later ones, after a detach: from the compile cache)", native[1:],
         "s->ms"),
        ("attach, native: again while attached (no change)", t.get("xdp_native", {}).get("attach_again", []),
         "s->ms"),
        (f"attach, native: warm, {many} more routes in another table",
         t.get("xdp_native", {}).get("attach_routes", []), "s->ms"),
        (f"detach, native: {many} more routes in another table",
         t.get("xdp_native", {}).get("detach_routes", []), "s->ms"),
        ("attach, skb", t.get("xdp_skb", {}).get("attach", []), "s->ms"),
        ("attach, afpacket", t.get("afpacket", {}).get("attach", []), "s->ms"),
        ("detach, native", t.get("xdp_native", {}).get("detach", []), "s->ms"),
        ("detach, skb", t.get("xdp_skb", {}).get("detach", []), "s->ms"),
        ("detach, afpacket", t.get("afpacket", {}).get("detach", []), "s->ms"),
    ]
    if exp:
        cp += [(f"exporter scrape (/metrics, {len(exp['scrape_ms'])} scrapes)", exp["scrape_ms"], "ms"),
               ("exporter RSS after the scrapes", [exp["rss_mb"]], "MB")]
    return {"rows": cp}


def _parts(shares: dict[str, float], cost: float | None) -> str:
    """The parts of a profile with their shares, and each share of `cost`
    (ns per packet) when there is one."""
    return ", ".join(f"{name} {pct:.0f}%" + (f" (~{pct * cost / 100:.0f} ns)" if cost else "")
                     for name, pct in shares.items() if pct >= 0.5)


def _without_wake(s, where: dict) -> str | None:
    """Kernel over native XDP by router CPU per packet (the ratio of the two
    rows' medians), as measured and with each row's share spent waking
    recvbox's NAPI thread (its profile, one window) taken out."""
    kernel, native = s.rows.get("kernel"), s.rows.get("xdp_native")
    k_shares, n_shares = where.get((s.traffic, "kernel")), where.get((s.traffic, "xdp_native"))
    if not (kernel and native and k_shares and n_shares):
        return None
    k, n = kernel.cost_median, native.cost_median
    if not k or not n:
        return None
    k_wake, n_wake = k_shares.get(profile.WAKE, 0.0) / 100, n_shares.get(profile.WAKE, 0.0) / 100
    if k_wake >= 1 or n_wake >= 1:
        return None
    return (f"{s.label}: kernel over native XDP, router CPU per packet, {k / n:.2f}x "
            f"({report._num(k)} / {report._num(n)} ns); "
            f"{k * (1 - k_wake) / (n * (1 - n_wake)):.2f}x without each one's share spent "
            f"waking recvbox's NAPI thread ({report._num(k * (1 - k_wake))} / "
            f"{report._num(n * (1 - n_wake))} ns)")


WITHOUT_WAKE_NOTE = (
    "Waking recvbox's NAPI thread is a cost of this lab: a wake-up of a thread on the other "
    "CPU (try_to_wake_up(), an IPI, and whatever this VM's hypervisor adds: not separated "
    "here), where a NIC's transmit writes a doorbell. The kernel checks for it after every "
    "skb it sends, XDP's devmap once per router NAPI poll (up to 64 frames); either wakes "
    "recvbox's thread only when it has gone idle. The ratios just above are of the rows' "
    "medians with shares from one profiled window each, not the paired figures the TARGET "
    "lines judge")


def _native_line(s, native, ceiling) -> str:
    """Native XDP's router CPU per packet: the ceiling's, its program's and
    the rest."""
    prog = report.median(native.prog_ns)
    cost = native.cost_median
    above = report.median(s.above_ceiling("xdp_native"))
    ceil_prog = report.median(ceiling.prog_ns) if ceiling else None
    line = (f"{s.label}: router CPU {report._num(cost)} ns/pkt, of which the ceiling's "
            f"receive-and-drop {report._num(ceiling.cost_median if ceiling else None)} ns "
            f"(its own program {report._num(ceil_prog)} ns) and "
            f"{report._num(above)} ns above it; xdpfwd's program (bpf_stats) "
            f"{report._num(prog)} ns")
    if prog is not None and above is not None and ceil_prog is not None:
        line += (f", so {above - (prog - ceil_prog):.0f} ns above the ceiling are outside "
                 "the program (redirect, devmap flush, veth transmit into recvbox, "
                 "waking its NAPI thread)")
    return line


def _where(summaries, where: dict) -> list[str]:
    """Where the kernel's, native XDP's and AF_PACKET's router CPU goes,
    from this run's figures only."""
    out = []
    for s in summaries:
        native, ceiling = s.rows.get("xdp_native"), s.rows.get("ceiling")
        if native is not None:
            out.append(_native_line(s, native, ceiling))
        for key in PROFILED:
            shares = where.get((s.traffic, key))
            if shares:
                r = s.rows.get(key)
                cost = r.cost_median if r else None
                out.append(f"{s.label}, `perf record -g` of the router's NAPI thread for 1 s, "
                           f"{r.label if r else key}: the share of its samples per part (and "
                           f"that share of its router CPU per packet flooded, "
                           f"{report._num(cost)} ns, median): {_parts(shares, cost)}")
    without = [line for s in summaries if (line := _without_wake(s, where))]
    if without:
        out += without + [WITHOUT_WAKE_NOTE]
    for s in summaries:
        afp, shares = s.rows.get("afpacket"), where.get((s.traffic, "afpacket"))
        if afp is None or not shares:
            continue
        cost = afp.carried_cost_median
        parts = _parts(shares, cost)
        out.append(f"{s.label}, `perf record -g` of all of the router's CPU for 1 s, "
                   f"{afp.label} paced at the rate it carries, in a window of its own: the "
                   f"share of the busy samples per part (and that share of the router CPU "
                   f"per packet of the carried windows, {report._num(cost)} ns, median): {parts}")
    return out


def _report(plan, command, rows, samples, errors, exp, elapsed, where=None, absent=None) -> int:
    m = machine.describe()
    data = [s.as_dict() for s in samples]
    labels = {r.key: r.label for r in rows}
    summaries = report.summarize(data, labels, {t.key: t.label for t in plan.traffics})
    for s in summaries:
        report.decide(s)  # each table's ratios by the figure that decides for it
    target = next((s for s in summaries if s.traffic == report.TARGET_TRAFFIC), None)
    by, why = report.decide(target)
    native = {r.key: r.timings for r in rows}.get("xdp_native", {}).get("attach", [])
    targets, notes = report.targets(summaries, report.median(exp["scrape_ms"]) if exp else None,
                                    exp["rss_mb"] if exp else None, native)
    breakdown = _where(summaries, where or {})
    cp = _control_plane(rows, exp)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.svg").write_text(chart.svg(summaries, f"xdpfwd benchmark, {m['date']}"))
    md = report.markdown(m, command, plan.describe(), summaries, why, cp, errors, targets, elapsed,
                         notes, breakdown, "latest.svg", absent)
    (RESULTS / "latest.md").write_text(md)
    (RESULTS / "latest.json").write_text(json.dumps({
        "machine": m, "command": command, "plan": plan.describe(),
        "generator_cpu": GENERATOR_CPU, "router_cpu": ROUTER_CPU,
        "decided_by": by, "why": why, "samples": data,
        "summary": report.summary_json(summaries),
        "control_plane": [{"step": label, "values": v, "unit": u} for label, v, u in cp["rows"]],
        "exporter": exp, "errors": errors, "targets": targets, "target_notes": notes,
        "where": [{"traffic": t, "row": k, "shares": v} for (t, k), v in (where or {}).items()],
        "absent": absent or {}, "elapsed_s": elapsed,
    }, indent=2) + "\n")
    print(md, end="")
    print(f"(also written to {RESULTS}/latest.md, latest.json and latest.svg)\n")
    print("\n".join(targets))
    return 1 if errors else 0
