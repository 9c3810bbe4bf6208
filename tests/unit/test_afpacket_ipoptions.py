"""IPv4 options and IPv6 hop-by-hop options as the AF_PACKET slow path
treats them (control/afpacket/ipoptions.py, and SlowPath.handle() on a
fake FIB): pure logic on scapy-built packets. The kernel oracle
(tests/reliability/test_oracle.py) holds the same frames against the
kernel itself."""

import socket
import struct

import pytest
from scapy.layers.inet import IP, UDP, IPOption_LSRR, IPOption_NOP, IPOption_RR, \
    IPOption_Router_Alert, IPOption_SSRR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop, HBHOptUnknown, PadN, RouterAlert
from scapy.layers.l2 import Ether

from xdpfwd.afpacket import slowpath
from xdpfwd.afpacket.fib import Hop
from xdpfwd.afpacket.ipoptions import RTN_LOCAL, RTN_UNICAST, compile_v4, fill_spec_dst, \
    forward_v4, hbh_refusal, srr_next_hop
from xdpfwd.afpacket.packet import checksum

A = socket.inet_aton
SPEC = A("10.0.10.20")      # the router's address toward the sender
EGRESS = A("10.0.11.10")    # the router's address on the way out
NOW = 12345678


def header(*options, dst="10.0.11.20") -> bytes:
    pkt = IP(src="10.0.10.10", dst=dst, ttl=64, options=list(options)) / UDP() / b"x"
    raw = bytes(pkt)
    return raw[:(raw[0] & 0xF) * 4]


def raw_header(opts: bytes, dst="10.0.11.20") -> bytes:
    ihl = 5 + len(opts) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + 8, 1, 0, 64, 17, 0,
                    A("10.0.10.10"), A(dst)) + opts
    return h[:10] + checksum(h).to_bytes(2, "big") + h[12:]


def compile_(h, local=()):
    opts = compile_v4(h, lambda a: RTN_LOCAL if a in local else RTN_UNICAST, lambda: NOW)
    return opts, len(opts.spec_slots)


# -- __ip_options_compile() ---------------------------------------------------

def test_nop_and_end_pass_untouched():
    opts, spec = compile_(raw_header(bytes([1, 1, 1, 0])))
    assert opts.problem is None and not opts.changed and spec == 0


def test_bytes_after_end_are_zeroed():
    opts, _ = compile_(raw_header(bytes([0, 7, 1, 1])))
    assert opts.problem is None and opts.changed
    assert bytes(opts.header[20:24]) == bytes(4)


def test_record_route_takes_this_hop_and_advances():
    h = header(IPOption_RR(routers=["0.0.0.0", "0.0.0.0"], pointer=4))
    opts, spec = compile_(h)
    assert opts.problem is None and opts.rr == 20 and opts.rr_needaddr
    assert spec == 1  # spec_dst_fill()'s slot, filled on demand
    fill_spec_dst(opts, SPEC)
    o = IP(bytes(opts.header) + bytes(8)).options[0]
    assert o.pointer == 8 and o.routers[0] == "10.0.10.20"


def test_full_record_route_is_left_alone():
    h = header(IPOption_RR(routers=["1.2.3.4"], pointer=8))
    opts, spec = compile_(h)
    assert opts.problem is None and not opts.rr_needaddr and spec == 0


@pytest.mark.parametrize("opt,pointer", [
    (bytes([7, 2, 4, 0]), 21),                 # the oracle's bad length: optlen < 3
    (bytes([7, 7, 3]) + bytes(4) + b"\0", 22),  # pointer below 4
    (bytes([7, 6, 4]) + bytes(3) + b"\0\0", 22),  # no room for an address at the pointer
    (bytes([7, 9, 4]) + bytes(4), 20),          # longer than the options
    (bytes([1, 1, 1, 7]), 23),                  # a type with no room for its length
    (bytes([148, 2, 0, 0]), 21),                # router alert shorter than 4
    (bytes([131, 3, 3, 0]), 22),                # source route pointer below 4
    (bytes([131, 3, 4, 137, 3, 4, 0, 0]), 23),  # a second source route
    (bytes([68, 4, 4, 0]), 22),                 # timestamp pointer below 5
    (bytes([68, 4, 5, 0xF0]), 23),              # timestamp overflow at 15
    (bytes([134, 6, 0, 0, 0, 1, 0, 0]), 21),    # CIPSO: too short for a DOI
    (bytes([134, 8, 0, 0, 0, 1, 0, 0]), 22),    # CIPSO: no DOI configured
])
def test_refused_options_give_the_kernels_pointer(opt, pointer):
    opts, _ = compile_(raw_header(opt))
    assert opts.problem == pointer


