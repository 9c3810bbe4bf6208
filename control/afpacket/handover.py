"""Handing the traffic from the kernel's forwarding to the AF_PACKET
forwarder and back without losing or duplicating a packet.

Why there is a window at all. A packet socket gets its copy of a frame in
__netif_receive_skb_core() (net/core/dev.c), from the ptype_all taps,
before the same call hands the frame to ip_rcv()/ipv6_rcv(). The kernel
reads the forwarding sysctl later, for that same frame:
ip_route_input_slow() tests IN_DEV_FORWARD() of the ingress device
(net/ipv4/route.c), ip6_forward() tests all.forwarding
(net/ipv6/ip6_output.c). So a frame the forwarder reads around the moment
the sysctl changes may or may not have been forwarded by the kernel too,
and the sysctl alone cannot tell which.

What tells exactly. While a handover window is open, the worker also
watches what the kernel transmits on the ports (a packet socket without
PACKET_IGNORE_OUTGOING sees every frame in dev_queue_xmit_nit(), where the
kernel's forwarded copy passes), and forwards an incoming frame only if
the kernel did not: the kernel's copy is the same IP packet with TTL / hop
limit one lower (and the IPv4 checksum updated), so frames are matched on
the IP packet without those fields, and counted, so two identical packets
are two. The forwarder's own frames never show up there: PACKET_QDISC_BYPASS
sends them through packet_direct_xmit(), which skips the taps.

When the kernel's copy has been seen. The kernel forwards a frame in the
same receive call that gave us our copy (__netif_receive_skb_core() ->
ip_rcv() -> ip_forward() -> dev_queue_xmit() -> dev_queue_xmit_nit()), all
inside one RCU read-side critical section (rcu_read_lock() around
__netif_receive_skb() in process_backlog() and around the list receive in
netif_receive_skb_list_internal(), and softirq context throughout). So
once an RCU grace period has passed (membarrier(MEMBARRIER_CMD_GLOBAL) is
synchronize_rcu(), kernel/sched/membarrier.c), the watching sockets hold
the kernel's copy of every frame the rings had received before it began.
A frame the kernel held for its neighbour (arp_queue) leaves in
__neigh_update() before the netlink event that makes the worker retry its
own held copy; the retry drains the watching sockets first (settle()).

Which frames belong to the window. A window opens before the switch and
closes after it. Until the supervisor says the switch is done, the worker
only reads and keeps frames (HOLD). Then it asks the packet socket how many
frames it has put in each ring: tpacket_rcv() counts them (tp_packets)
under the ring's lock and fills the ring in order, so that figure
(PACKET_STATISTICS) is exactly the frames that arrived before the switch
was done, or just after. One grace period, one drain, and every one of
them is decided by whether the kernel's copy was seen (RELEASE). Past
that figure the new rule holds: forward all (start) or none (stop).

The sequence (service.py drives it):
- start: the worker opens its watching sockets, then its rings, and
  starts in the window; forwarding goes off; a grace period; "end". A
  ring takes frames only a grace period after it joined its fanout group
  (rings.open_rx_rings()): what the group gave it before is dropped, and
  the kernel, still forwarding, forwards it.
- stop: "watch" (the worker opens the watching sockets and answers); a
  grace period, so every frame a worker read before is one the kernel did
  not forward; forwarding goes back on; a grace period; "end": the worker
  decides the frames up to the figure, sends what it held for a neighbour,
  and exits; only then do its rings close.
Frames the kernel forwarded itself are the kernel's: the worker neither
sends nor counts them, as XDP never sees what the kernel had before
attach or after detach.
"""

import os
import socket
import struct
import sys
import threading
import time
from collections import Counter

from xdpfwd.afpacket.rings import ETH_P_ALL, SOL_PACKET, attach_filter, grace_period

PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33
WATCH_BUFFER = 16 << 20  # a window's worth of the kernel's frames, at any rate this forwarder takes
HOLD_SECONDS = 3.5  # worker.PENDING_SECONDS, and a margin

