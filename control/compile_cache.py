"""The compile cache: what bcc made of bpf/redirect.c, kept for the next attach.

bcc needs about 2 s to import and most of a second to compile, on every
attach. The instructions it produces depend only on the source, the
flags and the headers it was built with, so an attach that finds an entry
for exactly those loads the stored instructions through libbpf and never
imports bcc. Whatever the key does not cover can only make the kernel
refuse the stored program, and a refusal falls back to a fresh compile
(compiler.load()).

Whoever writes the cache chooses the code the kernel runs: the directory
must be owned by root and closed to group and others (0700), each entry a
regular file owned by root, closed likewise (0600), with one link. An
entry or directory that fails the check is never read; it is reported
and the program is compiled afresh.

An entry keeps the instructions with the map references zeroed and, for
each such BPF_LD_IMM64 / BPF_PSEUDO_MAP_FD instruction, which map it names
(ports, stats or config): file descriptors differ on every attach, so
they are patched in at load time.
"""

import base64
import hashlib
import importlib.util
import json
import os
import platform
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path("/var/cache/xdpfwd")
FORMAT = 1
ROLES = ("ports", "stats", "config")
LICENSE = "GPL"  # bpf_fib_lookup() is gpl_only (net/core/filter.c)

INSN = struct.Struct("<BBhi")  # struct bpf_insn: code, dst_reg:4 src_reg:4, off, imm
LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW, two instruction slots
PSEUDO_MAP_FD = 1  # src_reg of an ld_imm64 whose imm is a map's fd


class NotCacheable(Exception):
    """A compiled program this module cannot store faithfully."""


class BadEntry(Exception):
    """A stored entry that must not be loaded (the message says why)."""


def directory() -> Path:
    """XDPFWD_CACHE_DIR, for tests and the benchmark, or /var/cache/xdpfwd."""
    return Path(os.environ.get("XDPFWD_CACHE_DIR") or DEFAULT_DIR)


# -- the key --------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sources(bpf_dir: Path) -> dict[str, str]:
    """The C the program is built from: every .c and .h of bpf/, so a header
    added later is covered too."""
    return {p.name: _sha256(p.read_bytes()) for p in sorted(bpf_dir.iterdir())
            if p.suffix in (".c", ".h") and p.is_file()}


_SYSTEM_INCLUDE = re.compile(rb"^\s*#\s*include\s*<([^>]+)>", re.M)


def _stat_sig(path: Path) -> list | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def header_trees(kernel_headers: Path) -> list[Path]:
    """The trees bcc reads headers from: the resolved build directory and,
    where the distribution splits them (Debian: include/uapi lives in the
    -common package), the source directory beside it."""
    trees = [kernel_headers]
    src = (Path("/lib/modules") / platform.release() / "source").resolve()
    if kernel_headers.is_dir() and src.is_dir() and src != kernel_headers:
        trees.append(src)
    return trees


def headers(trees: list[Path], source: Path) -> dict:
    """The kernel headers bcc compiles against: where they resolve to, and
    size and mtime of the kernel's configuration and of each header the
    source includes (an upgraded or reinstalled headers package changes
    them). A single file is the kernel's own archive
    (/sys/kernel/kheaders.tar.xz)."""
    if len(trees) == 1 and trees[0].is_file():
        return {"archive": str(trees[0]), "sig": _stat_sig(trees[0])}
    wanted = ["include/generated/autoconf.h", "include/generated/package.h", ".config"]
    wanted += [f"include/{name.decode()}" for name in _SYSTEM_INCLUDE.findall(source.read_bytes())]
    return {"trees": [str(t) for t in trees],
            "files": {rel: [_stat_sig(t / rel) for t in trees] for rel in wanted}}


def bcc_version() -> str | None:
    """bcc's version, read without importing bcc (the import is what the
    cache saves); None where no bcc package is found."""
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    version = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    try:
        found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", version.read_text())
    except OSError:
        return None
    return found.group(1) if found else None


def material(bpf_dir: Path, cflags: list[str], kernel: dict, headers_used: dict,
             bcc: str) -> dict:
    """Everything the compiled instructions depend on. cflags must carry
    placeholders, not file descriptors (compiler.cflags())."""
    return {"format": FORMAT, "sources": sources(bpf_dir), "cflags": cflags,
            "kernel": kernel, "headers": headers_used, "bcc": bcc}


def key(mat: dict) -> str:
    return _sha256(json.dumps(mat, sort_keys=True, separators=(",", ":")).encode())


def running_kernel() -> dict:
    return {"release": platform.release(), "version": platform.version()}


# -- relocations ----------------------------------------------------------------


def _insns(raw: bytes) -> list[tuple[int, int, int, int]]:
    if len(raw) % INSN.size:
        raise BadEntry(f"{len(raw)} bytes is not a whole number of instructions")
    return [INSN.unpack_from(raw, i) for i in range(0, len(raw), INSN.size)]


def _map_refs(raw: bytes) -> dict[int, int]:
    """{instruction index: imm} of every ld_imm64 that names a map by fd.
    Any other pseudo source (map value, map index, BTF id) would carry
    something this module does not relocate: refuse it."""
    refs, insns, i = {}, _insns(raw), 0
    while i < len(insns):
        code, regs, _, imm = insns[i]
        if code == LD_IMM64:
            src = regs >> 4
            if src == PSEUDO_MAP_FD:
                refs[i] = imm
            elif src != 0:
                raise NotCacheable(f"instruction {i}: ld_imm64 with pseudo source {src}")
            i += 2
        else:
            i += 1
    return refs


