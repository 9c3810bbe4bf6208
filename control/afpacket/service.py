"""The AF_PACKET forwarder's supervisor: turns the kernel's own forwarding
off on the ports, starts one worker per CPU, restarts a worker that dies,
and on SIGTERM or SIGINT stops them and puts the sysctls back.

Why forwarding goes off: an AF_PACKET socket gets a copy of each frame,
and the kernel still gets the original. With forwarding on, the kernel
would forward it too and the receiver would see every packet twice. IPv4
has a per-interface switch (net.ipv4.conf.PORT.forwarding); IPv6 forwarding
has only the namespace-wide net.ipv6.conf.all.forwarding, so that one goes
off while the forwarder runs. Everything changed is recorded in the state
file first and restored on exit, or by `detach` if the supervisor died.

Run as `python -m xdpfwd.afpacket.service [--ready-fd N] IFACE...`
(`attach --mode afpacket` does that in the background), or in-process
through serve() (`xdpfwd run`).
"""

import argparse
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

from xdpfwd.afpacket import state
from xdpfwd.errors import XdpfwdError

PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 5  # per minute; past that the forwarder gives up and exits


def log(msg: str) -> None:
    print(f"xdpfwd afpacket[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


# -- sysctls ----------------------------------------------------------------


def _forwarding_paths(ports: list[str]) -> list[Path]:
    """What has to go off, "all" for IPv6 before the per-interface copies it
    overwrites, so that restoring in this order gives back every value."""
    v6 = Path("/proc/sys/net/ipv6/conf")
    paths = [Path(f"/proc/sys/net/ipv4/conf/{p}/forwarding") for p in ports]
    if (v6 / "all/forwarding").exists():
        paths.append(v6 / "all/forwarding")
        paths += sorted(p for p in v6.glob("*/forwarding") if p.parent.name != "all")
    return paths


def save_and_disable_forwarding(ports: list[str]) -> dict[str, str]:
    saved = {str(p): p.read_text().strip() for p in _forwarding_paths(ports)}
    for p in saved:
        if p.startswith("/proc/sys/net/ipv4/") or p.endswith("/all/forwarding"):
            Path(p).write_text("0\n")
    return saved


def restore_sysctls(saved: dict[str, str]) -> None:
    for path, value in saved.items():  # insertion order: "all" first
        try:
            Path(path).write_text(value + "\n")
        except FileNotFoundError:
            pass  # the interface is gone, and its setting with it


# -- workers ----------------------------------------------------------------


def _fork_worker(ports: list[int], index: int, workers: int, fanout_base: int) -> tuple[int, int]:
    """Fork one worker; returns (pid, read end of its readiness pipe)."""
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        os.close(w)
        return pid, r
    # The child: its own signal handling, and nothing of the parent's loop.
    os.close(r)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    # If the supervisor dies, even by SIGKILL, the workers stop with it.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)
    try:
        from xdpfwd.afpacket import worker

        worker.main(ports, index, workers, fanout_base,
                    ready=lambda: (os.write(w, b"ok\n"), os.close(w)))
        code = 0
    except BaseException as e:  # report to the supervisor, never a traceback
        try:
            os.write(w, f"{type(e).__name__}: {e}\n".encode())
        except OSError:
            pass
        code = 1
    os._exit(code)


def _await_ready(fd: int, timeout: float = 15.0) -> str:
    import select

    if not select.select([fd], [], [], timeout)[0]:
        os.close(fd)
        return "worker did not start in time"
    msg = os.read(fd, 4096).decode().strip()
    os.close(fd)
    return "" if msg == "ok" else msg or "worker exited at start"


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

    st = state.State(pid=os.getpid(), ports=ports, workers=workers, started=time.time(),
                     pid_start=state.start_time(os.getpid()))
    st.save()  # first, so that a crash from here on can be cleaned up
    pids: dict[int, int] = {}  # pid -> worker index
    try:
        st.sysctls = save_and_disable_forwarding(names)
        st.save()
        state.create_counters(workers, len(ports))
        for i in range(workers):
            pid, ready = _fork_worker(ifindexes, i, workers, fanout_base)
            pids[pid] = i
            problem = _await_ready(ready)
            if problem:
                raise XdpfwdError(f"worker {i} failed to start: {problem}")
    except BaseException:
        _stop_workers(pids)
        restore_sysctls(st.sysctls)
        state.remove()
        raise
    log(f"forwarding between {' '.join(names)} with {workers} workers")
    return _supervise(st, pids, ifindexes, fanout_base, signals, on_ready)


def _supervise(st, pids, ifindexes, fanout_base, signals, on_ready) -> int:
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
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > MAX_RESTARTS:
                    log("workers keep dying; giving up")
                    code = 1
                    raise StopIteration
                log(f"worker {index} (pid {pid}) exited with status {status}; restarting it")
                new, ready = _fork_worker(ifindexes, index, st.workers, fanout_base)
                pids[new] = index
                problem = _await_ready(ready)
                if problem:
                    log(f"worker {index} failed to restart: {problem}")
    except StopIteration:
        pass
    finally:
        _stop_workers(pids)
        restore_sysctls(st.sysctls)
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
