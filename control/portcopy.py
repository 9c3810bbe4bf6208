"""The XDP program's copy of what it cannot ask the kernel (struct
xdpfwd_port in bpf/counters.h): each port's MAC address and IPv6 switch,
the smallest MTU set on an IPv4 and on an IPv6 route without `lock`, and
both families' fib_multipath_hash_policy.

attach writes it (entries), attach again refreshes it (refresh), doctor
compares it with the kernel (stale) and `run` keeps it current (follow).
The follower reads the kernel again only for events that concern the
copy, so that a router whose routing daemon changes routes all day does
not dump its links and routes at each change.
"""

import errno
import socket
import struct
import time

from xdpfwd import bpfsys, netlink, sysctl
from xdpfwd.errors import XdpfwdError
from xdpfwd.layout import PORT_FORMAT, PORT_SIZE

# What changes the copy: a MAC (RTM_NEWLINK), a route's MTU
# (RTM_NEWROUTE/DELROUTE), and disable_ipv6, which announces nothing of its
# own but takes the port's IPv6 addresses and routes with it (the multicast
# route ff00::/8 at least, on a port that is up) and brings them back:
# RTM_DELADDR/NEWADDR, DELROUTE/NEWROUTE, observed on 6.18. A port down has
# no such routes, and its coming up is an RTM_NEWLINK. What is left is
# caught by the re-read every `every` seconds: disable_ipv6 on a port with
# no IPv6 address or route, net.ipv6.route.skip_notify_on_dev_down (routes
# go without a word), ip_forward_use_pmtu and fib_multipath_hash_policy. IPv4 routes the kernel
# removes without a word (a link down, an address or nexthop object
# deleted: fib_table_flush()) are read again on those events; an IPv6
# route with an MTU gone without a word leaves a limit lower than it need
# be (right, only slower) until the next event about routes.
EVENT_GROUPS = (netlink.RTNLGRP_LINK, netlink.RTNLGRP_IPV6_IFADDR, netlink.RTNLGRP_IPV6_ROUTE,
                netlink.RTNLGRP_IPV4_ROUTE, netlink.RTNLGRP_IPV4_IFADDR, netlink.RTNLGRP_NEXTHOP)


def route_mtus(use_pmtu: int | None = None) -> tuple[tuple[int, int], frozenset]:
    """((IPv4, IPv6): the size above which the program leaves a packet of
    that family to the kernel, 0 for no limit; the keys of the routes whose
    MTU is set without `lock`, netlink.route_key()); use_pmtu is
    ip_forward_use_pmtu, read here when not given.

    ip_forward() honours such an MTU (ip_dst_mtu_maybe_forward()),
    bpf_fib_lookup() does not (ip_mtu_from_fib_result() reads it only
    when locked or with ip_forward_use_pmtu): the smallest of them. With
    ip_forward_use_pmtu both read the route's MTU, but the kernel prefers
    a path MTU it has learnt below it (__ip_rt_update_pmtu() learns one
    under an unlocked route MTU, never at or above it, and none under a
    locked one), which the lookup never sees for such a route and which
    the program cannot know: then IPv4 above the smallest path MTU the
    kernel learns (net.ipv4.route.min_pmtu) goes to the kernel.
    IPv6: ip6_forward() reads only a locked route MTU, but the output
    path checks dst_mtu(), the route's MTU locked or not (ip6_fragment()
    answers Packet Too Big), and the lookup reads an unlocked one only
    once a path MTU has been learnt under it (ip6_mtu_from_fib6())."""
    if use_pmtu is None:
        use_pmtu = _use_pmtu()
    v4 = netlink.unlocked_route_mtus(socket.AF_INET)
    v6 = netlink.unlocked_route_mtus(socket.AF_INET6)
    smallest4, smallest6 = min(v4.values(), default=0), min(v6.values(), default=0)
    if use_pmtu and smallest4:
        smallest4 = min(smallest4, _min_pmtu())
    return (smallest4, smallest6), frozenset(v4) | frozenset(v6)


def _use_pmtu() -> int:
    return sysctl.read_int(sysctl.path("ipv4", "ip_forward_use_pmtu"))


def _min_pmtu() -> int:
    return sysctl.read_int(sysctl.path("ipv4", "route", "min_pmtu"), 552)  # ip_rt_min_pmtu's default


def hash_policies() -> int:
    """net.ipv4 and net.ipv6 fib_multipath_hash_policy as struct
    xdpfwd_port's hash_policy holds them: IPv4's in the low four bits."""
    v4 = sysctl.read_int(sysctl.path("ipv4", "fib_multipath_hash_policy"), 0)
    v6 = sysctl.read_int(sysctl.path("ipv6", "fib_multipath_hash_policy"), 0)
    return (v4 & 0xF) | (v6 & 0xF) << 4


