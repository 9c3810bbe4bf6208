"""The AF_PACKET forwarder's packet function on frames built with scapy,
against a fixed routing answer (pure logic: the fib is a stand-in)."""

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPOption_RR
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6PacketTooBig,
                                ICMPv6ParamProblem, ICMPv6TimeExceeded, ICMPv6ND_NS, ICMPv6ND_Redirect, IPv6,
                                IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1Q, Ether

from xdpfwd.afpacket import packet
from xdpfwd.afpacket.fib import Hop
from xdpfwd.layout import layout

IN, OUT, OTHER = 3, 4, 9
ROUTER_IN, ROUTER_OUT, NEXT_HOP = "02:00:00:00:00:03", "02:00:00:00:00:04", "02:00:00:00:00:20"
LABEL = {o.index: o.label for o in layout().outcomes}


class Fib:
    """Answers by destination, as fib.Fib would from the kernel. The way
    back to a source leads out of IN only for sendbox's subnet."""

    def __init__(self, answers, ipv6_off=frozenset()):
        self.answers = answers
        self.ipv6_off = ipv6_off  # ports with disable_ipv6 set

    def lookup(self, family, dst):
        return self.answers.get(dst, Hop("fib_not_forwarded"))

    def mac(self, ifindex):
        return bytes.fromhex({IN: ROUTER_IN, OUT: ROUTER_OUT}[ifindex].replace(":", ""))

    def ipv6_disabled(self, ifindex):
        return ifindex in self.ipv6_off

    def reverse_ok(self, src, dst, ingress, egress):
        return src[:3] == bytes([10, 0, 10]) and ingress == IN


def hop(ifindex=OUT, mtu=1500, outcome="forwarded"):
    return Hop(outcome, ifindex, bytes.fromhex(NEXT_HOP.replace(":", "")),
               bytes.fromhex(ROUTER_OUT.replace(":", "")), mtu, b"")


V4, V6 = bytes([10, 0, 11, 20]), bytes.fromhex("fd000011" + "00" * 11 + "20")
FIB = Fib({V4: hop(), V6: hop(),
           bytes([10, 0, 93, 5]): hop(mtu=1000),
           bytes([10, 0, 94, 2]): hop(ifindex=OTHER),
           bytes([10, 0, 10, 10]): hop(ifindex=IN),
           bytes([10, 0, 11, 99]): hop(outcome="fib_no_neighbour"),
           bytes([10, 0, 90, 1]): Hop("fib_blackhole")})


def frame(l3, dst=ROUTER_IN):
    return bytes(Ether(src="02:00:00:00:00:10", dst=dst) / l3)


def v4(dst="10.0.11.20", **kw):
    return IP(src="10.0.10.10", dst=dst, **kw) / UDP(sport=1, dport=2152) / b"payload"


def v6(dst="fd00:11::20", **kw):
    return IPv6(src="fd00:10::10", dst=dst, **kw) / UDP(sport=1, dport=2152) / b"payload"


def decide(raw, vlan=False):
    outcome, egress, out = packet.decide(raw, IN, vlan, FIB, {IN, OUT})
    return LABEL[outcome], egress, out


def test_ipv4_forwarded_like_the_kernel():
    raw = frame(v4(ttl=64))
    label, egress, out = decide(raw)
    assert (label, egress) == ("forwarded", OUT)
    got = Ether(out)
    assert (got.dst, got.src, got[IP].ttl) == (NEXT_HOP, ROUTER_OUT, 63)
    check = got[IP].chksum
    del got[IP].chksum
    assert IP(bytes(got[IP])).chksum == check
    assert bytes(got[UDP]) == bytes(Ether(raw)[UDP])
    assert len(out) == len(raw)


def test_ipv6_forwarded_with_hop_limit_decremented():
    label, _, out = decide(frame(v6(hlim=64)))
    assert label == "forwarded"
    assert Ether(out)[IPv6].hlim == 63


