"""The generator's pacing arithmetic and the search for
the rate a user-space row carries (bench/rate.py), against a model of a
forwarder. No kernel needed."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import rate  # noqa: E402
from bench.rate import PACE_BURST, PACE_GROUP, PACE_SHIFT, paced_rate, pacing  # noqa: E402


def test_unpaced():
    assert pacing(None) == (0, 0, 0)
    assert pacing(0) == (0, 0, 0)


@pytest.mark.parametrize("pps", [1_000, 9_173, 65_822, 100_000, 333_333, 1_000_000, 3_000_000,
                                 10_000_000])
def test_the_interval_paces_at_the_rate_asked_for(pps):
    interval, burst, group = pacing(pps)
    # generator.c counts in 1/2^PACE_SHIFT ns: exact to 0.01% up to 10 Mpps.
    assert paced_rate(interval) == pytest.approx(pps, rel=1e-4)
    assert group == PACE_GROUP
    # At most PACE_BURST frames back to back: a group, and PACE_BURST / group
    # - 1 more within the allowance.
    assert burst == (PACE_BURST // PACE_GROUP - 1) * interval


def test_the_interval_in_fixed_point():
    assert PACE_SHIFT == 8
    # 16 frames every 16 us, one group more after a stall.
    assert pacing(1_000_000) == (16_000 * 256, 16_000 * 256, 16)
    assert pacing(3_000_000, group=1, burst=1)[0] == 85_333  # 333.33 ns, not rounded to 333
    assert paced_rate(85_333, group=1) == pytest.approx(3_000_000, rel=1e-5)
    assert pacing(4_000_000, group=1, burst=1) == (64_000, 0, 1)  # one frame per interval


def test_groups_are_the_devmap_bulk_and_bursts_fit_in_the_routers_ring():
    assert PACE_GROUP == 16  # DEV_MAP_BULK_SIZE: how the flooding generator's frames arrive
    assert PACE_GROUP <= PACE_BURST <= 256 // 8


@pytest.mark.parametrize("bad", [(-5,), (1000, 0), (1000, 16, 8)])
def test_nonsense_is_refused(bad):
    with pytest.raises(ValueError):
        pacing(*bad)


class Forwarder:
    """A model: delivers everything up to `capacity` pps, loses what is above;
    the generator reaches at most `generator` pps."""

    def __init__(self, capacity: float, generator: float = 1e9):
        self.capacity, self.generator = capacity, generator
        self.asked: list[float] = []

    def __call__(self, pps: float) -> rate.Probe:
        self.asked.append(pps)
        offered = min(pps, self.generator)
        return rate.Probe(pps, offered, min(offered, self.capacity))


def test_probe_loss():
    assert rate.Probe(1000, 1000, 995).loss == pytest.approx(0.005)
    assert rate.Probe(1000, 1000, 995).carried
    assert not rate.Probe(1000, 1000, 990).carried  # 1% is not under 1%
    assert rate.Probe(1000, 1000, 1003).loss == 0.0  # frames queued before the window
    assert rate.Probe(1000, 0, 0).loss == 1.0 and not rate.Probe(1000, 0, 0).carried


def test_the_generator_is_spent_only_when_asking_for_more_gets_no_more():
    before = rate.Probe(1000, 960, 960)
    assert rate.Probe(1250, 990, 990).spent(before)
    assert not rate.Probe(1250, 1010, 1010).spent(before)  # sent what it was asked for, nearly
    before = rate.Probe(1000, 750, 750)
    assert not rate.Probe(1250, 900, 900).spent(before)  # short, but it sent more


def test_up_by_steps_then_one_bisection():
    fwd = Forwarder(capacity=140_000)
    carried, probes = rate.search(fwd, start=100_000)
    # 100k, 125k carried; 156k not; then between 125k and 156k: 139.8k, carried.
    assert fwd.asked == pytest.approx([100_000, 125_000, 156_250, 139_754], rel=1e-4)
    assert carried == pytest.approx(139_754, rel=1e-4)
    assert [p.carried for p in probes] == [True, True, False, True]


def test_down_by_steps_when_the_flooded_rate_is_not_carried():
    fwd = Forwarder(capacity=70_000)
    carried, probes = rate.search(fwd, start=100_000)
    # 100k and 80k lose more than 1%, 64k does not; then 71.6k, not carried.
    assert fwd.asked == pytest.approx([100_000, 80_000, 64_000, 71_554], rel=1e-4)
    assert carried == pytest.approx(64_000)


def test_the_search_stays_within_its_probes():
    fwd = Forwarder(capacity=1e12)
    carried, probes = rate.search(fwd, start=10_000, max_probes=5)
    assert len(probes) == 5 and carried == pytest.approx(10_000 * 1.25**4)


def test_the_generator_limits_the_search_not_the_row():
    fwd = Forwarder(capacity=1e12, generator=130_000)
    carried, probes = rate.search(fwd, start=100_000)
    # 125k sent in full; 156k asked for, 130k sent; 195k asked for, 130k sent:
    # going higher measures the generator.
    assert fwd.asked == pytest.approx([100_000, 125_000, 156_250, 195_312.5])
    # What it carried is what the generator sent, not what was asked for.
    assert carried == pytest.approx(130_000) and probes[-1].spent(probes[-2])


def test_a_generator_short_of_the_rate_does_not_end_the_search():
    # Other people's processes took a fifth of the generator's CPU: every
    # probe sent 75% of the rate asked for, and the search still goes up.
    class Disturbed(Forwarder):
        def __call__(self, pps):
            self.asked.append(pps)
            return rate.Probe(pps, 0.75 * pps, min(0.75 * pps, self.capacity))

    fwd = Disturbed(capacity=140_000)
    carried, _ = rate.search(fwd, start=100_000)
    assert fwd.asked == pytest.approx([100_000, 125_000, 156_250, 195_312.5, 174_693],
                                      rel=1e-4)
    assert carried == pytest.approx(0.75 * 174_693, rel=1e-4)  # sent, and carried


def test_a_row_that_carries_nothing():
    fwd = Forwarder(capacity=0)
    carried, probes = rate.search(fwd, start=0)
    # Starts at the floor, where there is no lower rate to try.
    assert carried == 0.0 and fwd.asked == [rate.FLOOR_PPS]
    fwd = Forwarder(capacity=500)
    carried, _ = rate.search(fwd, start=2_000)
    assert carried == 0.0 and fwd.asked == pytest.approx([2_000, 1_600, 1_280, 1_024])
