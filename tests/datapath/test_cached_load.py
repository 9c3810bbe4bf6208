"""The compile cache against the real kernel: a cached load is the program
bcc compiles, instruction for instruction after the verifier; what the
key covers is never served stale; an untrusted or refused entry is
compiled afresh; a hit does not import bcc.

Programs and maps are not tied to a network namespace and nothing here is
attached, so no lab is needed: the ports are made-up ifindexes. Each test
has its own cache directory (XDPFWD_CACHE_DIR).
"""

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from xdpfwd import bpfsys, compile_cache, compiler, xdp
from xdpfwd.layout import BPF_DIR, layout

PORTS = [2, 3]


@pytest.fixture
def cache_dir(monkeypatch):
    d = Path(tempfile.mkdtemp(prefix="xdpfwd-cache-test-"))  # root's, 0700
    monkeypatch.setenv("XDPFWD_CACHE_DIR", str(d))
    try:
        yield d
    finally:
        shutil.rmtree(d)


def load(ports=PORTS):
    return xdp.load_program(ports)


def entries(cache_dir):
    return sorted(cache_dir.glob("*.json"))


def normalized(prog_fd: int) -> list[tuple]:
    """The translated instructions with each map reference's id replaced by
    the map's role (its name): ids differ from load to load."""
    info = bpfsys.prog_info(prog_fd)
    names = {}
    for map_id in info.map_ids:
        with bpfsys.map_by_id(map_id) as m:
            names[map_id] = bpfsys.map_info(m.fd).name
    raw = bpfsys.prog_xlated(prog_fd)
    out = []
    for i in range(0, len(raw), 8):
        code, regs, off, imm = compile_cache.INSN.unpack_from(raw, i)
        if code == compile_cache.LD_IMM64 and regs >> 4 == compile_cache.PSEUDO_MAP_FD:
            imm = names[imm]
        out.append((code, regs, off, imm))
    return out


def test_a_cached_load_is_the_program_bcc_compiles(cache_dir):
    fresh = load()
    assert not fresh.cached and len(entries(cache_dir)) == 1
    cached = load()
    assert cached.cached
    a, b = bpfsys.prog_info(fresh.prog_fd), bpfsys.prog_info(cached.prog_fd)
    assert (b.name, b.type) == (layout().prog_name, bpfsys.PROG_TYPE_XDP) == (a.name, a.type)
    assert b.tag == a.tag  # the kernel's hash of the instructions, map fds left out
    fresh_insns, cached_insns = normalized(fresh.prog_fd), normalized(cached.prog_fd)
    assert len(fresh_insns) > 100
    assert cached_insns == fresh_insns
    roles = {imm for _, regs, _, imm in cached_insns if isinstance(imm, str)}
    lay = layout()
    assert roles == {lay.ports_map, lay.stats_map, lay.config_map}


def test_a_cached_program_counts_in_its_own_maps(cache_dir):
    load()
    prog = load()
    assert prog.cached
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(46)
    assert bpfsys.test_run(prog.prog_fd, arp, PORTS[0]).retval == 2  # XDP_PASS
    prog_id = bpfsys.prog_info(prog.prog_fd).id
    counts = xdp.program_counters(prog_id)[PORTS[0]].as_dict()
    assert counts.pop("received") == (1, len(arp))
    counts.pop("transmitted")
    assert sorted(v for v in counts.values() if v != (0, 0)) == [(1, len(arp))]


def test_other_port_slots_are_never_served(cache_dir):
    assert not load([2, 3]).cached
    assert not load([3, 2]).cached
    assert not load([2, 3, 4]).cached
    assert len(entries(cache_dir)) == 3
    assert load([2, 3]).cached and load([3, 2]).cached


@pytest.mark.parametrize("name", ["redirect.c", "counters.h"])
def test_a_changed_source_or_header_is_never_served(cache_dir, tmp_path, monkeypatch, name):
    bpf = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, bpf, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(compiler, "BPF_DIR", bpf)
    assert not load().cached
    assert load().cached
    with open(bpf / name, "a") as f:
        f.write("\n/* a change that compiles to the same code */\n")
    assert not load().cached
    assert len(entries(cache_dir)) == 2


def test_an_entry_with_the_wrong_mode_or_owner_is_ignored_and_replaced(cache_dir, capfd):
    load()
    (entry,) = entries(cache_dir)
    for spoil in (lambda: os.chmod(entry, 0o644), lambda: os.chown(entry, 65534, 65534)):
        spoil()
        capfd.readouterr()
        assert not load().cached
        assert "compile cache: not trusted" in capfd.readouterr().err
        st = entry.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)  # replaced by a good one
        assert load().cached


def test_a_directory_open_to_others_is_ignored(cache_dir, capfd):
    load()
    os.chmod(cache_dir, 0o755)
    capfd.readouterr()
    assert not load().cached
    assert "0755 lets group or others in" in capfd.readouterr().err
    assert not load().cached
    os.chmod(cache_dir, 0o700)
    assert load().cached


def rewrite(entry: Path, **changes) -> None:
    doc = json.loads(entry.read_text())
    doc.update(changes)
    entry.write_text(json.dumps(doc))  # in place: owner and mode stay


def test_an_entry_the_verifier_refuses_is_compiled_afresh_and_replaced(cache_dir):
    load()
    (entry,) = entries(cache_dir)
    good = json.loads(entry.read_text())
    exit_only = struct.pack("<BBhi", 0x95, 0, 0, 0)  # R0 never set: the verifier refuses
    rewrite(entry, insns=base64.b64encode(exit_only).decode(), relocations=[])
    assert not load().cached
    assert json.loads(entry.read_text())["insns"] == good["insns"]
    assert load().cached


def test_a_damaged_entry_is_compiled_afresh_and_replaced(cache_dir):
    load()
    (entry,) = entries(cache_dir)
    entry.write_text("{")
    assert not load().cached
    assert load().cached


PROBE = """
import json, sys
from xdpfwd import xdp
prog = xdp.load_program([2, 3])
print(json.dumps({"cached": prog.cached, "bcc": "bcc" in sys.modules}))
"""


def probe(cache_dir) -> dict:
    env = {**os.environ, "XDPFWD_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_hit_does_not_import_bcc(cache_dir):
    assert probe(cache_dir) == {"cached": False, "bcc": True}  # the check can see bcc
    assert probe(cache_dir) == {"cached": True, "bcc": False}
