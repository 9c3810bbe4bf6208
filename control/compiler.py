"""The one bcc adapter: compile bpf/redirect.c and load it into the kernel.

Nothing else imports bcc, so every command that does not load a program
(--help, status, stats, detach, doctor, lab) works where bcc is missing.
bcc raises bare Exceptions and prints the compiler's and verifier's output
on fd 2; here both become one XdpfwdError, and the log is shown only with
--verbose.

An attach first looks in the compile cache (compile_cache.py): a valid
entry is loaded through libbpf and bcc is not even imported. bcc compiles
whenever there is no valid entry, and its result becomes the entry.
"""

import errno
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xdpfwd import bpfsys, compile_cache
from xdpfwd.errors import KernelRefused, MissingDependency, PermissionDenied, XdpfwdError
from xdpfwd.layout import BPF_DIR, layout

BCC_HINT = (
    "apt-get install python3-bpfcc, and run xdpfwd with a Python that sees it "
    "(/usr/bin/python3, or a venv made with --system-site-packages)"
)


def import_bcc():
    try:
        import bcc  # noqa: F401  (Debian's python3-bpfcc)
    except ImportError:
        raise MissingDependency("bcc is not importable", hint=BCC_HINT) from None
    if not hasattr(bcc, "BPF"):
        # The PyPI package called "bcc" is an unrelated library.
        raise MissingDependency("the 'bcc' module found is not iovisor bcc", hint=BCC_HINT)
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
    the program is attached: its file descriptor dies with `bpf` (the bcc
    object, or a bpfsys.Fd when it came from the compile cache)."""

    bpf: object
    prog_fd: int
    cached: bool = False  # loaded from the compile cache, without bcc


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


def cflags(bpf_dir, fds: dict, ifindexes: list[int]) -> list[str]:
    """bcc's flags: the maps' fds (ports, stats, config) and the ports'
    slots (slot i is ifindexes[i]), both compiled into the program."""
    slots = " ".join(f"X({ifindex}, {slot})" for slot, ifindex in enumerate(ifindexes))
    return [f"-I{bpf_dir}", f"-DXDPFWD_PORTS_FD={fds['ports']}",
            f"-DXDPFWD_STATS_FD={fds['stats']}", f"-DXDPFWD_CONFIG_FD={fds['config']}",
            f"-DXDPFWD_PORT_SLOTS(X)={slots}"]


def _note(message: str) -> None:
    print(f"xdpfwd: compile cache: {message}", file=sys.stderr)


def cache_key(ifindexes: list[int], bpf_dir: Path | None = None) -> tuple[str, dict] | None:
    """(name, key material) of the cache entry for these ports, or None
    where it cannot be known without bcc (no headers, no bcc found)."""
    bpf_dir = bpf_dir or BPF_DIR
    headers, bcc_version = kernel_headers(), compile_cache.bcc_version()
    if headers is None or bcc_version is None:
        return None
    # The fds differ on every attach and are patched in at load; bpf/ is
    # covered by its contents, wherever it is installed.
    flags = cflags("<bpf>", {role: f"<{role}>" for role in compile_cache.ROLES}, ifindexes)
    mat = compile_cache.material(bpf_dir, flags, compile_cache.running_kernel(),
                                 compile_cache.headers(compile_cache.header_trees(headers),
                                                       bpf_dir / "redirect.c"),
                                 bcc_version)
    return compile_cache.key(mat), mat


def _from_cache(name: str, mat: dict, fds: dict, verbose: bool) -> Program | None:
    prog_name = layout().prog_name
    try:
        entry = compile_cache.read(name, mat)
        if entry is None:
            return None
        if (entry.prog_name, entry.license) != (prog_name, compile_cache.LICENSE):
            raise compile_cache.BadEntry(f"it holds {entry.prog_name} ({entry.license})")
        insns = compile_cache.relocate(entry.insns, entry.relocs, fds)
        fd = bpfsys.prog_load(bpfsys.PROG_TYPE_XDP, prog_name, entry.license, insns)
    except compile_cache.Untrusted as e:
        # Whoever can write the cache chooses the code the kernel runs.
        _note(f"not trusted, ignored ({e}); compiling afresh")
        raise
    except (compile_cache.BadEntry, XdpfwdError) as e:
        # A kernel whose verifier now refuses the program, a damaged entry:
        # compile afresh and replace the entry.
        if verbose:
            _note(f"entry {name} not used ({e}); compiling afresh")
        return None
    if verbose:
        _note(f"loaded {prog_name} from {compile_cache.directory() / name}.json")
    return Program(bpf=fd, prog_fd=fd.fd, cached=True)


def _store(name: str, mat: dict, program: Program, fds: dict, verbose: bool) -> None:
    prog_name = layout().prog_name
    try:
        insns, relocs = compile_cache.relocations(program.bpf.dump_func(prog_name.encode()), fds)
        path = compile_cache.write(name, mat, insns, relocs, prog_name)
    except compile_cache.Untrusted as e:
        _note(f"not trusted, nothing stored ({e})")
        return
    except (compile_cache.NotCacheable, OSError) as e:
        if verbose:
            _note(f"nothing stored ({e})")
        return
    if verbose:
        _note(f"stored {path}")


def load(ports_map_fd: int, stats_map_fd: int, config_map_fd: int, ifindexes: list[int],
         verbose: bool = False) -> Program:
    """The program for the maps user space created and these ports (slot i
    is ifindexes[i]): from the compile cache when it holds a valid entry,
    else compiled by bcc (and then stored there)."""
    fds = {"ports": ports_map_fd, "stats": stats_map_fd, "config": config_map_fd}
    # Only root can make the root-owned entries the cache trusts.
    try:
        found = cache_key(ifindexes) if os.geteuid() == 0 else None
    except OSError as e:  # bpf/ or the headers unreadable: bcc will say why
        if verbose:
            _note(f"not used ({e})")
        found = None
    store = found is not None
    if found:
        try:
            program = _from_cache(*found, fds, verbose)
        except compile_cache.Untrusted as e:
            program, store = None, e.what == "entry"  # a bad entry is replaced
        if program:
            return program
    program = compile_program(fds, ifindexes, verbose)
    if store:
        _store(*found, program, fds, verbose)
    return program


def compile_program(fds: dict, ifindexes: list[int], verbose: bool = False) -> Program:
    """Compile bpf/redirect.c with bcc against these maps and ports, and
    load it."""
    bpf, (fd,) = bcc_compile(BPF_DIR / "redirect.c", [(layout().prog_name, -1)],
                             cflags(BPF_DIR, fds, ifindexes), verbose)
    return Program(bpf=bpf, prog_fd=fd)


def bcc_compile(source: Path, functions: list[tuple[str, int]], flags: list[str],
                verbose: bool = False) -> tuple[object, list[int]]:
    """Compile a C file with bcc and load its XDP functions, each with its
    expected attach type (-1: none). Returns (the bcc object, [program
    fds]); keep the object referenced: the programs and maps live as long
    as it does. Every failure is one XdpfwdError; the compiler's and
    verifier's log is shown with verbose only. (The benchmark's own small
    programs come through here too.)"""
    bcc = import_bcc()
    if kernel_headers() is None:
        raise MissingDependency(
            f"no kernel headers for {platform.release()}",
            hint=f"install linux-headers-{platform.release()} (or run 'make setup', which links "
            "the closest distribution headers)")
    capture = _CaptureStderr()
    try:
        with capture:
            bpf = bcc.BPF(src_file=str(source).encode(), cflags=list(flags))
            fds = [bpf.load_func(name.encode(), bcc.BPF.XDP, attach_type=attach).fd
                   for name, attach in functions]
    except Exception as e:  # bcc raises bare Exception for every failure
        log = capture.text.strip()
        if verbose and log:
            print(log, file=sys.stderr)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Operation not permitted" in reason:
            raise PermissionDenied(f"failed to load {source.name}: permission denied",
                                   hint="run as root", errno=errno.EPERM) from None
        hint = "" if verbose else "--verbose shows the compiler and verifier log"
        raise KernelRefused(f"failed to load {source.name}: {reason}", hint=hint) from None
    if verbose and capture.text.strip():
        print(capture.text.strip(), file=sys.stderr)
    return bpf, fds
