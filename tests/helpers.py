"""Helpers for the kernel tests: run commands and the real CLI in the lab."""

import os
import subprocess
import sys
from pathlib import Path

from xdpfwd import lab, netns

XDPFWD = str(Path(sys.executable).with_name("xdpfwd"))


def inside(host: str):
    """Enter a lab host's network namespace (this thread only)."""
    return netns.entered(lab.ns(host))


def run(args, ns: str | None = "router", env=None, check=False, timeout=60):
    """Run a command, inside lab host `ns`'s namespace (a NEW `ip netns
    exec` each time, as a user would), and return the CompletedProcess."""
    prefix = ["ip", "netns", "exec", lab.ns(ns)] if ns else []
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(prefix + list(args), capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def xdpfwd(*args, ns="router", **kw):
    return run([XDPFWD, *args], ns=ns, **kw)
