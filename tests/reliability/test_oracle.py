"""The kernel as the oracle: xdpfwd must do what the kernel's own
forwarding does, frame for frame, with no model of ours in between.

The same generated frames (tests/reliability/frames.py, OracleGenerator:
ordinary numbered flows and every kind the kernel treats specially) go
through the lab router first with nothing attached, then through
`xdpfwd attach eth1 eth0 --mode M` for M in native, skb and afpacket,
under net.ipv4.conf.all.rp_filter 0, 1 and 2, both directions and both
families mixed. Frames are injected with AF_PACKET on the end hosts' eth0;
everything arriving at either end host (what the router forwarded and
what it answered) is captured with AF_PACKET sockets opened before the
first frame. Per frame, the multiset of normalised frames it caused must
be the same as the kernel's, and every numbered flow must arrive in the
kernel's order. A difference prints the frame in hex and both outcomes.

Normalised, because the kernel itself does not fix them: the IP ID and
header checksum of ICMPv4 the router generates, the flow label of ICMPv6
it generates. Ignored: ARP, ND, MLD and IGMP (the router's own chatter),
and ICMP errors from the end hosts (their stacks are kept quiet, this
catches the rest). The kernel runs twice per frame set; if the two runs
differ, the oracle itself is not deterministic and the test says so.

Also: ordinary frames must be forwarded by xdpfwd itself (passing
everything to the stack would match the kernel too): before the mixed
frames each run sends a block of ordinary ones alone, and the ingress
port's forwarded_packets must grow by exactly their number.

XDPFWD_ORACLE_FRAMES (default 3000, split over the rp_filter settings),
XDPFWD_ORACLE_SEED, XDPFWD_ORACLE_RATE (frames/s, default 10000).
`make soak` runs 100 000.
"""

import ipaddress
import json
import os
import select
import socket
import struct
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import pytest

from frames import ORACLE_PORT, OracleGenerator, Side, find_marker
from helpers import (inside, passing_program, router_ip, router_with_every_route, run, stats,
                     sysctl, sysctls_set, xdpfwd)
from xdpfwd import lab

FRAMES = int(os.environ.get("XDPFWD_ORACLE_FRAMES", "3000"))
SEED = int(os.environ.get("XDPFWD_ORACLE_SEED", "20261128"))
RATE = float(os.environ.get("XDPFWD_ORACLE_RATE", "10000"))
VERBOSE = os.environ.get("XDPFWD_ORACLE_VERBOSE") == "1"  # print what the kernel did per variant
RP_FILTERS = (0, 1, 2)
MODES = ("native", "skb", "afpacket")
ORDINARY_SHARE = 0.15  # of each frame set: the ordinary-only block sent first
QUIET = 0.5  # seconds without an arrival before a capture counts as settled
SETTLE_MAX = 15.0

ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_STATISTICS = 263, 6
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33  # not in the socket module

# Routes the oracle adds to the router (router_with_every_route has the
# rest): the source pools behind each host, and small-MTU routes behind
# sendbox for the reverse direction.
POOLS = {"sendbox": ("10.1.0.0/16", "10.0.10.10"), "recvbox": ("10.2.0.0/16", "10.0.11.20")}
REVERSE_MTU = [("10.0.95.0/24", "10.0.10.10", "1000"), ("fd00:95::/64", "fd00:10::10", "1300")]
# The router's ICMP rate limits, off for the runs (this namespace's own
# sysctls; ip_error()'s per-source bucket is handled by the generator).
ROUTER_SYSCTLS = {"net.ipv4.icmp_ratelimit": "0", "net.ipv4.icmp_msgs_per_sec": "1000000",
                  "net.ipv4.icmp_msgs_burst": "1000000", "net.ipv6.icmp.ratelimit": "0"}
# End hosts answer nothing: no echo replies, and (below) a socket on the
# oracle's UDP port and blackhole routes for what is forwarded past them.
HOST_SYSCTLS = {"net.ipv4.icmp_echo_ignore_all": "1", "net.ipv6.icmp.echo_ignore_all": "1"}
FORWARDING_SYSCTLS = ["net.ipv4.ip_forward", "net.ipv4.conf.eth1.forwarding",
                      "net.ipv4.conf.eth0.forwarding", "net.ipv6.conf.all.forwarding",
                      "net.ipv6.conf.eth1.forwarding", "net.ipv6.conf.eth0.forwarding"]

