"""The peer row's forwarder: xdp-tools' xdp-forward, as Debian ships it.

Debian 12's xdp-tools (1.3.1) has no xdp-forward; Debian 13's (1.5.4) has
it, built against glibc 2.38 (Debian 12 has 2.36). So the benchmark
fetches Debian 13's packages by name with apt, into a private apt state
under bench/build/ (the system's sources and lists stay untouched), unpacks
them there with dpkg-deb and runs the binary through the dynamic loader it
came with, on the libraries it came with. Done once; later runs find it.
"""

import subprocess
from pathlib import Path

from bench import router

BUILD = Path(__file__).parent / "build" / "peer"
ROOT = BUILD / "root"
LIB = ROOT / "usr" / "lib" / "x86_64-linux-gnu"
BINARY = ROOT / "usr" / "sbin" / "xdp-forward"
SUITE = "trixie"
# xdp-forward's libraries, with what they need beyond Debian 12's.
PACKAGES = ["xdp-tools", "libbpf1", "libc6", "libelf1t64", "zlib1g", "libzstd1"]


class PeerUnavailable(RuntimeError):
    pass


def _apt_options() -> list[str]:
    return ["-o", f"Dir::Etc::sourcelist={BUILD / 'sources.list'}",
            "-o", "Dir::Etc::sourceparts=/nonexistent",
            "-o", f"Dir::State::Lists={BUILD / 'lists'}",
            "-o", f"Dir::Cache={BUILD / 'cache'}",
            "-o", f"Dir::State::status={BUILD / 'status'}",
            "-o", "APT::Sandbox::User=root"]


def _run(args: list[str], cwd: Path | None = None) -> None:
    r = subprocess.run(args, capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise PeerUnavailable(f"{' '.join(args[:2])} failed: {tail[0]}")


def command() -> list[str]:
    """xdp-forward's command line, fetching it first if needed."""
    if not BINARY.exists():
        fetch()
    return [str(LIB / "ld-linux-x86-64.so.2"), "--library-path", str(LIB), str(BINARY)]


def mirror() -> str:
    """The Debian archive this machine's own apt uses for its release (the
    one-line or the deb822 format): Debian 13 is fetched from there too."""
    release = next((line.split("=", 1)[1].strip().strip('"')
                    for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("VERSION_CODENAME=")), "")
    one_line = Path("/etc/apt/sources.list")
    for line in (one_line.read_text().splitlines() if one_line.exists() else []):
        f = line.split("#", 1)[0].split()
        if len(f) >= 3 and f[0] == "deb" and not f[1].startswith("["):
            if f[2] == release:
                return f[1]
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, value = line.split(":", 1)
                    fields[key.strip()] = value.split()
            if "deb" in fields.get("Types", []) and release in fields.get("Suites", []):
                return fields["URIs"][0]
    raise PeerUnavailable(f"no Debian archive for {release or 'this release'} in apt's sources")


def fetch() -> None:
    if subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                      text=True).stdout.strip() != "amd64":
        raise PeerUnavailable("only amd64 packages are fetched")
    for d in ("lists/partial", "cache/archives/partial", "debs"):
        (BUILD / d).mkdir(parents=True, exist_ok=True)
    (BUILD / "sources.list").write_text(f"deb {mirror()} {SUITE} main\n")
    (BUILD / "status").touch()
    _run(["apt-get", *_apt_options(), "update"])
    _run(["apt-get", *_apt_options(), "download", *PACKAGES], cwd=BUILD / "debs")
    for deb in sorted((BUILD / "debs").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(ROOT)])
    if not BINARY.exists():
        raise PeerUnavailable(f"{SUITE}'s xdp-tools has no xdp-forward")


def load(ns: str, ports: list[str]) -> float:
    """Attach xdp-forward in fib mode, native, to ports in ns; seconds taken."""
    t = router.run_in(ns, [*command(), "load", "-f", "fib", "-m", "native", *ports])
    return t.seconds


def unload(ns: str, ports: list[str]) -> None:
    router.run_in(ns, [*command(), "unload", *ports])
