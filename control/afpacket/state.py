"""Where a running AF_PACKET forwarder is recorded, per network namespace.

The kernel knows an XDP program from its interface; a user-space
forwarder it does not, so a small root-only directory under /run holds
what `status`, `stats` and `detach` need: the supervisor's pid, the ports,
the sysctls to restore, and the counters (one shared-memory file that the
workers write and anyone with root may read). /run is shared by
`ip netns exec`, so the directory is named after the namespace's inode.
"""

import ctypes
import json
import mmap
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xdpfwd.counters import PortCounters
from xdpfwd.layout import layout

RUN_DIR = Path("/run/xdpfwd")
SERVICE_MODULE = "xdpfwd.afpacket.service"


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (/proc/PID/stat
    field 22): with the pid, it names one process, never a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped: not running
        return 0
    return int(fields[19])


def namespace_dir(create: bool = False) -> Path:
    ino = os.stat("/proc/thread-self/ns/net").st_ino
    d = RUN_DIR / f"netns-{ino}"
    if create:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(RUN_DIR, 0o700)
    return d


@dataclass
class State:
    pid: int
    ports: dict[str, int]  # interface name -> ifindex, in the order given
    workers: int
    sysctls: dict[str, str] = field(default_factory=dict)  # /proc/sys path -> value to restore
    started: float = 0.0
    pid_start: int = 0  # start_time(pid) when it was recorded

    @property
    def alive(self) -> bool:
        """Whether the supervisor is still running (and is still that process)."""
        return self.pid_start != 0 and start_time(self.pid) == self.pid_start

    def save(self) -> None:
        d = namespace_dir(create=True)
        tmp = d / "afpacket.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, d / "afpacket.json")  # readers never see half a file


def load() -> State | None:
    try:
        return State(**json.loads((namespace_dir() / "afpacket.json").read_text()))
    except FileNotFoundError:
        return None


def remove() -> None:
    d = namespace_dir()
    for name in ("afpacket.json", "afpacket.counters"):
        (d / name).unlink(missing_ok=True)


def counters_path() -> Path:
    return namespace_dir() / "afpacket.counters"


def _slots(workers: int, ports: int) -> int:
    return workers * ports * layout().value_size // 8


def create_counters(workers: int, ports: int) -> None:
    fd = os.open(counters_path(), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, _slots(workers, ports) * 8)
    finally:
        os.close(fd)


class WorkerCounters:
    """One worker's slice of the counters file: per port, per outcome,
    packets then bytes, as u64 (the layout of struct xdpfwd_counters).

    A worker keeps its counts in a Python list and publishes them after
    each batch; 8-byte aligned stores, so readers never see a torn value.
    A restarted worker starts from what its slice holds: never backwards.
    """

    def __init__(self, worker: int, workers: int, ports: int):
        self.size = ports * layout().value_size // 8
        self._file = open(counters_path(), "r+b")
        self._map = mmap.mmap(self._file.fileno(), _slots(workers, ports) * 8)
        self._shared = (ctypes.c_uint64 * self.size).from_buffer(self._map, worker * self.size * 8)
        self.local = list(self._shared)

    def publish(self) -> None:
        self._shared[:] = self.local

    def close(self) -> None:
        self.publish()
        del self._shared
        self._map.close()
        self._file.close()


def read_counters(st: State) -> dict[int, PortCounters]:
    """{ifindex: its counters}, summed over workers."""
    lay = layout()
    raw = counters_path().read_bytes()
    per_port = lay.value_size
    result = {}
    for p, ifindex in enumerate(st.ports.values()):
        values = [raw[(w * len(st.ports) + p) * per_port:(w * len(st.ports) + p + 1) * per_port]
                  for w in range(st.workers)]
        result[ifindex] = PortCounters.decode(values)
    return result
