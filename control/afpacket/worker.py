"""One forwarding worker: receive rings on every port, decide, transmit
rings on every port. The supervisor runs one per CPU; PACKET_FANOUT gives
each worker its share of the flows.

Each frame's work is done in C (fastpath.c, through learn() below) when
the C has every answer it needs cached; the rest takes the Python path:
packet.decide(), the slow path.

A frame whose next hop is not resolved waits here (a few, for a short
while) while the kernel resolves it, as the kernel's own neighbour queue
would hold it: with forwarding off on the ports, the kernel's copy of the
frame is dropped, so this copy is the only one.
"""

import os
import select
import signal
import socket
import sys
import time

from xdpfwd import sysctl
from xdpfwd.afpacket import packet, slowpath, state
from xdpfwd.afpacket.fib import Fib
from xdpfwd.afpacket.fragment import fragment
from xdpfwd.afpacket.handover import IDLE, Handover
from xdpfwd.afpacket.icmp import IcmpErrors
from xdpfwd.afpacket.rings import TxRing, open_rx_rings
from xdpfwd.afpacket.state import WorkerCounters
from xdpfwd.layout import layout

try:
    from xdpfwd.afpacket import _fastpath
except ImportError as e:  # not built: `make setup` builds it
    _fastpath = None
    _FASTPATH_MISSING = str(e)

PENDING_PER_HOP = 256  # about what the kernel's unres_qlen_bytes holds of small packets
PENDING_SECONDS = 3.0  # the kernel gives up on ARP after about that


def learn(fast, fib, frame: bytes, ingress: int, vlan: bool) -> None:
    """After the Python path took a frame the fast path lacked an answer for:
    give it the answers fib gives the Python path, so that the next frame
    like this one stays in C. The C asks for one answer at a time (the
    port's MAC and IPv6 switch, the route, the way back), in the order
    packet.decide() needs them."""
    for _ in range(3):
        missing = fast.missing(frame, ingress, vlan)
        if missing is None:
            return
        if missing[0] == "port":
            fast.learn_port(ingress, fib.mac(ingress), fib.ipv6_disabled(ingress))
        elif missing[0] == "hop":
            _, family, dst = missing
            hop = fib.lookup(family, dst)
            # A Hop without an egress (never seen from `route get`) is no port.
            fast.learn_hop(family, dst, packet.OUTCOME_INDEX[hop.outcome], hop.ifindex or 0,
                           hop.mtu or 0, hop.dmac, hop.smac)
        else:
            _, src, dst, egress = missing
            fast.learn_reverse(src, ingress, fib.reverse_ok(src, dst, ingress, egress))


def fast_path(ports: list[int], disabled: frozenset, rx=(), tx=()):
    """The C fast path for these ports, told the outcomes' indexes and the
    counters' words from the layout (bpf/counters.h), and which outcomes
    the slow path takes; None when the extension is not built."""
    if _fastpath is None:
        return None
    lay = layout()
    return _fastpath.FastPath(
        ports=ports, outcomes=packet.OUTCOME_INDEX, slow=slowpath.SLOW, disabled=disabled,
        port_words=lay.port_words, rx_word=lay.received_word, outcome_word=lay.outcome_word(0),
        tx_word=lay.transmitted_word, rx=rx, tx=tx)


def kernel_forwarding_off(ports: list[int]) -> frozenset[tuple[int, int]]:
    """(family, port) pairs the kernel's own forwarding was off for before
    the forwarder turned it off everywhere (the values the supervisor saved
    first): the kernel would not forward those, so neither does this."""
    st = state.load()
    if st is None:
        return frozenset()
    return frozenset((family, ifindex) for ifindex in ports for family in (4, 6)
                     if not sysctl.kernel_forwards(f"ipv{family}", socket.if_indextoname(ifindex),
                                                   st.sysctls))


