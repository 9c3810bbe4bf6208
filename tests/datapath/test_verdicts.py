"""The program's verdicts, without a network: frames built with scapy run
through the loaded program with BPF_PROG_TEST_RUN, in the router's
namespace, so bpf_fib_lookup() asks that namespace's real routes and
neighbours. Each case checks the action, the output bytes and that exactly
one counter (the expected outcome, on eth1) grew by one.
"""

import queue
import threading
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPOption_RR
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig, ICMPv6ParamProblem,
                                ICMPv6TimeExceeded, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_Redirect,
                                ICMPv6ND_RS, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1Q, Ether

from helpers import inside, ipv6_disabled, router_ip, router_mac_changed, router_with_every_route, sysctls_set
from xdpfwd import bpfsys, sysctl, xdp

XDP_PASS, XDP_REDIRECT = 2, 4
PAYLOAD = b"xdpfwd-test-payload"


@pytest.fixture(scope="module")
def router(lab):
    with router_with_every_route() as r:
        yield r


@pytest.fixture(scope="module")
def program(router):
    links = router["links"]
    with inside("router"):
        prog = xdp.load_program([links["eth1"].index, links["eth0"].index])
    prog_id = bpfsys.prog_info(prog.prog_fd).id
    yield {"prog": prog, "id": prog_id, **router}


def counters(program):
    return xdp.program_counters(program["id"])[program["links"]["eth1"].index].as_dict()


def run_frame(program, frame: bytes):
    with inside("router"):
        return bpfsys.test_run(program["prog"].prog_fd, frame, program["links"]["eth1"].index)


def to_router(program, l3):
    """A frame as sendbox would put it on the wire towards the router."""
    return Ether(src=program["macs"]["sendbox"], dst=program["links"]["eth1"].mac) / l3


def v4(dst="10.0.11.20", **kw):
    return IP(src="10.0.10.10", dst=dst, **kw) / UDP(sport=40000, dport=2152) / PAYLOAD


def v6(dst="fd00:11::20", **kw):
    return IPv6(src="fd00:10::10", dst=dst, **kw) / UDP(sport=40000, dport=2152) / PAYLOAD


def check(program, frame, action, outcome):
    """Run frame; assert the action and that only `outcome` counted it."""
    raw = bytes(frame)
    before = counters(program)
    result = run_frame(program, raw)
    after = counters(program)
    assert result.retval == action, f"action {result.retval}, expected {action}"
    grew = {label: after[label][0] - before[label][0] for label in after
            if after[label] != before[label]}
    assert grew == {"received": 1, outcome: 1}, f"counters grew {grew}, expected received and {outcome} +1"
    assert after["received"][1] - before["received"][1] == len(raw)
    assert after[outcome][1] - before[outcome][1] == len(raw)
    return result


def test_forwards_ipv4_rewriting_macs_ttl_and_checksum(program):
    frame = to_router(program, v4(ttl=64))
    eth0 = program["links"]["eth0"].index
    sent_before = xdp.program_counters(program["id"])[eth0].as_dict()["transmitted"]
    out = Ether(check(program, frame, XDP_REDIRECT, "forwarded").data)
    sent_after = xdp.program_counters(program["id"])[eth0].as_dict()["transmitted"]
    assert (sent_after[0] - sent_before[0], sent_after[1] - sent_before[1]) == (1, len(bytes(frame)))
    assert out.dst == program["macs"]["recvbox"]
    assert out.src == program["links"]["eth0"].mac
    assert out[IP].ttl == 63
    sent_checksum = out[IP].chksum
    del out[IP].chksum
    assert IP(bytes(out[IP]))[IP].chksum == sent_checksum, "IPv4 header checksum is wrong"
    assert bytes(out[UDP]) == bytes(frame[UDP]), "the payload changed"


