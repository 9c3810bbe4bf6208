"""Attach, detach and inspect the XDP datapath; read its counters.

The kernel is the only record of what is attached: netlink gives each
interface's program id, the id leads to the program's name and maps, and
the maps hold the counters. Nothing is pinned and no state file is kept,
so `status`, `stats` and `detach` work from any new process, also under a
new `ip netns exec` (which hides /sys/fs/bpf, see docs/kernel-facts.md).

An xdpfwd program is recognised by its name (layout.prog_name) and its
maps' names; anything else attached to an interface is foreign and is
never replaced or removed.
"""

import fcntl
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field

from xdpfwd import bpfsys, compiler, failpoints, netlink
from xdpfwd.errors import (Conflict, ForwardingDisabled, KernelRefused, PermissionDenied,
                           UsageError, XdpfwdError)
from xdpfwd.counters import PortCounters
from xdpfwd.layout import PORT_FORMAT, PORT_SIZE, layout

MODES = ("auto", "native", "skb", "afpacket")
FAMILIES = ("ipv4", "ipv6")

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39


def require_privileges() -> None:
    """Root, or CAP_NET_ADMIN plus CAP_BPF (or CAP_SYS_ADMIN)."""
    with open("/proc/self/status") as f:
        caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    has = lambda cap: bool(caps & (1 << cap))  # noqa: E731
    if not (has(CAP_NET_ADMIN) and (has(CAP_BPF) or has(CAP_SYS_ADMIN))):
        raise PermissionDenied("xdpfwd needs root (or CAP_BPF and CAP_NET_ADMIN) for this")


