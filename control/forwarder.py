"""attach, detach and run across both datapaths: the XDP program (xdp.py)
and the AF_PACKET forwarder (afpacket/datapath.py). All policy is here:
validation, privileges, the lock, the forwarding sysctls, netfilter, and
which datapath serves. What is attached and its counters are read by
snapshot.py, not here.

The rules that hold in every mode live here: one attach or detach at a
time, another tool's XDP program is never touched, and an interface is
served by at most one of the two datapaths.
"""

import fcntl
import os
import signal
from contextlib import contextmanager, suppress

from xdpfwd import follower, ipsec, netfilter, netlink, netns, sysctl, xdp
from xdpfwd.afpacket import datapath as afpacket
from xdpfwd.datapath import AttachResult, Datapath, PortState
from xdpfwd.errors import (Conflict, ForwardingDisabled, IpsecInPath, KernelRefused,
                           MissingDependency, NetfilterInPath, PermissionDenied, UsageError, XdpfwdError)
from xdpfwd.layout import layout


# The datapaths a mode may use, in the order tried: auto falls back to the
# AF_PACKET forwarder only where XDP itself cannot run.
DATAPATHS: dict[str, tuple[Datapath, ...]] = {
    "auto": (xdp, afpacket), "native": (xdp,), "skb": (xdp,), "afpacket": (afpacket,)}
MODES = tuple(DATAPATHS)
FAMILIES = sysctl.FAMILIES

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39


def require_privileges() -> None:
    """Root, or CAP_NET_ADMIN plus CAP_BPF (or CAP_SYS_ADMIN)."""
    with open("/proc/self/status") as f:
        caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    has = lambda cap: bool(caps & (1 << cap))  # noqa: E731
    if not (has(CAP_NET_ADMIN) and (has(CAP_BPF) or has(CAP_SYS_ADMIN))):
        raise PermissionDenied("xdpfwd needs root (or CAP_BPF and CAP_NET_ADMIN) for this")


