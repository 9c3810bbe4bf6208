"""The benchmark's lab: `xdpfwd lab up` under the bench- prefix, plus what
the benchmark adds to it, and all of it removed again however the run ends.

Added: the sink on recvbox's eth0 (sink.c), the ceiling program (loaded,
attached only during its row), one generator per kind of traffic, GRO on
the router's eth1, threaded NAPI on the router's eth1 (pinned to the
router's CPU) and on recvbox's eth0 (pinned to the generator's CPU);
kernel.bpf_stats_enabled is switched on only for the windows that time the
XDP programs, and its old value is put back.

Threaded NAPI (bench/napi.py): veth receives in the NAPI of the receiving
end, scheduled on the CPU that transmits. Pinning the router's eth1 NAPI
thread to the router's CPU puts the router's whole receive path there, for
every row alike (kernel, XDP, user space); pinning recvbox's keeps the
sink off it. The sink shares the generator's CPU, so its thread runs
SCHED_FIFO: with the generator's ordinary share of the CPU it fell behind
and its ring (256 frames) dropped what the router had forwarded; now the
generator gets what the sink leaves, still more than any row takes.

GRO on the router's eth1: the generator transmits with XDP_REDIRECT, and
veth accepts a redirected frame only where the receiving end runs NAPI,
which it does with an XDP program or GRO. Rows without a native XDP
program on eth1 need GRO there; a real NIC has it on anyway.
"""

import os
import socket
import subprocess
from pathlib import Path

from xdpfwd import lab, netlink, netns

from bench import frames, napi, router
from bench.generator import Generator
from bench.xdpprog import XdpProgram

GENERATOR_CPU = 0
ROUTER_CPU = 1
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def _mac(ns: str, ifname: str) -> bytes:
    with netns.entered(ns):
        return bytes.fromhex(netlink.link(ifname).mac.replace(":", ""))


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=True)


class Testbed:
    def __init__(self, traffics: list[frames.Traffic], log=print):
        if not lab.PREFIX:
            raise SystemExit("bench: XDPFWD_LAB_PREFIX is empty; the benchmark never uses the "
                             "unprefixed lab (other people's tests run there)")
        if (os.cpu_count() or 1) < 2:
            raise SystemExit("bench: needs 2 CPUs, one for the generator, one for the router")
        self.traffics = traffics
        self.log = log
        self.sendbox, self.router, self.recvbox = lab.ns("sendbox"), lab.ns("router"), lab.ns("recvbox")
        self.generators: dict[frames.Traffic, Generator] = {}
        self.sink = self.ceiling = None
        self._bpf_stats_was: str | None = None

    # -- set up and tear down ---------------------------------------------

    def __enter__(self):
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()

    def _lab(self, verb: str) -> str:
        return _run([str(router.XDPFWD), "lab", verb]).stdout.strip()

    def _up(self) -> None:
        self._lab("down")  # a lab left by an interrupted run: start clean
        self.log(self._lab("up").splitlines()[0])
        _run(router.in_ns(self.router, ["ethtool", "-K", "eth1", "gro", "on"]))
        napi.set_threaded(self.router, "eth1")
        napi.set_threaded(self.recvbox, "eth0")
        self.pin_napi()
        self.namespaces = [self.sendbox, self.router, self.recvbox]
        self._bpf_stats_was = BPF_STATS.read_text().strip()
        self.bpf_stats(False)
        self.sink = XdpProgram("sink.c", "bench_sink", "bench_sink_count")
        self.sink.attach(self.recvbox, "eth0")
        self.ceiling = XdpProgram("ceiling.c", "bench_ceiling", "bench_ceiling_count")
        dmac, smac = _mac(self.router, "eth1"), _mac(self.sendbox, "eth0")
        src = socket.inet_aton(lab.address("sendbox"))
        dst = socket.inet_aton(lab.address("recvbox"))
        for t in self.traffics:
            self.generators[t] = Generator(self.sendbox, "eth0", t, dmac, smac, src, dst,
                                           GENERATOR_CPU)
        self.resolve_neighbours()

    def pin_napi(self) -> list[int]:
        """Pin the NAPI threads (again: attaching XDP may restart them);
        returns the router's, whose CPU time is the router's receive."""
        napi.pin(self.recvbox, "eth0", GENERATOR_CPU, realtime=True)
        return napi.pin(self.router, "eth1", ROUTER_CPU)

    def resolve_neighbours(self) -> None:
        """The router must know recvbox's MAC before traffic starts, as any
        router would after the first packet."""
        subprocess.run(router.in_ns(self.router, ["ping", "-c", "1", "-W", "1",
                                                  lab.address("recvbox")]),
                       capture_output=True)

    def down(self) -> None:
        for g in self.generators.values():
            g.close()
        self.generators.clear()
        if netns.exists(self.router):
            router.ensure_detached(self.router)
        for prog in (self.ceiling, self.sink):
            if prog is not None:
                try:
                    prog.detach()
                except Exception:
                    pass  # the lab goes next, and the program with it
        self.log(self._lab("down"))
        if self._bpf_stats_was is not None:
            BPF_STATS.write_text(self._bpf_stats_was + "\n")
            self._bpf_stats_was = None

    def bpf_stats(self, on: bool) -> None:
        BPF_STATS.write_text("1\n" if on else "0\n")

    # -- counters ----------------------------------------------------------

    def link_sent(self) -> int:
        """Frames sendbox's eth0 transmitted towards the router, or dropped
        because the router's receive ring was full."""
        stats = _stats(self.sendbox, "eth0")
        return stats["tx_packets"] + stats["tx_dropped"]

    def router_received(self) -> int:
        """Frames the router's eth1 took from its ring (veth counts each,
        whatever XDP did with it)."""
        return _stats(self.router, "eth1")["rx_packets"]


def _stats(ns: str, ifname: str) -> dict:
    from pyroute2 import IPRoute

    with netns.entered(ns), IPRoute() as ipr:
        (msg,) = ipr.get_links(ifname=ifname)
    return msg.get_attr("IFLA_STATS64")
