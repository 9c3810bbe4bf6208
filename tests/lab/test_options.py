"""IPv4 options through the AF_PACKET forwarder, against the kernel's own
forwarding, with source routes accepted (net.ipv4.conf.all and eth1
accept_source_route=1; the kernel oracle test runs with the default 0,
under which every source-routed packet is dropped): record route, loose
and strict source routes passing through, source routes that name the
router as their destination, timestamps. The same frames go through the
lab router with nothing attached, then with `attach --mode afpacket`;
what reaches recvbox must be the same bytes, and what comes back to
sendbox the same ICMP errors quoting the same bytes (the kernel also echoes
options in the error's own header; the forwarder does not: LIMITATIONS),
timestamp values aside: the router writes its clock into them."""

import time

from scapy.layers.inet import ICMP, IP, UDP, IPOption, IPOption_LSRR, IPOption_RR, IPOption_SSRR, \
    IPOption_Timestamp
from scapy.layers.l2 import Ether

from helpers import mac, pin_neighbours, router_ip, sysctls_set, xdpfwd
from test_kernel_rules import MARK, through_router

CASES = {
    "record_route": dict(dst="10.0.11.20", options=[IPOption_RR(routers=["0.0.0.0"] * 3)]),
    "record_route_full": dict(dst="10.0.11.20",
                              options=[IPOption_RR(routers=["1.1.1.1"], pointer=8)]),
    "record_route_ttl_1": dict(dst="10.0.11.20", ttl=1,
                               options=[IPOption_RR(routers=["0.0.0.0"] * 3)]),
    "lsrr_through": dict(dst="10.0.11.20", options=[IPOption_LSRR(routers=["10.0.11.20"])]),
    "ssrr_through": dict(dst="10.0.11.20", options=[IPOption_SSRR(routers=["10.0.11.20"])]),
    "lsrr_no_route": dict(dst="10.0.91.7", options=[IPOption_LSRR(routers=["10.0.91.7"])]),
    "lsrr_via_router": dict(dst="10.0.10.20", options=[IPOption_LSRR(routers=["10.0.11.20"])]),
    "lsrr_via_router_twice": dict(
        dst="10.0.10.20", options=[IPOption_LSRR(routers=["10.0.11.10", "10.0.11.20", "10.0.11.20"])]),
    "lsrr_via_router_gateway": dict(dst="10.0.10.20",
                                    options=[IPOption_LSRR(routers=["10.0.93.5"])]),
    "ssrr_via_router": dict(dst="10.0.10.20", options=[IPOption_SSRR(routers=["10.0.11.20"])]),
    "ssrr_via_router_gateway": dict(dst="10.0.10.20",
                                    options=[IPOption_SSRR(routers=["10.0.93.5"])]),
    "ssrr_via_router_no_route": dict(dst="10.0.10.20",
                                     options=[IPOption_SSRR(routers=["10.0.91.7"])]),
    "rr_and_lsrr_via_router": dict(dst="10.0.10.20", options=[
        IPOption_RR(routers=["0.0.0.0"] * 2), IPOption_LSRR(routers=["10.0.11.20"])]),
    "timestamp": dict(dst="10.0.11.20", options=[IPOption_Timestamp(flg=0, timestamp=[0, 0])]),
    "timestamp_addr": dict(dst="10.0.11.20", options=[IPOption(bytes([68, 12, 5, 1]) + bytes(8))]),
}
ROUTER_SYSCTLS = {"net.ipv4.conf.all.accept_source_route": "1",
                  "net.ipv4.conf.eth1.accept_source_route": "1",
                  "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.eth1.rp_filter": "0",
                  "net.ipv4.icmp_ratelimit": "0"}


def timestamps_cleared(ip: bytes) -> bytes:
    """The values of timestamp options (the router's clock) zeroed, and
    the checksum with them."""
    b, i, end = bytearray(ip), 20, (ip[0] & 0xF) * 4
    while i < end and b[i] != 0:
        if b[i] == 1:
            i += 1
            continue
        if b[i] == 68:
            step = 8 if b[i + 3] & 0xF else 4
            for slot in range(i + 4, i + b[i + 1], step):
                b[slot + step - 4:slot + step] = bytes(4)
            b[10:12] = b"\0\0"
        i += max(b[i + 1], 2)
    return bytes(b)


def outcome(frames: dict) -> dict:
    result = {}
    for name, frame in frames.items():
        got, back = through_router([frame])
        errors = []
        for f in back:
            icmp = Ether(f)[ICMP]
            errors.append((icmp.type, icmp.code, bytes(icmp)[4:8],
                           timestamps_cleared(bytes(icmp.payload))))
        result[name] = ([timestamps_cleared(f[14:]) for f in got], errors)
    return result


def test_options_forwarded_as_the_kernel_does(lab):
    macs = pin_neighbours()
    router_mac = mac("router", "eth1")
    router_ip("route", "add", "10.0.93.0/24", "via", "10.0.11.20")
    router_ip("route", "add", "unreachable", "10.0.91.0/24")
    frames = {name: bytes(Ether(src=macs["sendbox"], dst=router_mac)
                          / IP(src="10.0.10.10", id=4000 + n, **kw)
                          / UDP(sport=4000, dport=2152) / MARK)
              for n, (name, kw) in enumerate(sorted(CASES.items()))}
    try:
        with sysctls_set(ROUTER_SYSCTLS):
            kernel = outcome(frames)
            proc = xdpfwd("attach", "eth1", "eth0", "--mode", "afpacket")
            assert proc.returncode == 0, proc.stderr
            try:
                time.sleep(0.3)
                forwarder = outcome(frames)
            finally:
                assert xdpfwd("detach").returncode == 0
    finally:
        router_ip("route", "del", "10.0.93.0/24")
        router_ip("route", "del", "10.0.91.0/24")
    # The frames must have met every rule, not just drops.
    assert kernel["record_route"][0] and kernel["lsrr_via_router"][0]
    assert kernel["ssrr_through"][1] and kernel["ssrr_via_router_gateway"][1]
    assert kernel["timestamp_addr"][0]
    differ = [f"{name}:\n  kernel    {kernel[name]}\n  afpacket  {forwarder[name]}"
              for name in sorted(CASES) if kernel[name] != forwarder[name]]
    assert not differ, "\n".join(differ)
