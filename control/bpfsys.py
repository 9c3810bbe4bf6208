"""The bpf syscall through libbpf (ctypes): programs by id, their maps, XDP
attachment, test runs.

Everything that reads or changes kernel objects goes through here; nothing
here compiles C, so `status`, `stats` and `detach` cost no LLVM. Debian's
libbpf1 (1.1) is the library; the structs below are its ABI for that
version, and libbpf accepts them from newer versions too (each carries its
own size).
"""

import ctypes
import errno
import os
from dataclasses import dataclass
from functools import cache

from xdpfwd.errors import MissingDependency, PermissionDenied, XdpfwdError

# enum bpf_map_type
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_DEVMAP_HASH = 25

# enum bpf_prog_type
PROG_TYPE_XDP = 6

# XDP attach flags (uapi/linux/if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4

# enum xdp_attach_mode as bpf_xdp_query reports it (XDP_ATTACHED_*)
ATTACH_MODES = {0: None, 1: "native", 2: "skb", 3: "hw", 4: "multi"}
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "skb": XDP_FLAGS_SKB_MODE}

# enum bpf_map_update flags
BPF_ANY = 0

OBJ_NAME_LEN = 16


class _ProgInfo(ctypes.Structure):
    # struct bpf_prog_info, up to the fields we read; the kernel fills
    # only as much as we say we have room for.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
    ]


class _XdpAttachOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int)]


class _XdpQueryOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
    ]


class TestRunOpts(ctypes.Structure):
    """libbpf 1.1's struct bpf_test_run_opts (the benchmark's generator uses
    its flags and batch_size for live frames)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    """struct xdp_md, the context BPF_PROG_TEST_RUN takes for XDP."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


class BpfError(XdpfwdError):
    """A bpf syscall failed; errno is kept for callers that branch on it."""

    def __init__(self, what: str, errno: int, detail: str = ""):
        self.what = what
        self.reason = detail or os.strerror(errno)
        super().__init__(f"failed to {what}: {self.reason}", errno=errno)


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log: list[str] = []


@_PRINT_FN
def _collect_log(level, fmt, args):
    # libbpf reports the kernel's extack ("veth: Peer MTU is too large...")
    # only through its print callback; keep it for the error message.
    buf = ctypes.create_string_buffer(1024)
    _libc().vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(args))
    _log.append(buf.value.decode(errors="replace").strip())
    return 0


@cache
def _libc():
    libc = ctypes.CDLL(None)
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    return libc


@cache
def lib():
    try:
        libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        raise MissingDependency("libbpf.so.1 not found", hint="apt-get install libbpf1") from None
    u32, i32, vp = ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p
    sig = {
        "bpf_prog_get_fd_by_id": ([u32], i32),
        "bpf_map_get_fd_by_id": ([u32], i32),
        "bpf_obj_get_info_by_fd": ([i32, vp, ctypes.POINTER(u32)], i32),
        "bpf_map_lookup_elem": ([i32, vp, vp], i32),
        "bpf_map_update_elem": ([i32, vp, vp, ctypes.c_uint64], i32),
        "bpf_map_delete_elem": ([i32, vp], i32),
        "bpf_map_get_next_key": ([i32, vp, vp], i32),
        "bpf_map_create": ([i32, ctypes.c_char_p, u32, u32, u32, vp], i32),
        "bpf_xdp_attach": ([i32, i32, u32, vp], i32),
        "bpf_xdp_detach": ([i32, u32, vp], i32),
        "bpf_xdp_query": ([i32, i32, vp], i32),
        "bpf_prog_test_run_opts": ([i32, vp], i32),
        "libbpf_num_possible_cpus": ([], i32),
        "libbpf_set_print": ([_PRINT_FN], vp),
        "bpf_prog_load": ([i32, ctypes.c_char_p, ctypes.c_char_p, vp, ctypes.c_size_t, vp], i32),
    }
    for name, (args, res) in sig.items():
        fn = getattr(libbpf, name)
        fn.argtypes, fn.restype = args, res
    libbpf.libbpf_set_print(_collect_log)
    return libbpf


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno() or -rc
        detail = "; ".join(m for m in _log if "Kernel error message" in m)
        detail = detail.split("Kernel error message:", 1)[-1].strip()
        _log.clear()
        if err == errno.EPERM:
            raise PermissionDenied(f"failed to {what}: permission denied", hint="run as root",
                                   errno=err)
        raise BpfError(what, err, detail)
    _log.clear()
    return rc


def possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "count possible CPUs")


class Fd:
    """An owned file descriptor: closed on close() or leaving a with-block."""

    def __init__(self, fd: int):
        self.fd = fd

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str
    type: int
    tag: str
    map_ids: tuple[int, ...]
    run_time_ns: int
    run_cnt: int


@dataclass(frozen=True)
class MapInfo:
    id: int
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int


def prog_by_id(prog_id: int) -> Fd:
    return Fd(_check(lib().bpf_prog_get_fd_by_id(prog_id), f"open BPF program {prog_id}"))


def map_by_id(map_id: int) -> Fd:
    return Fd(_check(lib().bpf_map_get_fd_by_id(map_id), f"open BPF map {map_id}"))


