"""Helpers for the kernel tests: run commands and the real CLI in the lab."""

import json
import os
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from xdpfwd import bpfsys, compiler, lab, netlink, netns
from xdpfwd.datapath import PortState
from xdpfwd.errors import XdpfwdError
from xdpfwd.snapshot import Snapshot

XDPFWD = str(Path(sys.executable).with_name("xdpfwd"))


def inside(host: str):
    """Enter a lab host's network namespace (this thread only)."""
    return netns.entered(lab.ns(host))


def run(args, ns: str | None = "router", env=None, check=False, timeout=60):
    """Run a command, inside lab host `ns`'s namespace (a NEW `ip netns
    exec` each time, as a user would), and return the CompletedProcess."""
    prefix = ["ip", "netns", "exec", lab.ns(ns)] if ns else []
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(prefix + list(args), capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def xdpfwd(*args, ns="router", **kw):
    return run([XDPFWD, *args], ns=ns, **kw)


def sysctl(name: str, value: str | None = None, ns: str = "router") -> str:
    """A sysctl of lab host ns by sysctl(8), as a user would: read it
    (value None) or set it; the value either way."""
    if value is None:
        return run(["sysctl", "-n", name], ns=ns, check=True).stdout.strip()
    run(["sysctl", "-qw", f"{name}={value}"], ns=ns, check=True)
    return value


@contextmanager
def sysctls_set(values: dict[str, str], ns: str = "router"):
    """values set in lab host ns for the with-block, then put back as they
    were (also when the block fails); yields what they were."""
    saved = {k: sysctl(k, ns=ns) for k in values}
    try:
        for k, v in values.items():
            sysctl(k, v, ns=ns)
        yield saved
    finally:
        for k, v in saved.items():
            sysctl(k, v, ns=ns)


# The router's switches the AF_PACKET forwarder turns off and puts back.
FORWARDING_SYSCTLS = ["net.ipv4.conf.eth1.forwarding", "net.ipv4.conf.eth0.forwarding",
                      "net.ipv6.conf.all.forwarding", "net.ipv6.conf.eth1.forwarding",
                      "net.ipv6.conf.eth0.forwarding"]


def forwarding_sysctls() -> dict[str, str]:
    return {k: sysctl(k) for k in FORWARDING_SYSCTLS}


def start_in_router(args, wait_for: str, timeout: float = 15.0, env=None) -> subprocess.Popen:
    """A long-running command in the router, once a line of its stdout
    says `wait_for`; stop() it."""
    proc = subprocess.Popen(["ip", "netns", "exec", lab.ns("router"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if wait_for in line:
            return proc
        if not line and proc.poll() is not None:
            break
    stop(proc)
    raise AssertionError(f"{args} did not start: {proc.stderr.read()}")


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM (SIGKILL if it does not end in 15 s); the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextmanager
def started(args, wait_for: str, timeout: float = 15.0, env=None):
    """start_in_router() for the with-block, then stop(): it must end
    cleanly (status 0) on SIGTERM."""
    proc = start_in_router(args, wait_for, timeout, env)
    try:
        yield proc
    finally:
        assert stop(proc) == 0, f"{args} did not end cleanly on SIGTERM: {proc.stderr.read()}"


def assert_one_line(proc, code: int, *words: str) -> str:
    """A refusal as the README promises it: exit status `code`, one line on
    stderr, "xdpfwd: ...", no traceback, with each of words in it. The line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert lines[0].startswith("xdpfwd: ") and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def scrape_value(listen: str, name: str) -> float | None:
    """The value of sample `name` on the exporter at listen (from inside
    the router), or None when the exporter leaves it out."""
    from prometheus_client.parser import text_string_to_metric_families

    proc = run(["curl", "-sS", "--fail", f"http://{listen}/metrics"])
    assert proc.returncode == 0, proc.stderr
    for family in text_string_to_metric_families(proc.stdout):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def stderr_line(proc, words: str, timeout: float) -> str:
    """The next stderr line of proc containing `words`, within timeout.
    The pipe is read without blocking (select, then os.read of what is
    there), so a line that never comes fails the test at the deadline
    instead of hanging it in readline(). What follows the line returned
    is kept for the next call; proc.stderr must not be read otherwise
    until then."""
    fd = proc.stderr.fileno()
    pending = proc.__dict__.setdefault("_stderr_pending", bytearray())
    deadline = time.monotonic() + timeout
    while True:
        while b"\n" in pending:
            end = pending.index(b"\n")
            line = pending[:end].decode(errors="replace")
            del pending[:end + 1]
            if words in line:
                return line
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {words!r} on stderr within {timeout}s")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"stderr ended before {words!r}"
            pending += chunk


def router_ip(*args) -> str:
    """`ip -n ROUTER ...`, failing the test with ip's own message; its output."""
    proc = subprocess.run(["ip", "-n", lab.ns("router"), *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"ip -n {lab.ns('router')} {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def mac(host: str, ifname: str = "eth0") -> str:
    with inside(host):
        return netlink.link(ifname).mac


def pin_neighbours() -> dict[str, str]:
    """The end hosts' addresses as permanent neighbours of the router: no
    frame waits for ARP/ND, and results do not depend on timing. Returns
    {"sendbox": its MAC, "recvbox": its MAC}."""
    macs = {host: mac(host) for host in ("sendbox", "recvbox")}
    for addr, host, dev in (("10.0.11.20", "recvbox", "eth0"), ("fd00:11::20", "recvbox", "eth0"),
                            ("10.0.10.10", "sendbox", "eth1"), ("fd00:10::10", "sendbox", "eth1")):
        router_ip("neigh", "replace", addr, "lladdr", macs[host], "dev", dev, "nud", "permanent")
    return macs


def _permanent_neighbours(ifname: str) -> list[tuple[str, str]]:
    """(address, MAC) of the router's permanent neighbours on ifname."""
    listed = subprocess.run(["ip", "-n", lab.ns("router"), "-j", "neigh", "show", "dev", ifname,
                             "nud", "permanent"], capture_output=True, text=True, check=True)
    return [(n["dst"], n["lladdr"]) for n in json.loads(listed.stdout or "[]") if "lladdr" in n]


def _pin_again(ifname: str, pinned: list[tuple[str, str]]) -> None:
    for dst, lladdr in pinned:
        router_ip("neigh", "replace", dst, "lladdr", lladdr, "dev", ifname, "nud", "permanent")


@contextmanager
def ipv6_disabled(ifname: str):
    """disable_ipv6 set on the router's ifname for the with-block. Setting
    it takes the port's IPv6 addresses, routes and neighbours with it, and
    clearing it does not bring the lab's static ones back: they are put
    back here, and so are its permanent neighbours and the routes tests
    added through it (also when the block fails)."""
    pinned = _permanent_neighbours(ifname)
    # Routes a test added through the port, as `ip route` prints them (its
    # JSON leaves out `lock`); the kernel's own come back with the address.
    listed = subprocess.run(["ip", "-n", lab.ns("router"), "-6", "route", "show", "table", "all",
                             "dev", ifname], capture_output=True, text=True, check=True).stdout
    # (Those over a nexthop object stay: fib6_ifdown().)
    routes = [line.split() for line in listed.splitlines()
              if "proto kernel" not in line and "nhid" not in line]
    sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
    try:
        yield
    finally:
        sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", "0")
        for addr in lab.HOSTS[lab.ROUTER]["interfaces"][ifname]:
            if ":" in addr:
                router_ip("addr", "replace", addr, "dev", ifname, "nodad")
        _pin_again(ifname, pinned)
        for route in routes:
            router_ip("-6", "route", "replace", *route, "dev", ifname)


@contextmanager
def router_mac_changed(ifname: str, new: str):
    """The router's ifname with MAC address `new` for the with-block;
    yields the old one. A MAC change flushes the interface's neighbours,
    permanent ones too (neigh_changeaddr()), and the host at the other
    end learns the passing address from the router's ARP and ND: so the
    old address comes back, the permanent neighbours are pinned again and
    that host forgets what it learnt (also when the block fails). Left
    over, the next test's traffic would go to an address nobody has."""
    pinned = _permanent_neighbours(ifname)
    old = mac("router", ifname)
    router_ip("link", "set", ifname, "address", new)
    try:
        yield old
    finally:
        router_ip("link", "set", ifname, "address", old)
        _pin_again(ifname, pinned)
        (peer,) = [b if a == [lab.ROUTER, ifname] else a for a, b in lab.TOPOLOGY["links"]
                   if [lab.ROUTER, ifname] in (a, b)]
        subprocess.run(["ip", "-n", lab.ns(peer[0]), "neigh", "flush", "dev", peer[1]], check=True)


# Routes that make the router's FIB answer every kind of result.
SPECIAL_ROUTES = [("blackhole", "10.0.90.0/24"), ("unreachable", "10.0.91.0/24"),
                  ("prohibit", "10.0.92.0/24"), ("blackhole", "fd00:90::/64"),
                  ("unreachable", "fd00:91::/64"), ("prohibit", "fd00:92::/64")]
MTU_ROUTES = [("10.0.93.0/24", "10.0.11.20", "1000"), ("fd00:93::/64", "fd00:11::20", "1300")]


@contextmanager
def router_with_every_route():
    """The lab router with fixed (permanent) neighbours, a route of every
    type, routes with a small MTU, and a third interface (spare0, a veth:
    this kernel has no dummy driver) that is not an xdpfwd port. Yields
    {"links": router's links, "macs": {"sendbox": mac, "recvbox": mac}}."""
    macs = pin_neighbours()
    for kind, net in SPECIAL_ROUTES:
        router_ip("route", "add", kind, net)
    for net, via, mtu in MTU_ROUTES:
        router_ip("route", "add", net, "via", via, "mtu", "lock", mtu)
    router_ip("link", "add", "spare0", "type", "veth", "peer", "name", "spare1")
    router_ip("addr", "add", "10.0.94.1/24", "dev", "spare0")
    router_ip("link", "set", "spare0", "up")
    router_ip("link", "set", "spare1", "up")
    router_ip("neigh", "replace", "10.0.94.2", "lladdr", "02:00:00:00:94:02", "dev", "spare0",
              "nud", "permanent")
    try:
        with inside("router"):
            links = netlink.links()
        yield {"links": links, "macs": macs}
    finally:
        router_ip("link", "del", "spare0")
        for net in [n for _, n in SPECIAL_ROUTES] + [n for n, _, _ in MTU_ROUTES]:
            router_ip("route", "del", net)


@contextmanager
def foreign_program(ifname: str):
    """Another tool's XDP program, `foreign_pass`, on the router's ifname
    (skb mode); yields its program id."""
    bcc = compiler.import_bcc()
    bpf = bcc.BPF(text=b"int foreign_pass(struct xdp_md *ctx) { return XDP_PASS; }")
    fn = bpf.load_func(b"foreign_pass", bcc.BPF.XDP)
    with inside("router"):
        index = netlink.link(ifname).index
        bpfsys.xdp_attach(index, fn.fd, bpfsys.XDP_FLAGS_SKB_MODE)
    try:
        yield bpfsys.prog_info(fn.fd).id
    finally:
        with inside("router"):
            bpfsys.xdp_detach(index, "skb", fn.fd)


def without_bcc(tmp_path) -> dict:
    """Environment for a subprocess whose Python cannot import bcc, as on a
    host without python3-bpfcc: a package of that name that refuses."""
    fake = tmp_path / "bcc"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    return {"PYTHONPATH": str(tmp_path)}


TRIPWIRE = """
import os, sys

class Tripwire:
    # Told of every first import; answers nothing, so the import goes on.
    def find_spec(self, name, path=None, target=None):
        if name in {watched}:
            with open({log!r}, "a") as f:
                f.write(name + "\\n")
        return None

sys.meta_path.insert(0, Tripwire())
"""


def import_tripwire(tmp_path, watched) -> tuple[dict, Path]:
    """Environment for a subprocess whose Python notes, in the file
    returned, each of `watched` (module names) it imports: a
    sitecustomize on PYTHONPATH, which Python runs before the program."""
    d = tmp_path / "tripwire"
    d.mkdir()
    log = tmp_path / "imported"
    log.touch()
    (d / "sitecustomize.py").write_text(TRIPWIRE.format(watched=set(watched), log=str(log)))
    return {"PYTHONPATH": str(d)}, log


def status() -> dict:
    """`xdpfwd status --json` in the router, from a new process."""
    proc = xdpfwd("status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["interfaces"]


def attached_ports() -> list[str]:
    """The router's interfaces xdpfwd forwards on, by `status --json`."""
    return [name for name, s in status().items() if s["attached"]]


def stats() -> dict:
    """`xdpfwd stats --json` in the router, from a new process."""
    proc = xdpfwd("stats", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_forwarded(delivery, before: dict, after: dict, ingress: str) -> None:
    """Every datagram arrived once with TTL 63, and the router counted each
    as forwarded on its way in and transmitted on its way out."""
    count = delivery.sent
    assert delivery.exactly_once, f"{delivery.unique}/{count} distinct, {delivery.duplicates} dup"
    assert delivery.ttls == {63}
    assert after[ingress]["forwarded_packets"] - before[ingress]["forwarded_packets"] == count
    egress = "eth0" if ingress == "eth1" else "eth1"
    assert after[egress]["tx_packets"] - before[egress]["tx_packets"] == count


@contextmanager
def passing_program(ifnames, mode: str = "native"):
    """An XDP program that passes every frame to the stack, attached in
    `mode` to each of the router's `ifnames`: the XDP receive path with no
    decision of its own."""
    bcc = compiler.import_bcc()
    bpf = bcc.BPF(text=b"int pass_all(struct xdp_md *ctx) { return XDP_PASS; }")
    fn = bpf.load_func(b"pass_all", bcc.BPF.XDP)
    done = []
    try:
        with inside("router"):
            for name in ifnames:
                index = netlink.link(name).index
                bpfsys.xdp_attach(index, fn.fd, bpfsys.MODE_FLAGS[mode])
                done.append(index)
        yield
    finally:
        with inside("router"):
            for index in done:
                bpfsys.xdp_detach(index, mode, fn.fd)


@contextmanager
def attached(mode: str):
    """xdpfwd attached to the lab router's eth1 and eth0 in `mode`, then
    one ping each way and family, so that the first packets (which go
    through the kernel for ARP/ND: fib_no_neighbour) are behind us;
    detached afterwards."""
    proc = xdpfwd("attach", "eth1", "eth0", "--mode", mode)
    assert proc.returncode == 0, proc.stderr
    for ns, dst in (("sendbox", "10.0.11.20"), ("sendbox", "fd00:11::20"),
                    ("recvbox", "10.0.10.10"), ("recvbox", "fd00:10::10")):
        run(["ping", "-c", "1", "-W", "1", dst], ns=ns)
    try:
        yield mode
    finally:
        xdpfwd("detach")


def assert_ping_crosses(ns: str, dst: str) -> None:
    """Five pings answered with TTL 63, none doubled, and each request and
    reply forwarded in XDP (counted on both ports)."""
    import re

    before = stats()
    proc = run(["ping", "-c", "5", "-i", "0.2", "-W", "1", dst], ns=ns)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    replies = [line for line in proc.stdout.splitlines() if "bytes from" in line]
    assert len(replies) == 5
    assert all(re.search(r"ttl=63\b", line) for line in replies), proc.stdout
    assert "DUP!" not in proc.stdout
    after = stats()
    for port in ("eth1", "eth0"):
        assert after[port]["forwarded_packets"] - before[port]["forwarded_packets"] == 5


# -- snapshots for the exporter's collector ----------------------------------


def device(name: str, mode: str, prog_id: int = 0) -> PortState:
    """A port xdpfwd forwards on: its XDP program prog_id, or a running
    AF_PACKET forwarder (mode afpacket)."""
    if mode == "afpacket":
        return PortState(name, 0, mode=mode, afpacket_pid=1, afpacket_running=True)
    return PortState(name, 0, mode=mode, prog_id=prog_id)


def snapshot_of(devices=(), counters=None, errors: int = 0) -> Snapshot:
    """A Snapshot of these attached devices, with `errors` things unreadable."""
    return Snapshot({d.name: d for d in devices}, dict(counters or {}),
                    [XdpfwdError("unreadable")] * errors)

