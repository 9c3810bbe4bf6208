"""Which frames a leaving worker still decides: pure logic, on fake rings.
The lab test (tests/lab/test_handover.py) holds the whole handover against
the kernel."""

from xdpfwd.afpacket.handover import RELEASE, Handover


class Ring:
    """Blocks of frames as RxRing.blocks() hands them over; `read` counts
    the frames handed over so far, as RxRing's does."""

    def __init__(self, ifindex, read, blocks):
        self.ifindex = ifindex
        self.read = read
        self._blocks = blocks

    def blocks(self):
        while self._blocks:
            frames = self._blocks.pop(0)
            self.read += len(frames)
            yield frames


def leaving(target, held=()):
    h = Handover([2])
    h.phase, h.leaving, h.target, h.held = RELEASE, True, {2: target}, list(held)
    return h


def decided(h, rings):
    return [f for _, frames in h.blocks(rings) for f in frames]


def test_only_frames_up_to_the_count_are_decided():
    ring = Ring(2, 868, [["a"], ["b"], ["c", "d", "e"]])
    assert decided(leaving(869), [ring]) == ["a"]


def test_a_block_that_crosses_the_count_is_cut_there():
    ring = Ring(2, 10, [["a", "b", "c"], ["d", "e"]])
    assert decided(leaving(12), [ring]) == ["a", "b"]


def test_held_frames_come_first_and_count_too():
    ring = Ring(2, 12, [["c", "d"]])
    h = leaving(13, held=[(ring, ["a", "b"], 10)])
    assert decided(h, [ring]) == ["a", "b", "c"]
