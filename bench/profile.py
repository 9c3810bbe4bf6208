"""Where the router's CPU goes: `perf record` of the router's eth1 NAPI
thread (where the kernel and XDP rows do all of their work) for one window
of a row (a window of its own: sampling slows what it watches), its
samples summed by kernel function into the parts of the path.
"""

import re
import subprocess
import tempfile
import time
from pathlib import Path

# (part, pattern of the function's name); the first that matches takes it.
PARTS = [
    ("XDP program (JIT)", re.compile(r"^bpf_prog_")),
    ("FIB lookups (bpf_fib_lookup and the tables)",
     re.compile(r"fib|^ip6?_route|^rt6?_|^fib6_|^neigh|^__ipv[46]_neigh|^ipv6_")),
    ("redirect, devmap flush and veth transmit",
     re.compile(r"redirect|dev_map|devmap|^bq_|xdp_do_flush|__dev_flush|veth_xdp_xmit|"
                r"veth_ndo_xdp_xmit|__veth_xdp_flush|xdp_flush|ptr_ring_produce")),
    ("spinlocks (the veth rings' locks, either side)", re.compile(r"_raw_spin|spin_lock")),
    ("veth receive (NAPI poll, ring, page pool)",
     re.compile(r"veth_|napi|ptr_ring|page_pool|xdp_return|xdp_convert|__xdp_|"
                r"skb_defer|net_rx|do_xdp")),
    ("kernel stack (skb, IP, netfilter)",
     re.compile(r"skb|^ip_|^ip6_|^nf_|^__netif|^netif|^dev_|^eth_|^__dev|^sch_|^qdisc|^__qdisc|"
                r"kmem_cache|kfree|^__alloc|^napi_build|^build_skb")),
]
OTHER = "other"
LINE = re.compile(r"^\s*([\d.]+)%\s+\[[k.]\]\s+(\S+)")


def attribute(report: str) -> dict[str, float]:
    """`perf report --stdio --no-children --sort symbol` output -> share
    (0..100) per part, in PARTS order, OTHER last."""
    shares = {name: 0.0 for name, _ in PARTS}
    shares[OTHER] = 0.0
    for line in report.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        pct, sym = float(m.group(1)), m.group(2)
        part = next((name for name, pat in PARTS if pat.search(sym)), OTHER)
        shares[part] += pct
    return shares


def record(tids: list[int], seconds: float) -> dict[str, float] | None:
    """Sample the threads for `seconds`; None when perf is missing or refuses."""
    with tempfile.TemporaryDirectory(prefix="xdpfwd-bench-perf-") as d:
        data = Path(d) / "perf.data"
        try:
            rec = subprocess.run(["perf", "record", "-q", "-t", ",".join(map(str, tids)), "-o", str(data), "--",
                                  "sleep", str(seconds)], capture_output=True, text=True,
                                 timeout=seconds + 30)
            if rec.returncode != 0 or not data.exists():
                return None
            rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                                  "--sort", "symbol", "-q"], capture_output=True, text=True,
                                 timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
    if rep.returncode != 0:
        return None
    shares = attribute(rep.stdout)
    return shares if sum(shares.values()) > 0 else None


def profile(bed, traffic, seconds: float = 1.0) -> dict[str, float] | None:
    """perf on the router's NAPI thread while `traffic` flows through what
    is attached now."""
    gen = bed.generators[traffic]
    tids = bed.pin_napi()
    gen.start()
    try:
        time.sleep(0.25)
        return record(tids, seconds)
    finally:
        gen.stop()
