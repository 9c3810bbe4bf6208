"""The compile cache's pure parts: the key, the relocation of map
references, and the ownership/mode checks on real files in a temporary
directory (the owner expected is passed in, so no chown is needed)."""

import json
import os
import shutil
import stat
import struct

import pytest

from xdpfwd import compile_cache as cc
from xdpfwd import compiler
from xdpfwd.layout import BPF_DIR

KERNEL = {"release": "6.18.0", "version": "#1 SMP"}
HEADERS = {"trees": ["/usr/src/h"], "files": {}}
FDS = {"ports": 7, "stats": 9, "config": 11}


def flags(ifindexes):
    return compiler.cflags("<bpf>", {r: f"<{r}>" for r in cc.ROLES}, ifindexes)


@pytest.fixture
def bpf_dir(tmp_path):
    d = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, d, ignore=shutil.ignore_patterns("__pycache__"))
    return d


def key(bpf_dir, ifindexes=(2, 3), kernel=KERNEL, headers=HEADERS, bcc="0.26.0"):
    return cc.key(cc.material(bpf_dir, flags(list(ifindexes)), kernel, headers, bcc))


# -- the key --------------------------------------------------------------------


def test_key_is_stable_for_the_same_inputs(bpf_dir):
    assert key(bpf_dir) == key(bpf_dir)
    assert len(key(bpf_dir)) == 64


@pytest.mark.parametrize("name", ["redirect.c", "counters.h"])
def test_a_changed_source_or_header_changes_the_key(bpf_dir, name):
    before = key(bpf_dir)
    with open(bpf_dir / name, "a") as f:
        f.write("\n/* changed */\n")
    assert key(bpf_dir) != before


def test_a_new_header_changes_the_key(bpf_dir):
    before = key(bpf_dir)
    (bpf_dir / "extra.h").write_text("#define X 1\n")
    assert key(bpf_dir) != before


def test_port_slots_are_part_of_the_key(bpf_dir):
    assert key(bpf_dir, (2, 3)) != key(bpf_dir, (3, 2))
    assert key(bpf_dir, (2, 3)) != key(bpf_dir, (2, 3, 4))


def test_map_fds_are_not_part_of_the_key():
    # compiler.cache_key() builds its flags with placeholders: real fds
    # (different on every attach) never reach the key.
    with_fds = compiler.cflags("/x", {"ports": 3, "stats": 4, "config": 5}, [2, 3])
    assert "-DXDPFWD_PORTS_FD=3" in with_fds
    assert not any(f.endswith(("=3", "=4", "=5")) for f in flags([2, 3]))


@pytest.mark.parametrize("change", [{"kernel": {"release": "6.19.0", "version": "#1 SMP"}},
                                    {"headers": {"trees": ["/usr/src/other"], "files": {}}},
                                    {"bcc": "0.27.0"}])
def test_kernel_headers_and_bcc_are_part_of_the_key(bpf_dir, change):
    assert key(bpf_dir, **change) != key(bpf_dir)


def test_the_real_key_follows_the_installed_tree():
    found = compiler.cache_key([2, 3])
    assert found is not None, "kernel headers and bcc are installed by make setup"
    name, mat = found
    assert name == cc.key(mat) and name == compiler.cache_key([2, 3])[0]
    assert mat["cflags"] == flags([2, 3]) and mat["kernel"] == cc.running_kernel()
    assert set(mat["sources"]) >= {"redirect.c", "counters.h"}
    assert "include/uapi/linux/bpf.h" in mat["headers"]["files"]


def test_a_touched_kernel_header_changes_the_headers_part(tmp_path):
    tree = tmp_path / "headers"
    (tree / "include/uapi/linux").mkdir(parents=True)
    (tree / "include/uapi/linux/bpf.h").write_text("/* bpf */\n")
    before = cc.headers([tree], BPF_DIR / "redirect.c")
    os.utime(tree / "include/uapi/linux/bpf.h", ns=(1, 1))
    assert cc.headers([tree], BPF_DIR / "redirect.c") != before


