"""The rate a user-space forwarder carries: the highest rate the generator
can be paced at with less than LOSS_LIMIT of what it sent never reaching
the sink; and the pacing arithmetic of generator.c. Pure logic; the probes
are measurements run by bench/run.py (tests/unit/test_bench_rate.py drives
the search with a model).

Why not measure them flooded: a user-space forwarder shares the router's
CPU with its own receive path (the NAPI thread: veth, the packet socket's
copy into the ring). Flooded, that thread spends most of the CPU receiving
frames the full ring then drops, and the forwarder gets what is left
(receive livelock): the figure is overload collapse, not the cost of
forwarding a packet. The kernel and XDP rows never pay for that: what they
cannot take is dropped on the generator's side of the veth ring, on the
generator's CPU.

The search: start from what the row delivered when flooded, step up by
STEP while the loss stays under LOSS_LIMIT (down, while it does not), then
one bisection step between the last rate carried and the first not.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

LOSS_LIMIT = 0.01  # the share of the frames sent that may be lost
STEP = 1.25
FLOOR_PPS = 1000.0  # below this a row carries nothing worth the name
MAX_PROBES = 8      # with PROBE_SECONDS, the search's time stays under ~15 s
PROBE_SECONDS = 1.0  # the window of a probe
SHORT = 0.8         # the generator sent less than this share of the rate asked for ...
MORE = 1.05         # ... and not this many times what it sent one step lower: it is spent

# Pacing (generator.c): frames go out in groups of PACE_GROUP, the devmap
# bulk queue's size, as the flooding generator's reach the router (the C
# file says why); times in 1/2^PACE_SHIFT ns; after a stall at most
# PACE_BURST frames back to back. The sink's thread (SCHED_FIFO, same CPU)
# and other processes preempt the generator; what the burst does not make
# up for is never sent. PACE_BURST: two groups, an eighth of the router's
# 256-frame ring.
PACE_SHIFT = 8
PACE_GROUP = 16  # DEV_MAP_BULK_SIZE, include/net/xdp.h
PACE_BURST = 2 * PACE_GROUP


def pacing(rate_pps: float | None, group: int = PACE_GROUP, burst: int = PACE_BURST
           ) -> tuple[int, int, int]:
    """(interval between groups, burst allowance, frames per group) for
    generator.c's pace map, times in 1/2^PACE_SHIFT ns; (0, 0, 0): unpaced,
    as fast as the generator goes."""
    if not rate_pps:
        return 0, 0, 0
    if rate_pps < 0 or group < 1 or burst < group:
        raise ValueError(f"pacing: rate {rate_pps} pps, group {group}, burst {burst}")
    interval = max(1, round((group * 10**9 << PACE_SHIFT) / rate_pps))
    return interval, (burst // group - 1) * interval, group


def paced_rate(interval: int, group: int = PACE_GROUP) -> float:
    """The rate generator.c paces at, in packets/s, given its interval
    between groups."""
    return (group * 10**9 << PACE_SHIFT) / interval if interval else float("inf")


@dataclass(frozen=True)
class Probe:
    rate: float       # packets/s the generator was paced at
    offered: float    # packets/s it sent
    delivered: float  # packets/s the sink counted

    @property
    def loss(self) -> float:
        """The share of the frames sent that never arrived; 1.0 when
        nothing was sent (the generator failed: nothing was carried)."""
        if self.offered <= 0:
            return 1.0
        return max(0.0, self.offered - self.delivered) / self.offered

    @property
    def carried(self) -> bool:
        return self.loss < LOSS_LIMIT

    def spent(self, before: "Probe") -> bool:
        """The generator is the limit: it sent well short of the rate asked
        for, and hardly more than at the step before. Falling short alone
        is no reason to stop: other people's processes on the generator's
        CPU make it fall short at any rate."""
        return self.offered < SHORT * self.rate and self.offered < MORE * before.offered


def search(probe: Callable[[float], Probe], start: float, max_probes: int = MAX_PROBES,
           floor: float = FLOOR_PPS) -> tuple[float, list[Probe]]:
    """The highest rate carried (0.0: none, down to floor) and every probe
    in order. start: where to begin (what the row delivered flooded). The
    steps go by the rates asked for, the result is the rate the generator
    sent in the best probe: other people's processes on its CPU may have
    kept it short of the rate asked for, and that rate was never tried."""
    probes: list[Probe] = []
    good = bad = None

    def run(rate: float) -> Probe:
        nonlocal good, bad
        p = probe(rate)
        probes.append(p)
        if p.carried:
            good = rate if good is None else max(good, rate)
        else:
            bad = rate if bad is None else min(bad, rate)
        return p

    p = run(max(start, floor))
    while len(probes) < max_probes:
        if bad is None:  # carried so far: up
            if len(probes) > 1 and p.spent(probes[-2]):
                break
            p = run(good * STEP)
        elif good is None:  # not carried yet: down
            if bad / STEP < floor:
                break
            p = run(bad / STEP)
        else:
            break
    if good is not None and bad is not None and len(probes) < max_probes:
        run(math.sqrt(good * bad))  # between them, on the scale the steps take
    return max((p.offered for p in probes if p.carried), default=0.0), probes
