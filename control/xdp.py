"""The XDP datapath: attach, detach and inspect the program; read its counters.

The kernel is the only record of what is attached: netlink gives each
interface's program id, the id leads to the program's name and maps, and
the maps hold the counters. Nothing is pinned and no state file is kept,
so `status`, `stats` and `detach` work from any new process, also under a
new `ip netns exec` (which hides /sys/fs/bpf, see docs/kernel-facts.md).

An xdpfwd program is recognised by its name (layout.prog_name) and its
maps' names; anything else attached to an interface is foreign and is
never replaced or removed.
"""

import errno
import struct
from dataclasses import dataclass
from typing import Iterable

from xdpfwd import bpfsys, failpoints, netlink, portcopy
from xdpfwd.counters import PortCounters
from xdpfwd.datapath import AttachResult, Foreign, Interface, PortState, port_name
from xdpfwd.errors import Conflict, KernelRefused, XdpfwdError
from xdpfwd.layout import PORT_SIZE, layout


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


def inspect(link: Interface) -> PortState:
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


def status(links: Iterable[Interface]) -> dict[str, PortState]:
    """What each of links carries, by name: ours, another tool's, nothing."""
    return {l.name: inspect(l) for l in links}


# -- attach -----------------------------------------------------------------


def already(states: list[PortState], indexes: set[int], mode: str) -> AttachResult | None:
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
        changed = refresh_ports(ours[0].prog_id)
        return AttachResult(ours[0].prog_id, modes, changed, already=True)
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
        if e.errno == errno.EBUSY:  # something got attached meanwhile
            raise
        bpfsys.xdp_attach(link.index, prog_fd, bpfsys.XDP_FLAGS_SKB_MODE)
        return "skb", e.reason


def attach(links: list[netlink.Link], mode: str, verbose: bool = False,
           notes: list[str] | None = None) -> AttachResult:
    """Load the program for these ports and attach it to each, all or
    nothing (the caller validated, holds the lock, found nothing of ours
    in place with already() and checked the policy: forwarder.attach)."""
    return _load_and_attach(links, mode, verbose, list(notes or []))


def load_program(ifindexes: list[int], verbose: bool = False):
    """Create the maps for these ports (slot i is ifindexes[i]), then
    compile and load the program against them (a compiler.Program, not
    attached yet)."""
    # Here only: status, stats and the exporter import this module and
    # must not pay for the compiler (docs/kernel-facts.md).
    from xdpfwd import compiler

    lay = layout()
    ports = bpfsys.map_create(bpfsys.MAP_TYPE_DEVMAP_HASH, lay.ports_map, 4, 4, lay.max_ports)
    stats = bpfsys.map_create(bpfsys.MAP_TYPE_PERCPU_ARRAY, lay.stats_map, 4, lay.value_size,
                              lay.max_ports)
    config = bpfsys.map_create(bpfsys.MAP_TYPE_ARRAY, lay.config_map, 4, PORT_SIZE, lay.max_ports)
    with ports, stats, config:
        for ifindex in ifindexes:
            key = struct.pack("=I", ifindex)
            bpfsys.map_update(ports.fd, key, key)
        for slot, entry in portcopy.entries(dict(enumerate(ifindexes))).items():
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


def _copy_of_ports(prog_id: int) -> tuple[int, dict[int, int]] | None:
    """(config map id, {slot: ifindex}) of xdpfwd's program prog_id: what
    portcopy works on; None for another tool's program. A program another
    version loaded may keep its ports alike and still read them otherwise
    (a byte it ignored): its counters, which grow with each outcome, tell."""
    prog = identify(prog_id)
    if not isinstance(prog, OurProgram):
        return None
    with bpfsys.map_by_id(prog.stats_map_id) as stats:
        _check_counters(prog_id, stats.fd)
    return prog.config_map_id, _port_slots(prog)


def _check_counters(prog_id: int, stats_fd: int) -> int:
    """The size of the program's counters per port, when it is this
    version's; another version's program (counters of another size) is
    refused, whatever the caller wanted of it."""
    size, expected = bpfsys.map_info(stats_fd).value_size, layout().value_size
    if size != expected:
        raise XdpfwdError(f"program {prog_id} was loaded by another version of xdpfwd (it counts "
                          f"{size} bytes per interface, this one {expected}): detach, then attach")
    return size


def refresh_ports(prog_id: int) -> list[str]:
    """Bring the program's copy of its ports up to date; what changed
    (portcopy.refresh)."""
    copy = _copy_of_ports(prog_id)
    return portcopy.refresh(*copy) if copy else []


def stale_ports(prog_id: int) -> dict[str, list[str]]:
    """{port: what the program still goes by} (portcopy.stale)."""
    copy = _copy_of_ports(prog_id)
    return portcopy.stale(*copy) if copy else {}


def follow_ports(prog_id: int, log, every: float = 3.0, stop=None, ready=None) -> None:
    """`run`'s follower: keep the program's copy of its ports current until
    stop() is true or the program is gone (portcopy.follow)."""
    copy = _copy_of_ports(prog_id)
    if copy is None:
        log(f"ports: program {prog_id} is not xdpfwd's; not keeping a copy of its ports")
        if ready:
            ready()
        return
    portcopy.follow(*copy, log, every, stop, ready)


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
    # What the program leaves to the kernel for the namespace's multipath
    # hash (its entries hold the policies, portcopy.entries()).
    notes += portcopy.hash_policy_lines(None, portcopy.hash_policies())
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
                    if e.errno != errno.ENOENT:  # already out
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
    prog = identify(prog_id)
    if not isinstance(prog, OurProgram):
        raise XdpfwdError(f"program {prog_id} is not xdpfwd's")
    result = {}
    with bpfsys.map_by_id(prog.stats_map_id) as stats:
        size = _check_counters(prog_id, stats.fd)
        for slot, ifindex in sorted(_port_slots(prog).items()):
            values = bpfsys.percpu_values(stats.fd, struct.pack("=I", slot), size)
            if values is not None:
                result[ifindex] = PortCounters.decode(values)
    return result


def read_counters(states: Iterable[PortState], names: dict[int, str]) -> dict[str, PortCounters]:
    """The counters of every port of the xdpfwd programs states show, by
    name (a port that is gone shows as unknown:IFINDEX)."""
    result = {}
    for prog_id in sorted({s.prog_id for s in states if s.prog_id}):
        for ifindex, counts in sorted(program_counters(prog_id).items()):
            result[port_name(names, ifindex)] = counts
    return result