ICMP4_ERRORS = {3, 4, 5, 11, 12}
ICMP6_ERRORS = {1, 2, 3, 4}
ICMP6_CHATTER = {130, 131, 132, 133, 134, 135, 136, 143}  # MLD, RS, RA, NS, NA, MLDv2


# ---------------------------------------------------------------------------
# Lab set-up

def host_ip(host: str, *args):
    proc = run(["ip", *args], ns=host)
    assert proc.returncode == 0, f"{lab.ns(host)}: ip {' '.join(args)}: {proc.stderr.strip()}"


def addresses(host: str) -> list[dict]:
    out = run(["ip", "-j", "addr", "show"], ns=host, check=True).stdout
    return [{"ifname": link["ifname"], **a} for link in json.loads(out)
            for a in link.get("addr_info", [])]


def link_local(host: str, ifname: str = "eth0") -> str:
    return next(a["local"] for a in addresses(host)
                if a["ifname"] == ifname and a["family"] == "inet6" and a["scope"] == "link")


@contextmanager
def udp_sinks(host: str):
    """Bound, never read: datagrams for the oracle's port are taken (and
    dropped once the buffer fills), so the host sends no port unreachable."""
    socks = []
    with inside(host):
        for af in (socket.AF_INET, socket.AF_INET6):
            s = socket.socket(af, socket.SOCK_DGRAM)
            if af == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", ORACLE_PORT))
            socks.append(s)
    try:
        yield
    finally:
        for s in socks:
            s.close()


