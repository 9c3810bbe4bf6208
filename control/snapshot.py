"""What xdpfwd holds in this network namespace, read from the kernel:
every interface's PortState and the counters, from both datapaths.

`status`, `stats`, `stats --watch` and the exporter all read this one
Snapshot. It is cheap, as a scrape must be: no compiler, no pyroute2
(interfaces from if_nameindex(), XDP state and counters through the bpf
syscall, the AF_PACKET forwarder's from its state and shared-memory
files). What cannot be read is left out and kept in `errors`; read()
never raises for it, check() does.
"""

import fcntl
import socket
import struct
from dataclasses import dataclass, field, replace

from xdpfwd import xdp
from xdpfwd.afpacket import datapath as afpacket
from xdpfwd.counters import PortCounters
from xdpfwd.datapath import PortState
from xdpfwd.errors import XdpfwdError

SIOCGIFFLAGS = 0x8913
IFF_LOOPBACK = 0x8


@dataclass(frozen=True)
class Interface:
    name: str
    index: int


@dataclass
class Snapshot:
    ports: dict[str, PortState] = field(default_factory=dict)  # every interface but loopback
    counters: dict[str, PortCounters] = field(default_factory=dict)
    errors: list[Exception] = field(default_factory=list)

    @property
    def attached(self) -> list[PortState]:
        """The ports xdpfwd forwards on: its XDP program, or a running forwarder."""
        return [s for s in self.ports.values() if s.attached]

    def check(self) -> "Snapshot":
        """The snapshot, or the first thing that could not be read, raised."""
        if self.errors:
            raise self.errors[0]
        return self


def _loopback(sock: socket.socket, name: str) -> bool:
    try:
        raw = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sH", name.encode(), 0))
    except OSError:  # gone meanwhile
        return True
    return bool(struct.unpack_from("16sH", raw)[1] & IFF_LOOPBACK)


def interfaces() -> list[Interface]:
    """This namespace's interfaces but loopback, in ifindex order."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return [Interface(name, index) for index, name in sorted(socket.if_nameindex())
                if not _loopback(sock, name)]


def _merge(xdp: dict[str, PortState], afpacket: dict[str, PortState]) -> dict[str, PortState]:
    """One PortState per interface from both datapaths' status: a port the
    AF_PACKET forwarder serves keeps what XDP shows of it (a foreign
    program) and takes the forwarder's mode and pid."""
    merged = dict(xdp)
    for name, s in afpacket.items():
        if name in merged:  # a port that is gone shows only in its counters
            merged[name] = replace(merged[name], mode=s.mode, afpacket_pid=s.afpacket_pid,
                                   afpacket_running=s.afpacket_running)
    return merged


def read(counters: bool = True) -> Snapshot:
    links = interfaces()
    names = {l.index: l.name for l in links}
    snap = Snapshot({l.name: PortState(l.name, l.index) for l in links})
    held = {}
    for dp in (xdp, afpacket):
        try:
            held[dp] = dp.status(links)
        except (XdpfwdError, OSError) as e:
            snap.errors.append(e)
            held[dp] = {}
    snap.ports = _merge({**snap.ports, **held[xdp]}, held[afpacket])
    if counters:
        for dp in (xdp, afpacket):
            try:
                snap.counters.update(dp.read_counters(held[dp].values(), names))
            except (XdpfwdError, OSError, ValueError) as e:
                snap.errors.append(e)
    return snap
