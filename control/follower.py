"""Followers: child processes that, while `run` forwards, log changes of
kernel state that xdpfwd's packets skip (netfilter's chains, IPsec), and
keep the XDP program's copy of what it cannot ask the kernel current
(portcopy.follow).

A child process, not a thread: a thread would be inherited, half, by the
AF_PACKET supervisor's later forks. It ends with its parent
(PR_SET_PDEATHSIG) or stop().
"""

import ctypes
import os
import select
import signal
import sys

from xdpfwd import netlink

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def log(line: str) -> None:
    print(f"xdpfwd: {line}", file=sys.stderr, flush=True)


def start(follow, what: str, timeout: float = 10.0) -> int:
    """follow(log, ready) in a child process, until it is stopped; its pid.
    Returns once the child has called ready() (subscribed to the kernel's
    announcements, and read the state once), has ended, or after timeout:
    a change made after `run` says "attached" is then a change it logs,
    not one its first read takes for the state it starts from. `what`
    names it in the line logged if it fails."""
    parent = os.getpid()
    readable, writable = os.pipe()
    pid = os.fork()
    if pid:
        os.close(writable)
        try:
            select.select([readable], [], [], timeout)
        finally:
            os.close(readable)
        return pid
    os.close(readable)

    def ready() -> None:
        nonlocal writable
        if writable >= 0:
            os.write(writable, b"r")
            os.close(writable)
            writable = -1

    code = 0
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if os.getppid() == parent:  # else the parent is gone already
            follow(log, ready)
    except BaseException as e:  # never let the child return into the caller's code
        log(f"{what}: no longer following changes: {e}")
        code = 1
    os._exit(code)


def stop(pid: int) -> None:
    try:
        # Reaped already (the AF_PACKET supervisor reaps every child): its
        # pid may be someone else's now, so it is not signalled.
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def wait(sock, every: float) -> None:
    """Until the kernel announces a change on sock (a netlink socket bound
    to its groups, non-blocking) or `every` seconds pass. The events are
    only a cue to read the state again: they are read and dropped."""
    netlink.read_events(sock, every)