@dataclass
class Oracle:
    sides: dict
    router_addrs: set
    other_mac: bytes
    frame_sets: dict = field(default_factory=dict)  # rp_filter -> (ordinary block, mixed)
    kernel: dict = field(default_factory=dict)  # rp_filter -> Outcome
    results: dict = field(default_factory=dict)  # datapath -> {category: differing frames}
    forwarding: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def oracle_lab(lab):
    xdpfwd("detach")
    with ExitStack() as stack:
        r = stack.enter_context(router_with_every_route())
        links, macs = r["links"], r["macs"]
        lls = {h: link_local(h) for h in ("sendbox", "recvbox")}
        # Added one by one, each removal registered first, so a failure
        # half way still leaves the router as it was.
        for host, (net, via) in POOLS.items():
            stack.callback(router_ip, "route", "del", net)
            router_ip("route", "add", net, "via", via)
        for net, via, mtu in REVERSE_MTU:
            stack.callback(router_ip, "route", "del", net)
            router_ip("route", "add", net, "via", via, "mtu", "lock", mtu)
        # Errors to a link-local source (ip6_forward()) need the host's
        # link-local neighbour: pinned like the others.
        for host, dev in (("sendbox", "eth1"), ("recvbox", "eth0")):
            stack.callback(router_ip, "neigh", "del", lls[host], "dev", dev)
            router_ip("neigh", "replace", lls[host], "lladdr", macs[host], "dev", dev,
                      "nud", "permanent")
        stack.enter_context(sysctls_set(ROUTER_SYSCTLS))
        for host, nets in (("recvbox", ("10.0.93.0/24", "fd00:93::/64")),
                           ("sendbox", ("10.0.95.0/24", "fd00:95::/64"))):
            stack.enter_context(sysctls_set(HOST_SYSCTLS, ns=host))
            stack.enter_context(udp_sinks(host))
            for net in nets:  # forwarded past the host: dropped there without a word
                stack.callback(host_ip, host, "route", "del", "blackhole", net)
                host_ip(host, "route", "add", "blackhole", net)
        for host in ("sendbox", "recvbox"):
            # A frame XDP-redirected into a veth is dropped unless the peer
            # has GRO on (lab.py sets it): without it every difference
            # would be the receive path's, not the forwarder's.
            features = run(["ethtool", "-k", "eth0"], ns=host, check=True).stdout
            assert "generic-receive-offload: on" in features, f"{lab.ns(host)}: GRO is off on eth0"
        stack.enter_context(sysctls_set({"net.ipv4.conf.all.rp_filter": "0"}))
        for ifname in ("eth1", "eth0"):  # the effective value is max(all, interface)
            assert sysctl(f"net.ipv4.conf.{ifname}.rp_filter") == "0"

        def side(host, port, unused, pool, mtu4, mtu6):
            v4 = lab.address(host, family=4)
            v6 = lab.address(host, family=6)
            net4 = ipaddress.IPv4Interface(lab.HOSTS[host]["interfaces"]["eth0"][0]).network
            return Side(host_mac=bytes.fromhex(macs[host].replace(":", "")),
                        router_mac=bytes.fromhex(links[port].mac.replace(":", "")),
                        host_v4=v4, host_v6=v6, host_ll6=lls[host],
                        router_v4=lab.address("router", port, 4),
                        router_v6=lab.address("router", port, 6),
                        subnet_broadcast=str(net4.broadcast_address),
                        unused_v4=unused[0], unused_v6=unused[1], pool_v4=pool,
                        mtu_v4_dst=mtu4, mtu_v6_dst=mtu6)

        sides = {"sendbox": side("sendbox", "eth1", ("10.0.10.99", "fd00:10::99"),
                                 POOLS["sendbox"][0], "10.0.95.5", "fd00:95::5"),
                 "recvbox": side("recvbox", "eth0", ("10.0.11.99", "fd00:11::99"),
                                 POOLS["recvbox"][0], "10.0.93.5", "fd00:93::5")}
        router_addrs = {ipaddress.ip_address(a["local"]) for a in addresses("router")}
        oracle = Oracle(sides, router_addrs, bytes.fromhex("020000000099"),
                        forwarding={k: sysctl(k) for k in FORWARDING_SYSCTLS})
        gen = OracleGenerator(SEED, sides, oracle.other_mac)
        per_set = max(20, FRAMES // len(RP_FILTERS))
        block = max(8, int(per_set * ORDINARY_SHARE))
        for rp in RP_FILTERS:
            oracle.frame_sets[rp] = (gen.ordinary(block), gen.frames(per_set - block))
        yield oracle


# ---------------------------------------------------------------------------
# Sending and capturing

class Capture:
    """Every frame arriving at the end hosts' eth0 (not what they send),
    from before the first frame goes out until stop()."""

    def __init__(self, hosts=("sendbox", "recvbox")):
        self.socks = {}
        for host in hosts:
            with inside(host):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
            s.bind(("eth0", ETH_P_ALL))  # bound before it sees anything of another interface
            self.socks[s.fileno()] = (host, s)
        self.frames: list[tuple[str, bytes]] = []
        self.error: OSError | None = None
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        fds = list(self.socks)
        try:
            while not self._stop.is_set():
                for fd in select.select(fds, [], [], 0.05)[0]:
                    host, s = self.socks[fd]
                    data, addr = s.recvfrom(65535)
                    if addr[2] != PACKET_OUTGOING:
                        self.frames.append((host, data))
                        self.last = time.monotonic()
        except OSError as e:  # a capture with a hole in it must not pass for a whole one
            self.error = e

    def settle(self):
        """Wait until nothing has arrived for QUIET seconds."""
        deadline = time.monotonic() + SETTLE_MAX
        time.sleep(QUIET)
        while time.monotonic() - self.last < QUIET and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        drops = {}
        for host, s in self.socks.values():
            _, dropped = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            drops[host] = dropped
            s.close()
        if self.error:
            raise AssertionError(f"capture failed: {self.error}")
        return drops


class Injector:
    def __init__(self):
        self.socks = {}
        for direction, host in (("fwd", "sendbox"), ("rev", "recvbox")):
            with inside(host):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.bind(("eth0", 0))
            self.socks[direction] = s

    def send(self, frames):
        # One CPU for the sender: a veth delivers on the sending CPU, so
        # frames of one flow cannot overtake each other in the kernel's
        # backlogs, and order is the forwarder's doing alone.
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(saved)})
        try:
            start = time.monotonic()
            for i, f in enumerate(frames):
                self.socks[f.direction].send(f.data)
                if i % 16 == 15:
                    ahead = start + (i + 1) / RATE - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        finally:
            os.sched_setaffinity(0, saved)

    def close(self):
        for s in self.socks.values():
            s.close()