def test_router_alert_and_unknown_options_pass():
    opts, _ = compile_(header(IPOption_Router_Alert()))
    assert opts.problem is None and opts.router_alert == 20 and not opts.changed
    opts, _ = compile_(raw_header(bytes([0x9F, 4, 1, 2])))  # unknown type
    assert opts.problem is None and not opts.changed


def test_source_routes_are_noted_not_changed():
    opts, _ = compile_(header(IPOption_LSRR(routers=["10.0.11.20"])))
    assert opts.srr == 20 and not opts.is_strictroute and not opts.changed
    opts, _ = compile_(header(IPOption_SSRR(routers=["10.0.11.20"])))
    assert opts.srr == 20 and opts.is_strictroute


def test_timestamps():
    ts_only = bytes([68, 12, 5, 0]) + bytes(8)
    opts, spec = compile_(raw_header(ts_only))
    assert opts.ts_needtime and opts.header[22] == 9 and spec == 0
    assert struct.unpack_from("!I", opts.header, 24)[0] == NOW
    with_addr = bytes([68, 12, 5, 1]) + bytes(8)
    opts, spec = compile_(raw_header(with_addr))
    assert opts.ts_needaddr and spec == 1
    fill_spec_dst(opts, SPEC)
    assert bytes(opts.header[24:28]) == SPEC
    assert struct.unpack_from("!I", opts.header, 28)[0] == NOW and opts.header[22] == 13
    full = bytes([68, 8, 9, 0x31]) + bytes(4)  # overflow 3 -> 4
    opts, _ = compile_(raw_header(full))
    assert opts.header[23] == 0x41 and opts.changed
    prespec = bytes([68, 12, 5, 3]) + A("10.9.9.9") + bytes(4)
    opts, _ = compile_(raw_header(prespec))
    assert not opts.changed  # another hop's slot
    opts, _ = compile_(raw_header(prespec), local={A("10.9.9.9")})
    assert opts.changed and struct.unpack_from("!I", opts.header, 28)[0] == NOW


# -- ip_forward_options() and ip_options_rcv_srr() ------------------------------

def test_forward_writes_the_egress_address_and_a_valid_checksum():
    h = header(IPOption_RR(routers=["0.0.0.0"] * 2, pointer=4), IPOption_NOP())
    pkt = h + bytes(8)
    opts, _ = compile_(h)
    asked = []
    out = forward_v4(opts, bytes(opts.header) + pkt[len(h):],
                     lambda d: asked.append(d) or EGRESS)
    assert asked == [A("10.0.11.20")]
    o = IP(out).options[0]
    assert o.routers[0] == "10.0.11.10" and o.pointer == 8
    assert checksum(out[:len(h)]) == 0
    assert out[len(h):] == bytes(8)


def test_nothing_changed_keeps_the_header():
    h = header(IPOption_NOP(), IPOption_Router_Alert())
    opts, _ = compile_(h)
    assert forward_v4(opts, h, lambda d: EGRESS) == h


def test_source_route_through_the_router():
    nxt = A("10.0.11.20")
    h = header(IPOption_LSRR(routers=["10.0.11.10", "10.0.11.20", "10.0.11.30"]),
               dst="10.0.10.20")
    opts, _ = compile_(h)
    types = {A("10.0.11.10"): RTN_LOCAL, nxt: RTN_UNICAST}
    verdict, hop = srr_next_hop(opts, lambda a: types.get(a, 0))
    assert (verdict, hop) == ("forward", nxt)
    assert bytes(opts.header[16:20]) == A("10.0.11.10")  # the local hop, "superfast"
    out = forward_v4(opts, bytes(opts.header), lambda d: EGRESS)
    ip = IP(out + bytes(8))
    assert ip.dst == "10.0.11.20"
    o = ip.options[0]
    assert o.routers == ["10.0.11.10", "10.0.11.10", "10.0.11.30"] and o.pointer == 12
    assert checksum(out) == 0


def test_source_route_verdicts():
    h = header(IPOption_LSRR(routers=["10.0.11.10"]), dst="10.0.10.20")
    opts, _ = compile_(h)
    assert srr_next_hop(opts, lambda a: RTN_LOCAL)[0] == "deliver"
    opts, _ = compile_(h)
    assert srr_next_hop(opts, lambda a: 7)[0] == "drop"  # unreachable
    cut = raw_header(bytes([131, 9, 4]) + A("10.0.11.10") + bytes([1, 2, 0]), dst="10.0.10.20")
    opts, _ = compile_(cut)
    assert srr_next_hop(opts, lambda a: RTN_LOCAL)[0] == "problem"


