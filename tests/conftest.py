"""Shared fixtures: the real namespace lab and the real CLI.

Kernel tests need root. Under CI=true a test that cannot run fails; it is
never skipped.
"""

import os

# The tests build their own lab beside any lab a person has up (which
# keeps the names sendbox, router, recvbox). Set before xdpfwd.lab loads.
os.environ.setdefault("XDPFWD_LAB_PREFIX", "xt-")

import pytest  # noqa: E402

from helpers import attached_ports, foreign_program, xdpfwd  # noqa: E402
from xdpfwd import lab as labmod  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    kernel_tests = [i for i in items if "/unit/" not in str(i.path)]
    if not kernel_tests:
        return
    if os.environ.get("CI") == "true":
        # In CI a kernel test that cannot run is a failure, not a skip.
        pytest.exit("kernel tests need root (CAP_BPF, CAP_NET_ADMIN)", returncode=1)
    for item in kernel_tests:
        item.add_marker(pytest.mark.skip(reason="needs root; under CI=true this fails"))


@pytest.fixture(scope="session")
def lab():
    """The namespace lab, made fresh for the session and always removed."""
    labmod.down()
    labmod.up()
    try:
        yield labmod
    finally:
        xdpfwd("detach")
        labmod.down()


@pytest.fixture
def clean(lab):
    """The test starts with nothing of xdpfwd's in the router, and leaves
    nothing: detach must have removed it all."""
    xdpfwd("detach")
    yield
    xdpfwd("detach")
    assert attached_ports() == []


@pytest.fixture
def foreign(clean):
    """Another tool's XDP program on the router's eth0; yields its id."""
    with foreign_program("eth0") as prog_id:
        yield prog_id

