"""`xdpfwd doctor`: check what xdpfwd needs and say how to fix what is missing.

Read-only: nothing is loaded, attached, mounted or written. Every check
catches what it can meet and turns it into a result, so doctor also runs
where bcc, libbpf or root is missing -- the places it is most needed.
"""

import ctypes
import fcntl
import os
import platform
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from xdpfwd import bpfsys, compiler, forwarder, ipsec, netfilter, netlink, sysctl, xdp
from xdpfwd.errors import MissingDependency, PermissionDenied, XdpfwdError

LEVELS = {"ok": "ok", "warn": "warn", "fail": "FAIL"}

# Drivers (ethtool names) and link kinds with native XDP in mainline Linux.
NATIVE_XDP = frozenset({
    "veth", "virtio_net", "tun", "bond", "bonding", "netdevsim",
    "ixgbe", "ixgbevf", "i40e", "ice", "igb", "igc", "mlx4_en", "mlx5_core",
    "bnxt_en", "nfp", "qede", "ena", "sfc", "hv_netvsc", "vif",  # vif: xen-netfront
    "mvneta", "mvpp2", "st_gmac", "fec", "fsl_dpaa2_eth", "fsl_enetc",
    "fsl_enetc_vf", "lan966x-switch", "thunder-nicvf", "netsec", "cpsw",
    "cpsw-switch", "gve", "mana", "atlantic", "tsnep", "rvu_nicpf", "rvu_nicvf",
})

# Largest MTU at which veth and virtio_net take a single-buffer XDP
# program (xdpfwd's has no frags support) on 4 KiB pages:
# PAGE_SIZE - XDP headroom (256) - skb_shared_info (320) - ETH_HLEN (14).
# Measured on 6.18 veth: 3506 attaches, 3507 gets ERANGE.
XDP_MAX_MTU_4K = 3506

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x3