def test_ipv4_via_an_ipv6_gateway_is_rewritten_as_ipv4(program):
    """A route `via inet6` (RFC 8950, as BGP unnumbered makes them):
    bpf_fib_lookup() answers with family AF_INET6 and the gateway in
    ipv6_dst. The packet is still IPv4: its TTL and checksum are what the
    kernel's ip_forward() makes of them."""
    router_ip("route", "add", "10.0.98.0/24", "via", "inet6", "fd00:11::20", "dev", "eth0")
    try:
        frame = to_router(program, v4(dst="10.0.98.5", ttl=64))
        out = Ether(check(program, frame, XDP_REDIRECT, "forwarded").data)
    finally:
        router_ip("route", "del", "10.0.98.0/24")
    assert out.dst == program["macs"]["recvbox"]  # fd00:11::20's neighbour entry
    assert (out.type, out[IP].ttl, out[IP].frag, out[IP].flags) == (0x0800, 63, 0, 0)
    sent = out[IP].chksum
    del out[IP].chksum
    assert IP(bytes(out[IP])).chksum == sent, "IPv4 header checksum is wrong"


def test_forwards_ipv6_decrementing_hop_limit(program):
    frame = to_router(program, v6(hlim=64))
    out = Ether(check(program, frame, XDP_REDIRECT, "forwarded").data)
    assert out.dst == program["macs"]["recvbox"]
    assert out.src == program["links"]["eth0"].mac
    assert out[IPv6].hlim == 63
    assert bytes(out[UDP]) == bytes(frame[UDP])


@pytest.mark.parametrize("l3", [v4(ttl=1), v4(ttl=0), v6(hlim=1), v6(hlim=0)],
                         ids=["ttl1", "ttl0", "hlim1", "hlim0"])
def test_expiring_ttl_goes_to_the_stack(program, l3):
    check(program, to_router(program, l3), XDP_PASS, "ttl_exceeded")


def test_ttl_2_is_forwarded_with_ttl_1(program):
    out = Ether(check(program, to_router(program, v4(ttl=2)), XDP_REDIRECT, "forwarded").data)
    assert out[IP].ttl == 1


