"""What netfilter would do on the forward path that xdpfwd skips.

The kernel shows every packet it forwards to netfilter: the prerouting,
forward and postrouting hooks of the ip, ip6 and inet families, and the
ingress (and egress) hooks of the devices it crosses. A frame that XDP
redirects never gets that far: generic and native XDP run before the
ingress hook (do_xdp_generic / the driver, both ahead of nf_ingress() in
__netif_receive_skb_core(), net/core/dev.c) and leave by ndo_xdp_xmit or
generic_xdp_tx(), past the egress hook. The AF_PACKET forwarder's tap
sees the frame before the ingress hook too (ptype_all delivery in
__netif_receive_skb_core()), but its transmit goes through
dev_queue_xmit() or nf_hook_direct_egress() (packet_xmit(),
net/packet/af_packet.c): an egress chain still applies there.

Everything is read from the kernel, never from a tool's output:

- nftables over NETLINK_NETFILTER (NFNL_SUBSYS_NFTABLES dumps of tables,
  chains and rules, every family at once). A few dozen lines of struct
  instead of pyroute2's decoder, which would decode every expression of
  every rule at each exporter scrape.
- iptables-legacy (no netlink): /proc/net/ip{,6}_tables_names, then
  IPT_SO_GET_INFO / IPT_SO_GET_ENTRIES on a raw socket for each table
  listed there. iptables-nft rules are nftables rules, found above.

Which chains count (the decision is `findings`, pure, unit-tested):

- A base chain with no rules and policy accept changes nothing: with no
  rule, nft_do_chain() (net/netfilter/nf_tables_core.c) returns the
  chain's policy, and ipt_do_table() reaches the policy entry straight
  away. Skipping it skips nothing, so it is not a finding.
- The same holds for an empty nat chain. Registering one does not turn
  on connection tracking (nf_nat_register_fn(), net/netfilter/
  nf_nat_core.c, only adds the nat hooks; the nat and masquerade
  expressions take the nf_ct_netns_get() reference), and without a
  conntrack entry nf_nat_inet_fn() returns NF_ACCEPT before it runs the
  chain. Measured here: a namespace with only an empty nat prerouting
  chain tracks no connection; one masquerade rule makes it track them.
- A dormant table (NFT_TABLE_F_DORMANT) has its hooks unregistered
  (nf_tables_table_disable()): nothing there runs, nothing is found.
- arp and bridge tables never see routed IP packets.
"""

import ctypes
import errno
import os
import socket
import struct
import time
from dataclasses import dataclass

from xdpfwd import follower, netlink
from xdpfwd.errors import PermissionDenied, XdpfwdError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNLGRP_NFTABLES = 7
NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE = 1, 4, 7
NFT_TABLE_F_DORMANT = 0x1
NF_DROP, NF_ACCEPT = 0, 1

# NFPROTO_* (uapi/linux/netfilter.h)
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
INET_HOOKS = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting",
              5: "ingress"}
NETDEV_HOOKS = {0: "ingress", 1: "egress"}
# The hooks a forwarded packet passes (ip_rcv, ip_forward, ip_output and
# their IPv6 twins); input and output are for the box itself, and XDP
# passes that traffic to the stack.
FORWARD_PATH = ("prerouting", "forward", "postrouting")
MODES_WITH_EGRESS_BYPASS = ("auto", "native", "skb")

# iptables-legacy (uapi/linux/netfilter_ipv4/ip_tables.h, ..._ipv6/ip6_tables.h)
SO_GET_INFO, SO_GET_ENTRIES = 64, 65  # IPT_BASE_CTL + 0, + 1; same for ip6t
LEGACY = {  # family: (source name, names file, socket family, sockopt level, entry layout)
    "ip": ("iptables-legacy", "ip_tables_names", socket.AF_INET, socket.IPPROTO_IP, 88),
    "ip6": ("ip6tables-legacy", "ip6_tables_names", socket.AF_INET6, socket.IPPROTO_IPV6, 140),
}
LEGACY_CHAINS = {0: "PREROUTING", 2: "FORWARD", 4: "POSTROUTING"}
_GETINFO = struct.Struct("=32sI5I5III")  # struct ipt_getinfo
_GET_ENTRIES_HDR = 40  # struct ipt_get_entries: name[32], size, then 8-aligned entries
_TARGET_HDR = 32  # struct xt_entry_target; a standard target's int verdict follows