@dataclass
class Run:
    arrivals: list  # (host, bytes) in arrival order
    counters: list = field(default_factory=list)  # stats before, between the blocks, after


_last_run: dict = {}


def run_frames(ordinary, mixed, counted: bool) -> Run:
    # ip_error()'s bucket gives each source one token back per second: with
    # a second between two runs of one frame set, and each pool source
    # meeting ip_error once per run, no run ever finds a bucket empty.
    wait = _last_run.get(id(ordinary), 0) + 1.1 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    injector = Injector()
    capture = Capture()
    counters = []
    try:
        for block in (ordinary, mixed):
            if counted:
                counters.append(stats())
            injector.send(block)
            capture.settle()
        if counted:
            counters.append(stats())
    finally:
        drops = capture.stop()
        injector.close()
        _last_run[id(ordinary)] = time.monotonic()
    assert not any(drops.values()), f"the capture sockets dropped frames: {drops}"
    return Run(capture.frames, counters)


# ---------------------------------------------------------------------------
# What came out, per frame

@dataclass
class Packet:
    family: int
    src: object
    dst: object
    proto: int  # transport protocol after any hop-by-hop header
    l3: int  # offset of the IP header
    l4: int  # offset of the transport header
    ttl: int
    icmp_type: int | None = None
    icmp_code: int | None = None


def parse(data: bytes) -> Packet | None:
    if len(data) < 14:
        return None
    ethertype = struct.unpack_from("!H", data, 12)[0]
    if ethertype == 0x0800 and len(data) >= 34:
        ihl = (data[14] & 0x0F) * 4
        p = Packet(4, ipaddress.IPv4Address(data[26:30]), ipaddress.IPv4Address(data[30:34]),
                   data[23], 14, 14 + ihl, data[22])
        if p.proto == 1 and len(data) >= p.l4 + 2:
            p.icmp_type, p.icmp_code = data[p.l4], data[p.l4 + 1]
        return p
    if ethertype == 0x86DD and len(data) >= 54:
        nh, l4 = data[20], 54
        if nh == 0 and len(data) >= l4 + 2:  # MLD comes behind a hop-by-hop header
            nh, l4 = data[l4], l4 + 8 * (data[l4 + 1] + 1)
        p = Packet(6, ipaddress.IPv6Address(data[22:38]), ipaddress.IPv6Address(data[38:54]),
                   nh, 14, l4, data[21])
        if nh == 58 and len(data) >= l4 + 2:
            p.icmp_type, p.icmp_code = data[l4], data[l4 + 1]
        return p
    return None


def describe(data: bytes) -> str:
    p = parse(data)
    if p is None:
        return f"{len(data)} bytes, ethertype {data[12:14].hex()}"
    what = {1: "icmp", 17: "udp", 58: "icmp6", 44: "frag6"}.get(p.proto, f"proto {p.proto}")
    if p.icmp_type is not None:
        what += f" {p.icmp_type}/{p.icmp_code}"
    return f"IPv{p.family} {p.src} > {p.dst} {what} ttl {p.ttl}, {len(data)} bytes"


