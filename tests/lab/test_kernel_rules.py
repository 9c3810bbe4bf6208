"""The kernel's rules hold with xdpfwd attached, in every mode, and follow
the sysctls while attached: frames built with scapy are sent from sendbox
and counted at recvbox, once with plain kernel forwarding and once through
xdpfwd, and the two must agree."""

import time
from contextlib import contextmanager

import pytest
from scapy.layers.inet import IP, UDP, ICMP
from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, ICMPv6PacketTooBig, IPerror6,
                                IPv6)
from scapy.layers.l2 import Ether

from helpers import (ipv6_disabled, mac, pin_neighbours, router_ip, stats, sysctl, sysctls_set,
                     xdpfwd)
from xdpfwd import lab
from xdpfwd.netns import entered

MARK = b"xdpfwd-kernel-rules"
SO_RCVBUFFORCE = 33  # socket(7); Python's socket module does not name it


def macs():
    return mac("router", "eth1"), mac("sendbox")


class Capture:
    """Every frame arriving at a lab host's eth0 (an AF_PACKET socket
    opened in that host's namespace before anything is sent)."""

    def __init__(self, host: str):
        import socket
        with entered(lab.ns(host)):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            # Read only once everything is sent: room for hundreds of
            # frames, whatever memory each skb carries (a frame that came
            # through XDP holds a whole page).
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
            self.sock.bind(("eth0", 0))
        self.sock.setblocking(False)

    def frames(self, settle: float = 0.3) -> list[bytes]:
        time.sleep(settle)
        got = []
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return got
            if addr[2] != 4:  # PACKET_OUTGOING: what this host sent itself
                got.append(data)

    def close(self):
        self.sock.close()


def send(frames: list[bytes]) -> None:
    import socket
    with entered(lab.ns("sendbox")):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind(("eth0", 0))
    with s:
        for f in frames:
            s.send(f)


