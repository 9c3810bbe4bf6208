"""The AF_PACKET forwarder's supervisor: starts one worker per CPU, turns
the kernel's own forwarding off on the ports, restarts a worker that dies,
and on SIGTERM or SIGINT puts the sysctls back and stops the workers.

Why forwarding goes off: an AF_PACKET socket gets a copy of each frame,
and the kernel still gets the original. With forwarding on, the kernel
would forward it too and the receiver would see every packet twice. IPv4
has a per-interface switch (net.ipv4.conf.PORT.forwarding); IPv6 forwarding
has only the namespace-wide net.ipv6.conf.all.forwarding, so that one goes
off while the forwarder runs. Everything changed is recorded in the state
file first and restored on exit, or by `detach` if the supervisor died.

Neither switch loses or duplicates a packet: the workers' rings are open
before forwarding goes off and close only after it is back on, and around
each switch the workers forward a frame only if the kernel did not
(handover.py).

Run as `python -m xdpfwd.afpacket.service [--ready-fd N] IFACE...`
(`attach --mode afpacket` does that in the background), or in-process
through serve() (`xdpfwd run`).
"""

import argparse
import ctypes
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

from xdpfwd import sysctl
from xdpfwd.afpacket import state
from xdpfwd.afpacket.rings import grace_period
from xdpfwd.errors import XdpfwdError

PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 5  # per minute; past that the forwarder gives up and exits
# A worker ends its stop handover once it has read its rings up to the
# switch and sent what it held for a neighbour (worker.PENDING_SECONDS).
HANDBACK_SECONDS = 5.0