class Classifier:
    def __init__(self, router_addrs):
        self.router_addrs = router_addrs

    def ignore(self, p: Packet | None, data: bytes) -> str | None:
        """Why an arrival is not part of the comparison, or None."""
        if p is None:
            return "arp" if data[12:14] == b"\x08\x06" else None
        if p.family == 4 and p.proto == 2:
            return "igmp"
        if p.family == 6 and p.icmp_type in ICMP6_CHATTER:
            return "nd/mld"
        if p.icmp_type is not None and p.src not in self.router_addrs:
            errors, reply = (ICMP4_ERRORS, 0) if p.family == 4 else (ICMP6_ERRORS, 129)
            if p.icmp_type in errors or p.icmp_type == reply:
                return "end host icmp"
        return None

    def normalise(self, p: Packet, data: bytes) -> bytes:
        """What the kernel does not fix from one run to the next: the IP ID
        and header checksum of the router's own ICMPv4, the flow label of
        its ICMPv6."""
        if p.src not in self.router_addrs or p.icmp_type is None:
            return data
        b = bytearray(data)
        if p.family == 4:
            b[p.l3 + 4:p.l3 + 6] = b"\0\0"
            b[p.l3 + 10:p.l3 + 12] = b"\0\0"
        else:
            b[p.l3 + 1] &= 0xF0
            b[p.l3 + 2:p.l3 + 4] = b"\0\0"
        return bytes(b)


@dataclass
class Outcome:
    per_frame: dict  # frame id -> sorted [(host, normalised bytes)]
    unattributed: Counter
    flows: dict  # flow -> [seq, ...] in arrival order at the far host
    ignored: Counter


FAR = {"fwd": "recvbox", "rev": "sendbox"}


def ipv4_keys(frames: dict) -> dict:
    """(source, destination, IP ID) -> frame id, for the fragments the
    router cuts from a frame: only the first carries the marker."""
    keys = defaultdict(list)
    for f in frames.values():
        p = parse(f.data)
        if p and p.family == 4:
            keys[(p.src, p.dst, f.data[18:20])].append(f.id)
    return {k: ids[0] for k, ids in keys.items() if len(ids) == 1}


def analyse(result: Run, frames: dict, classifier: Classifier) -> Outcome:
    per_frame, unattributed, flows, ignored = defaultdict(list), Counter(), defaultdict(list), Counter()
    by_ident = ipv4_keys(frames)
    for host, data in result.arrivals:
        p = parse(data)
        why = classifier.ignore(p, data)
        if why:
            ignored[why] += 1
            continue
        norm = classifier.normalise(p, data) if p else data
        frame_id = find_marker(data)
        if frame_id is None and p and p.family == 4:
            frame_id = by_ident.get((p.src, p.dst, data[18:20]))
        if frame_id not in frames:
            unattributed[(host, norm)] += 1
            continue
        per_frame[frame_id].append((host, norm))
        f = frames[frame_id]
        if f.flow and host == FAR[f.direction]:
            flows[f.flow].append(f.seq)
    return Outcome({k: sorted(v) for k, v in per_frame.items()}, unattributed, dict(flows), ignored)


@dataclass
class Difference:
    category: str
    text: str


def show(outcome: list) -> str:
    if not outcome:
        return "      nothing"
    return "\n".join(f"      at {host}: {describe(d)}\n        {d.hex()}" for host, d in outcome)


def compare(kernel: Outcome, other: Outcome, frames: dict, name: str) -> list[Difference]:
    diffs = []
    for frame_id, f in frames.items():
        k, o = kernel.per_frame.get(frame_id, []), other.per_frame.get(frame_id, [])
        if k != o:
            diffs.append(Difference(f.category, (
                f"{f.category} ({f.variant}), {f.direction}, IPv{f.family}, frame {frame_id}: "
                f"{describe(f.data)}\n    frame: {f.data.hex()}\n"
                f"    kernel:\n{show(k)}\n    {name}:\n{show(o)}")))
    if kernel.unattributed != other.unattributed:
        only_k = kernel.unattributed - other.unattributed
        only_o = other.unattributed - kernel.unattributed
        diffs.append(Difference("unattributed", (
            f"arrivals no frame accounts for:\n    kernel only:\n{show(sorted(only_k.elements()))}"
            f"\n    {name} only:\n{show(sorted(only_o.elements()))}")))
    for flow in sorted(set(kernel.flows) | set(other.flows)):
        k, o = kernel.flows.get(flow, []), other.flows.get(flow, [])
        both = set(k) & set(o)  # order only: what arrived once in one run and not the other is above
        k, o = [s for s in k if s in both], [s for s in o if s in both]
        if k != o:
            diffs.append(Difference("flow_order", f"flow {flow}: kernel order {k[:20]}..., "
                                                  f"{name} {o[:20]}..."))
    return diffs


