"""The AF_PACKET forwarder's slow path against the kernel, in the lab.

Each frame is sent from sendbox twice: first through the router with the
kernel's own forwarding on (the oracle), then with forwarding off as the
AF_PACKET forwarder leaves it (service.save_and_disable_forwarding) and a
small loop in the router that does what the forwarder does with such a
frame: icmp.IcmpErrors.reply() or fragment.fragment(). What comes back to
sendbox, and what reaches recvbox, must be the same bytes; only the IPv4 ID
and header checksum and the IPv6 flow label of an error may differ.
"""

import contextlib
import socket
import subprocess
import threading
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from helpers import inside, mac, router_with_every_route, sysctls_set
from xdpfwd import lab, netlink
from xdpfwd.sysctl import restore
from xdpfwd.afpacket import fragment, icmp, service

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
WINDOW = 0.4  # seconds to wait for what a frame causes
MARK = b"xdpfwd-slowpath-"
RECVBOX_V4, RECVBOX_V6 = "10.0.11.20", "fd00:11::20"
SENDBOX_V4, SENDBOX_V6 = "10.0.10.10", "fd00:10::10"


def packet_socket(host, ifname):
    with inside(host):
        index = netlink.link(ifname).index
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((ifname, 0))
    s.settimeout(0.05)
    return s, index


def drain(s):
    s.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            s.recv(65536)
    s.settimeout(0.05)