@dataclass(frozen=True)
class Result:
    check: str
    level: str  # ok | warn | fail
    message: str
    fix: str | None = None
    interface: str | None = None

    def line(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{LEVELS[self.level]:<4} {self.interface or self.check}: {self.message}{fix}"

    def as_dict(self) -> dict:
        return asdict(self)


# -- the machine ------------------------------------------------------------


def check_privileges() -> Result:
    try:
        forwarder.require_privileges()
    except PermissionDenied:
        return Result("privileges", "fail", "not root, and no CAP_BPF plus CAP_NET_ADMIN",
                      "run as root (sudo xdpfwd ...)")
    who = "root" if os.geteuid() == 0 else "CAP_BPF and CAP_NET_ADMIN"
    return Result("privileges", "ok", who)


def check_bcc() -> Result:
    try:
        bcc = compiler.import_bcc()
    except MissingDependency as e:
        return Result("bcc", "fail", e.message, e.hint)
    except Exception as e:  # a broken install: libbcc.so missing, ABI mismatch
        return Result("bcc", "fail", f"import failed: {type(e).__name__}: {e}",
                      compiler.BCC_HINT)
    where = Path(bcc.__file__).parent
    version = getattr(bcc, "__version__", None)  # not every bcc release has it
    return Result("bcc", "ok", f"importable ({where})" + (
        f", version {version}" if version else ""))


def major_minor(text: str) -> tuple[int, int] | None:
    """(6, 1) from "6.1.0-56-amd64" or "linux-headers-6.1.0-56-amd64"."""
    found = re.search(r"(?:^|-)(\d+)\.(\d+)", text)
    return (int(found[1]), int(found[2])) if found else None


def headers_result(path: Path | None, release: str) -> Result:
    if path is None:
        return Result("kernel headers", "fail", f"none for {release}",
                      f"install linux-headers-{release}, or run 'make setup' "
                      "(links the closest Debian headers)")
    have, running = major_minor(path.name), major_minor(release)
    if have is None or running is None or have == running:
        return Result("kernel headers", "ok", str(path))
    # bcc compiles against whatever /lib/modules/$(uname -r)/build points
    # to; xdpfwd's program uses only uapi headers, which stay compatible.
    return Result("kernel headers", "warn",
                  f"{path}: using {have[0]}.{have[1]} headers for a {running[0]}.{running[1]} "
                  "kernel: uapi-only programs like xdpfwd's work",
                  f"install linux-headers-{release} for an exact match")


def check_headers() -> Result:
    return headers_result(compiler.kernel_headers(), platform.release())


def check_libbpf() -> Result:
    try:
        bpfsys.lib()
    except MissingDependency as e:
        return Result("libbpf", "fail", "libbpf.so.1 not found", str(e).split(": ", 1)[-1])
    except (OSError, AttributeError) as e:  # a libbpf too old for bpf_xdp_attach & co.
        return Result("libbpf", "fail", f"libbpf.so.1 unusable: {e}", "apt-get install libbpf1")
    return Result("libbpf", "ok", "libbpf.so.1 loads")


def check_btf() -> Result:
    if Path("/sys/kernel/btf/vmlinux").exists():
        return Result("btf", "ok", "/sys/kernel/btf/vmlinux present")
    return Result("btf", "warn",
                  "/sys/kernel/btf/vmlinux absent; xdpfwd does not need it "
                  "(it builds from headers)",
                  "none needed; a kernel with CONFIG_DEBUG_INFO_BTF=y has it")


def check_bpffs() -> Result:
    try:
        with open("/proc/self/mounts") as f:
            mounted = any(l.split()[1:3] == ["/sys/fs/bpf", "bpf"] for l in f)
    except OSError as e:
        return Result("bpffs", "warn", f"cannot read /proc/self/mounts: {e.strerror}")
    if mounted:
        return Result("bpffs", "ok", "mounted at /sys/fs/bpf")
    # `ip netns exec` remounts /sys, so this is the usual answer there.
    return Result("bpffs", "warn",
                  "not mounted; xdpfwd does not pin anything, so this is informational",
                  "none needed (mount -t bpf bpf /sys/fs/bpf for other tools)")


# -- each interface ---------------------------------------------------------


def check_forwarding(ifname: str) -> list[Result]:
    on = {fam: sysctl.forwarding(fam, ifname) for fam in sysctl.FAMILIES}
    results = []
    for fam in sysctl.FAMILIES:
        name = sysctl.forwarding_name(fam, ifname)
        if on[fam] and not sysctl.kernel_forwards(fam, ifname):
            every = sysctl.forwarding_name(fam, "all")
            results.append(Result("forwarding", "fail",
                                  f"{name}=1 but {every}=0: the kernel does not forward {fam} "
                                  "here and XDP would; attach will refuse",
                                  f"sysctl -w {every}=1, or attach --enable-forwarding", ifname))
            continue
        if on[fam]:
            results.append(Result("forwarding", "ok", f"{name}=1", interface=ifname))
            continue
        # attach refuses only when every family is off; one off just
        # leaves that family to the kernel (forwarder.check_forwarding).
        what = "attach will refuse" if not any(on.values()) else f"{fam} is left to the kernel"
        results.append(Result("forwarding", "warn", f"{name}=0: {what}",
                              f"sysctl -w {name}=1, or attach --enable-forwarding", ifname))
    return results


class _DrvInfo(ctypes.Structure):
    # struct ethtool_drvinfo (uapi/linux/ethtool.h)
    _fields_ = [("cmd", ctypes.c_uint32), ("driver", ctypes.c_char * 32),
                ("version", ctypes.c_char * 32), ("fw_version", ctypes.c_char * 32),
                ("bus_info", ctypes.c_char * 32), ("erom_version", ctypes.c_char * 32),
                ("reserved2", ctypes.c_char * 12), ("n_priv_flags", ctypes.c_uint32),
                ("n_stats", ctypes.c_uint32), ("testinfo_len", ctypes.c_uint32),
                ("eedump_len", ctypes.c_uint32), ("regdump_len", ctypes.c_uint32)]


class _IfReq(ctypes.Structure):
    # struct ifreq: the name, then a 24-byte union of which we use ifr_data.
    _fields_ = [("name", ctypes.c_char * 16), ("data", ctypes.c_void_p),
                ("pad", ctypes.c_char * 16)]


def ethtool_driver(ifname: str) -> str:
    """The driver name `ethtool -i` shows. Raises OSError (EOPNOTSUPP...)."""
    info = _DrvInfo(cmd=ETHTOOL_GDRVINFO)
    req = _IfReq(name=ifname.encode(), data=ctypes.addressof(info))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, req)
    return info.driver.decode(errors="replace")


def driver_result(ifname: str, driver: str | None, why: str = "") -> Result:
    if driver is None:
        return Result("driver", "warn", f"driver unknown ({why}): attach --mode auto will "
                      "fall back to skb mode if native fails", f"check with ethtool -i {ifname}",
                      ifname)
    if driver in NATIVE_XDP:
        return Result("driver", "ok", f"{driver}: native XDP supported", interface=ifname)
    return Result("driver", "warn", f"no native XDP in driver {driver} as far as xdpfwd knows: "
                  "attach --mode auto will use skb mode",
                  "skb mode works; for native, a NIC whose driver has XDP", ifname)


@dataclass(frozen=True)
class Peer:
    name: str
    mtu: int
    here: bool  # in this network namespace