# -- relocations ----------------------------------------------------------------


def insn(code, dst=0, src=0, off=0, imm=0):
    return cc.INSN.pack(code, (src << 4) | dst, off, imm)


MOV_R0_2 = insn(0xB7, dst=0, imm=2)
EXIT = insn(0x95)


def program():
    """ld_imm64 r1 = map fd 7; r0 = 2; ld_imm64 r2 = map fd 9; a plain
    64-bit constant that happens to equal an fd (not a map); exit."""
    return b"".join([insn(cc.LD_IMM64, 1, 1, imm=7), insn(0), MOV_R0_2,
                     insn(cc.LD_IMM64, 2, 1, imm=9), insn(0),
                     insn(cc.LD_IMM64, 3, 0, imm=11), insn(0), EXIT])


def imms(raw):
    return [struct.unpack_from("<i", raw, i + 4)[0] for i in range(0, len(raw), 8)]


def test_relocations_record_each_map_reference_and_zero_it():
    stored, relocs = cc.relocations(program(), FDS)
    assert relocs == [(0, "ports"), (3, "stats")]
    assert imms(stored) == [0, 0, 2, 0, 0, 11, 0, 0]  # the constant 11 is left alone


def test_relocate_patches_this_process_fds():
    stored, relocs = cc.relocations(program(), FDS)
    out = cc.relocate(stored, relocs, {"ports": 20, "stats": 21, "config": 22})
    assert imms(out) == [20, 0, 2, 21, 0, 11, 0, 0]
    assert cc.relocate(stored, relocs, FDS) == program()


def test_a_map_fd_that_is_none_of_ours_is_not_cacheable():
    with pytest.raises(cc.NotCacheable, match="fd 9"):
        cc.relocations(program(), {"ports": 7, "stats": 8, "config": 11})


def test_other_pseudo_sources_are_not_cacheable():
    map_value = insn(cc.LD_IMM64, 1, 2, imm=7) + insn(0) + EXIT
    with pytest.raises(cc.NotCacheable, match="pseudo source 2"):
        cc.relocations(map_value, FDS)


def test_an_unrecorded_map_reference_is_refused():
    stored, relocs = cc.relocations(program(), FDS)
    with pytest.raises(cc.BadEntry, match="do not match"):
        cc.relocate(stored, relocs[:1], FDS)
    with pytest.raises(cc.BadEntry, match="do not match"):
        cc.relocate(stored, relocs + [(2, "config")], FDS)  # r0 = 2 is no map reference


def test_an_unknown_role_or_a_torn_program_is_refused():
    stored, _ = cc.relocations(program(), FDS)
    with pytest.raises(cc.BadEntry, match="role"):
        cc.relocate(stored, [(0, "ports"), (3, "elsewhere")], FDS)
    with pytest.raises(cc.BadEntry, match="whole number"):
        cc.relocate(stored[:-3], [], FDS)


# -- trust ----------------------------------------------------------------------


