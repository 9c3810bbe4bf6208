"""The CLI's catch-all: an exception nobody foresaw, injected into the real
command line in a process of its own, is one line on stderr naming the
command, the exception and where it was raised, with exit status 70;
--verbose adds the traceback."""

import subprocess
import sys

import pytest

INJECT = """
import sys
from xdpfwd import snapshot, cli

def read(counters=True):
    raise KeyError("ports\\nsecond line")

snapshot.read = read
sys.argv = ["xdpfwd", *sys.argv[1:]]
cli.main()
"""


def xdpfwd_with_a_bug(*args):
    return subprocess.run([sys.executable, "-c", INJECT, *args], capture_output=True, text=True,
                          timeout=60)


def test_one_line_and_status_70():
    proc = xdpfwd_with_a_bug("status")
    assert proc.returncode == 70
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("xdpfwd: status: unexpected error: KeyError: 'ports\\nsecond line'")
    assert " at <string>:" in line and "in read()" in line
    assert line.endswith("`xdpfwd --verbose status ...` shows the traceback")


@pytest.mark.parametrize("flag", ["--verbose", "-v"])
def test_verbose_shows_the_traceback(flag):
    proc = xdpfwd_with_a_bug(flag, "status", "--json")
    assert proc.returncode == 70
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert proc.stderr.strip().splitlines()[-1].startswith("xdpfwd: status: unexpected error: KeyError")
