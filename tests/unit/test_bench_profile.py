"""The benchmark's perf attribution (bench/profile.py): call-chain samples
of `perf script` shared out by the part of the path they pass through.
No kernel needed: the samples are written here as perf prints them."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import profile  # noqa: E402

KERNEL = "([kernel.kallsyms])"
FASTPATH = "(/x/control/afpacket/_fastpath.cpython-311-x86_64-linux-gnu.so)"


def sample(comm: str, *frames: tuple[str, str]) -> str:
    """One sample: its task, then its chain from the leaf up."""
    return comm + " \n" + "".join(f"\tffffffff81000000 {sym} {dso}\n" for sym, dso in frames)


KERNEL_COPY_FREED = sample("napi/eth1-3180", ("_raw_spin_lock", KERNEL),
                           ("page_pool_put_unrefed_netmem", KERNEL), ("napi_pp_put_page", KERNEL),
                           ("ip_error", KERNEL), ("ip_list_rcv", KERNEL), ("veth_poll", KERNEL))
KERNEL_COPY_ROUTED = sample("napi/eth1-3180", ("ip_route_input_slow", KERNEL),
                            ("ip_list_rcv", KERNEL), ("veth_poll", KERNEL))
RING_COPY = sample("napi/eth1-3180", ("__pi_memcpy", KERNEL), ("tpacket_rcv", KERNEL),
                   ("veth_poll", KERNEL))
VETH_XMIT = sample("python3", ("veth_xdp_rx", KERNEL), ("veth_xmit", KERNEL),
                   ("packet_sendmsg", KERNEL), ("__sys_sendto", KERNEL), ("do_syscall_64", KERNEL),
                   ("kick", FASTPATH))
VETH_XMIT_WAKES = sample("python3", ("__napi_schedule", KERNEL), ("veth_xmit", KERNEL),
                         ("packet_sendmsg", KERNEL), ("__sys_sendto", KERNEL),
                         ("do_syscall_64", KERNEL), ("kick", FASTPATH))
SKB_ALLOC = sample("python3", ("allocate_slab", KERNEL), ("sock_alloc_send_pskb", KERNEL),
                   ("packet_sendmsg", KERNEL), ("__sys_sendto", KERNEL))
DECISION = sample("python3", ("hop_slot+0x1a", FASTPATH), ("[unknown]", "([unknown])"))
# An interrupt taken in the C: its kernel frames name no part, the user
# frame under them decides.
DECISION_INTERRUPTED = sample("python3", ("irqentry_exit_to_user_mode", KERNEL),
                              ("asm_sysvec_call_function_single", KERNEL),
                              ("FastPath_run", FASTPATH))
# The NAPI thread giving the CPU up to the forwarder: switching, not receive.
NAPI_YIELDS = sample("napi/eth1-3180", ("finish_task_switch.isra.0", KERNEL), ("__schedule", KERNEL),
                     ("napi_threaded_poll_loop", KERNEL), ("napi_threaded_poll", KERNEL))
PYTHON = sample("python3", ("_PyEval_EvalFrameDefault", "(/usr/bin/python3.11)"))
IDLE = sample("swapper", ("pv_native_safe_halt", KERNEL), ("default_idle", KERNEL))
UNKNOWN = sample("kworker/1:0", ("process_one_work", KERNEL))


def shares(*samples: str) -> dict[str, float]:
    got = profile.attribute_stacks("\n".join(samples))
    return {name: pct for name, pct in got.items() if pct}


def part(start: str) -> str:
    return next(name for name, _ in profile.STACK_PARTS + profile.USER_PARTS
                if name.startswith(start))


def test_each_sample_goes_to_the_part_its_chain_passes_through():
    got = shares(KERNEL_COPY_FREED, KERNEL_COPY_ROUTED, RING_COPY, VETH_XMIT, VETH_XMIT_WAKES,
                 SKB_ALLOC, DECISION, DECISION_INTERRUPTED, NAPI_YIELDS, PYTHON, UNKNOWN)
    n = 100 / 11
    assert got == pytest.approx({
        part("giving received frames' pages back"): n,  # before IP input: the page's return
        part("the rest of the kernel's own copy"): n,
        part("the packet socket's copy"): n,             # before "receive: veth"
        part("transmit: veth"): n,                       # before "the rest of send()", the C's kick
        profile.WAKE: n,                                 # before "transmit: veth", its caller
        part("transmit: a new skb"): n,
        part("switching"): n,                            # before "receive: veth"
        part("the C fast path"): 2 * n,
        part("Python and libc"): n,
        profile.OTHER: n,
    })


def test_the_idle_task_is_left_out_of_the_shares():
    assert shares(IDLE, RING_COPY, IDLE, PYTHON) == {part("the packet socket's copy"): 50.0,
                                                      part("Python and libc"): 50.0}
    assert profile.attribute_stacks(IDLE) == {}


# The router's NAPI thread, `perf script` of its call chains; the samples
# of the kernel row's forwarding and of native XDP's together.
XDP_REDIRECT_FLUSH = ("veth_xdp_xmit", KERNEL), ("veth_ndo_xdp_xmit", KERNEL), \
    ("bq_xmit_all", KERNEL), ("__dev_flush", KERNEL), ("xdp_do_flush", KERNEL), \
    ("veth_poll", KERNEL)
KERNEL_XMIT = ("veth_xmit", KERNEL), ("dev_hard_start_xmit", KERNEL), \
    ("__dev_queue_xmit", KERNEL), ("ip_finish_output2", KERNEL), ("ip_forward", KERNEL), \
    ("veth_poll", KERNEL)
NAPI = "napi/eth1-3180"
NAPI_THREAD = "\n".join([
    sample(NAPI, ("bpf_prog_c6c96178ee852962_xdpfwd_redirect", "([kernel.kallsyms])"),
           ("veth_xdp_rcv_one", KERNEL), ("veth_poll", KERNEL)),
    sample(NAPI, ("fib_table_lookup", KERNEL), ("bpf_ipv4_fib_lookup", KERNEL),
           ("bpf_xdp_fib_lookup", KERNEL)),
    sample(NAPI, ("make_kuid", KERNEL), ("bpf_ipv4_fib_lookup", KERNEL)),
    sample(NAPI, ("find_exception", KERNEL), ("ip_mtu_from_fib_result", KERNEL)),
    # The wake-up of recvbox: at __napi_schedule (a timer's samples land
    # where interrupts come back on), or under it.
    sample(NAPI, ("__napi_schedule", KERNEL), *XDP_REDIRECT_FLUSH),
    sample(NAPI, ("try_to_wake_up", KERNEL), ("__napi_schedule", KERNEL), *KERNEL_XMIT),
    sample(NAPI, ("_raw_spin_lock", KERNEL), ("try_to_wake_up", KERNEL),
           ("__napi_schedule", KERNEL), *KERNEL_XMIT),
    # The router rescheduling its own NAPI: receive.
    sample(NAPI, ("__napi_schedule", KERNEL), ("veth_poll", KERNEL), ("__napi_poll", KERNEL)),
    sample(NAPI, ("__napi_schedule", KERNEL), ("napi_complete_done", KERNEL),
           ("veth_poll", KERNEL)),
    sample(NAPI, ("veth_xdp_rcv", KERNEL), ("veth_poll", KERNEL)),
    sample(NAPI, ("veth_xdp_rcv_skb", KERNEL), ("veth_poll", KERNEL)),
    # The transmit itself.
    sample(NAPI, ("veth_xmit", KERNEL), *KERNEL_XMIT[1:]),
    sample(NAPI, ("__dev_forward_skb2", KERNEL), ("veth_forward_skb", KERNEL), *KERNEL_XMIT),
    sample(NAPI, ("veth_xdp_xmit", KERNEL), *XDP_REDIRECT_FLUSH[1:]),
    sample(NAPI, ("_raw_spin_lock", KERNEL), ("veth_xdp_rcv", KERNEL), ("veth_poll", KERNEL)),
    sample(NAPI, ("ip_forward", KERNEL), ("ip_sublist_rcv", KERNEL), ("veth_poll", KERNEL)),
    sample(NAPI, ("pv_native_safe_halt", KERNEL)),
    IDLE,
])


def test_the_wake_up_of_recvbox_is_known_by_its_callers():
    """__napi_schedule under the transmit (veth_xmit(), the devmap's flush)
    and whatever runs under it is the wake-up of recvbox's NAPI thread; under
    veth_poll() or napi_complete_done() it is the router rescheduling its
    own NAPI, its receive (which the pattern "napi" takes)."""
    got = {k: v for k, v in profile.attribute(NAPI_THREAD).items() if v}
    n = 100 / 17
    assert got == pytest.approx({
        "XDP program (JIT)": n,
        "FIB lookups (bpf_fib_lookup and the tables)": 3 * n,
        profile.WAKE: 3 * n,
        "transmit into recvbox (redirect, devmap flush, veth's transmit)": 3 * n,
        "spinlocks (the veth rings' locks, either side)": n,
        "veth receive (NAPI poll, ring, page pool, rescheduling itself)": 4 * n,
        "kernel stack (skb, IP, netfilter)": n,
        profile.OTHER: n,
    })