@dataclass(frozen=True)
class Chain:
    """A base chain as the kernel holds it (nftables or iptables-legacy)."""
    source: str  # nftables, iptables-legacy, ip6tables-legacy
    family: str  # ip, ip6, inet, netdev, arp, bridge
    table: str
    name: str
    hook: str  # prerouting, forward, ..., ingress, egress
    policy: str  # accept, drop
    rules: int
    type: str = "filter"
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finding:
    """A chain on the forward path that xdpfwd's forwarding would skip."""
    chain: Chain
    device: str | None = None  # the port an ingress/egress chain is bound to

    @property
    def key(self) -> tuple:
        c = self.chain
        return (c.source, c.family, c.table, c.name, self.device)

    def line(self) -> str:
        c = self.chain
        where = f"hook {c.hook}" + (f" device {self.device}" if self.device else "")
        kind = f"type {c.type} " if c.type != "filter" else ""
        rules = f"{c.rules} rule" + ("" if c.rules == 1 else "s")
        table = f"{c.family} {c.table}" if c.source == "nftables" else c.table
        return f"{c.source} {table} chain {c.name} ({kind}{where}, policy {c.policy}, {rules})"


def _matches(pattern: str, name: str) -> bool:
    # Since 6.16 a netdev hook may name "eth*": every device with that prefix.
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else pattern == name


def findings(chains: list[Chain], ports: list[str], mode: str = "auto") -> list[Finding]:
    """The chains xdpfwd would bypass when forwarding between `ports` in
    `mode`: base chains on the forward path that hold rules or do not
    accept by default."""
    found = []
    for c in chains:
        if c.rules == 0 and c.policy == "accept":
            continue  # nft_do_chain() with no rule returns the policy: nothing to skip
        if c.family in ("ip", "ip6", "inet") and c.hook in FORWARD_PATH:
            found.append(Finding(c))
        elif c.family in ("netdev", "inet") and c.hook in ("ingress", "egress"):
            if c.hook == "egress" and mode not in MODES_WITH_EGRESS_BYPASS:
                continue
            for port in ports:
                if any(_matches(d, port) for d in c.devices):
                    found.append(Finding(c, port))
    return found


def scan(ports: list[str], mode: str = "auto") -> list[Finding]:
    """Read this network namespace's netfilter and return what xdpfwd would
    bypass. Raises XdpfwdError (PermissionDenied without CAP_NET_ADMIN)
    when the kernel cannot be read: not knowing is no licence to bypass."""
    return findings(nftables_chains() + legacy_chains(), ports, mode)


# -- nftables over netlink ----------------------------------------------------