def veth_peer(link: netlink.Link) -> Peer | None:
    """The other end of a veth, also when it is in another namespace (the
    lab's router ports): the kernel bounds native XDP by the PEER's MTU."""
    try:
        with netlink._iproute() as ipr:
            msg = ipr.get_links(link.index)[0]
            index, nsid = msg.get_attr("IFLA_LINK"), msg.get_attr("IFLA_LINK_NETNSID")
            if not index:
                return None
            where = {} if nsid is None else {"IFLA_IF_NETNSID": nsid}
            peer = ipr.get_links(index, **where)[0]
            return Peer(peer.get_attr("IFLA_IFNAME"), peer.get_attr("IFLA_MTU"), nsid is None)
    except Exception:  # pyroute2's NetlinkError is no OSError; fall back to our own MTU
        return None


def mtu_result(ifname: str, driver: str | None, mtu: int, peer: Peer | None = None,
               page_size: int = 4096, cpus: int = 1) -> Result:
    limit = XDP_MAX_MTU_4K
    if driver not in ("veth", "virtio_net"):
        return Result("mtu", "ok", f"MTU {mtu}", interface=ifname)
    if page_size != 4096:
        return Result("mtu", "ok", f"MTU {mtu} (native XDP MTU limit unknown for "
                      f"{page_size // 1024} KiB pages)", interface=ifname)
    if driver == "veth" and peer is not None:
        if peer.mtu <= limit:
            return Result("mtu", "ok", f"MTU {mtu}, peer {peer.name} MTU {peer.mtu}: "
                          f"native XDP fits (<= {limit})", interface=ifname)
        where = "" if peer.here else " (in the peer's namespace)"
        return Result("mtu", "warn", f"native XDP up to peer MTU {limit} on veth, "
                      f"peer {peer.name} has {peer.mtu}",
                      f"ip link set dev {peer.name} mtu {limit}{where}, or --mode skb", ifname)
    if mtu > limit:
        also = " (and its peer)" if driver == "veth" else ""
        return Result("mtu", "warn", f"native XDP up to MTU {limit} on {driver}, MTU is {mtu}",
                      f"ip link set dev {ifname} mtu {limit}{also}, or --mode skb", ifname)
    if driver == "virtio_net" and mtu > 1500:
        # Big MTUs on virtio come with big-packet/LRO receive buffers, which
        # native XDP refuses; with fewer queues than CPUs XDP_REDIRECT
        # falls back to a slower, locked transmit path.
        return Result("mtu", "warn", f"MTU {mtu} on virtio_net: native XDP needs the guest "
                      "offloads off and queues >= CPUs",
                      f"ethtool -K {ifname} lro off rx-gro-hw off; "
                      f"ethtool -L {ifname} combined {cpus}", ifname)
    return Result("mtu", "ok", f"MTU {mtu}", interface=ifname)


def stale_reader():
    """xdp.stale_ports() once per program for one doctor run (each call
    dumps the IPv4 routes, not cheap on a full-table router): prog_id ->
    {port: lines}, or the reason it could not be read."""
    found: dict[int, dict | str] = {}

    def stale(prog_id: int) -> dict | str:
        if prog_id not in found:
            try:
                found[prog_id] = xdp.stale_ports(prog_id)
            except XdpfwdError as e:
                found[prog_id] = e.message
            except Exception as e:  # noqa: BLE001 - netlink refused the dump: a warning, not a traceback
                found[prog_id] = str(e)
        return found[prog_id]

    return stale


def check_xdp(link: netlink.Link, stale=None) -> list[Result]:
    try:
        state = xdp.inspect(link)
    except XdpfwdError as e:  # no libbpf, or not allowed to open programs
        fix = e.hint or ("run as root" if isinstance(e, PermissionDenied) else None)
        return [Result("xdp", "warn", f"cannot read XDP programs: {e.message}", fix, link.name)]
    results = []
    if state.attached:
        results.append(Result("xdp", "ok", f"xdpfwd program {state.prog_id} ({state.mode})",
                              interface=link.name))
        found = (stale or stale_reader())(state.prog_id)
        lines = ([f"cannot read the program's copy of the port: {found}"] if isinstance(found, str)
                 else found.get(link.name, []))
        results += [Result("xdp", "warn", line, "attach the same interfaces again (it refreshes "
                           "the copy in place), or forward with `xdpfwd run`, which keeps it current",
                           link.name) for line in lines]
    if state.foreign:
        f = state.foreign
        results.append(Result("xdp", "warn", f"foreign XDP program {f.prog_id} ({f.name}) "
                              "attached: xdpfwd will refuse to attach here",
                              "remove it with the tool that attached it, or use another interface",
                              link.name))
    return results or [Result("xdp", "ok", "no XDP program attached", interface=link.name)]


def check_interface(link: netlink.Link, stale=None) -> list[Result]:
    results = check_forwarding(link.name)
    driver, why = link.kind or None, ""
    if driver is None:  # a physical NIC: netlink has no kind for it
        try:
            driver = ethtool_driver(link.name)
        except OSError as e:
            why = f"ETHTOOL_GDRVINFO: {e.strerror}"
    results.append(driver_result(link.name, driver, why))
    peer = veth_peer(link) if driver == "veth" else None
    results.append(mtu_result(link.name, driver, link.mtu, peer,
                              os.sysconf("SC_PAGE_SIZE"), os.cpu_count() or 1))
    return results + check_xdp(link, stale)


