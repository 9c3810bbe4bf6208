"""The kernel's network sysctls: read, write, save and restore them, and
the forwarding switches every datapath asks about.

Every access goes through /proc/sys/net of the calling thread's network
namespace (a file there belongs to the namespace it was opened in, so a
setns() thread reads its own). A path that comes from a state file is
checked with checked() before anything is written to it.
"""

import os
import sys
from pathlib import Path

ROOT = "/proc/sys/net/"
FAMILIES = ("ipv4", "ipv6")


def path(*parts: str) -> Path:
    """path("ipv4", "conf", "eth0", "forwarding") -> /proc/sys/net/ipv4/conf/eth0/forwarding.
    Parts, not a dotted name: an interface name may hold a dot."""
    return Path(ROOT, *parts)


def name(*parts: str) -> str:
    """The name sysctl(8) shows: net.ipv4.conf.eth0.forwarding."""
    return ".".join(("net", *parts))


def read(p: Path | str, default: str | None = None) -> str | None:
    """The value, stripped; default where the file does not exist (an
    interface that left, IPv6 disabled, a sysctl this kernel lacks)."""
    try:
        return Path(p).read_text().strip()
    except FileNotFoundError:
        return default


def read_int(p: Path | str, default: int = 0) -> int:
    try:
        return int(read(p, str(default)))
    except ValueError:
        return default


def write(p: Path | str, value: str) -> None:
    Path(p).write_text(f"{value}\n")


def opened(p: Path | str) -> int | None:
    """A file descriptor for repeated reads with pread() (pinned to this
    namespace); None where the sysctl does not exist."""
    try:
        return os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def pread(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode().strip()


def checked(p: str) -> str:
    """The path a recorded sysctl really names, if it is a network sysctl;
    ValueError otherwise. `..` and symbolic links are resolved first
    (/proc/self/root leads anywhere)."""
    if not isinstance(p, str) or not p.startswith("/"):
        raise ValueError(f"{p!r} is not an absolute path")
    real = os.path.realpath(p)
    if not real.startswith(ROOT):
        raise ValueError(f"{p} is outside {ROOT}" + (f" (it leads to {real})" if real != p else ""))
    return real


def save(paths: list[Path]) -> dict[str, str]:
    """{path: current value}, in the order given: what restore() puts back."""
    return {str(p): Path(p).read_text().strip() for p in paths}


def restore(saved: dict[str, str]) -> None:
    """Write saved values back, in their order. Only network sysctls: the
    values may come from a state file; a refused path is said on stderr
    and skipped. A sysctl that is gone (its interface left) is skipped."""
    for p, value in saved.items():
        try:
            target = checked(p)
        except ValueError as e:
            print(f"xdpfwd: not restoring a sysctl: {e}", file=sys.stderr, flush=True)
            continue
        try:
            write(target, value)
        except FileNotFoundError:
            pass


# -- forwarding -------------------------------------------------------------


def forwarding_path(family: str, ifname: str) -> Path:
    return path(family, "conf", ifname, "forwarding")


def force_forwarding_path(ifname: str) -> Path:
    """IPv6 only, 6.17 and later: ip6_forward() forwards what arrives on
    ifname even with net.ipv6.conf.all.forwarding=0."""
    return path("ipv6", "conf", ifname, "force_forwarding")


def forwarding_name(family: str, ifname: str) -> str:
    return name(family, "conf", ifname, "forwarding")


def _on(p: Path, saved: dict[str, str] | None) -> bool:
    return (read(p) if saved is None else saved.get(str(p))) == "1"


def forwarding(family: str, ifname: str, saved: dict[str, str] | None = None) -> bool:
    """Whether `family` (ipv4, ipv6) arriving on ifname may be forwarded
    as bpf_fib_lookup() sees it: it answers FWD_DISABLED when this is off.
    Absent (IPv6 disabled on the interface or the box) is off. saved:
    values recorded earlier (path -> value, as save() returns them) to
    judge by instead of today's."""
    return _on(forwarding_path(family, ifname), saved)


def kernel_forwards(family: str, ifname: str, saved: dict[str, str] | None = None) -> bool:
    """Whether the kernel's own forwarding forwards `family` arriving on
    ifname. IPv4: the port's switch (ip_route_input_slow()). IPv6:
    ip6_forward() asks net.ipv6.conf.all.forwarding, or the port's
    force_forwarding (6.17 and later); the port's own forwarding value is
    only what bpf_fib_lookup() asks. saved: as for forwarding()."""
    if family == "ipv4":
        return forwarding(family, ifname, saved)
    return forwarding("ipv6", "all", saved) or _on(force_forwarding_path(ifname), saved)


def set_forwarding(family: str, ifname: str, on: bool) -> None:
    write(forwarding_path(family, ifname), "1" if on else "0")
