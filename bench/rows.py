"""The rows of the table: the ways a packet can cross the router, each
started before its measurements and stopped after them.

Every forwarder runs on the router's CPU, with its receive path: the
router's eth1 receives in a NAPI thread pinned there (testbed.py), so the
kernel and XDP paths (which run inside that thread) and the user-space
forwarders (pinned there with taskset; the workers inherit the
supervisor's affinity) pay for the same receive on the same CPU. A
user-space forwarder shares that CPU with its receive path; flooded, it
mostly receives what its full ring then drops, so these rows (userspace)
are also measured at the rate they carry (bench/rate.py), and the report
compares them by router CPU per forwarded packet at that rate (receive
path included).
"""

from xdpfwd import bpfsys, netns, sysctl

from bench import cpu, peer, router
from bench.testbed import ROUTER_CPU, Testbed

PORTS = ["eth1", "eth0"]


class Row:
    key = ""
    label = ""
    counts_at = "sink"  # where its packets are counted: the sink, or the ceiling program
    userspace = False   # a user-space forwarder: also measured at the rate it carries

    def __init__(self):
        self.prog_id = 0            # the XDP program to read run time from, if any
        self.pids: list[int] = []   # user-space forwarders, each counted with its children
        self.timings: dict[str, list[float]] = {}

    def _time(self, what: str, seconds: float) -> None:
        self.timings.setdefault(what, []).append(seconds)

    def start(self, bed: Testbed) -> None:
        pass

    def stop(self, bed: Testbed) -> None:
        pass

    def prog_stats(self) -> tuple[int, int]:
        """(run_time_ns, run_cnt) of the row's XDP program, (0, 0) without."""
        if not self.prog_id:
            return 0, 0
        with bpfsys.prog_by_id(self.prog_id) as prog:
            info = bpfsys.prog_info(prog.fd)
        return info.run_time_ns, info.run_cnt


class Kernel(Row):
    key, label = "kernel", "kernel IP forwarding"

    def start(self, bed):
        # The lab's router forwards; the user-space rows turn that off while
        # they run and must have put it back.
        with netns.entered(bed.router):
            off = [p for p in PORTS if not sysctl.forwarding("ipv4", p)]
        if off:
            raise router.RouterError(f"kernel row: IPv4 forwarding is off on {', '.join(off)}")


class Xdp(Row):
    def __init__(self, mode: str, rp_filter: int = 0):
        super().__init__()
        self.mode = mode
        self.rp_filter = rp_filter
        self.key = f"xdp_{mode}" + (f"_rp{rp_filter}" if rp_filter else "")
        self.label = f"xdpfwd {mode} XDP" if mode == "native" else f"xdpfwd {mode} (generic) XDP"
        if rp_filter:
            self.label += f", rp_filter={rp_filter}"

    def _rp_filter(self, bed, value: int) -> None:
        with netns.entered(bed.router):
            sysctl.write(sysctl.path("ipv4", "conf", "all", "rp_filter"), str(value))

    def start(self, bed):
        if self.rp_filter:
            # The program's reverse-path check runs whatever the sysctl
            # says; with rp_filter on, the kernel row it is compared with
            # pays for its own check too.
            self._rp_filter(bed, self.rp_filter)
        t = router.xdpfwd(bed.router, "attach", *PORTS, "--mode", self.mode)
        self._time("attach", t.seconds)
        ports = router.status(bed.router)
        ids = {p["prog_id"] for p in ports.values() if p["attached"]}
        modes = {p["mode"] for p in ports.values() if p["attached"]}
        if len(ids) != 1 or modes != {self.mode}:
            raise router.RouterError(f"{self.key}: attach left {ports}")
        self.prog_id = ids.pop()

    def attach_again(self, bed):
        """The same attach once more: xdpfwd sees it is in place."""
        t = router.xdpfwd(bed.router, "attach", *PORTS, "--mode", self.mode)
        self._time("attach_again", t.seconds)

    def stop(self, bed):
        if self.prog_id:
            t = router.xdpfwd(bed.router, "detach")
            self._time("detach", t.seconds)
            self.prog_id = 0
        if self.rp_filter:
            self._rp_filter(bed, 0)


class Afpacket(Row):
    key, label = "afpacket", "xdpfwd afpacket"
    userspace = True

    def start(self, bed):
        t = router.xdpfwd(bed.router, "attach", *PORTS, "--mode", "afpacket", cpu=ROUTER_CPU)
        self._time("attach", t.seconds)
        pid = next(p["pid"] for p in router.status(bed.router).values() if p.get("pid"))
        self.pids = [pid]  # the supervisor, with its workers (and any it restarts)
        stray = [p for p in [pid, *cpu.children(pid)] if cpu.allowed_cpus(p) != {ROUTER_CPU}]
        if stray:
            raise router.RouterError(f"afpacket: processes {stray} are not pinned to CPU {ROUTER_CPU}")

    def stop(self, bed):
        if self.pids:
            t = router.xdpfwd(bed.router, "detach")
            self._time("detach", t.seconds)
            self.pids = []


class Naive(Row):
    key, label = "naive", "naive AF_PACKET loop"
    userspace = True

    def __init__(self):
        super().__init__()
        self.proc: router.Process | None = None

    def start(self, bed):
        self.proc = router.start_naive(bed.router, PORTS, ROUTER_CPU)
        self.pids = [self.proc.pid]

    def stop(self, bed):
        if self.proc:
            self.proc.stop()
            self.proc, self.pids = None, []


class Ceiling(Row):
    key, label = "ceiling", "ceiling: XDP drop at router ingress"
    counts_at = "ceiling"

    def start(self, bed):
        bed.ceiling.attach(bed.router, "eth1")
        self.prog_id = bed.ceiling.prog_id

    def stop(self, bed):
        bed.ceiling.detach()
        self.prog_id = 0


class Peer(Row):
    """xdp-tools' xdp-forward in fib mode (bench/peer.py): the same job
    (bpf_fib_lookup(), a devmap), without counters or the kernel's checks."""
    key, label = "peer", "peer: xdp-tools xdp-forward (fib, native)"

    def start(self, bed):
        self._time("attach", peer.load(bed.router, PORTS))
        ids = {router.xdp_prog_id(bed.router, p) for p in PORTS}
        if len(ids) != 1 or 0 in ids:
            raise router.RouterError(f"peer: xdp-forward left programs {ids}")
        self.prog_id = ids.pop()

    def stop(self, bed):
        if self.prog_id:
            self.prog_id = 0
            peer.unload(bed.router, PORTS)


def all_rows() -> list[Row]:
    """In the order they are interleaved: A B C D E F, A B C D E F, ..."""
    return [Kernel(), Xdp("native"), Xdp("native", rp_filter=1), Xdp("skb"), Afpacket(), Naive(),
            Peer(), Ceiling()]