def relocations(raw: bytes, fds: dict[str, int]) -> tuple[bytes, list[tuple[int, str]]]:
    """Split freshly compiled instructions into a process-independent form
    (map references zeroed) and [(instruction index, map role)]."""
    by_fd = {fd: role for role, fd in fds.items()}
    if len(by_fd) != len(fds):
        raise NotCacheable("two maps share a file descriptor")
    refs = _map_refs(raw)
    relocs = []
    out = bytearray(raw)
    for index, fd in sorted(refs.items()):
        if fd not in by_fd:
            raise NotCacheable(f"instruction {index} names fd {fd}, none of xdpfwd's maps")
        relocs.append((index, by_fd[fd]))
        code, regs, off, _ = INSN.unpack_from(raw, index * INSN.size)
        INSN.pack_into(out, index * INSN.size, code, regs, off, 0)
    return bytes(out), relocs


def relocate(raw: bytes, relocs: list[tuple[int, str]], fds: dict[str, int]) -> bytes:
    """Stored instructions with this process's map fds patched in. Every
    map reference must be one recorded: an unrecorded one would name
    whatever this process has open under that number."""
    refs = _map_refs(raw)
    recorded = {index for index, _ in relocs}
    if set(refs) != recorded:
        raise BadEntry("its map references do not match its relocations")
    out = bytearray(raw)
    for index, role in relocs:
        if role not in fds:
            raise BadEntry(f"unknown map role {role!r}")
        code, regs, off, _ = INSN.unpack_from(raw, index * INSN.size)
        INSN.pack_into(out, index * INSN.size, code, regs, off, fds[role])
    return bytes(out)


# -- trust ----------------------------------------------------------------------


def refusal(st: os.stat_result, kind: str, owner: int = 0) -> str | None:
    """Why a cache directory or entry must not be trusted, or None."""
    is_kind = stat.S_ISDIR(st.st_mode) if kind == "directory" else stat.S_ISREG(st.st_mode)
    if not is_kind:
        return f"not a {'directory' if kind == 'directory' else 'regular file'}"
    if st.st_uid != owner:
        return f"owned by uid {st.st_uid}, not {owner}"
    if st.st_mode & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):04o} lets group or others in"
    if kind == "entry" and st.st_nlink != 1:
        return f"{st.st_nlink} hard links"
    return None


class Untrusted(Exception):
    """The cache directory or an entry failed the ownership/mode check;
    `what` says which ("directory" or "entry")."""

    def __init__(self, what: str, message: str):
        super().__init__(message)
        self.what = what


@dataclass
class Entry:
    insns: bytes
    relocs: list[tuple[int, str]]
    prog_name: str
    license: str


def _open_dir(path: Path, owner: int, create: bool) -> int | None:
    """The cache directory, opened without following a symlink and checked;
    None when it does not exist (and create is false)."""
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:  # ELOOP (a symlink), ENOTDIR, EACCES
        raise Untrusted("directory", f"{path}: {e.strerror}") from None
    why = refusal(os.fstat(fd), "directory", owner)
    if why:
        os.close(fd)
        raise Untrusted("directory", f"{path}: {why}")
    return fd


def read(name: str, mat: dict, path: Path | None = None, owner: int = 0) -> Entry | None:
    """The entry for key `name`, or None when there is none. Raises
    Untrusted (directory or file fails the check) or BadEntry."""
    path = path or directory()
    dfd = _open_dir(path, owner, create=False)
    if dfd is None:
        return None
    try:
        try:
            fd = os.open(f"{name}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise Untrusted("entry", f"{path / name}.json: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            why = refusal(os.fstat(f.fileno()), "entry", owner)
            if why:
                raise Untrusted("entry", f"{path / name}.json: {why}")
            data = f.read()
    finally:
        os.close(dfd)
    try:
        doc = json.loads(data)
        if doc["key"] != mat:
            raise BadEntry("its key does not match its name")
        return Entry(base64.b64decode(doc["insns"], validate=True),
                     [(int(i), str(r)) for i, r in doc["relocations"]],
                     str(doc["prog_name"]), str(doc["license"]))
    except (ValueError, KeyError, TypeError) as e:
        raise BadEntry(f"unreadable ({type(e).__name__}: {e})") from None


def write(name: str, mat: dict, insns: bytes, relocs: list[tuple[int, str]], prog_name: str,
          path: Path | None = None, owner: int = 0) -> Path:
    """Store an entry atomically (a reader sees the old one or the new one,
    never half of one); an existing entry for the same key is replaced."""
    path = path or directory()
    dfd = _open_dir(path, owner, create=True)
    if dfd is None:
        raise Untrusted("directory", f"{path}: could not be created")
    doc = {"key": mat, "prog_name": prog_name, "license": LICENSE,
           "insns": base64.b64encode(insns).decode(), "relocations": relocs}
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)  # whatever the umask
                f.write(json.dumps(doc, indent=1) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, f"{name}.json", src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)
    return path / f"{name}.json"
