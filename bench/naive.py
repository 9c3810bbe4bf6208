"""The floor: a naive AF_PACKET forwarder, one recv and one send per packet.

It makes exactly the decision xdpfwd's AF_PACKET forwarder makes
(xdpfwd.afpacket.packet.decide with the same netlink Fib) and differs only
in its I/O: no rings, no batching, no fanout, a single process. A
user-space forwarder must beat this to be worth its complexity.

Run inside the router's namespace, as root:
    ip netns exec bench-router .venv/bin/python -m bench.naive eth1 eth0
It turns the kernel's forwarding off on the ports while it runs (else the
kernel would forward every packet too), prints "ready" once it forwards,
and on SIGTERM or SIGINT puts the sysctls back and prints its counts.
"""

import select
import signal
import socket
import sys

from xdpfwd.afpacket import packet
from xdpfwd.afpacket.fib import Fib
from xdpfwd.afpacket.rings import ETH_P_ALL, PACKET_IGNORE_OUTGOING, SOL_PACKET
from xdpfwd.afpacket.service import save_and_disable_forwarding
from xdpfwd.sysctl import restore as restore_sysctls


class Stop(Exception):
    pass


def _stop(*_):
    raise Stop


def open_port(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # not our own frames
    sock.bind((name, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def forward(ports: list[str]) -> tuple[int, int]:
    """Forward until Stop; returns (received, forwarded)."""
    socks = {socket.if_nametoindex(n): open_port(n) for n in ports}
    by_fd = {s.fileno(): (i, s) for i, s in socks.items()}
    portset = frozenset(socks)
    received = forwarded = 0
    with Fib() as fib:
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        poller.register(fib.fileno(), select.POLLIN)
        print("ready", flush=True)
        try:
            while True:
                for fd, _ in poller.poll():
                    if fd == fib.fileno():
                        fib.poll_events()
                        continue
                    ingress, sock = by_fd[fd]
                    while True:  # one recvfrom and one send per packet
                        try:
                            frame, addr = sock.recvfrom(65536)
                        except BlockingIOError:
                            break
                        received += 1
                        vlan = frame[12:14] in packet.ETH_VLAN
                        outcome, egress, out = packet.decide(frame, ingress, vlan, fib, portset)
                        if outcome == packet.FORWARDED:
                            try:
                                socks[egress].send(out)
                                forwarded += 1
                            except (BlockingIOError, OSError):
                                pass  # a full queue drops, as a NIC would
                        elif outcome == packet.NO_NEIGH:
                            hop = fib.lookup(4 if frame[12:14] == packet.ETH_IPV4 else 6,
                                             frame[30:34] if frame[12:14] == packet.ETH_IPV4
                                             else frame[38:54])
                            fib.resolve(hop)  # the kernel asks; this packet is lost
        except Stop:
            pass
    for s in socks.values():
        s.close()
    return received, forwarded


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m bench.naive IFACE IFACE...", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    saved = save_and_disable_forwarding(argv)
    try:
        received, forwarded = forward(argv)
    except Stop:
        received = forwarded = 0
    finally:
        restore_sysctls(saved)
    print(f"received {received} forwarded {forwarded}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
