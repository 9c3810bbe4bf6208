"""One measurement: a row is in place, the generator sends one kind of
traffic for a fixed time, as fast as it can (flooding the router) or paced
at a given rate, and every counter is read at both ends of the window
(after a short warm-up, so queues and caches are in steady state).
"""

import time
from dataclasses import asdict, dataclass

from bench import cpu
from bench.frames import Traffic
from bench.rows import Row
from bench.testbed import GENERATOR_CPU, ROUTER_CPU, Testbed

WARMUP = 0.25  # seconds of traffic before the window opens
DRAIN_LIMIT = 3.0  # seconds to wait, at most, for what earlier windows queued
DRAIN_QUIET = 0.1  # ... until the sink counted nothing for this long


@dataclass
class Sample:
    row: str
    traffic: str
    round: int
    seconds: float        # the window
    offered: int          # frames the generator made
    entered: int          # frames sendbox's eth0 put into the router
    handled: int          # delivered at the sink (the ceiling row: dropped by it)
    received: int         # frames the router's eth1 took from its ring
    router_cpu_s: float   # busy time of the router's CPU
    router_task_s: float  # CPU time of the router's work: receive_s + process_cpu_s
    receive_s: float      # the router's eth1 NAPI thread and ksoftirqd: its receive path
    generator_cpu_s: float
    foreign_cpu_s: float  # other people's processes, any CPU
    prog_ns: int          # the row's XDP program: run time and runs (bpf_stats)
    prog_runs: int
    sink_ns: int          # the sink's own run time and runs
    sink_runs: int
    process_cpu_s: float  # the row's user-space forwarder processes
    userspace: bool       # a user-space forwarder (its processes share the CPU with the receive)
    bpf_stats: bool       # a window with kernel.bpf_stats_enabled=1, for run times only
    retried: int = 0      # measured again because other people's load was high
    rate: float = 0.0     # the generator paced at this many packets/s; 0: flooding
    window: str = "flood"  # "flood"; or paced: "probe" (searching the rate a row
    #                        carries, bench/rate.py) or "carried" (at that rate)

    def as_dict(self) -> dict:
        return asdict(self)


def _read(bed: Testbed, row: Row, gen, ours: set[int], receive: list[int]):
    snap = cpu.snapshot(ours, receive, row.pids)
    handled = bed.ceiling.count() if row.counts_at == "ceiling" else bed.sink.count()
    return (snap, gen.count(), bed.link_sent(), handled, row.prog_stats(), bed.sink.run_stats(),
            bed.router_received())


def drain(bed: Testbed, row: Row) -> None:
    """Wait until what an earlier window left queued has gone through: a
    user-space forwarder's ring holds thousands of frames after a flood,
    and a paced window that began with them would deliver more than it
    offered."""
    counter = bed.ceiling if row.counts_at == "ceiling" else bed.sink
    deadline = time.monotonic() + DRAIN_LIMIT
    last = counter.count()
    while time.monotonic() < deadline:
        time.sleep(DRAIN_QUIET)
        now = counter.count()
        if now == last:
            return
        last = now


def measure(bed: Testbed, row: Row, traffic: Traffic, rnd: int, seconds: float,
            bpf_stats: bool = False, rate: float | None = None, window: str = "flood") -> Sample:
    """bpf_stats: time the XDP programs (kernel.bpf_stats_enabled=1) in this
    window. Their clock reads cost every program on the path, so windows
    that count packets run without. rate: pace the generator at this many
    packets/s (None: flood); window: what the window is for (Sample.window)."""
    gen = bed.generators[traffic]
    ours = cpu.namespace_inodes(bed.namespaces)
    receive = bed.pin_napi() + cpu.kernel_threads(ROUTER_CPU)
    if rate:
        drain(bed, row)
    gen.set_rate(rate)
    bed.bpf_stats(bpf_stats)
    gen.start()
    try:
        time.sleep(WARMUP)
        a = _read(bed, row, gen, ours, receive)
        time.sleep(seconds)
        b = _read(bed, row, gen, ours, receive)
    finally:
        gen.stop()
        gen.set_rate(None)  # whoever starts it next (the profile) floods
        bed.bpf_stats(False)
    (sa, ga, la, ha, pa, ka, ra), (sb, gb, lb, hb, pb, kb, rb) = a, b
    return Sample(
        row=row.key, traffic=traffic.key, round=rnd, seconds=sb.when - sa.when,
        offered=gb - ga, entered=lb - la, handled=hb - ha, received=rb - ra,
        router_cpu_s=cpu.busy_seconds(sa, sb, ROUTER_CPU),
        generator_cpu_s=cpu.busy_seconds(sa, sb, GENERATOR_CPU),
        foreign_cpu_s=cpu.foreign_seconds(sa, sb),
        prog_ns=pb[0] - pa[0], prog_runs=pb[1] - pa[1],
        sink_ns=kb[0] - ka[0], sink_runs=kb[1] - ka[1],
        router_task_s=cpu.task_seconds(sa, sb) + cpu.tree_seconds(sa, sb),
        receive_s=cpu.task_seconds(sa, sb),
        process_cpu_s=cpu.tree_seconds(sa, sb),
        userspace=bool(row.pids), bpf_stats=bpf_stats, rate=rate or 0.0, window=window,
    )
