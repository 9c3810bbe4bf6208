"""The AF_PACKET datapath: the user-space forwarder behind the interface
xdp.py has too (datapath.Datapath: status, attach, detach, read_counters),
for hosts where XDP cannot run.

attach starts the supervisor (service.py) as a process of its own, in its
own session, and returns once it says it forwards (or why it cannot);
serve() runs it in the calling process (`xdpfwd run`). The kernel does not
know a user-space forwarder, so it is recorded in the namespace's state
file (state.py). However it ends, service.tear_down() puts its sysctls
back and removes its state: the supervisor calls it, and so does this
module for a forwarder that died or would not start.
"""

import os
import select
import signal
import subprocess
import sys
import time
from typing import Iterable

from xdpfwd import netns
from xdpfwd.afpacket import service, state
from xdpfwd.counters import PortCounters
from xdpfwd.datapath import AttachResult, Interface, PortState, port_name
from xdpfwd.errors import Conflict, KernelRefused

MODE = "afpacket"
READY_TIMEOUT = 30.0

StateFileError = state.StateFileError
discard = state.discard  # a state file load() refused: detach removes it


def repair() -> None:
    """A recorded forwarder that no longer runs: its sysctls back, its
    state gone (hold forwarder.exclusive())."""
    st = state.load()
    if st and not st.alive:
        service.tear_down(st.sysctls)


def status(links: Iterable[Interface] | None = None) -> dict[str, PortState]:
    """The recorded forwarder's ports among links (all of them when None),
    running or not. One forwarder per namespace."""
    st = state.load()
    if not st:
        return {}
    wanted = None if links is None else {l.name for l in links}
    running = st.alive
    return {name: PortState(name, index, mode=MODE, afpacket_pid=st.pid, afpacket_running=running)
            for name, index in st.ports.items() if wanted is None or name in wanted}


def already(links: list[Interface], mode: str) -> AttachResult | None:
    """None when no forwarder is recorded here; "already attached" when it
    serves exactly these ports and the mode lets it; else Conflict."""
    serving = status()
    if not serving:
        return None
    pid = next(iter(serving.values())).afpacket_pid
    if set(serving) == {l.name for l in links} and mode in ("auto", MODE):
        return AttachResult(0, {n: MODE for n in serving}, already=True, pid=pid)
    raise Conflict(f"the AF_PACKET forwarder (pid {pid}) serves {', '.join(serving)}; "
                   "detach it first")


def attach(links: list[Interface], mode: str = MODE, verbose: bool = False,
           notes: list[str] | None = None) -> AttachResult:
    """Start the forwarder in the background (the caller checked the policy
    and holds the lock); returns once it forwards."""
    st = _start({l.name: l.index for l in links})
    return AttachResult(0, {n: MODE for n in st.ports}, list(notes or []), pid=st.pid)


def serve(links: list[Interface], on_ready=None) -> int:
    """Forward in this process until SIGTERM or SIGINT."""
    return service.serve({l.name: l.index for l in links}, on_ready=on_ready)


def detach(states: Iterable[PortState]) -> list[str]:
    """Stop the forwarder, as a whole, if states show it on any port."""
    st = state.load()
    if not st or not any(s.afpacket_pid == st.pid for s in states):
        return []
    _stop(st)
    return list(st.ports)


def read_counters(states: Iterable[PortState], names: dict[int, str]) -> dict[str, PortCounters]:
    """Its ports' counters, summed over workers, also of a forwarder that
    died (its last counts)."""
    if not any(s.afpacket_pid for s in states):
        return {}
    st = state.load()
    if not st:
        return {}
    return {port_name(names, i): c for i, c in state.read_counters(st).items()}


def _start(ports: dict[str, int]) -> state.State:
    r, w = os.pipe()
    d = netns.run_dir(create=True)
    fd = os.open(d / "afpacket.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # also a log left by an older version
    logfile = os.fdopen(fd, "ab")
    args = [sys.executable, "-m", state.SERVICE_MODULE, "--ready-fd", str(w),
            *(f"{name}={index}" for name, index in ports.items())]
    proc = subprocess.Popen(args, pass_fds=[w], stdin=subprocess.DEVNULL, stdout=logfile,
                            stderr=logfile, start_new_session=True)
    os.close(w)
    logfile.close()
    answer = _read_answer(r, proc)
    if answer != "ok":
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftover = state.load()
        if leftover and leftover.pid == proc.pid:
            service.tear_down(leftover.sysctls)
        raise KernelRefused(f"the AF_PACKET forwarder did not start: {answer}")
    st = state.load()
    assert st is not None and st.pid == proc.pid
    return st


def _read_answer(fd: int, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    chunks = b""
    with os.fdopen(fd, "rb", buffering=0) as f:
        while time.monotonic() < deadline:
            if select.select([f], [], [], 0.1)[0]:
                data = f.read(4096)
                if not data:
                    break
                chunks += data
                if chunks.endswith(b"\n"):
                    break
            elif proc.poll() is not None:
                break
    return chunks.decode().strip() or f"exited with status {proc.poll()} (see {netns.run_dir()}/afpacket.log)"


def _stop(st: state.State, timeout: float = 10.0) -> None:
    """SIGTERM the supervisor and wait; if it is (or then gets) gone without
    cleaning up, put the sysctls back and remove the state here."""
    if st.alive:
        os.kill(st.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while st.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        if st.alive:
            os.kill(st.pid, signal.SIGKILL)  # its workers follow (PDEATHSIG)
            while st.alive:
                time.sleep(0.02)
    leftover = state.load()
    if leftover and leftover.pid == st.pid:
        # Killed, or died: nobody restored anything yet.
        service.tear_down(leftover.sysctls)