def through_router(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(what reached recvbox carrying MARK, what came back to sendbox that
    quotes MARK: ICMP errors)."""
    at_recv, at_send = Capture("recvbox"), Capture("sendbox")
    try:
        send(frames)
        time.sleep(0.2)
        return ([f for f in at_recv.frames() if MARK in f],
                [f for f in at_send.frames() if MARK in f])
    finally:
        at_recv.close()
        at_send.close()


@pytest.fixture(scope="module")
def pinned(lab):
    """Permanent neighbours: no frame waits for ARP/ND, and the results
    do not depend on timing."""
    pin_neighbours()
    # rp_filter as it was, whatever a test leaves (one that fails half way).
    with sysctls_set({"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.eth1.rp_filter": "0"}):
        yield macs()


def udp4(router, sendbox, src, dst="10.0.11.20", dmac=None, **kw):
    return bytes(Ether(src=sendbox, dst=dmac or router) / IP(src=src, dst=dst, **kw)
                 / UDP(sport=4000, dport=2152) / MARK)


MODES = ["kernel", "native", "skb", "afpacket"]


@pytest.fixture(scope="module", params=MODES)
def mode(request, pinned):
    if request.param != "kernel":
        proc = xdpfwd("attach", "eth1", "eth0", "--mode", request.param)
        assert proc.returncode == 0, proc.stderr
    try:
        yield request.param
    finally:
        if request.param != "kernel":
            assert xdpfwd("detach").returncode == 0


# rp_filter as the kernel computes it (max of all and the interface) and
# what it makes of each source arriving on eth1; 10.0.11.99 has a unicast
# route back, but out of eth0 (spoofed); 192.0.2.77 has none.
RP_CASES = [  # (all, eth1) -> arrives? for (10.0.10.10, 10.0.11.99, 192.0.2.77)
    (("0", "0"), (True, True, True)),
    (("1", "0"), (True, False, False)),
    (("0", "2"), (True, True, False)),
    (("2", "1"), (True, True, False)),
]


def test_rp_filter_followed_while_attached(mode, pinned):
    router, sendbox = pinned
    before = stats() if mode != "kernel" else None
    for (all_, eth1), expected in RP_CASES:
        with sysctls_set({"net.ipv4.conf.all.rp_filter": all_, "net.ipv4.conf.eth1.rp_filter": eth1}):
            time.sleep(0.25)  # the AF_PACKET forwarder re-reads the sysctls at most this late
            for src, want in zip(("10.0.10.10", "10.0.11.99", "192.0.2.77"), expected):
                got, _ = through_router([udp4(router, sendbox, src)] * 3)
                assert len(got) == (3 if want else 0), \
                    f"{mode}: rp_filter all={all_} eth1={eth1}, source {src}: {len(got)} of 3 arrived"
    if mode in ("native", "skb"):
        # The ordinary source was forwarded in XDP, not passed.
        assert stats()["eth1"]["forwarded_packets"] - before["eth1"]["forwarded_packets"] >= 12


def udp6(router, sendbox):
    return bytes(Ether(src=sendbox, dst=router) / IPv6(src="fd00:10::10", dst="fd00:11::20")
                 / UDP(sport=4000, dport=2152) / MARK)


def reattach(mode: str, *words: str) -> None:
    """attach again, in an XDP mode: it refreshes the program's copy of
    the ports and the route MTU, printing each of words."""
    if mode in ("native", "skb"):
        proc = xdpfwd("attach", "eth1", "eth0", "--mode", mode)
        assert proc.returncode == 0 and all(w in proc.stderr for w in words), proc.stderr


def test_ipv6_disabled_on_the_ingress_port(mode, pinned):
    """ip6_rcv_core() drops IPv6 arriving on a port with disable_ipv6 set;
    bpf_fib_lookup() does not look at that switch. The XDP program goes by
    the copy attach makes (and attach again, or `run`, refreshes); the
    AF_PACKET forwarder reads it when the port's addresses go."""
    router, sendbox = pinned
    try:
        with ipv6_disabled("eth1"):
            reattach(mode, "eth1: IPv6 disabled")
            time.sleep(0.25)  # as after any change: the AF_PACKET forwarder's next round
            got, _ = through_router([udp6(router, sendbox)] * 3)
            assert got == [], f"{mode}: IPv6 on a port with disable_ipv6 reached recvbox {len(got)} times"
            got, _ = through_router([udp4(router, sendbox, "10.0.10.10")] * 3)
            assert len(got) == 3, f"{mode}: IPv4 stopped too"
    finally:  # the module's attach must not keep the copy for later tests
        reattach(mode, "eth1: IPv6 enabled again")
    time.sleep(0.25)
    got, _ = through_router([udp6(router, sendbox)] * 3)
    assert len(got) == 3, f"{mode}: IPv6 did not come back: {len(got)} of 3"


def solicitation(router, sendbox) -> bytes:
    """A unicast Neighbour Solicitation from sendbox for recvbox's address,
    addressed to the router's MAC: what sendbox's NUD sends once the router
    answers for that address (proxy NDP, as on a host where the router
    proxies a prefix it routes)."""
    return bytes(Ether(src=sendbox, dst=router) / IPv6(src="fd00:10::10", dst="fd00:11::20", hlim=255)
                 / ICMPv6ND_NS(tgt="fd00:11::20") / ICMPv6NDOptSrcLLAddr(lladdr=sendbox))


def nd_through_router(router, sendbox) -> tuple[int, int]:
    """(solicitations for fd00:11::20 that reached recvbox, advertisements
    for it that came back to sendbox)."""
    at_recv, at_send = Capture("recvbox"), Capture("sendbox")
    try:
        send([solicitation(router, sendbox)])
        time.sleep(0.2)
        solicited = [Ether(f)[ICMPv6ND_NS] for f in at_recv.frames() if Ether(f).haslayer(ICMPv6ND_NS)]
        answered = [Ether(f)[ICMPv6ND_NA] for f in at_send.frames() if Ether(f).haslayer(ICMPv6ND_NA)]
    finally:
        at_recv.close()
        at_send.close()
    return (sum(ns.tgt == "fd00:11::20" for ns in solicited),
            sum(na.tgt == "fd00:11::20" for na in answered))


def test_proxy_ndp_is_answered_not_forwarded(mode, pinned):
    """ip6_forward() hands Neighbour Discovery for an address the router
    proxies (proxy_ndp and a proxy entry on the ingress port) to its own
    input, which answers it (ip6_forward_proxy_check(), ndisc_recv_ns());
    other ND it forwards like any packet. In AF_PACKET mode IPv6
    forwarding is off, and the kernel proxies only on a forwarding
    interface: the solicitation is neither forwarded nor answered."""
    router, sendbox = pinned
    before = stats() if mode != "kernel" else None
    with sysctls_set({"net.ipv6.conf.all.proxy_ndp": "1"}):
        router_ip("-6", "neigh", "add", "proxy", "fd00:11::20", "dev", "eth1")
        try:
            time.sleep(0.25)  # the AF_PACKET forwarder re-reads the proxies at most this late
            forwarded, answered = nd_through_router(router, sendbox)
        finally:
            router_ip("-6", "neigh", "del", "proxy", "fd00:11::20", "dev", "eth1")
    assert forwarded == 0, f"{mode}: a solicitation for a proxied address went on to recvbox"
    assert answered == (0 if mode == "afpacket" else 1), f"{mode}: {answered} advertisements came back"
    time.sleep(0.25)
    forwarded, answered = nd_through_router(router, sendbox)
    assert (forwarded, answered) == (1, 0), f"{mode}: not proxied: {forwarded} forwarded, {answered} answered"
    # Proxied on another port than the one it arrives on: forwarded too.
    with sysctls_set({"net.ipv6.conf.all.proxy_ndp": "1"}):
        router_ip("-6", "neigh", "add", "proxy", "fd00:11::20", "dev", "eth0")
        try:
            time.sleep(0.25)
            forwarded, answered = nd_through_router(router, sendbox)
        finally:
            router_ip("-6", "neigh", "del", "proxy", "fd00:11::20", "dev", "eth0")
    assert (forwarded, answered) == (1, 0), f"{mode}: proxied on eth0: {forwarded} forwarded, {answered} answered"
    if mode in ("native", "skb"):
        after = stats()["eth1"]["pass_reasons"]
        assert after.get("ndp", 0) - before["eth1"]["pass_reasons"].get("ndp", 0) == 3


@pytest.mark.parametrize("case", [
    "other_host_v4", "other_host_v6", "src_0.0.0.0", "src_127.0.0.1", "src_224.0.0.5",
    "src_255.255.255.255", "src_::1", "src_ff02::1", "src_own_address",
])
def test_never_forwarded(mode, pinned, case):
    router, sendbox = pinned
    sysctl("net.ipv4.conf.all.rp_filter", "0")
    sysctl("net.ipv4.conf.eth1.rp_filter", "0")
    other = "02:00:00:00:00:99"
    frame = {
        "other_host_v4": lambda: udp4(router, sendbox, "10.0.10.10", dmac=other),
        "other_host_v6": lambda: bytes(Ether(src=sendbox, dst=other) / IPv6(src="fd00:10::10", dst="fd00:11::20")
                                       / UDP(sport=4000, dport=2152) / MARK),
        "src_0.0.0.0": lambda: udp4(router, sendbox, "0.0.0.0"),
        "src_127.0.0.1": lambda: udp4(router, sendbox, "127.0.0.1"),
        "src_224.0.0.5": lambda: udp4(router, sendbox, "224.0.0.5"),
        "src_255.255.255.255": lambda: udp4(router, sendbox, "255.255.255.255"),
        "src_::1": lambda: bytes(Ether(src=sendbox, dst=router) / IPv6(src="::1", dst="fd00:11::20")
                                 / UDP(sport=4000, dport=2152) / MARK),
        "src_ff02::1": lambda: bytes(Ether(src=sendbox, dst=router) / IPv6(src="ff02::1", dst="fd00:11::20")
                                     / UDP(sport=4000, dport=2152) / MARK),
        "src_own_address": lambda: udp4(router, sendbox, "10.0.11.10"),
    }[case]()
    got, _ = through_router([frame] * 3)
    assert got == [], f"{mode}: {case} reached recvbox {len(got)} times"


ICMP_CASES = {
    # name: (frame builder, (ICMP type, code) the kernel sends back)
    "ttl_1": (lambda r, s: udp4(r, s, "10.0.10.10", ttl=1), (11, 0)),
    "no_route": (lambda r, s: udp4(r, s, "10.0.10.10", dst="192.0.2.1"), (3, 0)),
    "frag_needed": (lambda r, s: bytes(Ether(src=s, dst=r) / IP(src="10.0.10.10", dst="10.0.11.20", flags="DF")
                                       / UDP(sport=4000, dport=2152) / (MARK + bytes(1440))), (3, 4)),
}


@pytest.mark.parametrize("case", sorted(ICMP_CASES))
def test_icmp_errors_come_back(mode, pinned, case):
    router, sendbox = pinned
    build, (icmp_type, code) = ICMP_CASES[case]
    if case == "frag_needed":
        router_ip("link", "set", "eth0", "mtu", "1400")
    # Put back afterwards: later tests in the lab count the kernel's limits.
    try:
        with sysctls_set({"net.ipv4.icmp_ratelimit": "0"}):
            _, back = through_router([build(router, sendbox)])
    finally:
        if case == "frag_needed":
            router_ip("link", "set", "eth0", "mtu", "1500")
    errors = [Ether(f)[ICMP] for f in back if Ether(f).haslayer(ICMP)]
    assert [(e.type, e.code) for e in errors] == [(icmp_type, code)], f"{mode}: {case}: {back}"


def test_an_unlocked_route_mtu_is_honoured(mode, pinned):
    """ip_forward() checks a route's MTU, locked or not
    (ip_dst_mtu_maybe_forward()); bpf_fib_lookup() only a locked one."""
    router, sendbox = pinned
    df = bytes(Ether(src=sendbox, dst=router) / IP(src="10.0.10.10", dst="10.0.95.5", flags="DF")
               / UDP(sport=4000, dport=2152) / (MARK + bytes(1100)))
    router_ip("route", "add", "10.0.95.0/24", "via", "10.0.11.20", "mtu", "1000")
    try:
        reattach(mode, "the smallest MTU not locked is now 1000")
        with sysctls_set({"net.ipv4.icmp_ratelimit": "0"}):
            got, back = through_router([df])
    finally:
        router_ip("route", "del", "10.0.95.0/24")
        reattach(mode, "no MTU left unlocked")
    errors = [Ether(f)[ICMP] for f in back if Ether(f).haslayer(ICMP)]
    assert [(e.type, e.code, e.nexthopmtu) for e in errors] == [(3, 4, 1000)], f"{mode}: {back}"
    assert got == [], f"{mode}: forwarded whole past the route's MTU"


@contextmanager
def learnt_path_mtu(mtu: int):
    """The router learns a path MTU towards recvbox as from any router on
    the way: its own datagram, sent with DF (IP_PMTUDISC_DO) from a socket
    that stays open (udp_err() hands the ICMP error to a socket, which
    updates the route: ipv4_sk_update_pmtu()), answered by recvbox with a
    Frag Needed quoting it. `ip route flush cache` afterwards makes the
    kernel forget it (fnhe_genid_bump())."""
    import socket
    ip_mtu_discover, ip_pmtudisc_do = 10, 2  # linux/in.h
    with entered(lab.ns("recvbox")):
        at_recv = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        at_recv.bind(("eth0", 0))
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        out.bind(("eth0", 0))
    with entered(lab.ns("router")):
        own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with at_recv, out, own:
            at_recv.settimeout(2)
            own.setsockopt(socket.IPPROTO_IP, ip_mtu_discover, ip_pmtudisc_do)
            own.connect(("10.0.11.20", 9))
            own.send(MARK + bytes(mtu + 100))
            while True:  # socket.timeout fails the test
                frame = Ether(at_recv.recv(65535))
                if frame.haslayer(UDP) and frame[IP].src == "10.0.11.10" and MARK in bytes(frame[UDP].payload):
                    break
            quoted = bytes(frame[IP])[:frame[IP].ihl * 4 + 8]  # icmp_send(): the header and 8 bytes
            out.send(bytes(Ether(src=frame.dst, dst=frame.src) / IP(src="10.0.11.20", dst="10.0.11.10")
                           / ICMP(type=3, code=4, nexthopmtu=mtu) / quoted))
            time.sleep(0.1)
        assert f"mtu {mtu}" in router_ip("route", "get", "10.0.11.20"), "the router learnt no path MTU"
        yield
    finally:
        router_ip("route", "flush", "cache")
        assert f"mtu {mtu}" not in router_ip("route", "get", "10.0.11.20")


@pytest.mark.parametrize("use_pmtu", ["0", "1"])
def test_a_learnt_path_mtu_counts_only_with_ip_forward_use_pmtu(mode, pinned, use_pmtu):
    """When forwarding, ip_dst_mtu_maybe_forward() goes by a path MTU the
    router has learnt only with ip_forward_use_pmtu set; otherwise by the
    route's own MTU, else the link's. `route get` reports the learnt one
    in the route's place (rt_fill_info())."""
    router, sendbox = pinned
    df = bytes(Ether(src=sendbox, dst=router) / IP(src="10.0.10.10", dst="10.0.11.20", flags="DF")
               / UDP(sport=4000, dport=2152) / (MARK + bytes(1300 - 28 - len(MARK))))
    with learnt_path_mtu(1200), \
            sysctls_set({"net.ipv4.ip_forward_use_pmtu": use_pmtu, "net.ipv4.icmp_ratelimit": "0"}):
        time.sleep(1.2)  # nothing is announced: the AF_PACKET forwarder's answers are at most 1 s old
        got, back = through_router([df])
    # recvbox answers what reaches it with Port Unreachable: only the router's errors count.
    errors = [(e[ICMP].type, e[ICMP].code, e[ICMP].nexthopmtu) for e in map(Ether, back)
              if e.haslayer(ICMP) and e[IP].src != "10.0.11.20"]
    arrived = [len(Ether(f)[IP]) for f in got]
    if use_pmtu == "1":
        assert (errors, arrived) == ([(3, 4, 1200)], []), f"{mode}: errors {errors}, arrived {arrived}"
    else:
        assert (errors, arrived) == ([], [1300]), f"{mode}: errors {errors}, arrived {arrived}"


def test_with_use_pmtu_a_learnt_path_mtu_below_an_unlocked_route_mtu_wins(mode, pinned):
    """With ip_forward_use_pmtu, ip_dst_mtu_maybe_forward() prefers a path
    MTU learnt below the route's unlocked MTU; bpf_fib_lookup() reads the
    route's (ip_mtu_from_fib_result()). The program cannot know what was
    learnt: it leaves IPv4 above net.ipv4.route.min_pmtu to the kernel."""
    router, sendbox = pinned
    df = bytes(Ether(src=sendbox, dst=router) / IP(src="10.0.10.10", dst="10.0.11.20", flags="DF")
               / UDP(sport=4000, dport=2152) / (MARK + bytes(1300 - 28 - len(MARK))))
    with sysctls_set({"net.ipv4.ip_forward_use_pmtu": "1", "net.ipv4.icmp_ratelimit": "0"}):
        router_ip("route", "add", "10.0.11.20/32", "dev", "eth0", "mtu", "1400")
        try:
            reattach(mode, "IPv4 packets larger than 552")
            with learnt_path_mtu(1200):
                time.sleep(1.2)  # nothing is announced: the AF_PACKET forwarder's answers are at most 1 s old
                got, back = through_router([df])
        finally:
            router_ip("route", "del", "10.0.11.20/32")
            reattach(mode, "no MTU left unlocked")
    errors = [(e[ICMP].type, e[ICMP].code, e[ICMP].nexthopmtu) for e in map(Ether, back)
              if e.haslayer(ICMP) and e[IP].src != "10.0.11.20"]
    arrived = [len(Ether(f)[IP]) for f in got]
    assert (errors, arrived) == ([(3, 4, 1200)], []), f"{mode}: errors {errors}, arrived {arrived}"


def test_the_egress_ports_ipv6_mtu_is_honoured(mode, pinned):
    """ip6_forward() checks a packet against the egress port's IPv6 MTU
    (net.ipv6.conf.PORT.mtu: idev->cnf.mtu6), which can be below the
    link's, and a change of it announces nothing on rtnetlink."""
    router, sendbox = pinned
    big = bytes(Ether(src=sendbox, dst=router) / IPv6(src="fd00:10::10", dst="fd00:11::20")
                / UDP(sport=4000, dport=2152) / (MARK + bytes(1380)))
    with sysctls_set({"net.ipv6.conf.eth0.mtu": "1400", "net.ipv6.icmp.ratelimit": "0"}):
        time.sleep(1.2)  # the AF_PACKET forwarder's answers are at most 1 s old (fib.MAX_AGE)
        got, back = through_router([big])
    errors = [Ether(f)[ICMPv6PacketTooBig] for f in back if Ether(f).haslayer(ICMPv6PacketTooBig)]
    assert [e.mtu for e in errors] == [1400], f"{mode}: {back}"
    assert got == [], f"{mode}: forwarded past the port's IPv6 MTU"


def test_an_unlocked_ipv6_route_mtu_is_honoured(mode, pinned):
    """ip6_forward() checks a route's MTU only when locked, else the port's
    IPv6 MTU (ip6_dst_mtu_maybe_forward(dst, true)); the output path then
    checks it locked or not (__ip6_finish_output(): ip6_mtu()), and
    ip6_fragment() answers Packet Too Big with it, quoting the packet with
    its hop limit already decremented (ip6_forward()'s answer quotes it as
    received)."""
    router, sendbox = pinned

    def udp(size: int) -> bytes:
        return bytes(Ether(src=sendbox, dst=router) / IPv6(src="fd00:10::10", dst="fd00:97::5", hlim=64)
                     / UDP(sport=4000, dport=2152) / (MARK + bytes(size - 48 - len(MARK))))

    router_ip("-6", "route", "add", "fd00:97::/64", "via", "fd00:11::20", "mtu", "1400")
    try:
        route = router_ip("-6", "route", "get", "fd00:97::5")
        assert "mtu 1400" in route and "lock" not in route, route
        reattach(mode, "IPv6 routes: the smallest MTU not locked is now 1400")
        with sysctls_set({"net.ipv6.icmp.ratelimit": "0"}):
            got, back = through_router([udp(1450)])
            fits, _ = through_router([udp(1400)])
    finally:
        router_ip("-6", "route", "del", "fd00:97::/64")
        reattach(mode, "IPv6 routes: no MTU left unlocked")
    # recvbox answers what reaches it (Address Unreachable): only the router's errors count.
    errors = [(e[ICMPv6PacketTooBig].mtu, e[IPv6].src, e[IPerror6].hlim) for e in map(Ether, back)
              if e.haslayer(ICMPv6PacketTooBig)]
    assert errors == [(1400, "fd00:10::20", 63)], f"{mode}: {[Ether(f).summary() for f in back]}"
    assert got == [], f"{mode}: forwarded whole past the route's MTU"
    crossed = [(len(p), p.hlim) for p in (Ether(f)[IPv6] for f in fits)]
    assert crossed == [(1400, 63)], f"{mode}: {crossed}"


def test_too_big_without_df_is_fragmented(mode, pinned):
    """ip_forward() lets it through and ip_output() fragments it."""
    router, sendbox = pinned
    big = bytes(Ether(src=sendbox, dst=router) / IP(src="10.0.10.10", dst="10.0.11.20", id=777)
                / UDP(sport=4000, dport=2152) / (MARK + bytes(1440)))
    router_ip("link", "set", "eth0", "mtu", "1400")
    at_recv = Capture("recvbox")
    try:
        send([big])
        got = [Ether(f)[IP] for f in at_recv.frames(0.5)
               if Ether(f).haslayer(IP) and Ether(f)[IP].id == 777]
    finally:
        at_recv.close()
        router_ip("link", "set", "eth0", "mtu", "1500")
    # What the kernel alone makes of it (mode "kernel"): 1487 bytes at MTU 1400.
    assert [(len(p), int(p.flags.MF), p.frag, p.ttl) for p in got] == [(1396, 1, 0, 63), (111, 0, 172, 63)]
    assert b"".join(bytes(p.payload) for p in got) == bytes(Ether(big)[IP].payload)
