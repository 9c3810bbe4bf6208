"""Where the router's CPU goes: `perf record -g` of the router's eth1 NAPI
thread (where the kernel and XDP rows do all of their work) for one window
of a row (a window of its own: sampling slows what it watches), each
sample put in a part of the path by the kernel function it was taken in
(PARTS), except the wake-up of recvbox's NAPI thread, known by its callers
(wakes_recvbox()).

The AF_PACKET forwarder's work is spread over threads (the NAPI thread, its
own processes, their system calls), so for it the whole router CPU is
sampled, and each sample goes to the part of the path its kernel frames
pass through (STACK_PARTS: under ip_list_rcv() it is the kernel's own copy
of the frame, under veth_xmit() the transmit; a page given back to the
generator's pool has a part of its own, wherever it is freed), else by the
user-space code it was taken in (USER_PARTS, by the file of the innermost
user-space frame: the C extension and Python are built without frame
pointers, so their callers are not to be trusted).

Both sample the cpu-clock (a timer: this VM has no hardware counters, and
the report's figures must not depend on whether a machine has them).
"""

import re
import subprocess
import tempfile
import time
from pathlib import Path

WAKE = "waking recvbox's NAPI thread on the other CPU (__napi_schedule)"
# The transmit into recvbox wakes recvbox's NAPI thread (on the generator's
# CPU) when that thread has gone idle: __veth_xdp_flush() (inlined) calls
# __napi_schedule() from veth_xmit() after every skb, and from
# veth_xdp_xmit() when the devmap is flushed at the end of a NAPI poll.
# Everything under that call (try_to_wake_up(), the other CPU's run queue
# lock, the IPI) is the wake-up. The router's thread also calls
# __napi_schedule() for its own NAPI (veth_poll() finding its ring filled
# again, napi_complete_done()): that is its receive.
WAKE_CALL = re.compile(r"^__napi_schedule|^napi_schedule")
TRANSMIT_CALLER = re.compile(r"^veth_xmit$|^veth_xdp_xmit$|^veth_ndo_xdp_xmit$|^bq_xmit_all$|"
                             r"^__dev_flush$|^xdp_do_flush$")


def wakes_recvbox(kernel: list[str]) -> bool:
    """Whether a sample's kernel frames (innermost first) are the transmit
    waking recvbox's NAPI thread."""
    for i, sym in enumerate(kernel):
        if WAKE_CALL.search(sym):
            return any(TRANSMIT_CALLER.search(caller) for caller in kernel[i + 1:])
    return False


# (part, pattern of the name of the function a sample was taken in); the
# first that matches takes it. WAKE goes by wakes_recvbox() instead.
PARTS = [
    ("XDP program (JIT)", re.compile(r"^bpf_prog_")),
    # make_kuid(): the flow key's uid that bpf_fib_lookup() sets up;
    # find_exception(): the route's PMTU exception, for the MTU check.
    ("FIB lookups (bpf_fib_lookup and the tables)",
     re.compile(r"fib|^ip6?_route|^rt6?_|^fib6_|^neigh|^__ipv[46]_neigh|^ipv6_|^make_kuid$|"
                r"^map_id_range_down$|^find_exception$")),
    (WAKE, None),
    ("transmit into recvbox (redirect, devmap flush, veth's transmit)",
     re.compile(r"redirect|dev_map|devmap|^bq_|xdp_do_flush|__dev_flush|veth_xdp_xmit|"
                r"veth_ndo_xdp_xmit|__veth_xdp_flush|xdp_flush|ptr_ring_produce|^veth_xmit$|"
                r"^veth_xdp_rx$|veth_forward_skb|__dev_forward_skb")),
    ("spinlocks (the veth rings' locks, either side)", re.compile(r"_raw_spin|spin_lock")),
    ("veth receive (NAPI poll, ring, page pool, rescheduling itself)",
     re.compile(r"veth_|napi|ptr_ring|page_pool|xdp_return|xdp_convert|__xdp_|"
                r"skb_defer|net_rx|do_xdp")),
    ("kernel stack (skb, IP, netfilter)",
     re.compile(r"skb|^ip_|^ip6_|^nf_|^__netif|^netif|^dev_|^eth_|^__dev|^sch_|^qdisc|^__qdisc|"
                r"kmem_cache|kfree|^__alloc|^napi_build|^build_skb")),
]
OTHER = "other"
KERNEL_DSO = "[kernel.kallsyms]"
IDLE = re.compile(r"^swapper")
FRAME = re.compile(r"^\s+[0-9a-f]+\s+(\S+)(?:\s+\((.*)\))?\s*$")


def _samples(script: str):
    """`perf script -F comm,ip,sym,dso` output -> each busy sample's frames,
    (function, file), innermost first; the idle task's are left out."""
    for sample in script.split("\n\n"):
        lines = [l for l in sample.splitlines() if l.strip()]
        if not lines or IDLE.match(lines[0].strip()):
            continue
        frames = [(m.group(1).split("+")[0], m.group(2) or "")
                  for m in map(FRAME.match, lines[1:]) if m]
        if frames:
            yield frames


def _share_out(script: str, names: list[str], part_of) -> dict[str, float]:
    """`perf script -F comm,ip,sym,dso` output of call-chain samples ->
    share (0..100) of the busy samples per part (names, then OTHER): WAKE
    when wakes_recvbox() says so, else part_of(frames, kernel frames)."""
    shares = {name: 0 for name in names}
    shares[OTHER] = 0
    busy = 0
    for frames in _samples(script):
        busy += 1
        kernel = [sym for sym, dso in frames if dso == KERNEL_DSO]
        shares[WAKE if wakes_recvbox(kernel) else part_of(frames, kernel) or OTHER] += 1
    return {k: 100.0 * v / busy for k, v in shares.items()} if busy else {}