# A classic BPF filter: only frames the kernel transmits (pkt_type
# PACKET_OUTGOING, set by dev_queue_xmit_nit()), only IPv4 and IPv6.
SKF_AD_PKTTYPE = (-0x1000 + 4) & 0xFFFFFFFF
PACKET_OUTGOING = 4
_FILTER = [
    (0x30, 0, 0, SKF_AD_PKTTYPE),  # ldb pkttype
    (0x15, 0, 4, PACKET_OUTGOING),  # jeq OUTGOING, else drop
    (0x28, 0, 0, 12),               # ldh ethertype
    (0x15, 1, 0, 0x0800),           # jeq IPv4 -> accept
    (0x15, 0, 1, 0x86DD),           # jeq IPv6 -> accept, else drop
    (0x06, 0, 0, 0x40000),          # accept the whole frame
    (0x06, 0, 0, 0),                # drop
]

def key(frame: bytes) -> bytes | None:
    """The IP packet without what forwarding changes: TTL and header
    checksum (IPv4), hop limit (IPv6); None for anything else."""
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and len(frame) >= 34:
        end = 14 + ((frame[16] << 8) | frame[17])
        return frame[14:22] + frame[23:24] + frame[26:end]
    if ethertype == b"\x86\xdd" and len(frame) >= 54:
        end = 54 + ((frame[18] << 8) | frame[19])
        return frame[14:21] + frame[22:end]
    return None


