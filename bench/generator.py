"""The traffic generator: generator.c run by BPF_PROG_TEST_RUN in live-frame
mode inside sendbox, on a CPU of its own (the C file says how and why).

Why not trafgen: once the router's receive runs on the other CPU (threaded
NAPI, bench/napi.py), skbs queue up, trafgen's socket runs out of send
buffer and trafgen aborts ("Flushing TX_RING failed: Resource temporarily
unavailable") unless it may raise the machine's socket-memory sysctls.
This generator needs no socket and no sysctl: what the router's queue has
no room for, veth_xdp_xmit() drops and counts on sendbox's eth0, as a NIC
drops at a full RX ring; and it offers several Mpps of 64-byte frames
from one CPU.
"""

import ctypes
import os
import signal
import struct
import threading

from xdpfwd import bpfsys, netlink, netns

from bench import frames
from bench.rate import pacing
from bench.xdpprog import compile_bpf

TEST_XDP_LIVE_FRAMES = 1 << 1  # BPF_F_TEST_XDP_LIVE_FRAMES
BATCH = 64                     # frames per test-run batch (the kernel's default)
REPEAT = 2**31 - 1             # until stopped by a signal
STOP_SIGNAL = signal.SIGUSR1
class Generator:
    """Sends `traffic` from ns/ifname to the router's eth1, from gen_cpu."""

    def __init__(self, ns: str, ifname: str, traffic: frames.Traffic, dmac: bytes, smac: bytes,
                 src: bytes, dst: bytes, gen_cpu: int):
        with netns.entered(ns):
            ifindex = netlink.link(ifname).index
        # The UDP checksum stays 0 here: with many flows the program
        # rewrites the source port, and 0 means "none" for IPv4.
        self.frame = frames.frame(dmac, smac, src, dst, frames.BASE_SRC_PORT, traffic.size,
                                  udp_checksum=False)
        head = self.frame[: frames.HEADER_BYTES]
        words = struct.unpack("=5QH", head)  # as the CPU reads them
        cflags = [f"-DGENERATOR_HDR{i}={w:#x}ULL" for i, w in enumerate(words[:5])]
        cflags += [f"-DGENERATOR_HDR5={words[5]:#x}", f"-DGENERATOR_FLOWS={traffic.flows}",
                   f"-DGENERATOR_BASE_PORT={frames.BASE_SRC_PORT}",
                   f"-DGENERATOR_IFINDEX={ifindex}"]
        self.bpf, (self.fd,) = compile_bpf("generator.c", [("bench_generator", -1)], cflags)
        self.table = self.bpf.get_table("bench_generator_count")
        self.pace = self.bpf.get_table("bench_generator_pace")
        self.rate: float | None = None
        self.ns, self.gen_cpu = ns, gen_cpu
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.error: str | None = None
        signal.signal(STOP_SIGNAL, lambda *_: None)  # only to interrupt the test run

    def _run(self) -> None:
        os.sched_setaffinity(0, {self.gen_cpu})  # this thread only
        data = ctypes.create_string_buffer(self.frame, len(self.frame))
        opts = bpfsys.TestRunOpts(
            sz=ctypes.sizeof(bpfsys.TestRunOpts), data_in=ctypes.addressof(data),
            data_size_in=len(self.frame), repeat=REPEAT, flags=TEST_XDP_LIVE_FRAMES,
            batch_size=BATCH)
        with netns.entered(self.ns):
            while not self._stopping:
                rc = bpfsys.lib().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
                err = ctypes.get_errno()
                if rc < 0 and err != 4 and not self._stopping:  # 4: EINTR, our stop
                    self.error = f"test run failed: {os.strerror(err)}"
                    return

    def set_rate(self, rate_pps: float | None) -> None:
        """Pace the next runs at rate_pps (None: unpaced). Only while
        stopped: the program writes the due time as it runs."""
        if self._thread is not None:
            raise RuntimeError("generator: set_rate while running")
        interval, burst, group = pacing(rate_pps)
        # The due time starts at 0, long past: the first group goes at once.
        for slot, value in enumerate((interval, burst, 0, group, 0)):
            self.pace[ctypes.c_int(slot)] = ctypes.c_ulonglong(value)
        self.rate = rate_pps or None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="bench-generator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping = True
        while self._thread.is_alive():
            signal.pthread_kill(self._thread.ident, STOP_SIGNAL)
            self._thread.join(0.05)
        self._thread = None
        if self.error:
            raise RuntimeError(f"generator: {self.error}")

    def count(self) -> int:
        """Frames generated since the program was loaded."""
        return int(self.table.sum(ctypes.c_int(0)).value)

    def close(self) -> None:
        self.stop()
