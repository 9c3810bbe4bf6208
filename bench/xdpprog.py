"""The benchmark's own small XDP programs (sink.c, ceiling.c, generator.c):
compiled by bcc, attached to and detached from an interface of a lab
namespace, their per-CPU counts read through bcc's table API.
"""

import ctypes
from pathlib import Path

from xdpfwd import bpfsys, compiler, netlink, netns
from xdpfwd.errors import XdpfwdError

HERE = Path(__file__).parent


def compile_bpf(source: str, functions: list[tuple[str, int]], cflags: list[str] = ()):
    """Compile HERE/source with bcc (xdpfwd's one bcc adapter) and load the
    XDP functions, each with its expected attach type (-1: none). Returns
    (bcc object, [fds]); keep the object: the programs and maps live as
    long as it does."""
    try:
        return compiler.bcc_compile(HERE / source, functions, list(cflags))
    except XdpfwdError as e:
        raise RuntimeError(f"{source}: {e}") from None


class XdpProgram:
    """One C file, one XDP function, one 2-slot per-CPU array (packets,
    bytes) called `table`."""

    def __init__(self, source: str, function: str, table: str):
        self.bpf, (self.fd,) = compile_bpf(source, [(function, -1)])
        self.table = self.bpf.get_table(table)
        self.prog_id = bpfsys.prog_info(self.fd).id
        self.where: tuple[str, int, str] | None = None

    def attach(self, ns: str, ifname: str, mode: str = "native") -> None:
        with netns.entered(ns):
            ifindex = netlink.link(ifname).index
            bpfsys.xdp_attach(ifindex, self.fd, bpfsys.MODE_FLAGS[mode])
        self.where = (ns, ifindex, mode)

    def detach(self) -> None:
        if self.where is None:
            return
        ns, ifindex, mode = self.where
        self.where = None
        if netns.exists(ns):
            with netns.entered(ns):
                bpfsys.xdp_detach(ifindex, mode, self.fd)

    def count(self) -> int:
        """Packets counted since the program was loaded."""
        return int(self.table.sum(ctypes.c_int(0)).value)

    def run_stats(self) -> tuple[int, int]:
        """(run_time_ns, run_cnt), kept while kernel.bpf_stats_enabled=1."""
        info = bpfsys.prog_info(self.fd)
        return info.run_time_ns, info.run_cnt
