"""The one thing pyproject.toml cannot say with this setuptools: the C
extension xdpfwd.afpacket._fastpath (control/afpacket/fastpath.c). Built by
`pip install -e .` (scripts/setup), beside its source."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
# Every C file of the package: the extension is stale when any changed.
# tests/unit/test_afpacket_fastpath.py and scripts/setup hash the same files
# the same way and compare with the SOURCE_HASH the module carries.
SOURCES = sorted((HERE / "control" / "afpacket").glob("*.[ch]"))
SOURCE_HASH = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()

setup(
    ext_modules=[
        Extension(
            "xdpfwd.afpacket._fastpath",
            sources=["control/afpacket/fastpath.c"],
            depends=[str(p.relative_to(HERE)) for p in SOURCES],
            define_macros=[("XDPFWD_FASTPATH_SOURCE_HASH", f'"{SOURCE_HASH}"')],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        ),
    ],
)
