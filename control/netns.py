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
import stat
from contextlib import contextmanager
from pathlib import Path

from xdpfwd.errors import XdpfwdError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
# xdpfwd's own, per namespace: the attach lock and the AF_PACKET forwarder's
# state. /run is shared by `ip netns exec` calls (/sys/fs/bpf is not).
RUN_DIR = Path("/run/xdpfwd")

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


def run_dir(create: bool = False) -> Path:
    """/run/xdpfwd/netns-INODE of the calling thread's network namespace,
    root's alone (0700)."""
    ino = os.stat("/proc/thread-self/ns/net").st_ino
    d = RUN_DIR / f"netns-{ino}"
    if create:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not stat.S_ISDIR(os.lstat(d).st_mode):
            raise XdpfwdError(f"{d} is not a directory: remove it")
        # mkdir's mode is not applied to a directory that existed before
        # (an older version's, or one made by hand).
        os.chmod(RUN_DIR, 0o700)
        os.chmod(d, 0o700)
    return d
