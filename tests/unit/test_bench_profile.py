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
VETH_XMIT = sample("python3", ("__napi_schedule", KERNEL), ("veth_xmit", KERNEL),
                   ("packet_sendmsg", KERNEL), ("__sys_sendto", KERNEL), ("do_syscall_64", KERNEL),
                   ("kick", FASTPATH))
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
    got = shares(KERNEL_COPY_FREED, KERNEL_COPY_ROUTED, RING_COPY, VETH_XMIT, SKB_ALLOC,
                 DECISION, DECISION_INTERRUPTED, NAPI_YIELDS, PYTHON, UNKNOWN)
    assert got == pytest.approx({
        part("giving received frames' pages back"): 10,  # before IP input: the page's return
        part("the rest of the kernel's own copy"): 10,
        part("the packet socket's copy"): 10,             # before "receive: veth"
        part("transmit: veth"): 10,                       # before "the rest of send()", the C's kick
        part("transmit: a new skb"): 10,
        part("switching"): 10,                            # before "receive: veth"
        part("the C fast path"): 20,
        part("Python and libc"): 10,
        profile.OTHER: 10,
    })


def test_the_idle_task_is_left_out_of_the_shares():
    assert shares(IDLE, RING_COPY, IDLE, PYTHON) == {part("the packet socket's copy"): 50.0,
                                                      part("Python and libc"): 50.0}
    assert profile.attribute_stacks(IDLE) == {}


# `perf report --sort symbol` of the router's NAPI thread (native XDP, then
# the kernel's forwarding), as perf prints it.
NAPI_THREAD_REPORT = """\
    27.00%  [k] veth_xdp_rcv
    24.00%  [k] __napi_schedule
    22.00%  [k] bpf_prog_c6c96178ee852962_xdpfwd_redirect
     7.00%  [k] fib_table_lookup
     4.00%  [k] veth_xmit
     3.00%  [k] veth_xdp_xmit
     2.00%  [k] try_to_wake_up
     1.00%  [k] __kmem_cache_alloc_bulk
"""


def test_the_wake_up_of_recvbox_is_not_counted_as_receive():
    """__napi_schedule on the router's thread is the transmit waking recvbox's
    NAPI thread (an IPI): the pattern for the receive ("napi") would take it
    if the wake-up's part did not come first, and veth_xmit ("veth_") too."""
    got = {k: v for k, v in profile.attribute(NAPI_THREAD_REPORT).items() if v}
    first = {name.split(" (")[0].split(" on ")[0]: name for name, _ in profile.PARTS}
    assert got == pytest.approx({
        first["veth receive"]: 27,
        first["waking recvbox's NAPI thread"]: 26,
        first["XDP program"]: 22,
        first["FIB lookups"]: 7,
        first["transmit into recvbox"]: 7,
        first["kernel stack"]: 1,
    })
