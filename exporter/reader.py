"""What the exporter reads at each scrape: the one Snapshot `status` and
`stats` read too (xdpfwd.snapshot: no compiler, no pyroute2, a few dozen
system calls for two ports), less a forwarder that died: its last counts
would read as a live port's that stopped."""

from xdpfwd import snapshot


class KernelReader:
    def read(self) -> snapshot.Snapshot:
        snap = snapshot.read()
        dead = {n for n, s in snap.ports.items() if s.afpacket_pid and not s.afpacket_running}
        snap.counters = {n: c for n, c in snap.counters.items() if n not in dead}
        return snap