def test_arp_is_not_ip(program):
    frame = Ether(src=program["macs"]["sendbox"], dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.10.20")
    check(program, frame, XDP_PASS, "multicast")
    unicast = Ether(src=program["macs"]["sendbox"], dst=program["links"]["eth1"].mac) / ARP(op=2)
    check(program, unicast, XDP_PASS, "not_ip")


def test_vlan_tagged_goes_to_the_stack(program):
    frame = Ether(src=program["macs"]["sendbox"], dst=program["links"]["eth1"].mac) / Dot1Q(vlan=7) / v4()
    check(program, frame, XDP_PASS, "vlan")


@pytest.mark.parametrize("make", [
    lambda p: bytes(to_router(p, v4()))[:14 + 12],                  # IPv4 header cut short
    lambda p: bytes(to_router(p, v6()))[:14 + 30],                  # IPv6 header cut short
    lambda p: bytes(to_router(p, v4(ihl=4))),                       # IHL below 5
    lambda p: bytes(to_router(p, v4(len=400))),                     # tot_len past the frame
    lambda p: bytes(to_router(p, v4(options=[IPOption_RR()] * 3, len=20))),  # tot_len < IHL*4
    lambda p: bytes(to_router(p, v4(version=6))),                   # version 6 in an IPv4 EtherType
    lambda p: bytes(to_router(p, v6(plen=400))),                    # payload_len past the frame
], ids=["short-ipv4", "short-ipv6", "ihl4", "tot_len", "tot_len<ihl", "version", "payload_len"])
def test_malformed_goes_to_the_stack(program, make):
    check(program, make(program), XDP_PASS, "malformed")


def test_multicast_destination_mac(program):
    frame = Ether(src=program["macs"]["sendbox"], dst="01:00:5e:00:00:fb") / IP(src="10.0.10.10", dst="224.0.0.251") / UDP()
    check(program, frame, XDP_PASS, "multicast")


def test_bad_ipv4_checksum_goes_to_the_stack(program):
    frame = to_router(program, v4(chksum=0x1234))
    check(program, frame, XDP_PASS, "bad_checksum")


def test_ip_options_go_to_the_stack(program):
    check(program, to_router(program, v4(options=[IPOption_RR()])), XDP_PASS, "ip_options")
    hbh = IPv6(src="fd00:10::10", dst="fd00:11::20") / IPv6ExtHdrHopByHop() / UDP() / PAYLOAD
    check(program, to_router(program, hbh), XDP_PASS, "ip_options")


def nd6(*ext, upper=None):
    """IPv6 from sendbox to recvbox, hop limit 255 as Neighbour Discovery
    sends it, with these extension headers before `upper`."""
    pkt = IPv6(src="fd00:10::10", dst="fd00:11::20", hlim=255)
    for header in ext:
        pkt = pkt / header
    return pkt / (upper if upper is not None else ICMPv6ND_NS(tgt="fd00:11::20"))


def ah(nh):
    """An Authentication Header (scapy fills neither its next header nor
    its length): 24 bytes, (4 + 2) * 4 as ipv6_authlen() reads them."""
    return AH(nh=nh, payloadlen=4, spi=1, seq=1, icv=bytes(12))


@pytest.mark.parametrize("upper", [ICMPv6ND_RS(), ICMPv6ND_RA(), ICMPv6ND_NS(tgt="fd00:11::20"),
                                   ICMPv6ND_NA(tgt="fd00:11::20"), ICMPv6ND_Redirect()],
                         ids=["rs", "ra", "ns", "na", "redirect"])
def test_neighbour_discovery_goes_to_the_stack(program, upper):
    """ip6_forward() answers ND for a proxied address itself
    (ip6_forward_proxy_check()); the program cannot see the proxy table."""
    check(program, to_router(program, nd6(upper=upper)), XDP_PASS, "ndp")


@pytest.mark.parametrize("ext", [
    [IPv6ExtHdrDestOpt()], [IPv6ExtHdrRouting()], [IPv6ExtHdrFragment(offset=0, m=1)],
    [ah(58)],
    [IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(), IPv6ExtHdrFragment(), ah(60),
     IPv6ExtHdrDestOpt(), IPv6ExtHdrHopByHop()],  # six: as far as the program walks
], ids=["destopts", "routing", "first-fragment", "ah", "six"])
def test_neighbour_discovery_is_found_past_extension_headers(program, ext):
    """As ipv6_skip_exthdr() finds the upper-layer header."""
    check(program, to_router(program, nd6(*ext)), XDP_PASS, "ndp")


@pytest.mark.parametrize("l3", [
    nd6(upper=ICMPv6EchoRequest()),
    nd6(ah(60), IPv6ExtHdrDestOpt(nh=59), upper=b""),  # No Next Header
    nd6(ah(58), upper=b""),  # the ICMPv6 type cut off
    nd6(ah(60), *[IPv6ExtHdrDestOpt()] * 5, upper=UDP() / PAYLOAD),
], ids=["echo", "no-next-header", "cut-short", "six-then-udp"])
def test_other_icmpv6_and_extension_chains_are_forwarded(program, l3):
    """Behind AH, the one extension header the flow dissector does not
    walk past (its SPI is the ports, as bpf_fib_lookup() is given them)."""
    check(program, to_router(program, l3), XDP_REDIRECT, "forwarded")


@pytest.mark.parametrize("l3", [
    nd6(IPv6ExtHdrFragment(offset=8), upper=UDP() / PAYLOAD),  # a later fragment: not walked on
    nd6(IPv6ExtHdrFragment(offset=1, nh=58), upper=b"\x87" + bytes(23)),
    nd6(IPv6ExtHdrFragment(m=1), upper=UDP() / PAYLOAD),
    nd6(IPv6ExtHdrDestOpt(nh=59), upper=b""),
    nd6(IPv6ExtHdrRouting(), upper=UDP() / PAYLOAD),
    nd6(*[IPv6ExtHdrDestOpt()] * 6, upper=UDP() / PAYLOAD),
], ids=["later-fragment", "later-fragment-nd-bytes", "first-fragment", "destopts", "routing", "six"])
def test_routing_fragment_and_destination_options_go_to_the_stack(program, l3):
    """Policy rules on the protocol or ports and the multipath hash by
    ports (fib_multipath_hash_policy 1) read the transport header past
    them (the flow dissector); bpf_fib_lookup() is given the first next
    header and no ports (tests/lab/test_ecmp.py shows the next hops
    differ)."""
    check(program, to_router(program, l3), XDP_PASS, "ip_options")


def test_nd_bytes_past_the_ip_length_are_not_looked_at(program):
    """ip6_rcv_core() trims the packet to its payload length before
    ipv6_skip_exthdr() walks it: an ICMPv6 type in the Ethernet padding
    is no ND message."""
    frame = bytes(to_router(program, nd6(ah(58), upper=b""))) + b"\x87"
    check(program, frame, XDP_REDIRECT, "forwarded")


def test_a_sixth_header_cut_short_is_walked_as_the_other_datapaths_walk_it(program):
    """The sixth header's two bytes are there, the seventh it announces
    is not. The program reads only what ipv6_skip_exthdr() reads, so it
    reaches the seventh and leaves the packet to the kernel as
    packet.py, the C and the model do (it once stopped a header early
    here and forwarded it itself: the datapaths disagreed)."""
    body = b"".join(bytes([60, 0]) + bytes(6) for _ in range(5)) + bytes([60, 0])
    l3 = IPv6(src="fd00:10::10", dst="fd00:11::20", nh=60, plen=len(body)) / body
    check(program, to_router(program, l3), XDP_PASS, "ip_options")


def test_a_chain_longer_than_the_program_walks_goes_to_the_stack(program):
    """Seven extension headers: the kernel would walk on; the program
    leaves the packet to it, counted with the IP options."""
    check(program, to_router(program, nd6(*[IPv6ExtHdrDestOpt()] * 7, upper=UDP() / PAYLOAD)),
          XDP_PASS, "ip_options")
    check(program, to_router(program, nd6(*[IPv6ExtHdrDestOpt()] * 7)), XDP_PASS, "ip_options")


QUOTED4 = IP(src="10.0.11.20", dst="192.0.2.7") / UDP(sport=53, dport=40000)
QUOTED6 = IPv6(src="fd00:11::20", dst="2001:db8::7") / UDP(sport=53, dport=40000)


@pytest.mark.parametrize("l3", [
    *[IP(src="10.0.10.10", dst="10.0.11.20") / ICMP(type=t) / QUOTED4 for t in (3, 4, 5, 11, 12)],
    IP(src="10.0.10.10", dst="10.0.11.20", flags="MF") / ICMP(type=11) / QUOTED4,  # a first fragment
    IP(src="10.0.10.10", dst="10.0.11.20") / ICMP(type=3),  # quoting nothing: the kernel's still
    *[IPv6(src="fd00:10::10", dst="fd00:11::20") / kind() / QUOTED6
      for kind in (ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded, ICMPv6ParamProblem)],
], ids=["unreachable", "source-quench", "redirect", "time-exceeded", "parameter-problem",
        "first-fragment", "empty", "v6-unreachable", "v6-too-big", "v6-time-exceeded",
        "v6-parameter-problem"])
def test_icmp_errors_go_to_the_stack(program, l3):
    """Over a multipath route the kernel sends an ICMP error the way of
    the packet it quotes (ip_multipath_l3_keys(), ip6_multipath_l3_keys()
    hash the quoted addresses); bpf_fib_lookup() hashes the outer ones,
    and the program cannot tell a multipath route from another."""
    check(program, to_router(program, l3), XDP_PASS, "icmp_error")


@pytest.mark.parametrize("l3", [
    IP(src="10.0.10.10", dst="10.0.11.20") / ICMP(type=8) / PAYLOAD,
    IP(src="10.0.10.10", dst="10.0.11.20", frag=8, proto=1) / (bytes([3]) + bytes(31)),  # a later fragment
    IP(src="10.0.10.10", dst="10.0.11.20", proto=1),  # no ICMP header at all
    IPv6(src="fd00:10::10", dst="fd00:11::20") / ah(58) / ICMPv6DestUnreach() / QUOTED6,
], ids=["echo", "later-fragment", "no-header", "v6-behind-an-extension-header"])
def test_other_icmp_is_forwarded(program, l3):
    """What the kernel's multipath hash reads by its outer header, as
    bpf_fib_lookup() does: forwarded here. (ip6_multipath_l3_keys() looks
    for ICMPv6 only right behind the fixed header.)"""
    check(program, to_router(program, l3), XDP_REDIRECT, "forwarded")


@pytest.mark.parametrize("policy4,policy6,passed", [
    (3, 0, {"v4", "ipip", "gre"}), (2, 0, {"ipip", "gre"}), (1, 0, set()),
    (0, 2, {"v6"}), (0, 3, {"v6"}), (0, 1, set()),
], ids=["v4-custom", "v4-inner", "v4-l4", "v6-inner", "v6-custom", "v6-l4"])
def test_hash_policies_the_lookup_cannot_follow_go_to_the_stack(program, policy4, policy6, passed):
    """fib_multipath_hash_policy 3 hashes the packet's fields and then
    once more, 2 a tunnel's inner addresses and (IPv6) the flow label as
    the flow dissector holds it: bpf_fib_lookup() has only the outer
    header. The program goes by the policies user space copies in
    (refresh_ports, as attach again and `run` do)."""
    frames = {"v4": v4(), "v6": v6(), "ipip": IP(src="10.0.10.10", dst="10.0.11.20") / v4(dst="192.0.2.7"),
              "gre": IP(src="10.0.10.10", dst="10.0.11.20", proto=47) / bytes(24)}
    names = {"net.ipv4.fib_multipath_hash_policy": str(policy4),
             "net.ipv6.fib_multipath_hash_policy": str(policy6)}
    try:
        with sysctls_set(names):
            with inside("router"):
                changed = xdp.refresh_ports(program["id"])
            assert bool(changed) == bool(passed), changed
            for name, l3 in frames.items():
                if name in passed:
                    check(program, to_router(program, l3), XDP_PASS, "multipath_hash")
                else:
                    check(program, to_router(program, l3), XDP_REDIRECT, "forwarded")
    finally:  # the module's program must not keep the copy for later tests
        with inside("router"):
            xdp.refresh_ports(program["id"])
    check(program, to_router(program, frames["v4"]), XDP_REDIRECT, "forwarded")


def test_icmp_error_bytes_past_the_ip_length_are_not_looked_at(program):
    """ip_rcv_core() trims the packet first: a type in the padding is none."""
    frame = bytes(to_router(program, IP(src="10.0.10.10", dst="10.0.11.20", proto=1))) + b"\x03"
    check(program, frame, XDP_REDIRECT, "forwarded")


def test_ipv6_link_local_never_crosses(program):
    check(program, to_router(program, v6(dst="fe80::1")), XDP_PASS, "link_local")
    ll_src = IPv6(src="fe80::10", dst="fd00:11::20") / UDP() / PAYLOAD
    check(program, to_router(program, ll_src), XDP_PASS, "link_local")


@pytest.mark.parametrize("dst,outcome", [
    ("10.0.90.1", "fib_blackhole"),
    ("10.0.91.1", "fib_unreachable"),
    ("10.0.92.1", "fib_prohibit"),
    ("10.0.11.10", "fib_not_forwarded"),   # the router's own address
    ("192.0.2.1", "fib_not_forwarded"),    # no route at all
    ("10.0.11.99", "fib_no_neighbour"),    # on-link, never resolved
    ("10.0.94.2", "egress_not_a_port"),    # routed out of spare0
    ("10.0.10.10", "egress_is_ingress"),   # back out of eth1
])
def test_fib_results_go_to_the_stack(program, dst, outcome):
    check(program, to_router(program, v4(dst=dst)), XDP_PASS, outcome)


def test_fragmentation_needed_goes_to_the_stack(program):
    big = IP(src="10.0.10.10", dst="10.0.93.5") / UDP() / bytes(1200)
    check(program, to_router(program, big), XDP_PASS, "fib_frag_needed")


def test_fragments_are_forwarded(program):
    # Only addresses are looked up, never ports, so a fragment is routed
    # like any packet (the kernel does the same without conntrack).
    frag = IP(src="10.0.10.10", dst="10.0.11.20", flags="MF", frag=0) / UDP() / bytes(64)
    check(program, to_router(program, frag), XDP_REDIRECT, "forwarded")
    later = IP(src="10.0.10.10", dst="10.0.11.20", frag=9, proto=17) / bytes(64)
    check(program, to_router(program, later), XDP_REDIRECT, "forwarded")


def test_forwarding_disabled_on_ingress(program):
    with inside("router"):
        sysctl.set_forwarding("ipv4", "eth1", False)
    try:
        check(program, to_router(program, v4()), XDP_PASS, "fib_forwarding_disabled")
    finally:
        with inside("router"):
            sysctl.set_forwarding("ipv4", "eth1", True)
    check(program, to_router(program, v4()), XDP_REDIRECT, "forwarded")


def test_a_program_another_version_loaded_is_not_refreshed(program, monkeypatch):
    """Its port entries may be the same size and still be read otherwise
    (the byte that became hash_policy was padding): attach again and
    `run` must not write a copy it would misread, nor say it does. Its
    counters' size, which grows with each outcome, tells."""
    import dataclasses

    from xdpfwd.errors import XdpfwdError

    real = xdp.layout()
    # As this version sees a program whose counters have one more outcome
    # than its own: the view of the version before, one outcome short.
    monkeypatch.setattr(xdp, "layout", lambda: dataclasses.replace(real, outcomes=real.outcomes[:-1]))
    with inside("router"):
        with pytest.raises(XdpfwdError, match="loaded by another version of xdpfwd"):
            xdp.refresh_ports(program["id"])
        with pytest.raises(XdpfwdError, match="loaded by another version of xdpfwd"):
            xdp.stale_ports(program["id"])


def test_ipv6_disabled_on_ingress(program):
    """ip6_rcv_core() drops IPv6 from a port with disable_ipv6, which
    bpf_fib_lookup() does not ask: the program goes by the switch user
    space copies into its config map (refresh_ports, as attach again and
    `run` do), and says what changed."""
    try:
        with ipv6_disabled("eth1"):
            with inside("router"):
                assert xdp.refresh_ports(program["id"]) == [
                    "eth1: IPv6 disabled (disable_ipv6, or no IPv6): its IPv6 goes to the stack"]
            for l3 in (v6(), v6(hlim=1), v6(plen=400)):  # checked before the header, as the kernel does
                check(program, to_router(program, l3), XDP_PASS, "ipv6_disabled")
            check(program, to_router(program, v4()), XDP_REDIRECT, "forwarded")
    finally:  # the module's program must not keep the copy for later tests
        with inside("router"):
            changed = xdp.refresh_ports(program["id"])
    assert changed == ["eth1: IPv6 enabled again: its IPv6 is forwarded"]
    check(program, to_router(program, v6()), XDP_REDIRECT, "forwarded")


def test_ipv6_out_of_a_port_with_ipv6_disabled_is_not_forwarded(program):
    """Routes over a nexthop object outlive disable_ipv6 on their port
    (fib6_ifdown()); what stops the packet is the neighbour table, flushed
    and closed (neigh_ifdown(), ndisc_allow_add()): NO_NEIGH, and the
    kernel drops it in ip6_output()."""
    router_ip("nexthop", "add", "id", "77", "via", "fd00:11::20", "dev", "eth0")
    router_ip("-6", "route", "add", "fd00:98::/64", "nhid", "77")
    try:
        check(program, to_router(program, v6(dst="fd00:98::5")), XDP_REDIRECT, "forwarded")
        with ipv6_disabled("eth0"):
            check(program, to_router(program, v6(dst="fd00:98::5")), XDP_PASS, "fib_no_neighbour")
    finally:
        router_ip("-6", "route", "del", "fd00:98::/64")
        router_ip("nexthop", "del", "id", "77")
        with inside("router"):
            xdp.refresh_ports(program["id"])


def refreshed(program) -> list[str]:
    """Attach again's refresh of the program's copy; its lines."""
    with inside("router"):
        return xdp.refresh_ports(program["id"])


# Per family: the route added, a destination under it, a packet too big for
# it to somewhere else, and one of the other family as big.
ROUTE_MTU_CASES = {
    "IPv4": (("10.0.95.0/24", "via", "10.0.11.20"), v4(dst="10.0.95.5"), v4() / bytes(1400),
             v6() / bytes(1400)),
    "IPv6": (("-6", "fd00:97::/64", "via", "fd00:11::20"), v6(dst="fd00:97::5"), v6() / bytes(1400),
             v4() / bytes(1400)),
}


@pytest.mark.parametrize("ip", sorted(ROUTE_MTU_CASES))
def test_an_unlocked_route_mtu_sends_larger_packets_to_the_stack(program, ip):
    """ip_forward() honours a route's MTU whether locked or not; IPv6's
    output path too (ip6_fragment() answers Packet Too Big), though
    ip6_forward() reads only a locked one. bpf_fib_lookup() sees only a
    locked one (IPv6: or a path MTU learnt under it). The program knows
    the smallest unlocked one of each family (refresh_ports) and leaves
    larger packets of that family, whatever their route, to the kernel."""
    route, under, big, other = ROUTE_MTU_CASES[ip]
    *family, prefix, via, gateway = route
    router_ip(*family, "route", "add", prefix, via, gateway, "mtu", "1400")
    try:
        assert refreshed(program) == [
            f"{ip} routes: the smallest MTU not locked is now 1400: larger {ip} packets go to the stack"]
        check(program, to_router(program, big), XDP_PASS, "route_mtu")
        check(program, to_router(program, under), XDP_REDIRECT, "forwarded")  # fits
        check(program, to_router(program, other), XDP_REDIRECT, "forwarded")  # its family only
        router_ip(*family, "route", "change", prefix, via, gateway, "mtu", "lock", "1400")
        assert refreshed(program) == [
            f"{ip} routes: no MTU left unlocked: {ip} is forwarded up to each route's locked MTU "
            f"or {'link' if ip == 'IPv4' else 'port'}'s"]
        check(program, to_router(program, big), XDP_REDIRECT, "forwarded")
        check(program, to_router(program, under / bytes(1400)), XDP_PASS, "fib_frag_needed")
    finally:
        router_ip(*family, "route", "del", prefix)
        refreshed(program)


def test_follow_ports_acts_on_the_kernels_events(program):
    """`run`'s follower: with the periodic re-read an hour away, only the
    kernel's events can make it refresh, and each change is logged well
    within a second."""
    logged, done = queue.Queue(), threading.Event()

    def follow():
        with inside("router"):
            xdp.follow_ports(program["id"], logged.put, every=3600, stop=done.is_set)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # subscribed, and the first read done
        with ipv6_disabled("eth1"):
            assert logged.get(timeout=1) == \
                "eth1: IPv6 disabled (disable_ipv6, or no IPv6): its IPv6 goes to the stack"
        assert logged.get(timeout=1) == "eth1: IPv6 enabled again: its IPv6 is forwarded"
        router_ip("route", "add", "10.0.95.0/24", "via", "10.0.11.20", "mtu", "1200")
        try:
            assert logged.get(timeout=1).startswith("IPv4 routes: the smallest MTU not locked is now 1200")
        finally:
            router_ip("route", "del", "10.0.95.0/24")
        assert logged.get(timeout=1).startswith("IPv4 routes: no MTU left unlocked")
        router_ip("-6", "route", "add", "fd00:97::/64", "via", "fd00:11::20", "mtu", "1300")
        try:
            assert logged.get(timeout=1).startswith("IPv6 routes: the smallest MTU not locked is now 1300")
        finally:
            router_ip("-6", "route", "del", "fd00:97::/64")
        assert logged.get(timeout=1).startswith("IPv6 routes: no MTU left unlocked")
    finally:
        done.set()
        # An event of its groups wakes it to see done.
        router_ip("-6", "route", "add", "fd00:77::/64", "dev", "eth0")
        router_ip("-6", "route", "del", "fd00:77::/64", "dev", "eth0")
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert logged.empty()


# -- what the kernel's own forwarding refuses: never forwarded here --------


def test_frames_for_another_host_go_to_the_stack(program):
    """eth_type_trans() makes them PACKET_OTHERHOST; ip_rcv_core() and
    ip6_rcv_core() drop them."""
    for l3 in (v4(), v6()):
        frame = Ether(src=program["macs"]["sendbox"], dst="02:00:00:00:00:99") / l3
        check(program, frame, XDP_PASS, "other_host")


@pytest.mark.parametrize("src", ["0.0.0.0", "127.0.0.1", "127.1.2.3", "224.0.0.5",
                                 "255.255.255.255"])
def test_ipv4_martian_sources_go_to_the_stack(program, src):
    frame = to_router(program, IP(src=src, dst="10.0.11.20") / UDP() / PAYLOAD)
    check(program, frame, XDP_PASS, "martian_source")


@pytest.mark.parametrize("dst,outcome", [
    ("0.0.0.0", "martian_destination"), ("127.0.0.1", "martian_destination"),
    ("0.0.0.7", "fib_not_forwarded"),  # 0/8 is routable (no route here)
    ("255.255.255.255", "multicast"), ("224.0.0.5", "multicast"),  # unicast MAC
    ("10.0.11.255", "fib_not_forwarded"),  # directed broadcast: a broadcast route
])
def test_ipv4_special_destinations_go_to_the_stack(program, dst, outcome):
    check(program, to_router(program, v4(dst=dst)), XDP_PASS, outcome)


@pytest.mark.parametrize("src,dst,outcome", [
    ("::1", "fd00:11::20", "martian_source"), ("ff02::1", "fd00:11::20", "martian_source"),
    ("::", "fd00:11::20", "martian_source"), ("fd00:10::10", "::1", "martian_destination"),
    ("fd00:10::10", "ff0e::1", "multicast"),  # unicast MAC
])
def test_ipv6_martians_go_to_the_stack(program, src, dst, outcome):
    frame = to_router(program, IPv6(src=src, dst=dst) / UDP() / PAYLOAD)
    check(program, frame, XDP_PASS, outcome)


@pytest.mark.parametrize("src", [
    "10.0.11.99",   # the far subnet, arriving on the near port: spoofed
    "10.0.11.10",   # the router's own address (fib_validate_source: local source)
    "10.0.10.20",   # the router's own address on the ingress port
    "192.0.2.77",   # no route back at all
    "0.1.2.3",      # 0/8 but not 0.0.0.0: no martian, and no route back
    "10.0.90.5",    # the way back is a blackhole
])
def test_sources_that_fail_the_reverse_path_go_to_the_stack(program, src):
    """The stack then applies rp_filter and accept_local as the sysctls say."""
    frame = to_router(program, IP(src=src, dst="10.0.11.20") / UDP() / PAYLOAD)
    check(program, frame, XDP_PASS, "reverse_path")


def test_reverse_path_follows_the_routes(program):
    """A route added while attached changes the verdict at once."""
    frame = to_router(program, IP(src="10.0.77.1", dst="10.0.11.20") / UDP() / PAYLOAD)
    check(program, frame, XDP_PASS, "reverse_path")
    router_ip("route", "add", "10.0.77.0/24", "via", "10.0.10.10")
    try:
        check(program, frame, XDP_REDIRECT, "forwarded")
    finally:
        router_ip("route", "del", "10.0.77.0/24")
    check(program, frame, XDP_PASS, "reverse_path")


def test_trailing_bytes_are_trimmed_as_the_kernel_does(program):
    """ip_rcv_core() trims the frame to tot_len before forwarding."""
    for l3 in (v4(), v6()):
        frame = bytes(to_router(program, l3))
        out = Ether(check(program, frame + b"\0" * 20, XDP_REDIRECT, "forwarded").data)
        assert len(bytes(out)) == len(frame)
        assert bytes(out[UDP]) == bytes(Ether(frame)[UDP])


def test_port_address_is_followed_on_reattach(program):
    """The program compares with the port address in its config map."""
    eth1 = program["links"]["eth1"]
    try:
        with router_mac_changed("eth1", "02:00:00:00:10:20"):
            # Not refreshed yet: the new address is not the port's for the program.
            frame = Ether(src=program["macs"]["sendbox"], dst="02:00:00:00:10:20") / v4()
            check(program, frame, XDP_PASS, "other_host")
            with inside("router"):
                assert xdp.refresh_ports(program["id"]) == [
                    f"eth1: MAC address now 02:00:00:00:10:20: frames to it are forwarded, frames to "
                    f"{eth1.mac} go to the stack"]
            check(program, frame, XDP_REDIRECT, "forwarded")
            check(program, to_router(program, v4()), XDP_PASS, "other_host")  # the old address
    finally:
        with inside("router"):
            xdp.refresh_ports(program["id"])
    check(program, to_router(program, v4()), XDP_REDIRECT, "forwarded")


def test_policy_rules_on_ports_are_followed(program):
    """fib4_rules_early_flow_dissect(): rules that select on the protocol
    and ports see the packet's; so must the program's lookups."""
    router_ip("route", "add", "10.0.11.0/24", "via", "10.0.94.2", "table", "100")
    router_ip("rule", "add", "ipproto", "udp", "dport", "7777", "lookup", "100", "pref", "100")
    try:
        to_7777 = IP(src="10.0.10.10", dst="10.0.11.20") / UDP(sport=40000, dport=7777) / PAYLOAD
        check(program, to_router(program, to_7777), XDP_PASS, "egress_not_a_port")  # via spare0
        check(program, to_router(program, v4()), XDP_REDIRECT, "forwarded")  # dport 2152: main
        frag = IP(src="10.0.10.10", dst="10.0.11.20", flags="MF") / UDP(sport=40000, dport=7777) / PAYLOAD
        check(program, to_router(program, frag), XDP_REDIRECT, "forwarded")  # a fragment has no ports
    finally:
        router_ip("rule", "del", "pref", "100")
        router_ip("route", "del", "10.0.11.0/24", "table", "100")
