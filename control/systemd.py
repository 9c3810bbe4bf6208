"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""

import os
import socket


def notify(message: str) -> None:
    """Tell systemd (Type=notify) e.g. "READY=1"; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):  # an abstract socket
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.sendall(message.encode())