@pytest.mark.parametrize("checksum", range(0, 0x10000, 0x0FFF))
def test_checksum_update_matches_a_full_recomputation(checksum):
    # Every TTL/checksum combination the incremental update meets in
    # practice: a header whose checksum is `checksum`, made so by the id.
    base = IP(bytes(IP(src="10.0.10.10", dst="10.0.11.20", ttl=64, id=0) / UDP()))
    ident = (base.chksum - checksum) % 0xFFFF  # one's complement: the id moves the sum
    ip = IP(bytes(IP(src="10.0.10.10", dst="10.0.11.20", ttl=64, id=ident) / UDP()))
    assert ip.chksum in (checksum, 0xFFFF if checksum == 0 else checksum)
    label, _, out = decide(frame(ip))
    assert label == "forwarded"
    got = Ether(out)[IP]
    sent = got.chksum
    del got.chksum
    assert IP(bytes(got)).chksum == sent


def test_forwarded_frame_is_cut_to_the_ip_length():
    raw = frame(v4())
    label, _, out = decide(raw + bytes(18))  # Ethernet padding, trailing bytes
    assert label == "forwarded" and len(out) == len(raw)
    label, _, out = decide(frame(v6()) + bytes(7))
    assert label == "forwarded" and len(out) == len(frame(v6()))


# (frame, outcome): also run through the C fast path (test_afpacket_fastpath.py).
TO_THE_STACK = [
    (frame(v4(ttl=1)), "ttl_exceeded"),
    (frame(v6(hlim=1)), "ttl_exceeded"),
    (frame(ARP(op=2)), "not_ip"),
    (frame(ARP(), dst="ff:ff:ff:ff:ff:ff"), "multicast"),
    (frame(Dot1Q(vlan=7) / v4()), "vlan"),
    (frame(v4())[:26], "malformed"),
    (frame(v4(ihl=4)), "malformed"),
    (frame(v4(len=400)), "malformed"),
    (frame(v4(options=[IPOption_RR()] * 3, len=20)) + bytes(40), "malformed"),  # tot_len < IHL*4
    (frame(v6(plen=400)), "malformed"),
    (frame(v4(chksum=0x1234)), "bad_checksum"),
    (frame(v4(options=[IPOption_RR()])), "ip_options"),
    (frame(IPv6(src="fd00:10::10", dst="fd00:11::20") / IPv6ExtHdrHopByHop() / UDP()), "ip_options"),
    (frame(v6(dst="fe80::1")), "link_local"),
    (frame(v4(dst="10.0.90.1")), "fib_blackhole"),
    (frame(v4(dst="192.0.2.1")), "fib_not_forwarded"),
    (frame(v4(dst="10.0.11.99")), "fib_no_neighbour"),
    (frame(v4(dst="10.0.94.2")), "egress_not_a_port"),
    (frame(v4(dst="10.0.10.10")), "egress_is_ingress"),
    (frame(IP(src="10.0.10.10", dst="10.0.93.5") / UDP() / bytes(1200)), "fib_frag_needed"),
    (frame(v4(), dst="02:00:00:00:00:99"), "other_host"),
    (frame(v6(), dst="02:00:00:00:00:99"), "other_host"),
    (frame(IP(src="0.0.0.0", dst="10.0.11.20") / UDP()), "martian_source"),
    (frame(IP(src="127.0.0.1", dst="10.0.11.20") / UDP()), "martian_source"),
    (frame(IP(src="224.0.0.5", dst="10.0.11.20") / UDP()), "martian_source"),
    (frame(IP(src="255.255.255.255", dst="10.0.11.20") / UDP()), "martian_source"),
    (frame(v4(dst="0.0.0.0")), "martian_destination"),
    (frame(v4(dst="0.0.0.9")), "fib_not_forwarded"),  # the rest of 0/8 is routable
    (frame(v4(dst="127.0.0.1")), "martian_destination"),
    (frame(v4(dst="224.0.0.5")), "multicast"),
    (frame(v4(dst="255.255.255.255")), "multicast"),
    (frame(IPv6(src="::1", dst="fd00:11::20") / UDP()), "martian_source"),
    (frame(IPv6(src="::", dst="fd00:11::20") / UDP()), "martian_source"),
    (frame(IPv6(src="ff02::1", dst="fd00:11::20") / UDP()), "martian_source"),
    (frame(v6(dst="::1")), "martian_destination"),
    (frame(v6(dst="ff0e::1")), "multicast"),
    (frame(IP(src="10.0.11.99", dst="10.0.11.20") / UDP()), "reverse_path"),
    (frame(IPv6(src="fd00:10::10", dst="fd00:11::20", hlim=255) / ICMPv6ND_NS(tgt="fd00:11::20")), "ndp"),
    (frame(IPv6(src="fd00:10::10", dst="fd00:11::20", hlim=255) / ICMPv6ND_NA(tgt="fd00:11::20")), "ndp"),
    (frame(IPv6(src="fd00:10::10", dst="fd00:11::20", hlim=255) / ICMPv6ND_Redirect()), "ndp"),
    (frame(IPv6(src="fd00:10::10", dst="fd00:11::20") / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
           / IPv6ExtHdrFragment(m=1) / AH(nh=58, payloadlen=4, icv=bytes(12)) / ICMPv6ND_NS()), "ndp"),
    (frame(IPv6(src="fd00:10::10", dst="fd00:11::20") / (IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
           / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
           / IPv6ExtHdrDestOpt()) / UDP()), "ip_options"),  # seven: past what the fast paths walk
    *[(frame(IP(src="10.0.10.10", dst="10.0.11.20") / ICMP(type=t) / v4(dst="192.0.2.7")), "icmp_error")
      for t in (3, 4, 5, 11, 12)],
    (frame(IP(src="10.0.10.10", dst="10.0.11.20", flags="MF") / ICMP(type=3) / v4()), "icmp_error"),
    *[(frame(IPv6(src="fd00:10::10", dst="fd00:11::20") / kind() / v6(dst="2001:db8::7")), "icmp_error")
      for kind in (ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded, ICMPv6ParamProblem)],
    # Routing, fragment, destination options: the flow dissector walks past
    # them to the protocol and ports that policy rules and the multipath
    # hash read.
    (frame(IPv6(src="fd00:10::10", dst="fd00:11::20") / IPv6ExtHdrDestOpt() / ICMPv6DestUnreach() / v6()),
     "ip_options"),
    (frame(IPv6(src="fd00:10::10", dst="fd00:11::20") / IPv6ExtHdrRouting() / UDP()), "ip_options"),
    (frame(IPv6(src="fd00:10::10", dst="fd00:11::20") / IPv6ExtHdrFragment(offset=1) / ICMPv6ND_NS()),
     "ip_options"),
    (frame(IPv6(src="fd00:10::10", dst="fd00:11::20") / IPv6ExtHdrFragment(m=1) / UDP()), "ip_options"),
]

