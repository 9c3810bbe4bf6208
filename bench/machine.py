"""What the benchmark ran on: for the report's header."""

import datetime
import os
import platform
from pathlib import Path


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _os() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _return_mitigation() -> str | None:
    """The kernel's mitigation for AMD's return-stack overflow, when one is
    on: "Safe RET" makes every function return cost more, and a
    bpf_fib_lookup() is a chain of them (about 140 ns each on an AMD EPYC
    here, where the Intel hosts measured a few tens)."""
    try:
        state = Path("/sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow").read_text().strip()
    except OSError:
        return None
    return state if state.startswith("Mitigation") else None


def describe() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "os": _os(),
        "srso": _return_mitigation(),
    }


def one_line(m: dict) -> str:
    line = f"{m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['os']}"
    if m.get("srso"):
        line += f"; spec_rstack_overflow: {m['srso']}"
    return line
