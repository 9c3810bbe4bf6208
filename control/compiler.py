"""The one bcc adapter: compile bpf/redirect.c and load it into the kernel.

Nothing else imports bcc, so every command that does not load a program
(--help, status, stats, detach, doctor, lab) works where bcc is missing.
bcc raises bare Exceptions and prints the compiler's and verifier's output
on fd 2; here both become one XdpfwdError, and the log is shown only with
--verbose.
"""

import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xdpfwd.errors import KernelRefused, MissingDependency, PermissionDenied
from xdpfwd.layout import BPF_DIR, SOURCE, layout

BCC_HINT = (
    "apt-get install python3-bpfcc, and run xdpfwd with a Python that sees it "
    "(/usr/bin/python3, or a venv made with --system-site-packages)"
)


def import_bcc():
    try:
        import bcc  # noqa: F401  (Debian's python3-bpfcc)
    except ImportError:
        raise MissingDependency(f"bcc is not importable: {BCC_HINT}") from None
    if not hasattr(bcc, "BPF"):
        # The PyPI package called "bcc" is an unrelated library.
        raise MissingDependency(f"the 'bcc' module found is not iovisor bcc: {BCC_HINT}")
    return bcc


def kernel_headers() -> Path | None:
    """Where bcc will find headers for the running kernel, or None."""
    build = Path("/lib/modules") / platform.release() / "build"
    if (build / "include").is_dir():
        return build.resolve()
    kheaders = Path("/sys/kernel/kheaders.tar.xz")
    return kheaders if kheaders.exists() else None


@dataclass
class Program:
    """A loaded (not yet attached) xdpfwd program. Keep it referenced until
    the program is attached: its file descriptors die with the bcc object."""

    bpf: object
    prog_fd: int


class _CaptureStderr:
    """bcc's C library writes the clang and verifier output straight to
    fd 2; keep it out of the user's terminal and hand it to the error."""

    def __enter__(self):
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()


def load(ports_map_fd: int, stats_map_fd: int, config_map_fd: int, ifindexes: list[int],
         verbose: bool = False) -> Program:
    """Compile bpf/redirect.c against the maps user space created, for
    these ports (slot i is ifindexes[i])."""
    bcc = import_bcc()
    if kernel_headers() is None:
        raise MissingDependency(
            f"no kernel headers for {platform.release()}: install "
            f"linux-headers-{platform.release()} (or run 'make setup', which links the "
            "closest distribution headers)"
        )
    lay = layout()
    slots = " ".join(f"X({ifindex}, {slot})" for slot, ifindex in enumerate(ifindexes))
    cflags = [f"-I{BPF_DIR}", f"-DXDPFWD_PORTS_FD={ports_map_fd}",
              f"-DXDPFWD_STATS_FD={stats_map_fd}", f"-DXDPFWD_CONFIG_FD={config_map_fd}",
              f"-DXDPFWD_PORT_SLOTS(X)={slots}"]
    capture = _CaptureStderr()
    try:
        with capture:
            bpf = bcc.BPF(src_file=str(SOURCE).encode(), cflags=cflags)
            fn = bpf.load_func(lay.prog_name.encode(), bcc.BPF.XDP)
    except Exception as e:  # bcc raises bare Exception for every failure
        log = capture.text.strip()
        if verbose and log:
            print(log, file=sys.stderr)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Operation not permitted" in reason:
            raise PermissionDenied("failed to load the XDP program: permission denied (run as root)") from None
        hint = "" if verbose else " (--verbose shows the compiler and verifier log)"
        raise KernelRefused(f"failed to load the XDP program: {reason}{hint}") from None
    if verbose and capture.text.strip():
        print(capture.text.strip(), file=sys.stderr)
    return Program(bpf=bpf, prog_fd=fn.fd)