class Worker:
    def __init__(self, ports: list[int], worker: int, workers: int, fanout_base: int,
                 control=None, watching: bool = False):
        self.ports = ports
        # Before the rings: see handover.py.
        self.handover = Handover(ports, control, watching)
        self.portset = frozenset(ports)
        self.disabled = kernel_forwarding_off(ports)
        lay = layout()
        self.slot = {ifindex: i * lay.port_words for i, ifindex in enumerate(ports)}
        self.rx_word = lay.received_word
        self.outcome_word = lay.outcome_word(0)
        self.tx_word = lay.transmitted_word
        self.fib = Fib()
        self.rx = open_rx_rings(ports, fanout_base)
        self.tx = {ifindex: TxRing(ifindex) for ifindex in ports}
        self.counters = WorkerCounters(worker, workers, len(ports))
        self.fast = fast_path(ports, self.disabled, self.rx, [self.tx[i] for i in ports])
        if self.fast is None:
            print(f"xdpfwd afpacket worker[{os.getpid()}]: no C fast path ({_FASTPATH_MISSING}); "
                  "every frame takes the Python path", file=sys.stderr, flush=True)
        self.icmp = IcmpErrors()
        self.slow = slowpath.SlowPath(self.fib, self.icmp, fragment, self.transmit, self._hold,
                                      self.disabled)
        self.others: dict[int, socket.socket] = {}  # egress interfaces that are not ports
        self.pending: dict[tuple[bytes, int], list] = {}
        self.slow_failures: set[str] = set()
        self.stopping = False

    def stop(self, *_):
        self.stopping = True

    def _count(self, ingress: int, outcome: int, nbytes: int) -> None:
        base = self.slot[ingress] + self.outcome_word + 2 * outcome
        local = self.counters.local
        local[base] += 1
        local[base + 1] += nbytes

    def _received(self, ingress: int, nbytes: int) -> None:
        # Apart from the outcome, on arrival: a frame that never reaches an
        # outcome shows as received > forwarded + passed + dropped.
        base = self.slot[ingress] + self.rx_word
        local = self.counters.local
        local[base] += 1
        local[base + 1] += nbytes

    def transmit(self, egress: int, frame: bytes) -> bool:
        """Send out of any interface: a port's TX ring (counted as its
        transmitted), or a plain packet socket for an interface that is
        not a port (the kernel would have routed there too)."""
        tx = self.tx.get(egress)
        if tx is None:
            return self._transmit_other(egress, frame)
        if not tx.queue(frame):
            return False
        local = self.counters.local
        local[self.slot[egress] + self.tx_word] += 1
        local[self.slot[egress] + self.tx_word + 1] += len(frame)
        return True

    def _transmit_other(self, egress: int, frame: bytes) -> bool:
        sock = self.others.get(egress)
        try:
            if sock is None:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                sock.bind((socket.if_indextoname(egress), 0))
                self.others[egress] = sock
            sock.send(frame)
            return True
        except OSError:
            return False  # the interface went away or its queue is full: lost, as in the kernel

    def _handle(self, frame: bytes, ingress: int, vlan: bool, since: float | None = None) -> None:
        outcome, egress, out = packet.decide(frame, ingress, vlan, self.fib, self.portset,
                                             self.disabled)
        if outcome == packet.FORWARDED:
            if not self.transmit(egress, out):
                outcome = packet.REDIRECT_FAILED
        elif outcome in slowpath.SLOW and not vlan:
            # What XDP would pass to the stack; here the stack does not
            # forward (forwarding is off on the ports): the slow path does
            # what it would have done. Counted under the fast path's outcome.
            try:
                if self.slow.handle(frame, ingress, vlan, since) < 0:
                    return  # held for its neighbour: counted once it leaves the queue
            except Exception as e:  # noqa: BLE001 - one odd frame must not stop the worker
                self._slow_failed(frame, e)
        self._count(ingress, outcome, len(frame))

    def _slow_failed(self, frame: bytes, e: Exception) -> None:
        """A frame the slow path could not handle is dropped (and counted
        under its fast-path outcome); said once per kind of failure, on
        the forwarder's log, with the frame to replay it."""
        kind = f"{type(e).__name__}: {e}"
        if kind not in self.slow_failures:
            self.slow_failures.add(kind)
            print(f"xdpfwd afpacket: slow path failed ({kind}) on frame {frame.hex()}",
                  file=sys.stderr, flush=True)

    def _hold(self, frame, ingress, vlan, since, hop) -> bool:
        now = time.monotonic()
        since = since or now
        if now - since > PENDING_SECONDS:
            self.slow.expired(frame, ingress)
            return False
        queue = self.pending.setdefault((hop.nexthop, hop.ifindex), [])
        if len(queue) >= PENDING_PER_HOP:
            return False
        self.fib.resolve(hop)
        queue.append((frame, ingress, vlan, since))
        return True

    def _retry_pending(self) -> None:
        held, self.pending = self.pending, {}
        self.handover.settle()
        for queue in held.values():
            for frame, ingress, vlan, since in queue:
                self._handle(frame, ingress, vlan, since)

    def run(self, on_ready=None) -> None:
        poller = select.poll()
        for ring in self.rx:
            poller.register(ring.fileno(), select.POLLIN)
        poller.register(self.fib.fileno(), select.POLLIN)
        if self.handover.fileno() >= 0:
            poller.register(self.handover.fileno(), select.POLLIN)
        if on_ready:
            on_ready()
        last_expiry = time.monotonic()
        while not self.stopping and not self.handover.done:
            poller.poll(100)
            # The kernel's news first: a frame that arrived with a change
            # (a port's IPv6 switched off) is not decided by the answer
            # the change withdrew.
            if self.fib.poll_events():
                if self.fast is not None:
                    self.fast.flush()  # never staler than the Fib it learnt from
                if self.pending:
                    self._retry_pending()
            if self.fast is not None and self.handover.phase == IDLE and not self.handover.seen:
                self._fast_round()
            else:
                self._python_round()
            for tx in self.tx.values():
                tx.flush()
            now = time.monotonic()
            if self.pending and now - last_expiry > 0.5:
                self._retry_pending()  # expires what waited too long
                last_expiry = now
            for tx in self.tx.values():
                tx.flush()
            self.handover.step(self.rx, bool(self.pending))
            self._publish()
        self.close()

    def _python_round(self) -> None:
        for ring, frames in self.handover.blocks(self.rx):
            for frame, vlan in frames:
                if self.handover.kernel_forwarded(frame):
                    # The kernel's, during a handover (fast or slow path
                    # alike): neither sent nor counted, as in XDP mode
                    # before attach and after detach.
                    continue
                self._received(ring.ifindex, len(frame))
                self._handle(frame, ring.ifindex, vlan)

    def _fast_round(self) -> None:
        """Every block the rings hold, through C; what it hands back (counted
        as received already) takes the Python path. Outside a handover
        window only: kernel_forwarded() must see every frame of a window."""
        for index, frame, vlan, missed in self.fast.run():
            ingress = self.ports[index]
            self._handle(frame, ingress, vlan)
            if missed:
                learn(self.fast, self.fib, frame, ingress, vlan)

    def _publish(self) -> None:
        if self.fast is not None:
            self.fast.add_counts(self.counters.local)
        self.counters.publish()

    def close(self) -> None:
        # A worker not scheduled for longer than its rings hold loses what
        # the kernel found no room for (tpacket_rcv() counts it): say how
        # many, since no counter of ours sees them.
        dropped = sum(ring.total_dropped() for ring in self.rx)
        if dropped:
            print(f"xdpfwd afpacket worker[{os.getpid()}]: its rings had no room for "
                  f"{dropped} frames in all: lost, unless the kernel forwarded them",
                  file=sys.stderr, flush=True)
        for ring in self.rx:
            ring.close()
        for tx in self.tx.values():
            tx.close()
        self._publish()
        self.counters.close()
        self.icmp.close()
        self.slow.close()
        for sock in self.others.values():
            sock.close()
        self.fib.close()


def main(ports: list[int], worker: int, workers: int, fanout_base: int, ready,
         control=None, watching: bool = False) -> None:
    """Entry point of a worker process (forked by the supervisor). control:
    its socket to the supervisor; watching: start in a handover window."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    w = Worker(ports, worker, workers, fanout_base, control, watching)
    signal.signal(signal.SIGTERM, w.stop)
    w.run(on_ready=ready)