# ---------------------------------------------------------------------------
# The runs

def frames_by_id(frame_set) -> dict:
    return {f.id: f for block in frame_set for f in block}


def set_rp_filter(value: int):
    sysctl("net.ipv4.conf.all.rp_filter", str(value))


def assert_kernel_forwarding(oracle):
    now = {k: sysctl(k) for k in FORWARDING_SYSCTLS}
    assert now == oracle.forwarding, f"the router's forwarding sysctls changed: {now}"


@pytest.fixture(scope="module")
def oracle(oracle_lab):
    """The kernel's outcome for every frame set, run twice: the oracle
    must agree with itself before it can judge anything."""
    classifier = Classifier(oracle_lab.router_addrs)
    try:
        _kernel_outcomes(oracle_lab, classifier)
    finally:
        set_rp_filter(0)  # also when the oracle fails half way
    yield oracle_lab
    if oracle_lab.results:  # one table for all that ran: category x mode
        rows = defaultdict(dict)
        for name, per_cat in oracle_lab.results.items():
            for cat, n in per_cat.items():
                rows[cat][name] = n
        print("\n" + table(rows, list(oracle_lab.results),
                            "differing frames per category (all rp_filter settings):"))


def _kernel_outcomes(oracle_lab, classifier):
    for rp, frame_set in oracle_lab.frame_sets.items():
        set_rp_filter(rp)
        assert_kernel_forwarding(oracle_lab)
        frames = frames_by_id(frame_set)
        first = analyse(run_frames(*frame_set, counted=False), frames, classifier)
        second = analyse(run_frames(*frame_set, counted=False), frames, classifier)
        unstable = compare(first, second, frames, "kernel again")
        assert not unstable, (f"rp_filter {rp}: the kernel disagrees with itself on "
                              f"{len(unstable)} frames; the oracle is not deterministic:\n"
                              + "\n".join(d.text for d in unstable[:5]))
        lost = [f for f in frame_set[0] if kernel_summary(first, f) != "forwarded"]
        assert not lost, (f"rp_filter {rp}: the kernel itself did not forward {len(lost)} "
                          "ordinary frames: the lab is broken, not xdpfwd")
        oracle_lab.kernel[rp] = first
        if VERBOSE:
            seen = defaultdict(Counter)
            for f in frames.values():
                seen[(f.category, f"IPv{f.family} {f.variant}")][kernel_summary(first, f)] += 1
            print(f"\nwhat the kernel did, rp_filter {rp}:")
            for (cat, variant), c in sorted(seen.items()):
                counts = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                print(f"  {cat:<20} {variant:<36} {counts}")


@contextmanager
def attached(mode: str):
    proc = xdpfwd("attach", "eth1", "eth0", "--mode", mode)
    assert proc.returncode == 0, f"attach --mode {mode}: {proc.stderr.strip()}"
    try:
        yield
    finally:
        proc = xdpfwd("detach")
        assert proc.returncode == 0, f"detach: {proc.stderr.strip()}"


def kernel_summary(kernel: Outcome, frame: object) -> str:
    got = kernel.per_frame.get(frame.id, [])
    if any(h == FAR[frame.direction] for h, _ in got):
        return "forwarded"
    return "answered" if got else "dropped"


def counter_checks(result: Run, frame_set, kernel: Outcome) -> list[str]:
    """The ingress port's forwarded_packets: exactly the ordinary block,
    then, for the mixed frames, at least their ordinary ones and at most
    what the kernel forwarded."""
    problems = []
    ingress = {"fwd": "eth1", "rev": "eth0"}
    before, between, after = result.counters
    for direction, port in ingress.items():
        block = sum(f.direction == direction for f in frame_set[0])
        got = between[port]["forwarded_packets"] - before[port]["forwarded_packets"]
        if got != block:
            problems.append(f"{port}: forwarded_packets grew by {got} for {block} ordinary frames "
                            f"({direction}); xdpfwd must forward them itself")
        mixed = [f for f in frame_set[1] if f.direction == direction]
        low = sum(f.category == "ordinary" for f in mixed)
        high = sum(kernel_summary(kernel, f) == "forwarded" for f in mixed)
        got = after[port]["forwarded_packets"] - between[port]["forwarded_packets"]
        if not low <= got <= high:
            problems.append(f"{port}: forwarded_packets grew by {got} for the mixed frames "
                            f"({direction}): {low} ordinary, {high} forwarded by the kernel")
    return problems