# ICMP that is no error, or whose header the kernel's multipath hash does
# not read (a later fragment; ICMPv6 behind an extension header): forwarded.
ICMP_FORWARDED = [
    frame(IP(src="10.0.10.10", dst="10.0.11.20") / ICMP(type=8) / b"ping"),
    frame(IP(src="10.0.10.10", dst="10.0.11.20") / ICMP(type=0) / b"pong"),
    frame(IP(src="10.0.10.10", dst="10.0.11.20", frag=8, proto=1) / (bytes([3]) + bytes(20))),
    frame(IP(src="10.0.10.10", dst="10.0.11.20", proto=1)),  # no ICMP header at all
    frame(IPv6(src="fd00:10::10", dst="fd00:11::20") / ICMPv6EchoRequest()),
]


@pytest.mark.parametrize("raw", ICMP_FORWARDED, ids=range(len(ICMP_FORWARDED)))
def test_icmp_that_is_no_error_is_forwarded(raw):
    assert decide(raw)[0] == "forwarded"


@pytest.mark.parametrize("raw,expected", TO_THE_STACK, ids=lambda v: v if isinstance(v, str) else "")
def test_everything_else_goes_to_the_stack(raw, expected):
    label, _, out = decide(raw)
    assert label == expected
    assert out is None


def test_forwarding_off_before_the_forwarder_stays_off():
    """The kernel's switches as they were before AF_PACKET mode turned them
    off: what the kernel would not forward, the forwarder does not either."""
    off = frozenset({(6, IN)})
    assert LABEL[packet.decide(frame(v6()), IN, False, FIB, {IN, OUT}, off)[0]] == \
        "fib_forwarding_disabled"
    assert LABEL[packet.decide(frame(v4()), IN, False, FIB, {IN, OUT}, off)[0]] == "forwarded"


