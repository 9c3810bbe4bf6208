"""The router's side of the benchmark: xdpfwd's real command line run in
the router's namespace, timed, plus the naive forwarder and the exporter.

xdpfwd's attach/detach lock is per network namespace, so other people's
tests in namespaces of their own never block the benchmark's calls.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
XDPFWD = ROOT / ".venv" / "bin" / "xdpfwd"
PYTHON = ROOT / ".venv" / "bin" / "python"
CONFLICT = 5  # xdpfwd's exit status for "another attach or detach is running"


class RouterError(RuntimeError):
    pass


@dataclass(frozen=True)
class Timed:
    seconds: float
    stdout: str


def in_ns(ns: str, args: list[str], cpu: int | None = None) -> list[str]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return pin + ["ip", "netns", "exec", ns] + args


def xdpfwd(ns: str, *args: str, cpu: int | None = None, timeout: float = 120) -> Timed:
    """Run `xdpfwd ARGS` in ns; raises RouterError with its message on failure."""
    cmd = in_ns(ns, [str(XDPFWD), *args], cpu)
    for attempt in range(20):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
        if r.returncode == CONFLICT and "another xdpfwd attach" in r.stderr:
            time.sleep(0.5)  # a previous call of ours still ending: try again
            continue
        if r.returncode != 0:
            raise RouterError(f"xdpfwd {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
        return Timed(seconds, r.stdout)
    raise RouterError(f"xdpfwd {' '.join(args)}: the lock stayed busy")


def run_in(ns: str, args: list[str], timeout: float = 60) -> Timed:
    """Run any command in ns, timed; RouterError with its message on failure."""
    t0 = time.perf_counter()
    r = subprocess.run(in_ns(ns, args), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RouterError(f"{Path(args[-1] if len(args) < 3 else args[2]).name}: "
                          f"{r.stderr.strip() or r.stdout.strip()}")
    return Timed(time.perf_counter() - t0, r.stdout)


def xdp_prog_id(ns: str, ifname: str) -> int:
    """The id of the XDP program attached to ns/ifname, 0 for none."""
    (link,) = json.loads(run_in(ns, ["ip", "-j", "link", "show", "dev", ifname]).stdout)
    return int(link.get("xdp", {}).get("prog", {}).get("id", 0))


def status(ns: str) -> dict:
    return json.loads(xdpfwd(ns, "status", "--json").stdout)["interfaces"]


def ensure_detached(ns: str) -> None:
    """Detach whatever xdpfwd has in ns (also after a failed run)."""
    try:
        xdpfwd(ns, "detach")
    except RouterError:
        pass


class Process:
    """A process the benchmark started (naive forwarder, exporter), stopped
    by its pid alone."""

    def __init__(self, cmd: list[str], ready: str, timeout: float = 20):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, cwd=ROOT)
        self.pid = self.proc.pid  # `ip netns exec` and taskset exec: the same pid
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            seen.append(line.rstrip())
            if ready in line:
                return
        self.stop()
        raise RouterError(f"{' '.join(cmd)} did not start: {' / '.join(seen[-3:]) or 'no output'}")

    def stop(self, timeout: float = 10) -> str:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.stdout.read() if self.proc.stdout else ""


def start_naive(ns: str, ports: list[str], cpu: int) -> Process:
    return Process(in_ns(ns, [str(PYTHON), "-m", "bench.naive", *ports], cpu), "ready")


def start_exporter(ns: str, listen: str) -> Process:
    return Process(in_ns(ns, [str(XDPFWD), "exporter", "--listen", listen]), "serving")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RouterError(f"no VmRSS for pid {pid}")


if __name__ == "__main__":  # a quick manual check: python -m bench.router NS ARGS...
    print(xdpfwd(sys.argv[1], *sys.argv[2:]))
