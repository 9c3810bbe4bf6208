"""User mistakes: one clear line on stderr, a documented exit status, no
traceback, and the router left exactly as it was."""

import pytest

from helpers import XDPFWD, assert_one_line, attached_ports, run, without_bcc, xdpfwd

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all"]

# (arguments, exit status, words the one line must contain)
MISTAKES = [
    (["attach", "eth1"], 2, "at least two interfaces"),
    (["attach", "eth1", "eth1"], 2, "given twice"),
    (["attach", "eth1", "nosuch0"], 2, "nosuch0: no such interface"),
    (["attach", "eth1", "x" * 20], 2, "no such interface"),
    (["attach", "lo", "eth0"], 2, "lo: loopback"),
    (["attach", "eth1", "eth0", "--mode", "turbo"], 2, "turbo"),
    (["attach", "eth1", "eth0", "--mode", ""], 2, "--mode"),
    (["attach"], 2, "IFACE"),
    (["detach", "nosuch0"], 2, "nosuch0: no such interface"),
    (["stats", "--bogus"], 2, "--bogus"),
    (["status", "extra"], 2, "extra"),
    (["frobnicate"], 2, "frobnicate"),
    (["lab", "traffic", "--count", "0"], 2, "--count"),
    (["lab", "traffic", "--size", "2"], 2, "--size"),
    (["exporter", "--listen", "nonsense:port"], 2, "--listen"),
    (["exporter", "--listen", "127.0.0.1:99999"], 2, "1 to 65535"),
    (["exporter", "--listen", "router.example:10420"], 2, "IP address"),
    (["exporter", "--tls-cert", "/nonexistent.pem"], 2, "both --tls-cert and --tls-key"),
    (["run", "eth1", "eth0", "--metrics", "127.0.0.1:http"], 2, "1 to 65535"),
    (["attach", "eth1", "eth0", "--mode", "xdp"], 2, "xdp"),
]


@pytest.fixture
def router(lab):
    xdpfwd("detach")
    assert attached_ports() == []
    yield
    assert attached_ports() == [], "a mistake must not leave anything attached"


@pytest.mark.parametrize("args,code,words", MISTAKES, ids=[" ".join(m[0]) or "-" for m in MISTAKES])
def test_mistake_gives_one_line_and_changes_nothing(router, args, code, words):
    assert_one_line(xdpfwd(*args), code, words)


@pytest.mark.parametrize("args", [["attach", "eth1", "eth0"], ["detach"], ["lab", "up"]])
def test_not_root_is_refused(router, args):
    proc = run([*NOBODY, XDPFWD, *args])
    assert_one_line(proc, 3, "needs root")


def test_bcc_missing_is_a_clear_error(router, tmp_path):
    env = without_bcc(tmp_path)
    proc = xdpfwd("attach", "eth1", "eth0", "--mode", "native", env=env)
    assert_one_line(proc, 4, "bcc is not importable")
    # Everything that does not load a program still works without bcc.
    for args in (["status"], ["stats"], ["detach"], ["--help"], ["attach", "--help"]):
        ok = xdpfwd(*args, env=env)
        assert ok.returncode == 0, (args, ok.stderr)


def test_help_and_version():
    version = run([XDPFWD, "--version"], ns=None)
    assert version.returncode == 0 and version.stdout.startswith("xdpfwd ")
    usage = run([XDPFWD, "--help"], ns=None)
    for command in ("attach", "detach", "status", "stats", "doctor", "lab"):
        assert command in usage.stdout
