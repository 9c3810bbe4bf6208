"""Enter a named network namespace (ip netns add NAME) from this thread.

setns(CLONE_NEWNET) changes the namespace of the calling thread only, and
sockets and netlink handles opened meanwhile stay in the namespace they
were opened in. That lets one process set up the lab, open a socket in
sendbox and another in recvbox, and test-run a program as if it were in
router, without a subprocess per step. /sys is NOT switched (it is a mount,
not a netns property): read links through netlink, not /sys/class/net.
"""

import ctypes
import os
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_RUN_DIR, name))


@contextmanager
def entered(name: str):
    """Run the with-block in network namespace `name`, then come back."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(original)
        os.close(target)
        os.close(original)