class Watch:
    """A packet socket that sees what the kernel transmits on one port."""

    def __init__(self, ifindex: int):
        # Protocol 0: nothing arrives before the filter is in place.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        attach_filter(self.sock, _FILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, WATCH_BUFFER)
        self.sock.setblocking(False)
        self.sock.bind((socket.if_indextoname(ifindex), ETH_P_ALL))
        self.ifindex = ifindex

    def drain(self, seen: Counter) -> int:
        """Add what was transmitted so far to `seen`; returns how many frames
        the socket had to drop (its buffer was full)."""
        recv = self.sock.recv
        while True:
            try:
                # Larger frames than this the forwarder never sends (TxRing).
                frame = recv(4096)
            except BlockingIOError:
                break
            k = key(frame)
            if k is not None:
                seen[k] += 1
        # struct tpacket_stats: tp_packets, tp_drops (reset by each read)
        return struct.unpack("=II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]


IDLE, HOLD, RELEASE = "idle", "hold", "release"


class Handover:
    """One worker's side of a handover (see the module's docstring).

    Phases: IDLE, the sysctl's rule; HOLD, a window before the switch is
    known to be done: frames are read and kept, the kernel's copies
    collected; RELEASE, after "end": the kept frames and those up to the
    rings' count go through kernel_forwarded(). Leaving, the frames past the
    count are the kernel's and are not handled at all.

    The worker calls blocks() to read its rings, kernel_forwarded() for
    each frame it would forward, settle() before retrying frames it held
    for a neighbour, and step() once per loop; done ends the worker.
    """

    def __init__(self, ports: list[int], control: socket.socket | None = None,
                 watching: bool = False):
        self.ports = ports
        self.control = control
        self.watches: list[Watch] = []  # open during a window only
        self.seen: Counter = Counter()  # the kernel's copies, not yet matched
        self.held: list = []  # (ring, frames, ring index of frames[0]) read in HOLD
        self.phase = IDLE
        self.target: dict[int, int] = {}  # ifindex -> frames that belong to the window
        self._grace: threading.Thread | None = None
        self._counted = 0.0  # when the frames up to target were all handled
        self.leaving = False
        self.done = False
        self._input = b""
        if control is not None:
            control.setblocking(False)
        if watching:
            self._watch()  # before the rings open: no copy of theirs goes unseen

    def fileno(self) -> int:
        return self.control.fileno() if self.control is not None else -1

    # -- the worker's hooks ---------------------------------------------

    def blocks(self, rings):
        """(ring, frames) to handle now, for every block the rings hold."""
        if self.phase == IDLE:
            for ring in rings:
                for frames in ring.blocks():
                    yield ring, frames
        elif self.phase == HOLD:
            self.held += [(ring, frames, ring.read - len(frames))
                          for ring in rings for frames in ring.blocks()]
            self._drain()  # so that the watching sockets never overflow
        else:
            held, self.held = self.held, []
            fresh = ((ring, frames, ring.read - len(frames))
                     for ring in rings for frames in ring.blocks())
            for ring, frames, first in (*held, *fresh):
                if self.leaving:
                    # Past the count, the kernel forwards: not ours. A block
                    # wholly past it keeps nothing (a negative slice bound
                    # would keep all but its last frames).
                    frames = frames[:max(0, self.target[ring.ifindex] - first)]
                if frames:
                    yield ring, frames

    def kernel_forwarded(self, frame: bytes) -> bool:
        """Whether the kernel forwarded this frame itself (then it is not
        ours to send or count). Always False outside a window."""
        if not self.seen:
            return False
        k = key(frame)
        n = self.seen.get(k, 0)
        if not n:
            return False
        if n == 1:
            del self.seen[k]
        else:
            self.seen[k] = n - 1
        return True

    def settle(self) -> None:
        """Collect the kernel's copies of every frame it has received so far."""
        if self.phase == RELEASE:
            grace_period()
            self._drain()

    def step(self, rings, holding: bool) -> None:
        """Follow the supervisor's messages; close the window once the frames
        up to the rings' count were handled and none is held for a neighbour."""
        if self.control is not None:
            self._read_control(rings)
        if self._grace is not None and not self._grace.is_alive():
            # Every frame counted in target has been through the kernel.
            self._grace = None
            self._drain()
            self.phase = RELEASE
        if self.phase != RELEASE or self.held:
            return
        if not self._counted:
            if any(ring.read < self.target[ring.ifindex] for ring in rings):
                return
            self._counted = time.monotonic()
        # A frame of the window that waits for its neighbour has a copy in
        # the kernel's queue too, unless the kernel read "off": keep
        # watching until it leaves, or until it must have expired.
        if holding and time.monotonic() - self._counted < HOLD_SECONDS:
            return
        self._unwatch()
        self.phase = IDLE
        self.done = self.leaving

    # -- internals --------------------------------------------------------

    def _watch(self) -> None:
        """A window opens, or the one open goes on (an attach followed at
        once by a detach): frames from now on are held until "end"."""
        if not self.watches:
            self.watches = [Watch(ifindex) for ifindex in self.ports]
        self.phase = HOLD
        self.target = {}
        self._grace = None  # a switch not yet acted on is overtaken by this one
        self._counted = 0.0

    def _unwatch(self) -> None:
        # packet_release() waits for an RCU grace period: in a thread, so
        # that the rings are read meanwhile.
        socks = [w.sock for w in self.watches]
        threading.Thread(target=lambda: [s.close() for s in socks], daemon=True).start()
        self.watches = []
        self.seen.clear()

    def _drain(self) -> None:
        dropped = sum(w.drain(self.seen) for w in self.watches)
        if dropped:
            warn(f"{dropped} frames the kernel sent were not seen (buffer full): "
                 "they may go out twice")

    def _switched(self, rings) -> None:
        """The sysctl has changed and a grace period has passed since."""
        dropped = sum(ring.dropped for ring in rings)
        self.target = {ring.ifindex: ring.received() for ring in rings}
        dropped = sum(ring.dropped for ring in rings) - dropped
        if dropped:
            warn(f"the rings had no room for {dropped} frames: lost, unless the kernel "
                 "forwarded them")
        # The frames counted may still be in the kernel's hands: one more
        # grace period, in a thread, so that the rings are read meanwhile.
        self._grace = threading.Thread(target=grace_period, daemon=True)
        self._grace.start()

    def _read_control(self, rings) -> None:
        try:
            data = self.control.recv(4096)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:  # the supervisor is gone; PR_SET_PDEATHSIG stops us too
            self.control.close()
            self.control = None
            self.done = True
            return
        self._input += data
        *lines, self._input = self._input.split(b"\n")
        for line in lines:
            if line == b"watch":
                self._watch()
                self.leaving = True
                self.control.sendall(b"watching\n")
            elif line == b"end" and self.phase == HOLD and self._grace is None:
                self._switched(rings)


def warn(msg: str) -> None:
    print(f"xdpfwd afpacket worker[{os.getpid()}]: handover: {msg}", file=sys.stderr, flush=True)
