"""The datapath interface: what forwarder.py asks of each way of forwarding.

Two implementations: the XDP program (xdp.py) and the AF_PACKET forwarder
(afpacket/). Each can say what it holds on an interface (a PortState),
attach, detach, and read its counters (counters.PortCounters by ingress
ifindex). Policy (validation, privileges, the lock, the forwarding
sysctls, netfilter, which datapath to use) is forwarder.py's alone; the
CLI, `stats`, `stats --watch` and the exporter only see PortState and
PortCounters.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Foreign:
    prog_id: int
    name: str


@dataclass
class PortState:
    """One interface as the kernel sees it."""

    name: str
    index: int
    mode: str | None = None  # native / skb / ... when any program is attached
    prog_id: int = 0  # xdpfwd's program, 0 when not ours
    ports: frozenset[int] = frozenset()  # ifindexes in that program's devmap
    foreign: Foreign | None = None

    afpacket_pid: int = 0  # the AF_PACKET forwarder serving this port
    afpacket_running: bool = False

    @property
    def attached(self) -> bool:
        """Forwarded by xdpfwd: its XDP program, or a running AF_PACKET forwarder."""
        return self.prog_id != 0 or self.afpacket_running



@dataclass
class AttachResult:
    prog_id: int
    modes: dict[str, str]  # interface -> native / skb
    notes: list[str] = field(default_factory=list)  # fallbacks, warnings
    already: bool = False
    pid: int = 0  # the AF_PACKET forwarder's, in afpacket mode