def _hash_policy_effect(ip: str, policy: int) -> str | None:
    """What the program leaves to the kernel under that policy (the
    kernel's multipath hash, with the packet in hand, comes out otherwise
    than bpf_fib_lookup()'s), or None: bpf/redirect.c's rule. A policy
    newer than 3 is taken as one that hashes every packet otherwise."""
    if policy >= 3:
        return f"every {ip} packet"
    if policy == 2:
        return "every IPv6 packet" if ip == "IPv6" else "tunnelled IPv4 (IPIP, IPv6 in IPv4, GRE)"
    return None


def _families(old: int, new: int):
    """(family, policy then, policy now, effect then, effect now) for each
    family of two hash_policy bytes whose effect differs."""
    for ip, shift in (("IPv4", 0), ("IPv6", 4)):
        was, now = (old >> shift) & 0xF, (new >> shift) & 0xF
        before, effect = _hash_policy_effect(ip, was), _hash_policy_effect(ip, now)
        if before != effect:
            yield ip, was, now, before, effect


def hash_policy_lines(old: int | None, new: int) -> list[str]:
    """What a change of the hash_policy byte (None: none before, a first
    attach) changes, a line per family."""
    lines = []
    for ip, _, now, before, effect in _families(old or 0, new):
        if effect:
            lines.append(f"{ip}: fib_multipath_hash_policy {now} hashes otherwise than "
                         f"bpf_fib_lookup(): {effect} goes to the stack, which picks the next hop")
        else:
            lines.append(f"{ip}: fib_multipath_hash_policy {now}: {before} is forwarded in XDP again")
    return lines


def entries(slots: dict[int, int], limits: tuple[int, int] | None = None) -> dict[int, bytes]:
    """{slot: struct xdpfwd_port} for the ports in slots ({slot: ifindex})
    as they are now; a port that no longer exists is left out. limits:
    route_mtus()'s, read here when not given."""
    links = {l.index: l for l in netlink.links().values()}
    if limits is None:
        limits = route_mtus()[0]
    policy = hash_policies()
    return {slot: struct.pack(PORT_FORMAT, ifindex, bytes.fromhex(links[ifindex].mac.replace(":", "")),
                              int(links[ifindex].ipv6_disabled), policy, *limits)
            for slot, ifindex in slots.items() if ifindex in links and links[ifindex].mac}


def changes(name: str, old: bytes | None, new: bytes) -> list[str]:
    """What a port's new entry changes, in the words `run` logs and attach
    prints. The route MTU, the same in every entry, is route_mtu_change()'s."""
    if old is None or old == new:
        return []
    _, old_mac, old_off, *_ = struct.unpack(PORT_FORMAT, old)
    _, new_mac, new_off, *_ = struct.unpack(PORT_FORMAT, new)
    lines = []
    if old_mac != new_mac:
        lines.append(f"{name}: MAC address now {new_mac.hex(':')}: frames to it are forwarded, "
                     f"frames to {old_mac.hex(':')} go to the stack")
    if old_off != new_off:
        lines.append(f"{name}: IPv6 " + ("disabled (disable_ipv6, or no IPv6): its IPv6 goes to the stack"
                                          if new_off else "enabled again: its IPv6 is forwarded"))
    return lines


def route_mtu_change(old: tuple[int, int], new: tuple[int, int]) -> list[str]:
    """What new (IPv4, IPv6) limits change, a line per family."""
    lines = []
    for ip, was, now in (("IPv4", old[0], new[0]), ("IPv6", old[1], new[1])):
        if was == now:
            continue
        if now and ip == "IPv4" and _use_pmtu():
            lines.append(f"IPv4 routes: with ip_forward_use_pmtu and an MTU not locked, IPv4 packets "
                         f"larger than {now} (the smallest path MTU the kernel learns) go to the stack")
        elif now:
            lines.append(f"{ip} routes: the smallest MTU not locked is now {now}: larger {ip} packets "
                         "go to the stack")
        else:
            lines.append(f"{ip} routes: no MTU left unlocked: {ip} is forwarded up to each route's "
                         f"locked MTU or {'link' if ip == 'IPv4' else 'port'}'s")
    return lines


