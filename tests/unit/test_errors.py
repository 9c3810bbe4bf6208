"""Errors carry their parts as fields: the message, what to do (hint) and
the kernel's errno; the CLI's one line is the message then the hint."""

import errno

import pytest

from xdpfwd import bpfsys
from xdpfwd.errors import Conflict, PermissionDenied, XdpfwdError


def test_the_line_is_the_message_then_the_hint():
    e = Conflict("another xdpfwd attach or detach is running", hint="try again when it ends")
    assert str(e) == "another xdpfwd attach or detach is running; try again when it ends"
    assert (e.message, e.hint, e.errno, e.exit_code) == (
        "another xdpfwd attach or detach is running", "try again when it ends", None, 5)
    assert str(XdpfwdError("no hint")) == "no hint"


def test_a_bpf_failure_keeps_its_errno_and_reason():
    e = bpfsys.BpfError("attach the XDP program", errno.EBUSY)
    assert e.errno == errno.EBUSY and e.reason == "Device or resource busy"
    assert str(e) == "failed to attach the XDP program: Device or resource busy"


def test_reworded_keeps_the_class_and_what_it_carries():
    e = bpfsys.BpfError("attach the XDP program", errno.EBUSY).reworded("said more", hint="do this")
    assert type(e) is bpfsys.BpfError and e.errno == errno.EBUSY and e.what == "attach the XDP program"
    assert (str(e), e.exit_code) == ("said more; do this", 1)


def test_permission_denied_from_the_kernel_says_what_to_do(monkeypatch):
    monkeypatch.setattr(bpfsys.ctypes, "get_errno", lambda: errno.EPERM)
    with pytest.raises(PermissionDenied) as raised:
        bpfsys._check(-1, "load BPF program x")
    assert (raised.value.errno, raised.value.hint) == (errno.EPERM, "run as root")