@contextmanager
def exclusive():
    """One attach or detach at a time in this network namespace: a second
    one fails at once instead of interleaving with the first. Namespaces
    share no interfaces, so each has its own lock."""
    fd = os.open(netns.run_dir(create=True) / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict("another xdpfwd attach or detach is running", hint="try again when it ends") from None
    try:
        yield
    finally:
        os.close(fd)


def validate(ifnames: list[str], mode: str) -> list[netlink.Link]:
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
    if len(ifnames) < 2:
        raise UsageError("attach needs at least two interfaces to forward between")
    if len(set(ifnames)) != len(ifnames):
        dup = next(n for n in ifnames if ifnames.count(n) > 1)
        raise UsageError(f"{dup}: the same interface is given twice")
    if len(ifnames) > layout().max_ports:
        raise UsageError(f"at most {layout().max_ports} interfaces per program")
    all_links = netlink.links()
    chosen = []
    for name in ifnames:
        if name not in all_links:
            raise UsageError(f"{name}: no such interface in this network namespace")
        link = all_links[name]
        if link.loopback:
            raise UsageError(f"{name}: loopback carries no routed traffic; name the router's ports")
        chosen.append(link)
    return chosen


def check_forwarding(links: list[netlink.Link], enable: bool) -> list[str]:
    """The forwarding switches, family by family, as two parties read them:
    bpf_fib_lookup() refuses (FWD_DISABLED) on a port whose own switch is
    off, and the kernel forwards by sysctl.kernel_forwards(). XDP must not
    forward what the kernel would not (IPv6 on a port whose switch is on
    while net.ipv6.conf.all.forwarding is off: refused), and a port that
    forwards nothing in XDP is a mistake worth saying now. With enable,
    the switches are turned on (IPv6 through all.forwarding, as the
    kernel expects)."""
    notes = []
    for link in links:
        usable = []
        for fam in FAMILIES:
            port = sysctl.forwarding_name(fam, link.name)
            if enable:
                if fam == "ipv6" and not sysctl.kernel_forwards(fam, link.name):
                    sysctl.set_forwarding(fam, "all", True)  # the kernel sets every port's too
                    notes.append(f"{link.name}: set {sysctl.forwarding_name(fam, 'all')}=1")
                if not sysctl.forwarding(fam, link.name):
                    sysctl.set_forwarding(fam, link.name, True)
                    notes.append(f"{link.name}: set {port}=1")
            xdp, kernel = sysctl.forwarding(fam, link.name), sysctl.kernel_forwards(fam, link.name)
            if xdp and not kernel:
                raise ForwardingDisabled(
                    f"{link.name}: {port}=1 but {sysctl.forwarding_name(fam, 'all')}=0: the kernel "
                    f"does not forward {fam} here and XDP would",
                    hint=f"pass --enable-forwarding, or set {port}=0")
            if xdp:
                usable.append(fam)
            elif kernel:
                notes.append(f"{link.name}: {port}=0 while the kernel forwards {fam}: "
                             f"{fam} packets are left to the kernel")
            else:
                notes.append(f"{link.name}: {fam} forwarding is off ({port}=0): "
                             f"{fam} packets are left to the kernel")
        if not usable:
            names = ", ".join(f"{sysctl.forwarding_name(f, link.name)}=0" for f in FAMILIES)
            raise ForwardingDisabled(
                f"{link.name}: forwarding is disabled ({names})",
                hint="enable it or pass --enable-forwarding")
    return notes


def refuse_foreign(states: list[PortState]) -> None:
    for s in states:
        if s.foreign:
            raise Conflict(
                f"{s.name}: XDP program {s.foreign.prog_id} ({s.foreign.name}) is attached "
                "by another tool; xdpfwd does not replace it"
            )


def _prepare(ifnames: list[str], mode: str):
    links = validate(ifnames, mode)
    require_privileges()
    return links


def _check_free(links, states, mode) -> AttachResult | None:
    """One datapath per interface: refuse what would mix them; an identical
    afpacket attach is answered as already done."""
    refuse_foreign(states)
    afpacket.repair()
    done = afpacket.already(links, mode)
    if done:
        return done
    if mode == "afpacket":
        ours = [s.name for s in states if s.prog_id]
        if ours:
            raise Conflict(f"{', '.join(ours)}: xdpfwd's XDP program is attached; detach it first")
    return None


def _scan(what: str, flag: str, scan, bypass: bool) -> tuple[list, list[str]]:
    """(scan()'s findings, notes). Where the kernel cannot be read, refuse:
    not knowing is no licence to bypass; with bypass, a warning says so."""
    try:
        return scan(), []
    except XdpfwdError as e:
        if not bypass:
            raise e.reworded(
                f"{e.message}; cannot tell whether {what} would be bypassed",
                hint=(f"{e.hint}, or " if e.hint else "") + f"{flag} forwards anyway",
            ) from None
        return [], [f"warning: bypassing {what}, unread: {e}"]


def _check_netfilter(links, mode: str, bypass: bool) -> list[str]:
    """Refuse to forward past netfilter rules, or, with bypass, one warning
    per chain that is skipped. The kernel would show each forwarded packet
    to them; xdpfwd would not, and silently."""
    ports = [l.name for l in links]
    found, notes = _scan("netfilter", "--bypass-netfilter", lambda: netfilter.scan(ports, mode),
                         bypass)
    if found and not bypass:
        raise NetfilterInPath(
            f"netfilter on the forward path would be bypassed: {netfilter.summary(found)}",
            hint="remove the rules, or pass --bypass-netfilter to forward past them")
    return notes + netfilter.warnings(found)


def _check_ipsec(mode: str, bypass: bool) -> list[str]:
    """Refuse to forward past IPsec policies, or, with bypass, one warning.
    The kernel would encrypt, block or check the forwarded packets there;
    xdpfwd would send them on in clear, and silently."""
    found, notes = _scan("IPsec", "--bypass-ipsec", lambda: ipsec.scan(mode), bypass)
    if found and not bypass:
        raise IpsecInPath(
            f"IPsec (xfrm) on the forward path would be bypassed: {ipsec.summary(found)}",
            hint="see `ip xfrm policy` and `ip xfrm state`; remove them, or pass --bypass-ipsec "
                 "to forward past them")
    return notes + ipsec.warnings(found)


def _attached_as_asked(links, states) -> bool:
    """Every port already carries one xdpfwd program for exactly these
    ports: attach answers "already attached" as it always did."""
    return (all(s.prog_id for s in states) and len({s.prog_id for s in states}) == 1
            and states[0].ports == {l.index for l in links})


def _xdp_states(links) -> list[PortState]:
    return list(xdp.status(links).values())


def attach(ifnames: list[str], mode: str = "auto", enable_forwarding: bool = False,
           verbose: bool = False, bypass_netfilter: bool = False,
           bypass_ipsec: bool = False) -> AttachResult:
    links = _prepare(ifnames, mode)
    with exclusive():
        states = _xdp_states(links)
        done = _check_free(links, states, mode)
        if done:
            return done
        warned = [] if _attached_as_asked(links, states) else \
            _check_netfilter(links, mode, bypass_netfilter) + _check_ipsec(mode, bypass_ipsec)
        result, notes = _xdp_or_fallback(links, states, mode, enable_forwarding, verbose)
        result = result or afpacket.attach(links, mode, verbose, notes)
        result.notes[:0] = warned
        return result


def _xdp_or_fallback(links, states, mode, enable_forwarding, verbose):
    """Through the mode's datapaths in order: XDP's result, or (None, notes)
    where the AF_PACKET forwarder is to forward instead (the caller starts
    it: in the background for attach, in its own process for run)."""
    notes: list[str] = []
    for dp in DATAPATHS[mode]:
        if dp is afpacket:
            return None, notes + check_forwarding(links, enable_forwarding)
        try:
            done = dp.already(states, {l.index for l in links}, mode)
            return done or dp.attach(links, mode, verbose,
                                     check_forwarding(links, enable_forwarding)), []
        except (MissingDependency, KernelRefused) as e:
            # Only where XDP itself is unavailable; a router that does not
            # forward, or a half-attached program, is the user's to fix.
            if dp is DATAPATHS[mode][-1] or isinstance(e, ForwardingDisabled) \
                    or any(s.prog_id for s in states):
                raise
            notes = [f"XDP unavailable ({e}); using afpacket"]
    raise AssertionError(f"mode {mode} lists no datapath")


def detach(ifnames: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Stop xdpfwd on the named interfaces, or everywhere in this namespace:
    (the interfaces stopped, notes). The AF_PACKET forwarder stops as a
    whole when any of its ports is named. A state file that is not ours
    is removed (refused everywhere else); nothing in it is trusted, so its
    sysctls are not restored."""
    require_privileges()
    all_links = netlink.links()
    for name in ifnames or []:
        if name not in all_links:
            raise UsageError(f"{name}: no such interface in this network namespace")
    targets = [all_links[n] for n in ifnames] if ifnames else [
        l for l in all_links.values() if not l.loopback]
    notes = []
    with exclusive():
        states = _xdp_states(targets)
        try:
            serving = afpacket.status()
        except afpacket.StateFileError as e:
            if afpacket.discard(e):
                notes.append(f"removed {e.path} ({e.reason}); the sysctls it listed were not restored")
            serving = afpacket.status()
        if ifnames:
            for s in states:
                if s.foreign and not s.prog_id and s.name not in serving:
                    raise Conflict(f"{s.name}: XDP program {s.foreign.prog_id} ({s.foreign.name}) "
                                   "was not attached by xdpfwd; not touching it")
        done = xdp.detach(states)
        named = serving.values() if not ifnames else [s for n, s in serving.items() if n in ifnames]
        done += [n for n in afpacket.detach(named) if n not in done]
        return done, notes


def run(ifnames: list[str], mode: str = "auto", enable_forwarding: bool = False,
        verbose: bool = False, on_ready=None, bypass_netfilter: bool = False,
        bypass_ipsec: bool = False) -> int:
    """attach, stay in the foreground until SIGTERM or SIGINT, detach.
    The AF_PACKET forwarder runs in this very process. Meanwhile child
    processes log every change of the netfilter rules and IPsec on the
    forward path, and keep the XDP program's copy of the ports' MACs and
    IPv6 switches current."""
    links = _prepare(ifnames, mode)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    with exclusive():
        states = _xdp_states(links)
        if _check_free(links, states, mode) or any(s.prog_id for s in states):
            raise Conflict("already attached; `run` would detach it when it stops: detach first")
        warned = _check_netfilter(links, mode, bypass_netfilter) + _check_ipsec(mode, bypass_ipsec)
        result, notes = _xdp_or_fallback(links, states, mode, enable_forwarding, verbose)
    names = [l.name for l in links]
    if result is not None:
        result.notes[:0] = warned
        followers = []
        try:
            followers = _start_followers(names, set(result.modes.values()), result.prog_id)
            if on_ready:
                on_ready(result)
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
        finally:  # also when on_ready fails: nothing stays attached
            for pid in followers:
                follower.stop(pid)
            with exclusive():
                xdp.detach(_xdp_states(links))
        return 0
    ready = AttachResult(0, {n: afpacket.MODE for n in names}, warned + notes, pid=os.getpid())
    followers = _start_followers(names, {afpacket.MODE})
    try:
        with suppress(KeyboardInterrupt):
            return afpacket.serve(links, on_ready=(lambda: on_ready(ready)) if on_ready else None)
        return 0
    finally:
        for pid in followers:
            follower.stop(pid)


def _start_followers(names: list[str], modes: set[str], prog_id: int = 0) -> list[int]:
    """The child processes that log what joins or leaves the forward path
    while `run` forwards (netfilter's chains, and IPsec) and, for the XDP
    program prog_id, keep its copy of the ports' MACs and IPv6 switches in
    step (xdp.follow_ports). Ports can end in different XDP modes (auto);
    skb mode is the one that sees more."""
    mode = "native" if modes == {"native"} else ("afpacket" if "afpacket" in modes else "skb")
    pids = [netfilter.start_follower(names, mode)]
    try:
        pids.append(follower.start(lambda log, ready: ipsec.follow(mode, log, ready=ready), "IPsec"))
        if prog_id:
            pids.append(follower.start(lambda log, ready: xdp.follow_ports(prog_id, log, ready=ready),
                                       "ports"))
    except BaseException:
        for pid in pids:
            follower.stop(pid)
        raise
    return pids