def table(rows: dict, columns: list, title: str) -> str:
    width = max([len(r) for r in rows] + [12])
    lines = [title, f"{'category':<{width}} " + " ".join(f"{c:>14}" for c in columns)]
    for name, cells in sorted(rows.items()):
        lines.append(f"{name:<{width}} " + " ".join(f"{str(cells.get(c, '-')):>14}" for c in columns))
    return "\n".join(lines)


def judge(oracle, name: str, datapath, counted: bool) -> tuple[str, int, list, list]:
    """Run every frame set through the router with `datapath` (a context
    manager factory) in place and compare with the kernel. Returns the
    summary table, the number of differing frames, counter problems and
    examples."""
    classifier = Classifier(oracle.router_addrs)
    rows = defaultdict(dict)
    examples, problems = [], []
    columns = ["frames", "kernel fwd/ans/drop"] + [f"diff rp={rp}" for rp in RP_FILTERS]
    totals = defaultdict(Counter)
    per_cat_all = Counter()
    for rp, frame_set in oracle.frame_sets.items():
        frames = frames_by_id(frame_set)
        set_rp_filter(rp)
        try:
            assert_kernel_forwarding(oracle)
            with datapath():
                result = run_frames(*frame_set, counted=counted)
            assert_kernel_forwarding(oracle)  # afpacket gives back what it turned off
        finally:
            set_rp_filter(0)
        kernel = oracle.kernel[rp]
        diffs = compare(kernel, analyse(result, frames, classifier), frames, name)
        if counted:
            problems += [f"rp_filter {rp}: {p}" for p in counter_checks(result, frame_set, kernel)]
        for f in frames.values():
            totals[f.category]["frames"] += 1
            totals[f.category][kernel_summary(kernel, f)] += 1
        per_cat = Counter(d.category for d in diffs)
        per_cat_all.update(per_cat)
        for cat in set(per_cat) | {f.category for f in frames.values()}:
            rows[cat][f"diff rp={rp}"] = per_cat.get(cat, 0)
        shown = Counter()
        for d in diffs:
            shown[d.category] += 1
            if shown[d.category] <= 2:
                examples.append(f"[{name}, rp_filter {rp}] {d.text}")
    for cat, t in totals.items():
        rows[cat]["frames"] = t["frames"]
        rows[cat]["kernel fwd/ans/drop"] = f"{t['forwarded']}/{t['answered']}/{t['dropped']}"
        per_cat_all.setdefault(cat, 0)
    oracle.results[name] = dict(per_cat_all)
    summary = table(rows, columns, f"{name} against the kernel (differing frames):")
    print("\n" + summary)
    return summary, sum(per_cat_all.values()), problems, examples


@pytest.mark.parametrize("mode", MODES)
def test_xdpfwd_does_what_the_kernel_does(oracle, mode):
    summary, differing, problems, examples = judge(oracle, mode, lambda: attached(mode), counted=True)
    assert not differing and not problems, (
        f"{differing} differences from the kernel\n{summary}\n"
        + "\n".join(problems) + "\n\nexamples (two per category and rp_filter):\n" + "\n".join(examples))


@pytest.mark.parametrize("mode", ["native", "skb"])
def test_the_oracle_passes_a_program_that_only_passes(oracle, mode):
    """The oracle's own check: an XDP program that hands every frame to the
    stack (the XDP receive path, no decision) must show no difference, or
    the differences above could come from attaching XDP at all."""
    summary, differing, _, examples = judge(
        oracle, f"pass-all {mode}", lambda: passing_program(["eth1", "eth0"], mode), counted=False)
    assert not differing, f"{differing} differences\n{summary}\n" + "\n".join(examples)
