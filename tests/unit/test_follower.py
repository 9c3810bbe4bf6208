"""follower.start(): `run` says "attached" only once each follower has
read the state it starts from, so that a change made right after is
logged, not taken for that state (a race CI met: a policy added at once
was never logged)."""

import os
import time

from xdpfwd import follower


def test_start_returns_once_the_child_is_ready():
    def follow(log, ready):
        time.sleep(0.4)  # subscribing and reading
        ready()
        time.sleep(30)

    t0 = time.monotonic()
    pid = follower.start(follow, "test")
    try:
        assert 0.35 < time.monotonic() - t0 < 5
    finally:
        follower.stop(pid)


def test_a_child_that_ends_before_ready_does_not_hold_the_parent():
    def follow(log, ready):
        raise RuntimeError("no netlink")

    t0 = time.monotonic()
    pid = follower.start(follow, "test", timeout=20)
    assert time.monotonic() - t0 < 5
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 1
