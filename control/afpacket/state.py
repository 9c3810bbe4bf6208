"""Where a running AF_PACKET forwarder is recorded, per network namespace.

The kernel knows an XDP program from its interface; a user-space
forwarder it does not, so a small root-only directory under /run holds
what `status`, `stats` and `detach` need: the supervisor's pid, the ports,
the sysctls to restore, and the counters (one shared-memory file that the
workers write and anyone with root may read). /run is shared by
`ip netns exec`, so the directory is named after the namespace's inode.
"""

import ctypes
import errno
import json
import mmap
import os
import stat as statmod
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from xdpfwd import netns, sysctl
from xdpfwd.counters import PortCounters
from xdpfwd.errors import XdpfwdError
from xdpfwd.layout import layout

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


class StateFileError(XdpfwdError):
    """A state file this xdpfwd did not write as it is: malformed, or
    foreign (not a regular file of ours). Nothing in it is acted on;
    `detach` removes it (discard())."""

    def __init__(self, path: Path, reason: str, ino: int):
        super().__init__(f"{path}: {reason}: not a state file of this xdpfwd, so nothing in it "
                         "is used; 'xdpfwd detach' removes it")
        self.path, self.reason, self.ino = path, reason, ino


MAX_STATE_BYTES = 65536


def _is_ifname(name) -> bool:
    # dev_valid_name() in net/core/dev.c: 1-15 bytes, not "." or "..",
    # no "/", ":" or whitespace.
    return (isinstance(name, str) and 0 < len(name.encode()) < 16 and name not in (".", "..")
            and not any(c in name for c in "/:") and not any(c.isspace() for c in name))


def _int(v, low, high=2**63) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v < high


_FIELD_CHECKS = {
    "pid": lambda v: _int(v, 1, 2**22 + 1),  # PID_MAX_LIMIT
    "ports": lambda v: isinstance(v, dict) and len(v) > 0 and all(
        _is_ifname(k) and _int(i, 1, 2**31) for k, i in v.items()),
    "workers": lambda v: _int(v, 1, 4097),
    "sysctls": lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, str) and len(x) <= 64 and x.isprintable()
        for k, x in v.items()),
    "pid_start": lambda v: _int(v, 0),
}


# Written by earlier versions, read by none: a forwarder started before an
# upgrade must still be found, stopped and cleaned up.
LEGACY_FIELDS = {"started"}


def _type_check(f):
    kind = typing.get_origin(f.type) or f.type
    return lambda v: isinstance(v, kind) and not isinstance(v, bool) or kind is bool and isinstance(v, bool)


def validate(raw: bytes, path: Path, ino: int = 0) -> "State":
    """A State from a state file's bytes, every field checked, or
    StateFileError naming the first thing wrong."""
    def bad(reason):
        raise StateFileError(path, reason, ino)

    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        bad("not JSON")
    if not isinstance(doc, dict):
        bad("not a JSON object")
    known = {f.name: f for f in fields(State)}
    for name in LEGACY_FIELDS & set(doc):
        del doc[name]
    for name in doc:
        if name not in known:
            bad(f"unknown field {name!r}")
    for name, f in known.items():
        if name not in doc:
            if f.default is MISSING and f.default_factory is MISSING:
                bad(f"field {name!r} missing")
            continue
        if not _FIELD_CHECKS.get(name, _type_check(f))(doc[name]):
            bad(f"field {name!r} has an impossible value")
    for p in doc.get("sysctls", {}):
        try:
            sysctl.checked(p)
        except ValueError as e:
            bad(f"sysctl {e}")
    return State(**doc)


@dataclass
class State:
    pid: int
    ports: dict[str, int]  # interface name -> ifindex, in the order given
    workers: int
    sysctls: dict[str, str] = field(default_factory=dict)  # /proc/sys path -> value to restore
    pid_start: int = 0  # start_time(pid) when it was recorded

    @property
    def alive(self) -> bool:
        """Whether the supervisor is still running (and is still that process)."""
        return self.pid_start != 0 and start_time(self.pid) == self.pid_start

    def save(self) -> None:
        d = netns.run_dir(create=True)
        tmp = d / "afpacket.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, d / "afpacket.json")  # readers never see half a file


def load() -> State | None:
    """The recorded forwarder, None if there is none, or StateFileError
    for a file that is not a state file of ours."""
    path = netns.run_dir() / "afpacket.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StateFileError(path, "a symbolic link", os.lstat(path).st_ino) from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not statmod.S_ISREG(st.st_mode):
            raise StateFileError(path, "not a regular file", st.st_ino)
        if st.st_uid != os.geteuid():
            raise StateFileError(path, f"owned by uid {st.st_uid}", st.st_ino)
        if st.st_mode & 0o022:
            raise StateFileError(path, f"writable by others (mode {st.st_mode & 0o777:o})", st.st_ino)
        raw = f.read(MAX_STATE_BYTES + 1)
    if len(raw) > MAX_STATE_BYTES:
        raise StateFileError(path, f"larger than {MAX_STATE_BYTES} bytes", st.st_ino)
    return validate(raw, path, st.st_ino)


def discard(bad: StateFileError) -> bool:
    """Remove a state file load() refused, and its counters, if it is still
    that very file (hold forwarder.exclusive())."""
    try:
        if os.lstat(bad.path).st_ino != bad.ino:
            return False
    except FileNotFoundError:
        return False
    os.unlink(bad.path)
    (bad.path.parent / "afpacket.counters").unlink(missing_ok=True)
    return True


def remove() -> None:
    d = netns.run_dir()
    for name in ("afpacket.json", "afpacket.counters"):
        (d / name).unlink(missing_ok=True)


def counters_path() -> Path:
    return netns.run_dir() / "afpacket.counters"


def _slots(workers: int, ports: int) -> int:
    return workers * ports * layout().port_words


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
        self.size = ports * layout().port_words
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
    if len(raw) < st.workers * len(st.ports) * per_port:
        raise StateFileError(counters_path(), f"{len(raw)} bytes, short of "
                             f"{st.workers} workers x {len(st.ports)} ports", 0)
    result = {}
    for p, ifindex in enumerate(st.ports.values()):
        values = [raw[(w * len(st.ports) + p) * per_port:(w * len(st.ports) + p + 1) * per_port]
                  for w in range(st.workers)]
        result[ifindex] = PortCounters.decode(values)
    return result
