"""CPU time, read from /proc: how busy each CPU was, what given processes
spent, and how much went to processes that are not the benchmark's.

Busy time is wall time minus idle (and iowait), per CPU. On this kernel
(tick-based accounting, NO_HZ idle) idle time is measured exactly while
busy time is sampled by the tick, and softirq work done on an otherwise
idle CPU gets no tick at all: summing the busy columns undercounts it.

This machine is shared: someone else's tests may run during a
measurement. Their processes' CPU time is summed as "foreign"; the
benchmark's own are this process, kernel threads (softirq and NAPI work
runs there) and everything inside the lab's namespaces.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

USER_HZ = os.sysconf("SC_CLK_TCK")
PF_KTHREAD = 0x00200000


@dataclass(frozen=True)
class Snapshot:
    when: float                 # time.monotonic()
    idle: dict[int, float]      # cpu -> idle + iowait seconds since boot
    foreign: dict[int, float]   # pid -> CPU seconds of a process not ours
    tasks: dict[int, float]     # pid -> CPU seconds, for the pids asked about
    trees: dict[int, float] = None  # pid -> CPU seconds of it and its children, dead or alive


def _idle() -> dict[int, float]:
    idle = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                idle[int(fields[0][3:])] = (int(fields[4]) + int(fields[5])) / USER_HZ
    return idle


def _stat(pid: int) -> tuple[int, int, float, float] | None:
    """(ppid, flags, utime + stime, cutime + cstime) of a process in
    seconds, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text.rsplit(")", 1)[1].split()
    return (int(f[1]), int(f[6]), (int(f[11]) + int(f[12])) / USER_HZ,
            (int(f[13]) + int(f[14])) / USER_HZ)


def namespace_inodes(names: list[str]) -> set[int]:
    return {os.stat(f"/run/netns/{n}").st_ino for n in names if os.path.exists(f"/run/netns/{n}")}


def _netns(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return 0


def snapshot(ours_netns: set[int], watch: list[int] = (), trees: list[int] = ()) -> Snapshot:
    """trees: processes whose children come and go (an AF_PACKET supervisor
    restarts a worker that died): counted with every child, the reaped ones
    through the parent's cutime/cstime."""
    me = os.getpid()
    foreign, tasks, tree = {}, {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        st = _stat(pid)
        if st is None:
            continue
        ppid, flags, seconds, reaped = st
        if pid in watch:
            tasks[pid] = seconds
        if pid in trees:
            tree[pid] = tree.get(pid, 0.0) + seconds + reaped
        elif ppid in trees:
            tree[ppid] = tree.get(ppid, 0.0) + seconds
        if pid == me or flags & PF_KTHREAD or pid == 2 or ppid == 2:
            continue
        if _netns(pid) in ours_netns:
            continue
        # With the children it reaped: short-lived processes (a build's
        # compilers, dpkg) are gone by the second snapshot, but their time
        # lands in a parent that is still there. Not init's: it reaps
        # orphans, the benchmark's own AF_PACKET forwarder among them.
        foreign[pid] = seconds + (reaped if pid != 1 else 0.0)
    return Snapshot(time.monotonic(), _idle(), foreign, tasks, tree)


def kernel_threads(cpu: int) -> list[int]:
    """`cpu`'s ksoftirqd: softirq work the NAPI thread leaves over (and
    any other softirq there) lands in it."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
        except OSError:
            continue
        if comm == f"ksoftirqd/{cpu}":
            pids.append(int(entry.name))
    return pids


def children(pid: int) -> list[int]:
    """The direct children of a process (an AF_PACKET supervisor's workers)."""
    kids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st and st[0] == pid:
                kids.append(int(entry.name))
    return kids


def busy_seconds(a: Snapshot, b: Snapshot, cpu: int) -> float:
    """Seconds CPU `cpu` was not idle between two snapshots."""
    return max(0.0, (b.when - a.when) - (b.idle[cpu] - a.idle[cpu]))


def foreign_seconds(a: Snapshot, b: Snapshot) -> float:
    """CPU seconds other people's processes used between the snapshots,
    roughly: a process that ends in between counts with all of its time
    (through its parent), one that ends unreaped not at all. Enough to tell
    a quiet window from a disturbed one."""
    return sum(t - a.foreign.get(pid, 0.0) for pid, t in b.foreign.items())


def task_seconds(a: Snapshot, b: Snapshot, pids: list[int] | None = None) -> float:
    """CPU seconds the watched processes (or those of them in pids) used
    between the snapshots."""
    return sum(t - a.tasks.get(pid, t) for pid, t in b.tasks.items()
               if pids is None or pid in pids)


def tree_seconds(a: Snapshot, b: Snapshot) -> float:
    """CPU seconds the process trees used between the snapshots."""
    return sum(t - a.trees.get(pid, t) for pid, t in b.trees.items())


def allowed_cpus(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)
