"""stderr_line(), the lab tests' wait for a line a long-running command
logs: it must return the line, keep what follows for the next call, and
fail at its deadline, never hang, when the line does not come."""

import subprocess
import sys
import time

import pytest

from helpers import stderr_line

SCRIPT = """
import sys, time
sys.stderr.write("first line\\nsecond ")
sys.stderr.flush()
time.sleep(0.3)
sys.stderr.write("half\\nthird line\\n")
sys.stderr.flush()
time.sleep(30)
"""


@pytest.fixture
def logger():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_lines_in_order_across_reads(logger):
    assert stderr_line(logger, "first", 5) == "first line"
    assert stderr_line(logger, "second", 5) == "second half"   # written in two pieces
    assert stderr_line(logger, "third", 5) == "third line"     # kept from the read before


def test_skips_other_lines(logger):
    assert stderr_line(logger, "third", 5) == "third line"


def test_a_line_that_never_comes_fails_at_the_deadline(logger):
    start = time.monotonic()
    with pytest.raises(AssertionError, match="no 'absent' on stderr within 1s"):
        stderr_line(logger, "absent", 1)
    assert time.monotonic() - start < 3


def test_end_of_stream_fails():
    proc = subprocess.Popen([sys.executable, "-c", "print('x', file=__import__('sys').stderr)"],
                            stderr=subprocess.PIPE, text=True)
    with pytest.raises(AssertionError, match="stderr ended before 'absent'"):
        stderr_line(proc, "absent", 5)
    proc.wait()
