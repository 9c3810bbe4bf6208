"""Threaded NAPI: a veth's receive path in a kernel thread of its own,
pinned to the CPU the report charges it to.

Without it, a veth receives in the softirq of whoever transmits into it:
the generator's CPU for every frame it sends, so the router's receive
(veth, the packet socket's copy into its ring, the kernel's own copy) ran
on the generator's CPU and was left out of every row's cost. With
`/sys/class/net/IF/threaded` set, veth's NAPI poll (veth_poll(): the XDP
program, the stack, everything the router does with the frame, down to
its transmit into the next veth) runs in the kthread `napi/IF-ID`, which
sched_setaffinity pins like any task. The kernel names that thread after
the NAPI instance, not the namespace, so its pid comes from the netdev
generic netlink family (NETDEV_CMD_NAPI_GET, asked in the interface's
namespace), not from the thread's name.
"""

import os
import subprocess

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, genlmsg
from pyroute2.netlink.generic import GenericNetlinkSocket
from xdpfwd import netlink, netns

NETDEV_CMD_NAPI_GET = 11  # include/uapi/linux/netdev.h


class _napi(genlmsg):
    nla_map = (("NETDEV_A_NAPI_UNSPEC", "none"),
               ("NETDEV_A_NAPI_IFINDEX", "uint32"),
               ("NETDEV_A_NAPI_ID", "uint32"),
               ("NETDEV_A_NAPI_IRQ", "uint32"),
               ("NETDEV_A_NAPI_PID", "uint32"))


class NapiError(RuntimeError):
    pass


def set_threaded(ns: str, ifname: str, on: bool = True) -> None:
    """Writes the namespace's own sysfs (`ip netns exec` mounts it), which
    a setns() from this process would not show."""
    path = f"/sys/class/net/{ifname}/threaded"
    r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {int(on)} > {path}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise NapiError(f"{ns} {ifname}: cannot set threaded NAPI: {r.stderr.strip()}")


def threads(ns: str, ifname: str) -> list[int]:
    """The pids of the NAPI kthreads of ns/ifname (one per receive queue)."""
    with netns.entered(ns):
        ifindex = netlink.link(ifname).index
        sock = GenericNetlinkSocket()
        try:
            sock.bind("netdev", _napi)
            msg = _napi()
            msg["cmd"] = NETDEV_CMD_NAPI_GET
            msg["version"] = 1
            msg["attrs"] = [("NETDEV_A_NAPI_IFINDEX", ifindex)]
            replies = sock.nlm_request(msg, msg_type=sock.prid,
                                       msg_flags=NLM_F_REQUEST | NLM_F_DUMP)
            pids = [m.get_attr("NETDEV_A_NAPI_PID") for m in replies]
        finally:
            sock.close()
    pids = [p for p in pids if p]
    if not pids:
        raise NapiError(f"{ns} {ifname}: no threaded NAPI (is NAPI on: GRO or XDP?)")
    return pids


def pin(ns: str, ifname: str, cpu: int, realtime: bool = False) -> list[int]:
    """Pin ns/ifname's NAPI threads to cpu (again: veth may create them
    anew when its NAPI is switched off and on); returns their pids.
    realtime: SCHED_FIFO, so that the thread runs as soon as it has frames,
    ahead of whatever ordinary task shares its CPU."""
    pids = threads(ns, ifname)
    for pid in pids:
        if os.sched_getaffinity(pid) != {cpu}:
            os.sched_setaffinity(pid, {cpu})
        if realtime and os.sched_getscheduler(pid) != os.SCHED_FIFO:
            os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(1))
    return pids
