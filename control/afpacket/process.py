"""Start the AF_PACKET forwarder in the background and stop it again.

`attach --mode afpacket` starts the supervisor as its own process, in its
own session, and returns once it says it forwards (or why it cannot).
"""

import os
import signal
import subprocess
import sys
import time

from xdpfwd.afpacket import state
from xdpfwd.afpacket.service import tear_down
from xdpfwd.errors import KernelRefused

READY_TIMEOUT = 30.0


def start(ports: dict[str, int]) -> state.State:
    r, w = os.pipe()
    d = state.namespace_dir(create=True)
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
            tear_down(leftover.sysctls)
        raise KernelRefused(f"the AF_PACKET forwarder did not start: {answer}")
    st = state.load()
    assert st is not None and st.pid == proc.pid
    return st


def _read_answer(fd: int, proc: subprocess.Popen) -> str:
    import select

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
    return chunks.decode().strip() or f"exited with status {proc.poll()} (see {state.namespace_dir()}/afpacket.log)"


def stop(st: state.State, timeout: float = 10.0) -> None:
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
        tear_down(leftover.sysctls)
