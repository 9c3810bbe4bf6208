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


def describe() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "os": _os(),
    }


def one_line(m: dict) -> str:
    return f"{m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['os']}"