def st(mode, uid=0, nlink=1):
    return os.stat_result((mode, 1, 1, nlink, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize("mode,uid,nlink,kind,why", [
    (stat.S_IFDIR | 0o700, 0, 2, "directory", None),
    (stat.S_IFDIR | 0o750, 0, 2, "directory", "mode 0750"),
    (stat.S_IFDIR | 0o701, 0, 2, "directory", "mode 0701"),
    (stat.S_IFDIR | 0o700, 1000, 2, "directory", "owned by uid 1000"),
    (stat.S_IFREG | 0o700, 0, 1, "directory", "not a directory"),
    (stat.S_IFREG | 0o600, 0, 1, "entry", None),
    (stat.S_IFREG | 0o400, 0, 1, "entry", None),
    (stat.S_IFREG | 0o644, 0, 1, "entry", "mode 0644"),
    (stat.S_IFREG | 0o620, 0, 1, "entry", "mode 0620"),
    (stat.S_IFREG | 0o600, 65534, 1, "entry", "owned by uid 65534"),
    (stat.S_IFREG | 0o600, 0, 2, "entry", "2 hard links"),
    (stat.S_IFLNK | 0o600, 0, 1, "entry", "not a regular file"),
])
def test_refusal(mode, uid, nlink, kind, why):
    got = cc.refusal(st(mode, uid, nlink), kind)
    assert (got is None) if why is None else (why in got), got


ME = os.geteuid()
MAT = {"format": cc.FORMAT, "what": "a test"}


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache" / "xdpfwd"


def store(cache, name="k", mat=MAT):
    stored, relocs = cc.relocations(program(), FDS)
    return cc.write(name, mat, stored, relocs, "xdpfwd_redirect", path=cache, owner=ME)


def test_write_then_read_round_trip(cache):
    old = os.umask(0)  # the modes must not depend on the caller's umask
    try:
        path = store(cache)
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = cc.read("k", MAT, path=cache, owner=ME)
    assert cc.relocate(entry.insns, entry.relocs, FDS) == program()
    assert (entry.prog_name, entry.license) == ("xdpfwd_redirect", "GPL")
    assert [p.name for p in cache.iterdir()] == ["k.json"]  # no temporary file left


def test_a_second_write_replaces_the_entry(cache):
    store(cache)
    path = cc.write("k", MAT, EXIT, [], "xdpfwd_redirect", path=cache, owner=ME)
    assert cc.read("k", MAT, path=cache, owner=ME).insns == EXIT
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_nothing_there_is_a_miss(cache):
    assert cc.read("k", MAT, path=cache, owner=ME) is None  # no directory
    store(cache)
    assert cc.read("other", MAT, path=cache, owner=ME) is None  # no entry


@pytest.mark.parametrize("target,mode", [("entry", 0o644), ("entry", 0o660),
                                         ("directory", 0o755), ("directory", 0o770)])
def test_an_entry_or_directory_open_to_others_is_refused(cache, target, mode):
    path = store(cache)
    os.chmod(path if target == "entry" else cache, mode)
    with pytest.raises(cc.Untrusted) as e:
        cc.read("k", MAT, path=cache, owner=ME)
    assert e.value.what == target and f"mode {mode:04o}" in str(e.value)


def test_a_wrong_owner_is_refused(cache):
    store(cache)
    with pytest.raises(cc.Untrusted, match=f"owned by uid {ME}, not {ME + 1}"):
        cc.read("k", MAT, path=cache, owner=ME + 1)


def test_symlinks_and_hard_links_are_refused(cache, tmp_path):
    path = store(cache)
    link = tmp_path / "link"
    link.symlink_to(cache)
    with pytest.raises(cc.Untrusted, match="directory|links"):
        cc.read("k", MAT, path=link, owner=ME)
    (cache / "s.json").symlink_to(path)
    with pytest.raises(cc.Untrusted, match="s.json"):
        cc.read("s", MAT, path=cache, owner=ME)
    os.link(path, cache / "h.json")
    with pytest.raises(cc.Untrusted, match="2 hard links"):
        cc.read("h", MAT, path=cache, owner=ME)


def test_a_damaged_or_misnamed_entry_is_bad(cache):
    path = store(cache)
    with pytest.raises(cc.BadEntry, match="key does not match"):
        cc.read("k", {**MAT, "what": "another"}, path=cache, owner=ME)
    path.write_text("{not json")
    with pytest.raises(cc.BadEntry, match="unreadable"):
        cc.read("k", MAT, path=cache, owner=ME)
    doc = {"key": MAT, "prog_name": "x", "license": "GPL", "insns": "!!", "relocations": []}
    path.write_text(json.dumps(doc))
    with pytest.raises(cc.BadEntry, match="unreadable"):
        cc.read("k", MAT, path=cache, owner=ME)


def test_write_refuses_an_untrusted_directory(cache):
    store(cache)
    os.chmod(cache, 0o777)
    with pytest.raises(cc.Untrusted):
        store(cache)