def _attr_list(data: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out.append((kind & 0x3FFF, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return out


def _str(raw: bytes | None) -> str:
    return (raw or b"").split(b"\0", 1)[0].decode(errors="replace")


def _be32(raw: bytes | None, default: int = 0) -> int:
    return struct.unpack("!I", raw[:4])[0] if raw else default


def _dump(sock: socket.socket, msg_type: int, seq: int) -> list[tuple[int, dict[int, bytes]]]:
    """One NFNL_SUBSYS_NFTABLES dump of every family: [(family, attrs)].
    Raises InterruptedError when the ruleset changed during the dump."""
    kind = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
    bodies, interrupted = netlink.dump(sock, kind, struct.pack("=BBH", socket.AF_UNSPEC, 0, 0), seq)
    if interrupted:
        raise InterruptedError
    return [(body[0], netlink.attributes(body, 4)) for body in bodies]


def _nft_dumps() -> tuple[list, list, list]:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as e:  # a kernel without nfnetlink has no nftables either
        if e.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
            return [], [], []
        raise
    with sock:
        sock.bind((0, 0))
        for attempt in range(5):
            try:
                # NLM_F_DUMP_INTR marks a dump that raced a ruleset change.
                return (_dump(sock, NFT_MSG_GETTABLE, 1), _dump(sock, NFT_MSG_GETCHAIN, 2),
                        _dump(sock, NFT_MSG_GETRULE, 3))
            except InterruptedError:
                time.sleep(0.01 * (attempt + 1))
    raise XdpfwdError("cannot read nftables: the ruleset kept changing during the dump")


def nftables_chains() -> list[Chain]:
    """Every nftables base chain of this network namespace, all families."""
    try:
        tables, chains, rules = _nft_dumps()
    except PermissionError:
        raise PermissionDenied("reading nftables needs CAP_NET_ADMIN", hint="run as root") from None
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EOPNOTSUPP):  # no nf_tables in this kernel
            return []
        raise XdpfwdError(f"cannot read nftables: {e.strerror or e}") from None
    dormant = {(fam, _str(a.get(1))) for fam, a in tables  # NFTA_TABLE_NAME, _FLAGS
               if _be32(a.get(2)) & NFT_TABLE_F_DORMANT}
    counts: dict[tuple, int] = {}
    for fam, a in rules:  # NFTA_RULE_TABLE, NFTA_RULE_CHAIN
        key = (fam, _str(a.get(1)), _str(a.get(2)))
        counts[key] = counts.get(key, 0) + 1
    out = []
    for fam, a in chains:
        table, name, hook = _str(a.get(1)), _str(a.get(3)), a.get(4)  # NFTA_CHAIN_*
        if hook is None or (fam, table) in dormant:
            continue  # a regular chain runs only when a base chain jumps to it
        h = netlink.attributes(hook)  # NFTA_HOOK_HOOKNUM, _PRIORITY, _DEV, _DEVS
        family = FAMILIES.get(fam, str(fam))
        names = NETDEV_HOOKS if family == "netdev" else INET_HOOKS
        devices = [_str(h[3])] if 3 in h else []
        devices += [_str(v) for k, v in _attr_list(h.get(4, b"")) if k == 1]  # NFTA_DEVICE_NAME
        policy = _be32(a.get(5), NF_ACCEPT)
        out.append(Chain("nftables", family, table, name,
                         names.get(_be32(h.get(1)), str(_be32(h.get(1)))),
                         "accept" if policy == NF_ACCEPT else "drop",
                         counts.get((fam, table, name), 0),
                         _str(a.get(7)) or "filter", tuple(dict.fromkeys(devices))))
    return out


# -- iptables-legacy through getsockopt ---------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _getsockopt(sock: socket.socket, level: int, opt: int, buf: ctypes.Array) -> None:
    size = ctypes.c_uint32(len(buf))
    if _libc.getsockopt(sock.fileno(), level, opt, buf, ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def legacy_table_names(family: str) -> list[str]:
    # thread-self: the namespace of this thread, also after a per-thread setns().
    path = f"/proc/thread-self/net/{LEGACY[family][1]}"
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:  # no ip_tables in this kernel
        return []


def parse_legacy(source: str, family: str, table: str, info: bytes, entries: bytes,
                 next_offset_at: int) -> list[Chain]:
    """The built-in chains on the forward path of one table, from the
    kernel's ipt_getinfo and entry blob. Each built-in chain is its rules
    followed by the policy entry: hook_entry[h] is the first rule,
    underflow[h] the policy (translate_table(), net/ipv4/netfilter/ip_tables.c)."""
    fields = _GETINFO.unpack_from(info)
    valid, hook_entry, underflow = fields[1], fields[2:7], fields[7:12]
    out = []
    for hook, chain in LEGACY_CHAINS.items():
        if not valid & (1 << hook):
            continue
        rules, offset = 0, hook_entry[hook]
        while offset < underflow[hook]:
            next_offset = struct.unpack_from("=H", entries, offset + next_offset_at + 2)[0]
            if next_offset == 0:
                raise XdpfwdError(f"{source} {table}: malformed entry at offset {offset}")
            rules, offset = rules + 1, offset + next_offset
        target_offset = struct.unpack_from("=H", entries, underflow[hook] + next_offset_at)[0]
        verdict = struct.unpack_from("=i", entries, underflow[hook] + target_offset + _TARGET_HDR)[0]
        # A standard verdict is stored as -NF_xxx - 1 (XT_STANDARD_TARGET).
        policy = "accept" if verdict == -NF_ACCEPT - 1 else "drop"
        out.append(Chain(source, family, table, chain, INET_HOOKS[hook], policy, rules))
    return out


def legacy_chains() -> list[Chain]:
    out = []
    for family, (source, _, sock_family, level, next_offset_at) in LEGACY.items():
        # Only tables the kernel lists: IPT_SO_GET_INFO on a table not yet
        # made in this namespace would make it (xt_request_find_table_lock()).
        names = legacy_table_names(family)
        if not names:
            continue
        try:
            sock = socket.socket(sock_family, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError:
            raise PermissionDenied(f"reading {source} needs CAP_NET_RAW", hint="run as root") from None
        with sock:
            for table in names:
                info = ctypes.create_string_buffer(table.encode(), _GETINFO.size)
                try:
                    _getsockopt(sock, level, SO_GET_INFO, info)
                    size = _GETINFO.unpack_from(info.raw)[13]
                    blob = ctypes.create_string_buffer(table.encode(), _GET_ENTRIES_HDR + size)
                    struct.pack_into("=I", blob, 32, size)
                    _getsockopt(sock, level, SO_GET_ENTRIES, blob)
                except OSError as e:
                    if e.errno == errno.ENOENT:  # removed meanwhile
                        continue
                    raise XdpfwdError(f"cannot read {source} table {table}: {e.strerror}") from None
                out += parse_legacy(source, family, table, info.raw,
                                    blob.raw[_GET_ENTRIES_HDR:], next_offset_at)
    return out


# -- refusing, warning, following ---------------------------------------------


def summary(found: list[Finding], shown: int = 3) -> str:
    lines = [f.line() for f in found[:shown]]
    more = len(found) - shown
    return "; ".join(lines) + (f"; and {more} more (xdpfwd doctor lists them)" if more > 0 else "")


def warnings(found: list[Finding]) -> list[str]:
    """One note per finding, for attach/run --bypass-netfilter."""
    return [f"warning: bypassing netfilter: {f.line()}" for f in found]


def changes(before: dict[tuple, str], after: dict[tuple, str]) -> list[str]:
    """One log line per chain that joined, changed on or left the forward path."""
    out = []
    for key, line in after.items():
        if key not in before:
            out.append(f"warning: netfilter: forward path gained {line}: bypassed by xdpfwd")
        elif before[key] != line:
            out.append(f"warning: netfilter: forward path changed: {line}: bypassed by xdpfwd")
    for key, line in before.items():
        if key not in after:
            out.append(f"netfilter: forward path lost {line}: nothing bypassed there any more")
    return out


def _snapshot(ports, mode, log) -> dict[tuple, str] | None:
    try:
        return {f.key: f.line() for f in scan(ports, mode)}
    except XdpfwdError as e:
        log(f"netfilter: {e}")
        return None


def follow(ports: list[str], mode: str, log, legacy_every: float = 3.0, stop=None,
           ready=None) -> None:
    """Log each change of the forward path's netfilter until stop() is true.
    nftables announces every committed change on NFNLGRP_NFTABLES; the
    event itself is only a cue to read the ruleset again. iptables-legacy
    announces nothing: it is read again every `legacy_every` seconds.
    ready() is called once subscribed and read."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
    sock.setblocking(False)
    with sock:
        known = _snapshot(ports, mode, log) or {}
        if ready:
            ready()
        while not (stop and stop()):
            follower.wait(sock, legacy_every)
            now = _snapshot(ports, mode, log)
            if now is None:
                continue
            for line in changes(known, now):
                log(line)
            known = now


def start_follower(ports: list[str], mode: str) -> int:
    """`follow` in a child process (follower.py); its pid."""
    return follower.start(lambda log, ready: follow(ports, mode, log, ready=ready), "netfilter")
