"""What the XDP program keeps of each port (struct xdpfwd_port in
bpf/counters.h): its packing in user space, and the words attach, `run`
and doctor use when the port has changed under it."""

import errno
import re
import struct

from xdpfwd import netlink, portcopy
from xdpfwd.layout import HEADER, PORT_FORMAT, PORT_SIZE

C_TYPES = {"__u8": "B", "__u16": "H", "__u32": "I", "__u64": "Q"}


def test_port_format_is_the_headers_struct():
    body = re.search(r"struct xdpfwd_port \{(.*?)\};", HEADER.read_text(), re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = re.findall(r"(__u\d+)\s+(\w+)(?:\[(\d+)\])?;", body)
    assert [f[1] for f in fields] == ["ifindex", "mac", "ipv6_disabled", "hash_policy", "ipv4_route_mtu",
                                      "ipv6_route_mtu"]
    fmt = "=" + "".join(f"{n}s" if n else C_TYPES[t] for t, _, n in fields)  # arrays: of __u8
    assert fmt == PORT_FORMAT and struct.calcsize(fmt) == PORT_SIZE == 20


def entry(mac="02:00:00:00:00:01", ipv6_disabled=False, route_mtu=0, route_mtu6=0, policy4=0, policy6=0):
    return struct.pack(PORT_FORMAT, 7, bytes.fromhex(mac.replace(":", "")), int(ipv6_disabled),
                       policy4 | policy6 << 4, route_mtu, route_mtu6)


def test_unchanged_says_nothing():
    assert portcopy.changes("eth1", entry(), entry()) == []
    assert portcopy.changes("eth1", None, entry()) == []  # a new slot: nothing was there to change


def test_each_change_is_one_line():
    assert portcopy.changes("eth1", entry(), entry("02:00:00:00:00:02", True)) == [
        "eth1: MAC address now 02:00:00:00:00:02: frames to it are forwarded, "
        "frames to 02:00:00:00:00:01 go to the stack",
        "eth1: IPv6 disabled (disable_ipv6, or no IPv6): its IPv6 goes to the stack",
    ]
    assert portcopy.changes("eth1", entry(ipv6_disabled=True), entry()) == [
        "eth1: IPv6 enabled again: its IPv6 is forwarded"]


def test_the_route_mtu_is_one_line_for_all_ports(monkeypatch):
    monkeypatch.setattr(portcopy, "_use_pmtu", lambda: 0)
    assert portcopy.changes("eth1", entry(), entry(route_mtu=1400)) == []
    assert portcopy.route_mtu_change((0, 0), (1400, 0)) == [
        "IPv4 routes: the smallest MTU not locked is now 1400: larger IPv4 packets go to the stack"]
    assert portcopy.route_mtu_change((1400, 0), (0, 0)) == [
        "IPv4 routes: no MTU left unlocked: IPv4 is forwarded up to each route's locked MTU or link's"]
    assert portcopy.route_mtu_change((1400, 1300), (1400, 1300)) == []
    assert portcopy.route_mtu_change((1400, 0), (1400, 1300)) == [
        "IPv6 routes: the smallest MTU not locked is now 1300: larger IPv6 packets go to the stack"]
    assert portcopy.route_mtu_change((0, 1300), (1000, 0)) == [
        "IPv4 routes: the smallest MTU not locked is now 1000: larger IPv4 packets go to the stack",
        "IPv6 routes: no MTU left unlocked: IPv6 is forwarded up to each route's locked MTU or port's"]


def test_with_use_pmtu_an_unlocked_route_mtu_lowers_the_limit_to_min_pmtu(monkeypatch):
    """ip_dst_mtu_maybe_forward() then prefers a path MTU learnt below the
    route's, which the program cannot see: as low as min_pmtu. IPv6 is
    not concerned."""
    key, key6 = netlink.route_key(2, 254, 24, bytes(4)), netlink.route_key(10, 254, 64, bytes(16))
    routes = {2: {key: 1400}, 10: {key6: 1400}}
    monkeypatch.setattr(portcopy, "_min_pmtu", lambda: 552)
    monkeypatch.setattr(netlink, "unlocked_route_mtus", lambda family: routes[family])
    assert portcopy.route_mtus(use_pmtu=0) == ((1400, 1400), frozenset({key, key6}))
    assert portcopy.route_mtus(use_pmtu=1) == ((552, 1400), frozenset({key, key6}))
    routes[2] = {key: 500}
    assert portcopy.route_mtus(use_pmtu=1) == ((500, 1400), frozenset({key, key6}))  # learnt only below it
    routes[2] = {}
    assert portcopy.route_mtus(use_pmtu=1) == ((0, 1400), frozenset({key6}))  # the lookup sees learnt ones then
    monkeypatch.setattr(portcopy, "_use_pmtu", lambda: 1)
    assert portcopy.route_mtu_change((0, 0), (552, 0)) == [
        "IPv4 routes: with ip_forward_use_pmtu and an MTU not locked, IPv4 packets larger than 552 "
        "(the smallest path MTU the kernel learns) go to the stack"]


def test_drift_of_the_route_mtu():
    assert portcopy.drift(entry(), entry(route_mtu=1400)) == [
        "an IPv4 route has MTU 1400, not locked, which the program does not know (it has none): IPv4 "
        "packets larger than the route's MTU may be forwarded whole where the kernel sends Frag "
        "Needed or fragments"]
    assert portcopy.drift(entry(), entry(route_mtu=1400), route_mtu=False) == []
    assert portcopy.drift(entry(route_mtu=1400), entry()) == [
        "the program still passes IPv4 larger than 1400 to the stack for a route MTU that is now gone"]
    assert portcopy.drift(entry(), entry(route_mtu6=1300)) == [
        "an IPv6 route has MTU 1300, not locked, which the program does not know (it has none): IPv6 "
        "packets larger than the route's MTU may be forwarded whole where the kernel sends Packet "
        "Too Big"]


def test_drift_says_what_the_program_still_does():
    assert portcopy.drift(entry(), entry()) == []
    assert portcopy.drift(entry(), entry("02:00:00:00:00:02")) == [
        "the program still has MAC 02:00:00:00:00:01, the port's is 02:00:00:00:00:02: frames to "
        "02:00:00:00:00:01 are still forwarded, frames to the new one go to the stack"]
    assert portcopy.drift(entry(ipv6_disabled=True), entry()) == [
        "IPv6 is on again, but the program still passes the port's IPv6 to the stack"]


def test_hash_policies_the_program_cannot_follow_are_said_once_per_family():
    """bpf/redirect.c leaves to the kernel IPv4 under policy 3 and its
    tunnels under 2, IPv6 under 2 and 3; 0 and 1 it follows."""
    assert portcopy.hash_policy_lines(None, 0) == []
    assert portcopy.hash_policy_lines(None, 1 | 1 << 4) == []
    assert portcopy.hash_policy_lines(None, 3 | 2 << 4) == [
        "IPv4: fib_multipath_hash_policy 3 hashes otherwise than bpf_fib_lookup(): every IPv4 "
        "packet goes to the stack, which picks the next hop",
        "IPv6: fib_multipath_hash_policy 2 hashes otherwise than bpf_fib_lookup(): every IPv6 "
        "packet goes to the stack, which picks the next hop"]
    assert portcopy.hash_policy_lines(0, 2) == [
        "IPv4: fib_multipath_hash_policy 2 hashes otherwise than bpf_fib_lookup(): tunnelled IPv4 "
        "(IPIP, IPv6 in IPv4, GRE) goes to the stack, which picks the next hop"]
    assert portcopy.hash_policy_lines(2, 0) == [
        "IPv4: fib_multipath_hash_policy 0: tunnelled IPv4 (IPIP, IPv6 in IPv4, GRE) is forwarded "
        "in XDP again"]
    assert portcopy.hash_policy_lines(3 << 4, 0) == [
        "IPv6: fib_multipath_hash_policy 0: every IPv6 packet is forwarded in XDP again"]
    # A policy newer than this version knows: left to the kernel, as 3.
    assert portcopy.hash_policy_lines(None, 4) == [
        "IPv4: fib_multipath_hash_policy 4 hashes otherwise than bpf_fib_lookup(): every IPv4 "
        "packet goes to the stack, which picks the next hop"]
    assert portcopy.hash_policy_lines(2 << 4, 3 << 4) == []  # every IPv6 packet either way
    assert portcopy.hash_policy_lines(0, 1) == []  # the program follows both


def test_drift_of_the_hash_policy():
    assert portcopy.drift(entry(), entry(policy6=2)) == [
        "fib_multipath_hash_policy for IPv6 is now 2, which the program does not know (it has 0): "
        "over a multipath route it may send every IPv6 packet by another next hop than the kernel"]
    assert portcopy.drift(entry(), entry(policy6=2), route_mtu=False) == []  # said under one port
    assert portcopy.drift(entry(policy4=3), entry(policy4=1)) == [
        "fib_multipath_hash_policy for IPv4 is now 1, but the program still passes every IPv4 "
        "packet to the stack"]
    assert portcopy.drift(entry(), entry(policy4=1)) == []


# -- which notifications make `run`'s follower read again (pure logic) ------

def attr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + bytes(-len(raw) % 4)


def message(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def link(index, kind=16):
    return message(kind, struct.pack("=BxHiII", 0, 1, index, 0, 0))


def addr(family, index, kind=20):
    return message(kind, struct.pack("=BBBBI", family, 64, 0, 0, index))


def route(family, *attrs, table=254, dst_len=24, kind=24):
    return message(kind, struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, 4, 0, 1, 0) + b"".join(attrs))


PORTS = {7, 8}
MTU = attr(8, attr(2, struct.pack("=I", 1400)))  # RTA_METRICS { RTAX_MTU 1400 }
DST = attr(1, bytes([10, 0, 95, 0]))


def test_links_and_ipv6_of_the_ports_concern_the_ports():
    assert portcopy.concerns(link(7), PORTS, frozenset()) == (True, False)
    assert portcopy.concerns(link(9), PORTS, frozenset()) == (False, False)
    assert portcopy.concerns(addr(10, 8, kind=21), PORTS, frozenset()) == (True, False)
    assert portcopy.concerns(addr(2, 8), PORTS, frozenset()) == (False, False)  # IPv4 addresses: no
    assert portcopy.concerns(route(10, attr(4, struct.pack("=I", 7)), kind=25), PORTS,
                             frozenset()) == (True, False)
    assert portcopy.concerns(route(10, attr(4, struct.pack("=I", 9))), PORTS, frozenset()) == (False, False)
    assert portcopy.concerns(route(10, attr(30, struct.pack("=I", 5))), PORTS, frozenset()) == (True, False)


def test_ipv4_routes_concern_the_route_mtu_only_with_an_mtu():
    assert portcopy.concerns(route(2, DST, MTU), PORTS, frozenset()) == (False, True)
    assert portcopy.concerns(route(2, DST, attr(4, struct.pack("=I", 7))), PORTS, frozenset()) == (False, False)
    # A `replace` without the MTU of a route that had one.
    known = frozenset({netlink.route_key(2, 254, 24, bytes([10, 0, 95, 0]))})
    assert portcopy.concerns(route(2, DST), PORTS, known) == (False, True)
    assert portcopy.concerns(route(2, DST, table=100), PORTS, known) == (False, False)


def test_ipv6_routes_concern_the_route_mtu_only_with_an_mtu():
    dst6 = attr(1, bytes.fromhex("fd000097" + "00" * 12))
    assert portcopy.concerns(route(10, dst6, MTU, dst_len=64), PORTS, frozenset()) == (False, True)
    assert portcopy.concerns(route(10, dst6, dst_len=64), PORTS, frozenset()) == (False, False)
    known = frozenset({netlink.route_key(10, 254, 64, bytes.fromhex("fd000097" + "00" * 12))})
    assert portcopy.concerns(route(10, dst6, dst_len=64), PORTS, known) == (False, True)
    # An IPv4 default route is not the IPv6 one.
    assert portcopy.concerns(route(2, dst_len=0), PORTS, frozenset({netlink.route_key(10, 254, 0, b"")})) \
        == (False, False)


def test_routes_removed_without_a_word_are_read_again():
    """fib_table_flush() deletes a link's, an address's or a nexthop
    object's routes without RTM_DELROUTE: while a route with an MTU exists,
    those events mean a dump."""
    known = frozenset({netlink.route_key(2, 254, 24, bytes([10, 0, 95, 0]))})
    assert portcopy.concerns(link(9, kind=17), PORTS, known) == (False, True)
    assert portcopy.concerns(addr(2, 9, kind=21), PORTS, known) == (False, True)
    assert portcopy.concerns(message(105, bytes(8)), PORTS, known) == (False, True)
    assert portcopy.concerns(addr(2, 9, kind=21), PORTS, frozenset()) == (False, False)


def test_several_messages_in_one_datagram():
    assert portcopy.concerns(link(9) + route(2, DST, MTU) + addr(10, 7), PORTS, frozenset()) == (True, True)


# -- the follower keeps going (refresh and the kernel stood in for) ---------

def follow_with(monkeypatch, outcomes, rounds):
    """portcopy.follow() with refresh() answering outcomes in turn (a list
    of lines, or an exception to raise) and `rounds` refreshes at most."""
    calls, logged = [], []
    monkeypatch.setattr(portcopy, "route_mtus", lambda use_pmtu=None: ((0, 0), frozenset()))

    def refresh(config_map_id, slots, limits):
        outcome = outcomes[min(len(calls), len(outcomes) - 1)]
        calls.append(limits)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(portcopy, "refresh", refresh)
    portcopy.follow(1, {0: 7}, logged.append, every=0.01, stop=lambda: len(calls) >= rounds,
                    ready=lambda: logged.append("ready"))
    return calls, logged


def test_an_error_is_logged_once_and_the_follower_goes_on(monkeypatch):
    from pyroute2.netlink.exceptions import NetlinkError

    calls, logged = follow_with(monkeypatch, [NetlinkError(16), NetlinkError(16), ["eth1: changed"], []], 5)
    assert logged == ["ports: (16, 'Device or resource busy')", "ready", "eth1: changed"]
    assert len(calls) == 5


def test_a_program_gone_ends_the_follower(monkeypatch):
    from xdpfwd.bpfsys import BpfError

    calls, logged = follow_with(monkeypatch, [BpfError("map_get_fd_by_id", errno.ENOENT)], 100)
    assert logged == ["ports: the program is gone; no longer keeping its copy of the ports"]  # never ready: it ended
    assert len(calls) == 1


# -- a port's IPv6 switch, from its link message ---------------------------

class Msg:
    """What netlink.ipv6_disabled() reads of a pyroute2 link message."""

    def __init__(self, **attrs):
        self.attrs = attrs

    def get_attr(self, name):
        return self.attrs.get(name)


def af_spec(conf):
    return Msg(AF_INET6=Msg(IFLA_INET6_CONF=conf) if conf is not None else None)


def test_ipv6_disabled_by_the_switch_or_by_no_ipv6_at_all():
    assert netlink.ipv6_disabled(Msg(IFLA_AF_SPEC=af_spec({"disable_ipv6": 0}))) is False
    assert netlink.ipv6_disabled(Msg(IFLA_AF_SPEC=af_spec({"disable_ipv6": 1}))) is True
    # No inet6_dev (an MTU below 1280, ipv6.disable=1): inet6_fill_link_af() leaves AF_INET6 out.
    assert netlink.ipv6_disabled(Msg(IFLA_AF_SPEC=af_spec(None))) is True
    assert netlink.ipv6_disabled(Msg()) is True
