"""Named points where the fault tests kill xdpfwd mid-operation.

XDPFWD_FAILPOINT=NAME makes the process SIGKILL itself on reaching NAME:
no cleanup runs, exactly as if the machine had lost it there. The tests
use it to prove that every half-done state is reported truthfully and
repaired by the next attach or detach. Unset, it costs one dict lookup.
"""

import os
import signal


def hit(name: str) -> None:
    if os.environ.get("XDPFWD_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