def log(msg: str) -> None:
    print(f"xdpfwd afpacket[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


# -- sysctls ----------------------------------------------------------------


def _forwarding_paths(ports: list[str]) -> list[Path]:
    """What has to go off, "all" for IPv6 before the per-interface copies it
    overwrites, so that restoring in this order gives back every value."""
    paths = [sysctl.forwarding_path("ipv4", p) for p in ports]
    every = sysctl.forwarding_path("ipv6", "all")
    if every.exists():
        paths.append(every)
        paths += sorted(p for p in sysctl.path("ipv6", "conf").glob("*/forwarding")
                        if p.parent.name != "all")
        # ip6_forward() also forwards what arrives on a port with
        # force_forwarding (6.17 and later), whatever "all" says; and
        # writing "all" resets every interface's force_forwarding (seen on
        # 6.18, addrconf_forward_change()): every one is saved, and given
        # back after "all".
        paths += sorted(p for p in sysctl.path("ipv6", "conf").glob("*/force_forwarding")
                        if p.parent.name not in ("all", "default"))
    return paths


def disable_forwarding(saved: dict[str, str]) -> None:
    """The IPv4 ports' switches and IPv6's namespace-wide one off (the
    kernel copies "all" to every interface), and force_forwarding, which
    writing "all" resets on every interface anyway."""
    for p in saved:
        if (p.startswith(f"{sysctl.path('ipv4')}/") or p == str(sysctl.forwarding_path("ipv6", "all"))
                or p.endswith("/force_forwarding")):
            sysctl.write(p, "0")


def save_and_disable_forwarding(ports: list[str]) -> dict[str, str]:
    saved = sysctl.save(_forwarding_paths(ports))
    disable_forwarding(saved)
    return saved


def tear_down(saved: dict[str, str]) -> None:
    """What ends every forwarder, however it ends: the sysctls it changed
    back, its state file gone. (The counters file goes with the state.)"""
    sysctl.restore(saved)
    state.remove()


# -- workers ----------------------------------------------------------------


def _fork_worker(ports: list[int], index: int, workers: int, fanout_base: int,
                 watching: bool) -> tuple[int, socket.socket]:
    """Fork one worker; returns (pid, the supervisor's end of its control
    socket, on which it says it is ready and then takes handover messages).
    watching: start in a handover window (the kernel still forwards)."""
    ours, theirs = socket.socketpair()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        theirs.close()
        return pid, ours
    # The child: its own signal handling, and nothing of the parent's loop.
    ours.close()
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    # If the supervisor dies, even by SIGKILL, the workers stop with it.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)
    try:
        from xdpfwd.afpacket import worker

        worker.main(ports, index, workers, fanout_base, ready=lambda: theirs.sendall(b"ok\n"),
                    control=theirs, watching=watching)
        code = 0
    except BaseException as e:  # report to the supervisor, never a traceback
        try:
            theirs.sendall(f"{type(e).__name__}: {e}\n".encode())
        except OSError:
            pass
        code = 1
    os._exit(code)


def _last_words(chan: socket.socket) -> str:
    """What a worker that died said on its way out (_fork_worker sends its
    exception), for the log; the channel is closed."""
    try:
        chan.setblocking(False)
        words = chan.recv(4096).decode(errors="replace").strip()
    except OSError:
        words = ""
    chan.close()
    return words.splitlines()[-1] if words else ""


def _await_line(sock: socket.socket, expected: str, timeout: float = 15.0) -> str:
    """"" once the worker said `expected`, else what went wrong."""
    if not select.select([sock], [], [], timeout)[0]:
        return "worker did not answer in time"
    try:
        msg = sock.recv(4096).decode().strip()
    except OSError as e:
        msg = str(e)
    return "" if msg == expected else msg or "worker exited"


def _await_ready(sock: socket.socket) -> str:
    return _await_line(sock, "ok")


def _tell(channels: dict[int, socket.socket], message: bytes) -> None:
    for sock in channels.values():
        try:
            sock.sendall(message)
        except OSError:
            pass  # that worker is gone; its SIGCHLD says so


def _stop_workers(pids: dict[int, int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for pid in list(pids):
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def serve(ports: dict[str, int], on_ready=None, workers: int | None = None) -> int:
    """Forward between ports ({name: ifindex}) until SIGTERM or SIGINT."""
    # One per CPU this process may run on (taskset, cgroups), not per CPU
    # of the machine.
    workers = workers or len(os.sched_getaffinity(0))
    names, ifindexes = list(ports), list(ports.values())
    fanout_base = os.getpid() & 0xFFF0
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)

    st = state.State(pid=os.getpid(), ports=ports, workers=workers,
                     pid_start=state.start_time(os.getpid()))
    st.save()  # first, so that a crash from here on can be cleaned up
    pids: dict[int, int] = {}  # pid -> worker index
    channels: dict[int, socket.socket] = {}  # pid -> its control socket
    try:
        st.sysctls = sysctl.save(_forwarding_paths(names))
        st.save()  # before anything changes: `detach` restores these
        state.create_counters(workers, len(ports))
        # Every ring open and every worker watching before the kernel stops
        # forwarding: the frames around the switch are taken by exactly one.
        for i in range(workers):
            pid, chan = _fork_worker(ifindexes, i, workers, fanout_base, watching=True)
            pids[pid], channels[pid] = i, chan
            problem = _await_ready(chan)
            if problem:
                raise XdpfwdError(f"worker {i} failed to start: {problem}")
        disable_forwarding(st.sysctls)
        grace_period()  # no receive still reads the old value
        _tell(channels, b"end\n")
    except BaseException:
        _stop_workers(pids)
        tear_down(st.sysctls)
        raise
    log(f"forwarding between {' '.join(names)} with {workers} workers")
    return _supervise(st, pids, channels, ifindexes, fanout_base, signals, on_ready)


def _hand_back(pids: dict[int, int], channels: dict[int, socket.socket],
               saved: dict[str, str]) -> None:
    """Forwarding back on while every ring is still open; the workers take
    the frames the kernel did not forward, then exit (handover.py)."""
    _tell(channels, b"watch\n")
    for pid in list(pids):
        problem = _await_line(channels[pid], "watching", timeout=5)
        if problem:
            log(f"worker {pids[pid]} (pid {pid}) did not take part in the handover: {problem}")
    grace_period()  # every frame a worker read before watching stays with it
    sysctl.restore(saved)
    grace_period()  # every frame the kernel reads from now on, it forwards
    _tell(channels, b"end\n")
    deadline = time.monotonic() + HANDBACK_SECONDS
    while pids and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pids.pop(pid, None) is None:
            time.sleep(0.01)
    _stop_workers(pids)  # any that did not finish in time
    for sock in channels.values():
        sock.close()


def _supervise(st, pids, channels, ifindexes, fanout_base, signals, on_ready) -> int:
    restarts: list[float] = []
    code = 0
    try:
        if on_ready:
            on_ready()  # inside the try: if it fails, everything is undone
        while True:
            sig = signal.sigwait(signals)
            if sig != signal.SIGCHLD:
                log(f"{signal.Signals(sig).name}: stopping")
                break
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid = 0
                if not pid:
                    break
                index = pids.pop(pid, None)
                if index is None:
                    continue
                reason = _last_words(channels.pop(pid))
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > MAX_RESTARTS:
                    log("workers keep dying; giving up")
                    code = 1
                    raise StopIteration
                log(f"worker {index} (pid {pid}) exited with status {status}"
                    f"{f' ({reason})' if reason else ''}; restarting it")
                # The kernel's forwarding is off: no handover window.
                new, chan = _fork_worker(ifindexes, index, st.workers, fanout_base, watching=False)
                pids[new], channels[new] = index, chan
                problem = _await_ready(chan)
                if problem:
                    log(f"worker {index} failed to restart: {problem}")
    except StopIteration:
        pass
    finally:
        try:
            _hand_back(pids, channels, st.sysctls)
        except BaseException:
            _stop_workers(pids)
            sysctl.restore(st.sysctls)
            raise
        finally:
            state.remove()
        log("stopped; forwarding sysctls restored")
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xdpfwd.afpacket.service")
    parser.add_argument("--ready-fd", type=int, help="write 'ok' here once forwarding")
    parser.add_argument("--workers", type=int)
    parser.add_argument("ports", nargs="+", help="NAME=IFINDEX")
    args = parser.parse_args(argv)
    ports = {n: int(i) for n, i in (p.split("=", 1) for p in args.ports)}

    def ready():
        if args.ready_fd is not None:
            os.write(args.ready_fd, b"ok\n")
            os.close(args.ready_fd)

    try:
        return serve(ports, ready, args.workers)
    except (XdpfwdError, OSError) as e:
        if args.ready_fd is not None:
            os.write(args.ready_fd, f"{e}\n".encode())
        log(str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