# -- ipv6_parse_hopopts() --------------------------------------------------------

def v6(*options, payload=b"x" * 8) -> bytes:
    pkt = IPv6(src="fd00:10::10", dst="fd00:11::20") / IPv6ExtHdrHopByHop(options=list(options)) \
        / UDP() / payload
    return bytes(pkt)


def hbh(*options, count=8, length=2**31 - 1, ioam=False) -> str:
    return hbh_refusal(v6(*options), count, length, ioam)


def unknown(kind, n=2):
    return HBHOptUnknown(otype=kind, optdata=bytes(n))


def test_accepted_hop_by_hop_headers():
    assert hbh(PadN(optdata=b"\0\0\0\0")) == ""
    assert hbh(RouterAlert()) == ""
    assert hbh(unknown(0x1E)) == ""


@pytest.mark.parametrize("options,why", [
    ((unknown(0x5E),), "discard"),
    ((unknown(0x9E),), "Parameter Problem"),
    ((unknown(0xDE),), "Parameter Problem unless multicast"),
    ((PadN(optdata=b"\0\1\0\0"),), "non-zero"),
    ((HBHOptUnknown(otype=5, optdata=b"\0\0\0"),), "router alert"),
    ((unknown(0xC2, 4),), "jumbo"),
    ((unknown(0x07, 8),), "CALIPSO"),
])
def test_refused_hop_by_hop_headers(options, why):
    assert why in hbh(*options)


def test_hop_by_hop_limits():
    nine = [unknown(0x1E, 0)] * 9
    assert "max_hbh_opts_number" in hbh(*nine)
    assert hbh(*nine, count=9) == ""
    assert "max_hbh_opts_number" in hbh(unknown(0x1E), count=-8)  # unknowns refused
    assert hbh(RouterAlert(), count=-8) == ""
    assert "max_hbh_length" in hbh(unknown(0x1E, 20), length=16)
    pkt = bytearray(v6(PadN(optdata=bytes(4))))
    pkt[42:48] = bytes(6)  # six Pad1 ...
    assert hbh_refusal(bytes(pkt), 8, 2**31 - 1, False) == ""
    pkt = bytearray(v6(PadN(optdata=bytes(12))))
    pkt[42:56] = bytes(14)  # ... but more than 7 in a row is not padding
    assert "padding" in hbh_refusal(bytes(pkt), 8, 2**31 - 1, False)


def test_ioam_alignment_and_enabled_ingress():
    aligned = v6(PadN(optdata=b""), unknown(0x31, 2))  # at offset 44: 4n
    assert hbh_refusal(aligned, 8, 2**31 - 1, False) == ""  # ingress not enabled: ignored
    assert "not processed" in hbh_refusal(aligned, 8, 2**31 - 1, True)
    assert "aligned" in hbh(unknown(0x31, 4))  # at offset 42


def test_cut_short():
    assert "cut short" in hbh_refusal(v6()[:46], 8, 99, False)


# -- SlowPath.handle() on a fake FIB --------------------------------------------

ETH1, ETH0 = 2, 3
RMAC, SMAC, NMAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002"), \
    bytes.fromhex("020000000003")


class Fib:
    def __init__(self, locals_=()):
        self.locals = {A(a) for a in locals_}

    def lookup(self, family, dst):
        if family == 4 and dst in self.locals:
            return Hop("fib_not_forwarded")
        if family == 4 and dst[:3] == A("10.0.11.0")[:3]:
            return Hop("forwarded", ETH0, NMAC, RMAC, 1500, dst)
        if family == 4 and dst[:3] == A("10.0.12.0")[:3]:  # behind a gateway
            return Hop("forwarded", ETH0, NMAC, RMAC, 1500, A("10.0.11.1"))
        if family == 6:
            return Hop("forwarded", ETH0, NMAC, RMAC, 1500, dst)
        return Hop("fib_not_forwarded", no_route=True)

    def route_back(self, addr):
        if addr in self.locals:
            return RTN_LOCAL, 1
        return (RTN_UNICAST, ETH1) if addr[:3] == A("10.0.10.0")[:3] else (RTN_UNICAST, ETH0)

    def ipv4_state(self):
        return {A("10.0.10.20"): ETH1, A("10.0.11.10"): ETH0}, False

    def reverse_ok(self, src, dst, ingress, egress):
        return self.route_back(src) == (RTN_UNICAST, ingress)