def attribute(script: str) -> dict[str, float]:
    """The NAPI thread's samples -> share per part, in PARTS order, OTHER
    last: by the function each was taken in."""
    return _share_out(script, [name for name, _ in PARTS], lambda frames, _: next(
        (name for name, pat in PARTS if pat and pat.search(frames[0][0])), None))


def _perf(target: list[str], seconds: float, read: list[str]) -> str | None:
    """`perf record` of `target` (its options: what to sample) for `seconds`,
    then `perf` `read` (a report or script command) of what it recorded:
    that command's output; None when perf is missing or refuses."""
    with tempfile.TemporaryDirectory(prefix="xdpfwd-bench-perf-") as d:
        data = Path(d) / "perf.data"
        try:
            rec = subprocess.run(["perf", "record", "-q", *target, "-o", str(data), "--",
                                  "sleep", str(seconds)], capture_output=True, text=True,
                                 timeout=seconds + 30)
            if rec.returncode != 0 or not data.exists():
                return None
            out = subprocess.run(["perf", *read[:1], "-i", str(data), *read[1:]],
                                 capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return None
    return out.stdout if out.returncode == 0 else None


def record(tids: list[int], seconds: float) -> dict[str, float] | None:
    """Sample the threads with call chains for `seconds`; None when perf is
    missing or refuses."""
    script = _perf(["-e", "cpu-clock", "-g", "-t", ",".join(map(str, tids))], seconds,
                   ["script", "-F", "comm,ip,sym,dso"])
    if script is None:
        return None
    return attribute(script) or None


def profile(bed, traffic, seconds: float = 1.0, cpu: int | None = None,
            rate_pps: float | None = None) -> dict[str, float] | None:
    """perf while `traffic` flows through what is attached now, flooded or
    paced at rate_pps: on the router's NAPI thread, or with `cpu`, on all
    of that CPU with call chains (record_cpu())."""
    gen = bed.generators[traffic]
    tids = bed.pin_napi()
    gen.set_rate(rate_pps)
    gen.start()
    try:
        time.sleep(0.25)
        return record(tids, seconds) if cpu is None else record_cpu(cpu, seconds)
    finally:
        gen.stop()
        gen.set_rate(None)


# (part, pattern of a kernel function); a sample goes to the first part
# any kernel frame of its call chain matches, so the more specific come
# first.
STACK_PARTS = [
    ("giving received frames' pages back to the generator's page pool, owned by "
     "the other CPU (napi_pp_put_page)", re.compile(r"^napi_pp_put_page$")),
    ("the rest of the kernel's own copy of each frame (IP input finds forwarding off "
     "and drops it)", re.compile(r"^ip_list_rcv$|^ip_rcv|^ip_sublist_rcv$|^ipv6_list_rcv$|"
                                 r"^ipv6_rcv$|^ip6_")),
    ("the packet socket's copy into the forwarder's RX ring",
     re.compile(r"^tpacket_rcv$|^packet_rcv_fanout$|^packet_rcv$")),
    ("transmit: veth into recvbox", re.compile(r"^veth_xmit$")),
    ("transmit: a new skb per frame (allocation)", re.compile(r"^sock_alloc_send_pskb$")),
    ("transmit: the rest of send() (tpacket_snd)", re.compile(r"^__sys_sendto$|^packet_sendmsg$")),
    ("switching between the NAPI thread and the forwarder", re.compile(r"^__?schedule$|"
                                                                        r"^finish_task_switch")),
    ("receive: veth, skb and GRO (the NAPI thread)", re.compile(r"^veth_poll$|^napi_threaded_poll")),
    ("the forwarder's other system calls (poll, counters)", re.compile(r"^do_syscall_64$")),
]
# (part, pattern of the file of the innermost user-space frame), for a
# sample none of whose kernel frames (if any) matched above.
USER_PARTS = [
    ("the C fast path (user space)", re.compile(r"_fastpath")),
    ("Python and libc (the worker's loop)", re.compile(r"python|libc|\[unknown\]")),
]
def _stack_part(frames, kernel: list[str]) -> str | None:
    """The first of STACK_PARTS any kernel frame matches, else the
    USER_PARTS of the innermost user-space frame's file."""
    part = next((name for name, pat in STACK_PARTS if any(pat.search(k) for k in kernel)), None)
    user = next((dso for _, dso in frames if dso != KERNEL_DSO), None)
    if part is None and user is not None:
        part = next((name for name, pat in USER_PARTS if pat.search(user)), None)
    return part


def attribute_stacks(script: str) -> dict[str, float]:
    """The whole CPU's samples -> share of the busy ones per part, WAKE then
    STACK_PARTS then USER_PARTS order, OTHER last; the idle task's samples
    are left out."""
    return _share_out(script, [WAKE] + [name for name, _ in STACK_PARTS + USER_PARTS],
                      _stack_part)


def record_cpu(cpu: int, seconds: float) -> dict[str, float] | None:
    """Sample everything on `cpu` with call chains for `seconds`; None when
    perf is missing or refuses."""
    script = _perf(["-e", "cpu-clock", "-g", "-C", str(cpu)], seconds,
                   ["script", "-F", "comm,ip,sym,dso"])
    if script is None:
        return None
    return attribute_stacks(script) or None
