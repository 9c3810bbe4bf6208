"""The datapath interface: what forwarder.py asks of each way of forwarding.

Two implementations, one module each: the XDP program (xdp.py) and the
AF_PACKET forwarder (afpacket/datapath.py). Each says what it holds on the
interfaces (status: PortState by name), attaches, detaches, and reads its
counters (PortCounters by name). Policy (validation, privileges, the lock,
the forwarding sysctls, netfilter, which datapath to use) is forwarder.py's
alone; `status`, `stats`, `stats --watch` and the exporter see one
Snapshot (snapshot.py) built from the datapaths' PortState and PortCounters.
"""

from dataclasses import dataclass, field
from typing import Iterable, Protocol

from xdpfwd.counters import PortCounters


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


class Interface(Protocol):
    """What a datapath needs of an interface (netlink.Link is one)."""

    name: str
    index: int


class Datapath(Protocol):
    """A module that forwards: xdp, afpacket.datapath."""

    def status(self, links: Iterable[Interface]) -> dict[str, PortState]:
        """What it holds, by interface name."""

    def attach(self, links: list, mode: str, verbose: bool, notes: list[str]) -> AttachResult:
        """Forward between links (the caller checked the policy and holds the lock)."""

    def detach(self, states: Iterable[PortState]) -> list[str]:
        """Stop where states show it forwards; the names it stopped on."""

    def read_counters(self, states: Iterable[PortState],
                      names: dict[int, str]) -> dict[str, PortCounters]:
        """The counters of the ports states show it on, by name (names:
        ifindex -> name; a port that is gone shows as unknown:IFINDEX)."""


def port_name(names: dict[int, str], ifindex: int) -> str:
    return names.get(ifindex, f"unknown:{ifindex}")