@contextmanager
def exclusive():
    """One attach or detach at a time in this network namespace: a second
    one fails at once instead of interleaving with the first. Namespaces
    share no interfaces, so each has its own lock."""
    from xdpfwd.afpacket.state import namespace_dir

    fd = os.open(namespace_dir(create=True) / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict("another xdpfwd attach or detach is running; try again when it ends") from None
    try:
        yield
    finally:
        os.close(fd)


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


@dataclass(frozen=True)
class OurProgram:
    prog_id: int
    stats_map_id: int
    ports_map_id: int
    config_map_id: int


def identify(prog_id: int) -> OurProgram | Foreign:
    """Tell xdpfwd's program from anyone else's, by name and map names."""
    lay = layout()
    with bpfsys.prog_by_id(prog_id) as prog:
        info = bpfsys.prog_info(prog.fd)
    maps = {}
    for map_id in info.map_ids:
        with bpfsys.map_by_id(map_id) as m:
            maps[bpfsys.map_info(m.fd).name] = map_id
    if info.name == lay.prog_name and {lay.stats_map, lay.ports_map, lay.config_map} <= set(maps):
        return OurProgram(prog_id, maps[lay.stats_map], maps[lay.ports_map], maps[lay.config_map])
    return Foreign(prog_id, info.name)


def _ports_of(prog: OurProgram) -> frozenset[int]:
    with bpfsys.map_by_id(prog.ports_map_id) as m:
        return frozenset(struct.unpack("=I", k)[0] for k in bpfsys.map_keys(m.fd, 4))


def inspect(link: netlink.Link) -> PortState:
    xdp = bpfsys.xdp_query(link.index)
    state = PortState(link.name, link.index, mode=xdp.mode)
    prog_ids = {xdp.prog_id, xdp.drv_prog_id, xdp.skb_prog_id, xdp.hw_prog_id} - {0}
    for prog_id in sorted(prog_ids):
        found = identify(prog_id)
        if isinstance(found, OurProgram):
            state.prog_id = found.prog_id
            state.ports = _ports_of(found)
        else:
            state.foreign = found
    if state.prog_id and xdp.mode == "multi":
        # Ours in one mode and something else in another: report ours.
        state.mode = "native" if xdp.drv_prog_id == state.prog_id else "skb"
    return state


def status() -> dict[str, PortState]:
    """Every interface of this namespace but loopback, by name."""
    return {l.name: inspect(l) for l in netlink.links().values() if not l.loopback}


# -- attach -----------------------------------------------------------------


@dataclass
class AttachResult:
    prog_id: int
    modes: dict[str, str]  # interface -> native / skb
    notes: list[str] = field(default_factory=list)  # fallbacks, warnings
    already: bool = False
    pid: int = 0  # the AF_PACKET forwarder's, in afpacket mode


def validate(ifnames: list[str], mode: str) -> list[netlink.Link]:
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if len(ifnames) < 2:
        raise UsageError("attach needs at least two interfaces to forward between")
    if len(set(ifnames)) != len(ifnames):
        dup = next(n for n in ifnames if ifnames.count(n) > 1)
        raise UsageError(f"{dup}: the same interface is given twice")
    if len(ifnames) > layout().max_ports:
        raise UsageError(f"at most {layout().max_ports} interfaces per program")
    all_links = netlink.links()
    chosen = []
    for name in ifnames:
        if name not in all_links:
            raise UsageError(f"{name}: no such interface in this network namespace")
        link = all_links[name]
        if link.loopback:
            raise UsageError(f"{name}: loopback carries no routed traffic; name the router's ports")
        chosen.append(link)
    return chosen


def check_forwarding(links: list[netlink.Link], enable: bool) -> list[str]:
    """bpf_fib_lookup() refuses (FWD_DISABLED) on an interface whose
    forwarding sysctl is off; say so now rather than pass every packet."""
    notes = []
    for link in links:
        if enable:
            for fam in FAMILIES:
                if not netlink.forwarding(fam, link.name):
                    netlink.set_forwarding(fam, link.name, True)
                    notes.append(f"{link.name}: set {netlink.sysctl_name(fam, link.name)}=1")
            continue
        off = [fam for fam in FAMILIES if not netlink.forwarding(fam, link.name)]
        if len(off) == len(FAMILIES):
            names = ", ".join(f"{netlink.sysctl_name(f, link.name)}=0" for f in off)
            raise ForwardingDisabled(
                f"{link.name}: forwarding is disabled ({names}); enable it or pass --enable-forwarding"
            )
        for fam in off:
            notes.append(
                f"{link.name}: {fam} forwarding is off ({netlink.sysctl_name(fam, link.name)}=0): "
                f"{fam} packets are left to the kernel"
            )
    return notes


def _already(states: list[PortState], indexes: set[int], mode: str) -> AttachResult | None:
    """None to go ahead; a result when the same attach is already in place.
    A leftover half attach of the same ports (a killed controller, or a
    port deleted and created again under a new ifindex) is removed here so
    the attach can start clean."""
    ours = [s for s in states if s.prog_id]
    if not ours:
        return None
    existing = set(netlink.link_names_by_index())
    for s in ours:
        if not (s.ports & existing) <= indexes:
            raise Conflict(
                f"{s.name}: already forwarding with xdpfwd program {s.prog_id} for other "
                "interfaces; detach it first"
            )
    complete = (len(ours) == len(states) and len({s.prog_id for s in ours}) == 1
                and ours[0].ports == indexes)
    if complete:
        modes = {s.name: s.mode for s in states}
        if mode != "auto" and any(m != mode for m in modes.values()):
            raise Conflict(
                f"already attached in {', '.join(sorted(set(modes.values())))} mode; "
                "detach first to change the mode"
            )
        refresh_port_addresses(ours[0].prog_id)
        return AttachResult(ours[0].prog_id, modes, already=True)
    for s in ours:  # half attached: undo it, then attach anew
        _detach_one(s)
    return None


def _attach_one(link: netlink.Link, prog_fd: int, mode: str) -> tuple[str, str | None]:
    """Attach in the mode asked for; auto falls back from native to skb and
    returns why."""
    if mode != "auto":
        bpfsys.xdp_attach(link.index, prog_fd, bpfsys.MODE_FLAGS[mode])
        return mode, None
    try:
        bpfsys.xdp_attach(link.index, prog_fd, bpfsys.XDP_FLAGS_DRV_MODE)
        return "native", None
    except bpfsys.BpfError as e:
        if e.errno == 16:  # EBUSY: something got attached meanwhile
            raise
        bpfsys.xdp_attach(link.index, prog_fd, bpfsys.XDP_FLAGS_SKB_MODE)
        return "skb", str(e).removeprefix("failed to attach the XDP program: ")


def refuse_foreign(states: list[PortState]) -> None:
    for s in states:
        if s.foreign:
            raise Conflict(
                f"{s.name}: XDP program {s.foreign.prog_id} ({s.foreign.name}) is attached "
                "by another tool; xdpfwd does not replace it"
            )


def attach(links: list[netlink.Link], states: list[PortState], mode: str,
           enable_forwarding: bool = False, verbose: bool = False) -> AttachResult:
    """Attach the XDP program (the caller validated, holds the lock and
    checked for foreign programs: forwarder.attach)."""
    indexes = {l.index for l in links}
    done = _already(states, indexes, mode)
    if done:
        return done
    notes = check_forwarding(links, enable_forwarding)
    return _load_and_attach(links, mode, verbose, notes)


def _port_entries(slots: dict[int, int]) -> dict[int, bytes]:
    """{slot: struct xdpfwd_port} with each port's current MAC; a port
    that no longer exists is left out."""
    macs = {l.index: l.mac for l in netlink.links().values()}
    return {slot: struct.pack(PORT_FORMAT, ifindex, bytes.fromhex(macs[ifindex].replace(":", "")), 0)
            for slot, ifindex in slots.items() if macs.get(ifindex)}


def load_program(ifindexes: list[int], verbose: bool = False) -> compiler.Program:
    """Create the maps for these ports (slot i is ifindexes[i]), then
    compile and load the program against them. Not attached yet."""
    lay = layout()
    ports = bpfsys.map_create(bpfsys.MAP_TYPE_DEVMAP_HASH, lay.ports_map, 4, 4, lay.max_ports)
    stats = bpfsys.map_create(bpfsys.MAP_TYPE_PERCPU_ARRAY, lay.stats_map, 4, lay.value_size,
                              lay.max_ports)
    config = bpfsys.map_create(bpfsys.MAP_TYPE_ARRAY, lay.config_map, 4, PORT_SIZE, lay.max_ports)
    with ports, stats, config:
        for ifindex in ifindexes:
            key = struct.pack("=I", ifindex)
            bpfsys.map_update(ports.fd, key, key)
        for slot, entry in _port_entries(dict(enumerate(ifindexes))).items():
            bpfsys.map_update(config.fd, struct.pack("=I", slot), entry)
        # The program holds its own references to the maps from here on.
        return compiler.load(ports.fd, stats.fd, config.fd, ifindexes, verbose=verbose)


def _port_slots(prog: OurProgram) -> dict[int, int]:
    """{slot: ifindex} of the program's ports, from its config map."""
    slots = {}
    with bpfsys.map_by_id(prog.config_map_id) as config:
        for slot in range(layout().max_ports):
            raw = bpfsys.map_lookup(config.fd, struct.pack("=I", slot), PORT_SIZE)
            ifindex = struct.unpack_from("=I", raw)[0] if raw else 0
            if ifindex:
                slots[slot] = ifindex
    return slots


def refresh_port_addresses(prog_id: int) -> None:
    """Write the ports' current MACs into the program's config map: the
    program forwards only frames addressed to its port, and a port's
    address can change while the program stays attached."""
    prog = identify(prog_id)
    if not isinstance(prog, OurProgram):
        return
    entries = _port_entries(_port_slots(prog))
    with bpfsys.map_by_id(prog.config_map_id) as config:
        for slot, entry in entries.items():
            bpfsys.map_update(config.fd, struct.pack("=I", slot), entry)


def _load_and_attach(links, mode, verbose, notes) -> AttachResult:
    program = load_program([l.index for l in links], verbose)
    prog_id = bpfsys.prog_info(program.prog_fd).id
    modes: dict[str, str] = {}
    try:
        for link in links:
            failpoints.hit("attach:before" if not modes else "attach:between")
            try:
                got, why = _attach_one(link, program.prog_fd, mode)
            except bpfsys.BpfError as e:
                raise KernelRefused(f"{link.name}: {e}") from None
            modes[link.name] = got
            if why:
                notes.append(f"{link.name}: native XDP unavailable ({why}); using skb mode")
    except XdpfwdError:
        # All or nothing: undo the interfaces already done.
        for name in modes:
            link = next(l for l in links if l.name == name)
            bpfsys.xdp_detach(link.index, modes[name], program.prog_fd)
        raise
    failpoints.hit("attach:after")
    return AttachResult(prog_id, modes, notes)


# -- detach -----------------------------------------------------------------


def _detach_one(state: PortState) -> None:
    with bpfsys.prog_by_id(state.prog_id) as prog:
        # First take the port out of the devmap, so the other ports stop
        # redirecting into an interface that is about to lose the program.
        ours = identify(state.prog_id)
        if isinstance(ours, OurProgram):
            with bpfsys.map_by_id(ours.ports_map_id) as ports:
                try:
                    bpfsys.map_delete(ports.fd, struct.pack("=I", state.index))
                except bpfsys.BpfError as e:
                    if e.errno != 2:  # ENOENT: already out
                        raise
        bpfsys.xdp_detach(state.index, state.mode or "", prog.fd)


def detach(states: list[PortState]) -> list[str]:
    """Detach xdpfwd's program where these states show it (the caller
    holds the lock). Returns the interfaces detached."""
    done = []
    for s in states:
        if s.prog_id:
            _detach_one(s)
            done.append(s.name)
    return done


# -- counters ---------------------------------------------------------------


def program_counters(prog_id: int) -> dict[int, PortCounters]:
    """{port ifindex: its counters} of one program."""
    lay = layout()
    prog = identify(prog_id)
    if not isinstance(prog, OurProgram):
        raise XdpfwdError(f"program {prog_id} is not xdpfwd's")
    result = {}
    with bpfsys.map_by_id(prog.stats_map_id) as stats:
        info = bpfsys.map_info(stats.fd)
        if info.value_size != lay.value_size:
            raise XdpfwdError(
                f"program {prog_id} counts {info.value_size} bytes per interface, this "
                f"xdpfwd expects {lay.value_size}: detach and attach with this version"
            )
        for slot, ifindex in sorted(_port_slots(prog).items()):
            values = bpfsys.percpu_values(stats.fd, struct.pack("=I", slot), info.value_size)
            if values is not None:
                result[ifindex] = PortCounters.decode(values)
    return result


def read_counters() -> dict[str, PortCounters]:
    """{interface: its counters} for every interface
    counted by an xdpfwd program attached in this namespace. An interface
    that is gone shows as unknown:IFINDEX."""
    names = netlink.link_names_by_index()
    result = {}
    for prog_id in sorted({s.prog_id for s in status().values() if s.prog_id}):
        for ifindex, counts in sorted(program_counters(prog_id).items()):
            result[names.get(ifindex, f"unknown:{ifindex}")] = counts
    return result