def check_interfaces() -> list[Result]:
    try:
        links = [l for l in netlink.links().values() if not l.loopback]
    except Exception as e:  # pyroute2 missing or netlink refused
        return [Result("interfaces", "fail", f"cannot list interfaces: {e}",
                       "pip install pyroute2 (an xdpfwd dependency)")]
    if not links:
        return [Result("interfaces", "warn", "none but loopback in this network namespace",
                       "run doctor where the ports are: ip netns exec NS xdpfwd doctor")]
    results, stale = [], stale_reader()
    for link in links:
        results += _guard(f"{link.name} checks", lambda: check_interface(link, stale))
    return results


# -- netfilter ---------------------------------------------------------------


def netfilter_results(found: list[netfilter.Finding], attached: bool) -> list[Result]:
    if not found:
        return [Result("netfilter", "ok", "no nftables or iptables rule on the forward path")]
    what = "xdpfwd's packets skip it" if attached else "attach refuses"
    fix = ("detach, or accept the bypass" if attached else
           "remove the rules, or attach --bypass-netfilter")
    return [Result("netfilter", "warn", f"{f.line()}: {what}", fix, f.device) for f in found]


def check_netfilter() -> list[Result]:
    """Read afresh at each run: rules added after attach show up here."""
    ports = forwarding_ports()
    attached = bool(ports)
    if not attached:  # what attach would meet, on any of this namespace's ports
        ports = {l.name: "auto" for l in netlink.links().values() if not l.loopback}
    mode = "afpacket" if set(ports.values()) == {"afpacket"} else "auto"
    try:
        found = netfilter.scan(list(ports), mode)
    except XdpfwdError as e:
        fix = "run as root" if isinstance(e, PermissionDenied) else None
        return [Result("netfilter", "warn", f"cannot read netfilter: {e}", fix)]
    return netfilter_results(found, attached)


# -- IPsec -------------------------------------------------------------------


def ipsec_results(x: ipsec.Xfrm, modes: set[str]) -> list[Result]:
    """What xdpfwd skips in the modes it forwards in (modes), or, with
    nothing attached, what attach would refuse in its default mode."""
    attached = bool(modes)
    found = ipsec.findings(x, ipsec.judged_mode(modes))
    if not found:
        return [Result("ipsec", "ok",
                       "no IPsec (xfrm) policy, blocking default or SA that xdpfwd would skip")]
    what = "xdpfwd's packets skip it" if attached else "attach refuses"
    if attached:
        fix = "detach, or accept the bypass"
    elif not ipsec.findings(x, "native"):  # SAs alone: native XDP never sees their packets
        fix = "attach --mode native, or attach --bypass-ipsec"
    else:
        fix = "remove them (ip xfrm policy, ip xfrm state), or attach --bypass-ipsec"
    return [Result("ipsec", "warn", f"IPsec (xfrm): {ipsec.summary(found)}: {what}", fix)]


def check_ipsec() -> list[Result]:
    """Read afresh at each run: policies added after attach show up here."""
    modes = set(forwarding_ports().values())
    try:
        x = ipsec.read()
    except XdpfwdError as e:
        fix = "run as root" if isinstance(e, PermissionDenied) else None
        return [Result("ipsec", "warn", f"cannot read IPsec (xfrm): {e}", fix)]
    return ipsec_results(x, modes)


def forwarding_ports() -> dict[str, str]:
    """{port: mode} where xdpfwd forwards in this namespace, XDP or afpacket."""
    from xdpfwd import snapshot  # it imports the AF_PACKET forwarder: only when needed

    return {s.name: s.mode for s in snapshot.read(counters=False).attached}


# -- all --------------------------------------------------------------------


def _guard(check: str, fn) -> list[Result]:
    """A bug in one check must not hide the others' answers, nor print a
    traceback instead of a diagnosis."""
    try:
        got = fn()
    except Exception as e:
        return [Result(check, "fail", f"the check itself failed: {type(e).__name__}: {e}",
                       "report this as an xdpfwd bug")]
    return got if isinstance(got, list) else [got]


CHECKS = [("privileges", check_privileges), ("bcc", check_bcc),
          ("kernel headers", check_headers), ("libbpf", check_libbpf), ("btf", check_btf),
          ("bpffs", check_bpffs), ("interfaces", check_interfaces), ("netfilter", check_netfilter),
          ("ipsec", check_ipsec)]


def run() -> list[Result]:
    return [r for name, fn in CHECKS for r in _guard(name, fn)]
