"""What the exporter reads at each scrape, straight from the kernel.

No compiler, no pyroute2: interface names from if_nameindex(), XDP state
and counters through the bpf syscall (bpfsys), the AF_PACKET forwarder's
counters from its shared-memory file. A scrape of two ports is a few dozen
system calls. Anything that cannot be read is left out and counted in
`errors`; it never raises.
"""

import socket
from dataclasses import dataclass, field

from xdpfwd import xdp
from xdpfwd.counters import PortCounters
from xdpfwd.afpacket import state
from xdpfwd.errors import XdpfwdError


@dataclass(frozen=True)
class Device:
    name: str
    mode: str  # native, skb, afpacket
    prog_id: int = 0  # XDP program id; 0 for afpacket


@dataclass
class Snapshot:
    devices: list[Device] = field(default_factory=list)
    counters: dict[str, PortCounters] = field(default_factory=dict)
    errors: int = 0


@dataclass(frozen=True)
class _Link:
    name: str
    index: int


class KernelReader:
    def read(self) -> Snapshot:
        snap = Snapshot()
        names = {index: name for index, name in socket.if_nameindex()}
        programs = set()
        for index, name in names.items():
            if name == "lo":
                continue
            try:
                port = xdp.inspect(_Link(name, index))
            except (XdpfwdError, OSError):
                snap.errors += 1
                continue
            if port.prog_id:
                snap.devices.append(Device(name, port.mode or "unknown", port.prog_id))
                programs.add(port.prog_id)
        for prog_id in sorted(programs):
            try:
                for ifindex, counts in xdp.program_counters(prog_id).items():
                    snap.counters[names.get(ifindex, f"unknown:{ifindex}")] = counts
            except (XdpfwdError, OSError):
                snap.errors += 1
        self._read_afpacket(snap, names)
        return snap

    @staticmethod
    def _read_afpacket(snap: Snapshot, names: dict[int, str]) -> None:
        try:
            st = state.load()
            if not st or not st.alive:
                return
            counts = state.read_counters(st)
        except (XdpfwdError, OSError, ValueError):
            snap.errors += 1
            return
        for name, ifindex in st.ports.items():
            snap.devices.append(Device(names.get(ifindex, name), "afpacket"))
        for ifindex, c in counts.items():
            snap.counters[names.get(ifindex, f"unknown:{ifindex}")] = c