def received(s, seconds, keep):
    """IP packets (no Ethernet header) received on s for `seconds` that keep() accepts."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame, addr = s.recvfrom(65536)
        except (TimeoutError, socket.timeout):
            continue
        if addr[2] == PACKET_OUTGOING:
            continue
        if keep(frame):
            out.append(frame[14:])
    return out


def error_to_sendbox(frame):
    """An ICMP / ICMPv6 error from the router (recvbox's port unreachables
    for fragments it reassembled are not the router's doing)."""
    if frame[12:14] == b"\x08\x00" and frame[23] == 1:
        return frame[26:30] != socket.inet_aton(RECVBOX_V4) and frame[34] in (3, 11, 12)
    if frame[12:14] == b"\x86\xdd" and frame[20] == 58:
        return frame[22:38] != socket.inet_pton(socket.AF_INET6, RECVBOX_V6) and frame[54] < 128
    return False


def normalised(errors):
    out = []
    for p in errors:
        p = bytearray(p)
        if p[0] >> 4 == 4:
            p[4:6] = p[10:12] = b"\0\0"  # IP ID and header checksum
        else:
            p[1] &= 0xF0  # flow label
            p[2:4] = b"\0\0"
        out.append(bytes(p))
    return out


class Router:
    """What the AF_PACKET forwarder does with these frames, in a thread in
    the router's namespace: reply() for errors, fragment() for packets it
    may fragment, sent out of eth0 as a worker's TX ring would."""

    def __init__(self, causes, recvbox_mac):
        self.causes = causes  # marker -> (cause, mtu)
        self.recvbox_mac = recvbox_mac
        self.sent = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.failure = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(5), "router loop did not start"
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        if self.failure:
            raise self.failure

    def _run(self):
        try:
            with inside("router"):
                links = netlink.links()
                rx, eth1 = packet_socket("router", "eth1")
                tx, _ = packet_socket("router", "eth0")
                errors = icmp.IcmpErrors()
            self.ready.set()
            with errors, rx, tx:
                while not self.stop.is_set():
                    try:
                        frame, addr = rx.recvfrom(65536)
                    except (TimeoutError, socket.timeout):
                        continue
                    if addr[2] == PACKET_OUTGOING:
                        continue
                    key = next((m for m in self.causes if m in frame), None)
                    if key is None:
                        continue
                    cause, mtu = self.causes[key]
                    if cause == "fragment":
                        packet = bytearray(frame[14:])
                        assert fragment.decision(bytes(packet), mtu) == "fragment"
                        packet[8] -= 1  # ip_forward() decrements before ip_output() fragments
                        packet[10:12] = b"\0\0"
                        packet[10:12] = fragment.checksum(bytes(packet[:20])).to_bytes(2, "big")
                        head = mac_bytes(self.recvbox_mac) + mac_bytes(links["eth0"].mac) + b"\x08\x00"
                        for piece in fragment.fragment(bytes(packet), mtu):
                            tx.send(head + piece)
                    elif errors.reply(frame, eth1, cause, mtu):
                        self.sent += 1
        except BaseException as e:  # reported by __exit__
            self.failure = e
            self.ready.set()


def mac_bytes(text):
    return bytes.fromhex(text.replace(":", ""))


def marked(n):
    return MARK + b"%02d" % n


def cases(sendbox_ll):
    """(marker, scapy L3, cause the forwarder would give, MTU of its route)."""
    v4 = lambda dst, **kw: IP(src=SENDBOX_V4, dst=dst, **kw)  # noqa: E731
    v6 = lambda dst, **kw: IPv6(src=SENDBOX_V6, dst=dst, **kw)  # noqa: E731
    udp = UDP(sport=40000, dport=9)
    table = [
        (v4(RECVBOX_V4, ttl=1, tos=0x2B) / udp, "time_exceeded", 0),
        (v6(RECVBOX_V6, hlim=1, tc=0x2B) / udp, "time_exceeded", 0),
        (v4(RECVBOX_V4, ttl=1) / ICMP(type=8), "time_exceeded", 0),
        (v4(RECVBOX_V4, ttl=1) / ICMP(type=3, code=1), "time_exceeded", 0),  # no error
        (v4(RECVBOX_V4, ttl=1, frag=100) / udp, "time_exceeded", 0),  # not the first
        (v6(RECVBOX_V6, hlim=1) / ICMPv6DestUnreach(), "time_exceeded", 0),  # no error
        (v4("10.0.99.1") / udp, "no_route", 0),
        (v6("fd00:99::1") / udp, "no_route", 0),
        (v4("10.0.91.1") / udp, "unreachable", 0),
        (v6("fd00:91::1") / udp, "unreachable", 0),
        (v4("10.0.92.1") / udp, "prohibit", 0),
        (v6("fd00:92::1") / udp, "prohibit", 0),
        (v4("10.0.90.1") / udp, "blackhole", 0),
        (v6("fd00:90::1") / udp, "blackhole", 0),
        (v4("10.0.93.5", flags="DF") / udp, "frag_needed", 1000),
        (v6("fd00:93::5") / udp, "frag_needed", 1300),
        (v4("10.0.93.5", id=4242) / udp, "fragment", 1000),
        (IPv6(src=sendbox_ll, dst=RECVBOX_V6) / udp, "source_link_local", 0),
    ]
    return [(marked(i), l3, cause, mtu) for i, (l3, cause, mtu) in enumerate(table)]


def frames(table, router_mac, sendbox_mac):
    out = []
    for marker, l3, cause, mtu in table:
        # The marker leads the payload, so that any quote or first fragment carries it.
        if l3.haslayer(UDP):
            l3[UDP].remove_payload()
            payload = marker + (b"x" * 1400 if cause == "frag_needed" else
                                b"y" * 1400 if cause == "fragment" else b"")
            l3 = l3 / Raw(payload)
        else:
            l3 = l3 / Raw(marker)
        out.append((marker, bytes(Ether(src=sendbox_mac, dst=router_mac) / l3), cause, mtu))
    return out


def send_all(batch, seconds=WINDOW):
    """Send each frame from sendbox; what sendbox and recvbox then see, per frame."""
    tx, _ = packet_socket("sendbox", "eth0")
    at_recvbox, _ = packet_socket("recvbox", "eth0")
    results = {}
    with tx, at_recvbox:
        for marker, frame, _, _ in batch:
            drain(tx)
            drain(at_recvbox)
            tx.send(frame)
            errors = received(tx, seconds, error_to_sendbox)
            to_recvbox = received(at_recvbox, 0.05,
                                  lambda f: f[12:14] == b"\x08\x00" and f[30:34] == bytes(
                                      (10, 0, 93, 5)))
            results[marker] = (normalised(errors), to_recvbox)
    return results


@pytest.fixture(scope="module")
def routed(lab):
    with router_with_every_route() as env:
        with inside("sendbox"):
            sendbox_ll = next(a for a in _v6_addresses("eth0") if a.startswith("fe80"))
        env["router_mac"] = mac("router", "eth1")
        env["sendbox_ll"] = sendbox_ll
        yield env


def _v6_addresses(ifname):
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return [m.get_attr("IFA_ADDRESS") for m in ipr.get_addr(family=socket.AF_INET6,
                                                                 index=index)]


@contextlib.contextmanager
def router_sysctls(**values):
    with sysctls_set({k.replace("__", "."): v for k, v in values.items()}):
        yield


@contextlib.contextmanager
def forwarding_off():
    with inside("router"):
        saved = service.save_and_disable_forwarding(["eth1", "eth0"])
    try:
        yield
    finally:
        with inside("router"):
            restore(saved)


def test_errors_and_fragments_match_the_kernel(routed):
    table = cases(routed["sendbox_ll"])
    batch = frames(table, routed["router_mac"], routed["macs"]["sendbox"])
    with router_sysctls(net__ipv4__icmp_ratelimit=0, net__ipv6__icmp__ratelimit=0,
                        net__ipv4__icmp_msgs_burst=10000, net__ipv4__icmp_msgs_per_sec=10000):
        kernel = send_all(batch)
        with forwarding_off():
            silent = send_all(batch, 0.2)
            causes = {m: (c, mtu) for m, _, c, mtu in batch}
            with Router(causes, routed["macs"]["recvbox"]):
                ours = send_all(batch)
    # The oracle first: what each case must show, so that a kernel that
    # changed its mind fails here rather than agreeing with a broken module.
    expect_error = {m: c not in ("blackhole", "fragment") for m, _, c, _ in batch}
    for i in (3, 4, 5):  # error about an error, non-first fragment
        expect_error[marked(i)] = False
    for marker, _, cause, _ in batch:
        assert bool(kernel[marker][0]) == expect_error[marker], (cause, marker, kernel[marker])
    assert len(kernel[marked(16)][1]) == 2  # 1446 bytes over an MTU of 1000
    for marker, _, cause, _ in batch:
        assert ours[marker] == kernel[marker], (cause, marker)
    # With forwarding off the kernel is silent, except for IPv6 routes of
    # type unreachable / prohibit (and no route): their input functions
    # answer whatever the forwarding sysctls say, so the module must not.
    v6_route_errors = {marked(i) for i in (7, 9, 11)}
    assert {m: r for m, r in silent.items() if r[0] or r[1]} == \
        {m: kernel[m] for m in v6_route_errors}


def test_rate_limits_match_the_kernel(routed):
    """Defaults: 20 frames at once from one new source, per kind of error.
    The defaults are set, not assumed: a test run before this one in the
    same lab may have left others."""
    with router_sysctls(net__ipv4__icmp_ratelimit=1000, net__ipv4__icmp_ratemask=6168,
                        net__ipv6__icmp__ratelimit=1000, net__ipv4__icmp_msgs_per_sec=1000,
                        net__ipv4__icmp_msgs_burst=50):
        _rate_limits_match_the_kernel(routed)


def _rate_limits_match_the_kernel(routed):
    kinds = [("time_exceeded", lambda src: IP(src=src, dst=RECVBOX_V4, ttl=1)),
             ("unreachable", lambda src: IP(src=src, dst="10.0.91.1")),
             ("frag_needed", lambda src: IP(src=src, dst="10.0.93.5", flags="DF")),
             ("time_exceeded6", lambda src: IPv6(src=src, dst=RECVBOX_V6, hlim=1)),
             ("frag_needed6", lambda src: IPv6(src=src, dst="fd00:93::5"))]
    counts = {"kernel": {}, "ours": {}}
    sources = iter(range(50, 90))
    for who in ("kernel", "ours"):
        for kind, l3 in kinds:
            n = next(sources)
            v6 = kind.endswith("6")
            src = f"fd00:10::{n:x}" if v6 else f"10.0.10.{n}"
            plen = 64 if v6 else 24
            subprocess.run(["ip", "-n", lab.ns("sendbox"), "addr", "add", f"{src}/{plen}", "dev",
                            "eth0", "nodad"], check=True)
            try:
                cause = kind.rstrip("6")
                size = 1400 if cause == "frag_needed" else 0
                pkt = l3(src) / UDP(sport=40000, dport=9) / Raw(MARK + b"r" + b"z" * size)
                frame = bytes(Ether(src=routed["macs"]["sendbox"], dst=routed["router_mac"]) / pkt)
                mtu = 1300 if v6 else 1000
                ctx = contextlib.nullcontext()
                if who == "ours":
                    ctx = _ours({MARK + b"r": (cause, mtu)}, routed)
                with ctx:
                    counts[who][kind] = _burst(frame, 20)
            finally:
                subprocess.run(["ip", "-n", lab.ns("sendbox"), "addr", "del", f"{src}/{plen}",
                                "dev", "eth0"], check=True)
    assert counts["ours"] == counts["kernel"], counts
    # The kernel's figures themselves: 6 Time Exceeded (XRLIM_BURST_FACTOR),
    # 2 Unreachable (ip_error() and icmpv4_xrlim_allow() share the peer's
    # tokens), every Frag Needed / Packet Too Big (never limited).
    assert counts["kernel"]["time_exceeded"] == 6
    assert counts["kernel"]["frag_needed"] == counts["kernel"]["frag_needed6"] == 20


@contextlib.contextmanager
def _ours(causes, routed):
    with forwarding_off(), Router(causes, routed["macs"]["recvbox"]):
        yield


def _burst(frame, count):
    tx, _ = packet_socket("sendbox", "eth0")
    with tx:
        drain(tx)
        for _ in range(count):
            tx.send(frame)
        return len(received(tx, 1.0, error_to_sendbox))