def prog_info(fd: int) -> ProgInfo:
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "read program info")
    ids = (ctypes.c_uint32 * info.nr_map_ids)()
    if info.nr_map_ids:
        # Second call, now with room for the map ids.
        wanted = info.nr_map_ids
        info = _ProgInfo(nr_map_ids=wanted, map_ids=ctypes.addressof(ids))
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "read program maps")
    return ProgInfo(
        id=info.id,
        name=info.name.decode(),
        type=info.type,
        tag=bytes(info.tag).hex(),
        map_ids=tuple(ids[: info.nr_map_ids]),
        run_time_ns=info.run_time_ns,
        run_cnt=info.run_cnt,
    )


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "read map info")
    return MapInfo(info.id, info.name.decode(), info.type, info.key_size, info.value_size, info.max_entries)


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int) -> Fd:
    rc = lib().bpf_map_create(map_type, name.encode(), key_size, value_size, max_entries, None)
    return Fd(_check(rc, f"create map {name}"))


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value, or None where the key is absent. For per-CPU maps pass
    value_size rounded up to 8 times the number of possible CPUs."""
    value = ctypes.create_string_buffer(value_size)
    rc = lib().bpf_map_lookup_elem(fd, key, value)
    if rc < 0 and (ctypes.get_errno() or -rc) == errno.ENOENT:
        return None
    _check(rc, "look up a map element")
    return value.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    _check(lib().bpf_map_update_elem(fd, key, value, flags), "update a map element")


def map_delete(fd: int, key: bytes) -> None:
    _check(lib().bpf_map_delete_elem(fd, key), "delete a map element")


def map_keys(fd: int, key_size: int) -> list[bytes]:
    keys, key = [], None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        rc = lib().bpf_map_get_next_key(fd, key, nxt)
        if rc < 0 and (ctypes.get_errno() or -rc) == 2:  # ENOENT: the end
            return keys
        _check(rc, "walk a map")
        key = nxt.raw
        keys.append(key)


def percpu_values(fd: int, key: bytes, value_size: int) -> list[bytes] | None:
    """A per-CPU map's value for key, one bytes object per possible CPU."""
    stride = (value_size + 7) // 8 * 8
    ncpu = possible_cpus()
    raw = map_lookup(fd, key, stride * ncpu)
    if raw is None:
        return None
    return [raw[i * stride : i * stride + value_size] for i in range(ncpu)]


@dataclass(frozen=True)
class XdpState:
    """What the kernel says is attached to one interface."""

    mode: str | None  # native, skb, hw, multi, or None when nothing is
    prog_id: int  # the single program's id (0 when none, or with multi)
    drv_prog_id: int
    skb_prog_id: int
    hw_prog_id: int


def xdp_query(ifindex: int) -> XdpState:
    opts = _XdpQueryOpts(sz=ctypes.sizeof(_XdpQueryOpts))
    _check(lib().bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), f"query XDP on ifindex {ifindex}")
    mode = ATTACH_MODES.get(opts.attach_mode, "unknown")
    return XdpState(mode, opts.prog_id, opts.drv_prog_id, opts.skb_prog_id, opts.hw_prog_id)


def _keep_kernel_messages() -> None:
    # Loading with bcc resets libbpf's print callback (bcc shares the
    # library), so claim it again before each netlink call.
    lib().libbpf_set_print(_collect_log)


def xdp_attach(ifindex: int, prog_fd: int, flags: int) -> None:
    """Attach, never replacing what is there (UPDATE_IF_NOEXIST)."""
    _keep_kernel_messages()
    rc = lib().bpf_xdp_attach(ifindex, prog_fd, flags | XDP_FLAGS_UPDATE_IF_NOEXIST, None)
    _check(rc, "attach the XDP program")


def xdp_detach(ifindex: int, mode: str, expected_prog_fd: int) -> None:
    """Detach only if expected_prog_fd's program is still the one attached:
    the kernel checks it atomically (XDP_FLAGS_REPLACE)."""
    opts = _XdpAttachOpts(sz=ctypes.sizeof(_XdpAttachOpts), old_prog_fd=expected_prog_fd)
    flags = MODE_FLAGS.get(mode, 0) | XDP_FLAGS_REPLACE
    _keep_kernel_messages()
    _check(lib().bpf_xdp_detach(ifindex, flags, ctypes.byref(opts)), "detach the XDP program")


@dataclass(frozen=True)
class TestRun:
    retval: int
    data: bytes
    duration_ns: int


def test_run(prog_fd: int, frame: bytes, ingress_ifindex: int, repeat: int = 1) -> TestRun:
    """Run an XDP program once on frame with BPF_PROG_TEST_RUN, as if it had
    arrived on ingress_ifindex (in the caller's network namespace)."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + 256)
    ctx = XdpMd(data=0, data_end=len(frame), ingress_ifindex=ingress_ifindex)
    opts = TestRunOpts(
        sz=ctypes.sizeof(TestRunOpts),
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(data_out),
        data_size_in=len(frame),
        data_size_out=len(data_out),
        ctx_in=ctypes.addressof(ctx),
        ctx_size_in=ctypes.sizeof(ctx),
        repeat=repeat,
    )
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "test-run the program")
    return TestRun(opts.retval, data_out.raw[: opts.data_size_out], opts.duration)


def prog_load(prog_type: int, name: str, license: str, insns: bytes) -> Fd:
    """Load ready instructions (map fds already in place): what bcc does
    after compiling, without bcc. The verifier's log is not kept; callers
    that need it compile again with bcc."""
    buf = ctypes.create_string_buffer(insns, len(insns))
    rc = lib().bpf_prog_load(prog_type, name.encode(), license.encode(), buf, len(insns) // 8, None)
    return Fd(_check(rc, f"load BPF program {name}"))


def prog_xlated(fd: int) -> bytes:
    """The program's instructions as the verifier left them (what `bpftool
    prog dump xlated` shows): map references carry map ids."""
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "read program info")
    buf = ctypes.create_string_buffer(info.xlated_prog_len)
    info = _ProgInfo(xlated_prog_len=len(buf), xlated_prog_insns=ctypes.addressof(buf))
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "read program instructions")
    return buf.raw[: info.xlated_prog_len]