# IPv6 that ip6_rcv_core() drops on a port with disable_ipv6 before it looks
# at the header: what would be forwarded, and what would go to the stack
# for another reason.
IPV6_ON_A_DISABLED_PORT = [frame(v6()), frame(v6(hlim=1)), frame(v6(plen=400)), frame(v6(dst="fe80::1")),
                           frame(IPv6(src="fd00:10::10", dst="fd00:11::20") / IPv6ExtHdrHopByHop() / UDP())]
V6_OFF_FIB = Fib(FIB.answers, ipv6_off=frozenset({IN}))


@pytest.mark.parametrize("raw", IPV6_ON_A_DISABLED_PORT, ids=range(len(IPV6_ON_A_DISABLED_PORT)))
def test_ipv6_from_a_port_with_ipv6_disabled_goes_to_the_stack(raw):
    assert LABEL[packet.decide(raw, IN, False, V6_OFF_FIB, {IN, OUT})[0]] == "ipv6_disabled"


def test_ipv6_disabled_elsewhere_changes_nothing():
    assert LABEL[packet.decide(frame(v4()), IN, False, V6_OFF_FIB, {IN, OUT})[0]] == "forwarded"
    # Other hosts' frames are dropped by eth_type_trans()'s verdict first.
    assert LABEL[packet.decide(frame(v6(), dst="02:00:00:00:00:99"), IN, False, V6_OFF_FIB,
                               {IN, OUT})[0]] == "other_host"
    # The egress port's switch is the routes' business: the kernel removes
    # the routes out of a port whose IPv6 is disabled.
    out_off = Fib(FIB.answers, ipv6_off=frozenset({OUT}))
    assert LABEL[packet.decide(frame(v6()), IN, False, out_off, {IN, OUT})[0]] == "forwarded"


def test_vlan_metadata_from_the_ring_counts_as_vlan():
    assert decide(frame(v4()), vlan=True)[0] == "vlan"


def ipv6(*layers) -> bytes:
    pkt = IPv6(src="fd00:10::10", dst="fd00:11::20")
    for layer in layers:
        pkt = pkt / layer
    return frame(pkt)


@pytest.mark.parametrize("raw,expected", [
    (ipv6(ICMPv6ND_NS()), packet.ND),
    (ipv6(ICMPv6EchoRequest()), packet.NOT_ND),
    (ipv6(IPv6ExtHdrHopByHop(), ICMPv6ND_NS()), packet.ND),  # walked past, as the kernel does
    (ipv6(IPv6ExtHdrFragment(offset=0), ICMPv6ND_NS()), packet.ND),
    (ipv6(IPv6ExtHdrFragment(offset=1), ICMPv6ND_NS()), packet.NOT_ND),  # not the first fragment
    (ipv6(IPv6ExtHdrDestOpt(nh=59)), packet.NOT_ND),  # No Next Header
    (ipv6(IPv6ExtHdrDestOpt(nh=58)), packet.NOT_ND),  # cut before the ICMPv6 type
    (ipv6(AH(nh=58, payloadlen=4, icv=bytes(12)), ICMPv6ND_NS()), packet.ND),
    (ipv6(*[IPv6ExtHdrDestOpt()] * 6, ICMPv6ND_NS()), packet.ND),
    (ipv6(*[IPv6ExtHdrDestOpt()] * 7, ICMPv6ND_NS()), packet.DEEP),
], ids=["ns", "echo", "hop-by-hop", "first-fragment", "later-fragment", "no-next-header", "cut-short",
        "ah", "six", "seven"])
def test_nd_messages_are_found_as_ipv6_skip_exthdr_finds_them(raw, expected):
    assert packet.ipv6_nd_message(raw, len(raw)) == expected


def test_the_slow_path_walks_every_extension_header():
    """Without a limit (the slow path's proxy check, as the kernel)."""
    raw = ipv6(*[IPv6ExtHdrDestOpt()] * 40, ICMPv6ND_NS())
    assert packet.ipv6_nd_message(raw, len(raw), limit=None) == packet.ND
    assert packet.ipv6_nd_message(raw, len(raw)) == packet.DEEP
    assert packet.ipv6_nd_message(raw, len(raw) - 24, limit=None) == packet.NOT_ND  # ends before the type