class Icmp:
    def __init__(self):
        self.sent = []

    def reply(self, frame, ingress, cause, mtu=0, pkt_type=None, pointer=0):
        self.sent.append((cause, pointer))


class Conf:
    def __init__(self, source_route=0):
        self.source_route = source_route

    def conf(self, ifname):
        return {"rp_filter": 0, "accept_local": 0, "send_redirects": 1,
                "accept_source_route": self.source_route}

    def conf6(self, ifname):
        return {"max_hbh_opts_number": 8, "max_hbh_length": 2**31 - 1, "ioam6_enabled": 0}


def slow(source_route=0):
    sent, icmp = [], Icmp()
    s = slowpath.SlowPath(Fib(["10.0.10.20", "10.0.11.10"]), icmp, lambda ip, mtu: [ip],
                          lambda ifindex, frame: sent.append((ifindex, frame)) or True,
                          lambda *a: False)
    s.sysctls = Conf(source_route)
    s._names = {ETH1: "eth1", ETH0: "eth0"}
    s._prefsrc = lambda dst, oif: EGRESS if oif == ETH0 else SPEC
    return s, sent, icmp.sent


def frame(*options, dst="10.0.11.20", ttl=64):
    return bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:09")
                 / IP(src="10.0.10.10", dst=dst, ttl=ttl, options=list(options))
                 / UDP(sport=1, dport=2) / b"payload")


def test_slow_path_forwards_record_route_with_the_egress_address():
    s, sent, errors = slow()
    assert s.handle(frame(IPOption_RR(routers=["0.0.0.0"] * 2, pointer=4)), ETH1, False, None) == 1
    ((ifindex, out),) = sent
    ip = Ether(out)[IP]
    assert ifindex == ETH0 and out[:6] == NMAC and ip.ttl == 63
    assert ip.options[0].routers[0] == "10.0.11.10" and ip.options[0].pointer == 8
    assert checksum(out[14:14 + ip.ihl * 4]) == 0 and not errors


def test_slow_path_drops_what_the_kernel_answers_itself():
    s, sent, errors = slow()
    bad = frame(dst="10.0.11.20")
    bad = bad[:14] + raw_header(bytes([7, 2, 4, 0])) + bad[34:]
    assert s.handle(bad, ETH1, False, None) == 0 and not sent and not errors


def test_slow_path_source_routes():
    s, sent, errors = slow(source_route=0)
    assert s.handle(frame(IPOption_LSRR(routers=["10.0.11.20"])), ETH1, False, None) == 0
    assert not sent and not errors  # accept_source_route off
    s, sent, errors = slow(source_route=1)
    assert s.handle(frame(IPOption_LSRR(routers=["10.0.11.20"])), ETH1, False, None) == 1
    assert s.handle(frame(IPOption_SSRR(routers=["10.0.11.20"])), ETH1, False, None) == 0
    assert errors == [("param_problem", 16)] and len(sent) == 1
    # to the router, strict, on to a next hop behind a gateway: Source Route Failed
    s, sent, errors = slow(source_route=1)
    ssrr = frame(IPOption_SSRR(routers=["10.0.12.5"]), dst="10.0.10.20")
    assert s.handle(ssrr, ETH1, False, None) == 0 and errors == [("sr_failed", 0)]
    lsrr = frame(IPOption_LSRR(routers=["10.0.12.5"]), dst="10.0.10.20")
    assert s.handle(lsrr, ETH1, False, None) == 1
    ip = Ether(sent[0][1])[IP]
    assert ip.dst == "10.0.12.5" and ip.options[0].routers == ["10.0.11.10"]


def test_slow_path_time_exceeded_after_the_options():
    s, sent, errors = slow()
    assert s.handle(frame(IPOption_Router_Alert(), ttl=1), ETH1, False, None) == 0
    assert errors == [("time_exceeded", 0)]


def test_slow_path_hop_by_hop():
    s, sent, errors = slow()
    ok = bytes(Ether(dst="02:00:00:00:00:01") / IPv6(src="fd00:10::10", dst="fd00:11::20")
               / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / UDP() / b"x")
    assert s.handle(ok, ETH1, False, None) == 1
    assert sent[0][1][14 + 7] == 63 and sent[0][1][14 + 8:] == ok[14 + 8:]
    refused = bytes(Ether(dst="02:00:00:00:00:01") / IPv6(src="fd00:10::10", dst="fd00:11::20")
                    / IPv6ExtHdrHopByHop(options=[unknown(0x9E)]) / UDP() / b"x")
    assert s.handle(refused, ETH1, False, None) == 0 and len(sent) == 1 and not errors
