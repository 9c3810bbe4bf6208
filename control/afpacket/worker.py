"""One forwarding worker: receive rings on every port, decide, transmit
rings on every port. The supervisor runs one per CPU; PACKET_FANOUT gives
each worker its share of the flows.

A frame whose next hop is not resolved waits here (a few, for a short
while) while the kernel resolves it, as the kernel's own neighbour queue
would hold it: with forwarding off on the ports, the kernel's copy of the
frame is dropped, so this copy is the only one.
"""

import select
import signal
import time

from xdpfwd.afpacket import packet
from xdpfwd.afpacket.fib import Fib
from xdpfwd.afpacket.handover import Handover
from xdpfwd.afpacket.rings import RxRing, TxRing
from xdpfwd.afpacket.state import WorkerCounters
from xdpfwd.layout import layout

PENDING_PER_HOP = 256  # about what the kernel's unres_qlen_bytes holds of small packets
PENDING_SECONDS = 3.0  # the kernel gives up on ARP after about that


class Worker:
    def __init__(self, ports: list[int], worker: int, workers: int, fanout_base: int,
                 control=None, watching: bool = False):
        self.ports = ports
        # Before the rings: see handover.py.
        self.handover = Handover(ports, control, watching)
        self.portset = frozenset(ports)
        lay = layout()
        self.slot = {ifindex: i * lay.value_size // 8 for i, ifindex in enumerate(ports)}
        self.tx_word = 2 * lay.transmitted_index
        self.fib = Fib()
        self.rx = [RxRing(ifindex, fanout_id=fanout_base + i) for i, ifindex in enumerate(ports)]
        self.tx = {ifindex: TxRing(ifindex) for ifindex in ports}
        self.counters = WorkerCounters(worker, workers, len(ports))
        self.pending: dict[tuple[bytes, int], list] = {}
        self.stopping = False

    def stop(self, *_):
        self.stopping = True

    def _count(self, ingress: int, outcome: int, nbytes: int) -> None:
        base = self.slot[ingress] + 2 * outcome
        local = self.counters.local
        local[base] += 1
        local[base + 1] += nbytes

    def _handle(self, frame: bytes, ingress: int, vlan: bool, since: float | None = None) -> None:
        outcome, egress, out = packet.decide(frame, ingress, vlan, self.fib, self.portset)
        if outcome == packet.FORWARDED:
            if self.handover.kernel_forwarded(frame):
                return  # the kernel's, during a handover: neither sent nor counted
            if self.tx[egress].queue(out):
                local = self.counters.local
                local[self.slot[egress] + self.tx_word] += 1
                local[self.slot[egress] + self.tx_word + 1] += len(out)
            else:
                outcome = packet.REDIRECT_FAILED
        elif outcome == packet.NO_NEIGH and self._hold(frame, ingress, vlan, since):
            return  # counted once it leaves the queue
        self._count(ingress, outcome, len(frame))

    def _hold(self, frame, ingress, vlan, since) -> bool:
        family = 4 if frame[12:14] == packet.ETH_IPV4 else 6
        hop = self.fib.lookup(family, frame[30:34] if family == 4 else frame[38:54])
        now = time.monotonic()
        since = since or now
        if now - since > PENDING_SECONDS:
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
            for ring, frames in self.handover.blocks(self.rx):
                for frame, vlan in frames:
                    self._handle(frame, ring.ifindex, vlan)
            for tx in self.tx.values():
                tx.flush()
            if self.fib.poll_events() and self.pending:
                self._retry_pending()
            now = time.monotonic()
            if self.pending and now - last_expiry > 0.5:
                self._retry_pending()  # expires what waited too long
                last_expiry = now
            for tx in self.tx.values():
                tx.flush()
            self.handover.step(self.rx, bool(self.pending))
            self.counters.publish()
        self.close()

    def close(self) -> None:
        for ring in self.rx:
            ring.close()
        for tx in self.tx.values():
            tx.close()
        self.counters.close()
        self.fib.close()


def main(ports: list[int], worker: int, workers: int, fanout_base: int, ready,
         control=None, watching: bool = False) -> None:
    """Entry point of a worker process (forked by the supervisor). control:
    its socket to the supervisor; watching: start in a handover window."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    w = Worker(ports, worker, workers, fanout_base, control, watching)
    signal.signal(signal.SIGTERM, w.stop)
    w.run(on_ready=ready)