def drift(old: bytes, new: bytes, route_mtu: bool = True) -> list[str]:
    """What a program whose copy of a port is `old` does wrong, the port
    being `new` now (with route_mtu, also what every entry holds alike:
    the route MTUs and the hash policies): doctor's words."""
    _, old_mac, old_off, old_policy, *old_mtus = struct.unpack(PORT_FORMAT, old)
    _, new_mac, new_off, new_policy, *new_mtus = struct.unpack(PORT_FORMAT, new)
    lines = []
    if old_mac != new_mac:
        lines.append(f"the program still has MAC {old_mac.hex(':')}, the port's is {new_mac.hex(':')}: "
                     f"frames to {old_mac.hex(':')} are still forwarded, frames to the new one go "
                     "to the stack")
    if old_off != new_off:
        lines.append("disable_ipv6 is set (or IPv6 gone), but the program still forwards the port's "
                     "IPv6, which the kernel drops" if new_off else
                     "IPv6 is on again, but the program still passes the port's IPv6 to the stack")
    for ip, was, now, before, effect in (_families(old_policy, new_policy) if route_mtu else ()):
        if effect:
            lines.append(f"fib_multipath_hash_policy for {ip} is now {now}, which the program does not "
                         f"know (it has {was}): over a multipath route it may send {effect} by "
                         "another next hop than the kernel")
        else:
            lines.append(f"fib_multipath_hash_policy for {ip} is now {now}, but the program still "
                         f"passes {before} to the stack")
    for ip, old_mtu, new_mtu in zip(("IPv4", "IPv6"), old_mtus, new_mtus):
        if not route_mtu or old_mtu == new_mtu:
            continue
        if new_mtu and (not old_mtu or new_mtu < old_mtu):
            answer = "Frag Needed or fragments" if ip == "IPv4" else "Packet Too Big"
            lines.append(f"an {ip} route has MTU {new_mtu}, not locked, which the program does not "
                         f"know (it has {old_mtu or 'none'}): {ip} packets larger than the route's "
                         f"MTU may be forwarded whole where the kernel sends {answer}")
        else:
            lines.append(f"the program still passes {ip} larger than {old_mtu} to the stack for a "
                         f"route MTU that is now {new_mtu or 'gone'}")
    return lines


def _policy(entry: bytes) -> int:
    return struct.unpack(PORT_FORMAT, entry)[3]


def _limits(entry: bytes) -> tuple[int, int]:
    return struct.unpack(PORT_FORMAT, entry)[4:6]


def _written(entry: bytes | None) -> bool:
    """An entry attach wrote (its ifindex set), not a slot's zeros."""
    return bool(entry) and struct.unpack_from("=I", entry)[0] != 0


def _updates(config_fd: int, slots: dict[int, int],
             limits: tuple[int, int] | None = None) -> list[tuple[str, bytes, bytes | None, bytes]]:
    """(port name, slot key, entry in the map, entry now) for each port
    whose entry in the program's config map (open as config_fd) is not
    what it is now."""
    size = bpfsys.map_info(config_fd).value_size
    if size != PORT_SIZE:
        raise XdpfwdError(f"the attached program keeps {size} bytes per port, this xdpfwd "
                          f"{PORT_SIZE}: it was loaded by another version; detach, then attach")
    names = netlink.link_names_by_index()
    updates = []
    for slot, entry in entries(slots, limits).items():
        key = struct.pack("=I", slot)
        old = bpfsys.map_lookup(config_fd, key, PORT_SIZE)
        if old != entry:
            updates.append((names.get(slots[slot], str(slots[slot])), key, old, entry))
    return updates


def refresh(config_map_id: int, slots: dict[int, int], limits: tuple[int, int] | None = None) -> list[str]:
    """Write what changed into the program's config map; say what, in
    changes()' and route_mtu_change()'s words."""
    with bpfsys.map_by_id(config_map_id) as config:
        updates = _updates(config.fd, slots, limits)
        for _, key, _, entry in updates:
            bpfsys.map_update(config.fd, key, entry)
    lines = [line for name, _, old, new in updates for line in changes(name, old, new)]
    written = [(old, new) for _, _, old, new in updates if _written(old)]
    if written:
        lines += route_mtu_change(_limits(written[0][0]), _limits(written[0][1]))
        lines += hash_policy_lines(_policy(written[0][0]), _policy(written[0][1]))
    return lines


def stale(config_map_id: int, slots: dict[int, int]) -> dict[str, list[str]]:
    """{port: drift()} for the ports whose entry is not what it is now;
    the route MTU, the same in every entry, under the first of them."""
    with bpfsys.map_by_id(config_map_id) as config:
        updates = _updates(config.fd, slots)
    found, first = {}, True
    for name, _, old, new in updates:
        if _written(old):
            lines = drift(old, new, route_mtu=first)
            first = False
            if lines:
                found[name] = lines
    return found


def concerns(datagram: bytes, ports: set[int], mtu_routes: frozenset) -> tuple[bool, bool]:
    """(whether a port's MAC or IPv6 may have changed, whether the route
    MTUs may have) by one datagram of rtnetlink notifications."""
    port, route = False, False
    for kind, body in netlink.messages(datagram):
        if kind in (netlink.RTM_NEWLINK, netlink.RTM_DELLINK) and len(body) >= 16:
            port |= struct.unpack_from("=i", body, 4)[0] in ports
            # A link going down or away takes its routes without a word
            # (fib_table_flush()), and so does a deleted address or
            # nexthop object: while routes with an MTU exist, read again.
            route |= bool(mtu_routes)
        elif kind in (netlink.RTM_NEWADDR, netlink.RTM_DELADDR) and len(body) >= 8:
            family, index = body[0], struct.unpack_from("=I", body, 4)[0]
            port |= family == socket.AF_INET6 and index in ports
            route |= bool(mtu_routes) and family == socket.AF_INET and kind == netlink.RTM_DELADDR
        elif kind == netlink.RTM_DELNEXTHOP:
            route |= bool(mtu_routes)
        elif kind in (netlink.RTM_NEWROUTE, netlink.RTM_DELROUTE) and len(body) >= 12:
            attrs = netlink.attributes(body, 12)
            if body[0] == socket.AF_INET6:
                oif = struct.unpack("=I", attrs[netlink.RTA_OIF])[0] if netlink.RTA_OIF in attrs else 0
                # A route over several next hops, or a nexthop object's,
                # names no one port: it may be a port's.
                port |= oif in ports or netlink.RTA_MULTIPATH in attrs or netlink.RTA_NH_ID in attrs
            if body[0] in (socket.AF_INET, socket.AF_INET6):
                metrics = netlink.attributes(attrs.get(netlink.RTA_METRICS, b""))
                table = (struct.unpack("=I", attrs[netlink.RTA_TABLE])[0]
                         if netlink.RTA_TABLE in attrs else body[4])
                key = netlink.route_key(body[0], table, body[1], attrs.get(netlink.RTA_DST, b""))
                # One with an MTU, or one that had (a `replace` that drops it).
                route |= netlink.RTAX_MTU in metrics or key in mtu_routes
    return port, route


def follow(config_map_id: int, slots: dict[int, int], log, every: float = 3.0, stop=None,
           ready=None) -> None:
    """Keep the copy current until stop() is true or the program is gone,
    logging each change: `run`'s follower. The ports are read again when
    an event concerns them and every `every` seconds; the routes (a dump
    of every table, which can be large) only when an event concerns a
    route with an MTU, when events were lost, or when ip_forward_use_pmtu
    changed. ready() is called after the first read."""
    ports = set(slots.values())
    limits, mtu_routes, use_pmtu = None, frozenset(), None
    due, now, last_error = 0.0, True, None
    with netlink.event_socket(EVENT_GROUPS) as sock:
        while not (stop and stop()):
            if now or time.monotonic() >= due:
                try:
                    pmtu = _use_pmtu()
                    if limits is None or pmtu != use_pmtu:
                        (limits, mtu_routes), use_pmtu = route_mtus(pmtu), pmtu
                except Exception as e:  # noqa: BLE001 - the ports are still worth keeping
                    last_error = _log_once(log, e, last_error)
                try:
                    for line in refresh(config_map_id, slots, limits):
                        log(line)
                    if limits is not None:
                        last_error = None
                except bpfsys.BpfError as e:
                    if e.errno == errno.ENOENT:  # detached under us: nothing left to keep
                        log("ports: the program is gone; no longer keeping its copy of the ports")
                        return
                    last_error = _log_once(log, e, last_error)
                except Exception as e:  # noqa: BLE001 - a netlink hiccup must not end the follower
                    last_error = _log_once(log, e, last_error)
                if ready:
                    ready()
                    ready = None
                due = time.monotonic() + every
            now = False
            try:
                events = netlink.read_events(sock, max(0.0, due - time.monotonic()))
                for datagram in events or ():
                    port, route = concerns(datagram, ports, mtu_routes)
                    now |= port or route
                    if route:
                        limits = None
            except Exception as e:  # noqa: BLE001 - counted as lost events
                last_error = _log_once(log, e, last_error)
                events = None
            if events is None:  # notifications lost: anything may have changed
                limits, now = None, True


def _log_once(log, error: Exception, last: str | None) -> str:
    line = f"ports: {error}"
    if line != last:
        log(line)
    return line
