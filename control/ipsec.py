"""What the kernel's IPsec (xfrm) would do to forwarded packets that
xdpfwd skips.

ip_forward() and ip6_forward() ask xfrm twice about every packet they
forward (net/ipv4/ip_forward.c, net/ipv6/ip6_output.c):

- xfrm4_policy_check(NULL, XFRM_POLICY_FWD, skb): the forward policies
  decide whether the packet may pass, and a packet decrypted here must
  have come through the SA its policy names;
- xfrm4_route_forward(skb): the output policies decide whether it leaves
  encrypted (the route becomes the SA's).

With no policy of that direction and that direction's default set to
accept, both return at once (__xfrm_check_nopolicy(),
xfrm_route_forward() in include/net/xfrm.h). Otherwise the kernel would
encrypt, block or check what xdpfwd forwards in clear: its redirect and
its packet socket leave past both calls. So attach refuses there, as it
does for netfilter.

A third way in: a packet this box decrypts (tunnel mode) re-enters the
stack on the device it came in on (xfrm_input() -> gro_cells_receive()),
where generic XDP and the AF_PACKET forwarder's tap see it again, carrying
the secpath the forward check would test. Native XDP sees only frames from
the driver. So SAs count for every mode but native.

Everything is read from the kernel over NETLINK_XFRM: the policy counts
(XFRM_MSG_GETSPDINFO: net->xfrm.policy_count[], the figures `ip xfrm
policy count` prints), the SA count (XFRM_MSG_GETSADINFO) and the default
policies (XFRM_MSG_GETDEFAULT, added in 2021; an older kernel answers
EINVAL, as for any type it does not know, and has no defaults, which means
accept). Per-socket policies are counted apart and never meet a forwarded
packet (ip_forward() drops an skb that has a socket). The decision
(`findings`) is pure and unit-tested.
"""

import errno
import os
import socket
import struct
from dataclasses import dataclass

from xdpfwd import follower, netlink
from xdpfwd.errors import PermissionDenied, XdpfwdError

NETLINK_XFRM = 6
XFRM_MSG_NEWSADINFO, XFRM_MSG_GETSADINFO = 0x22, 0x23
XFRM_MSG_NEWSPDINFO, XFRM_MSG_GETSPDINFO = 0x24, 0x25
XFRM_MSG_GETDEFAULT = 0x28
XFRMA_SPD_INFO, XFRMA_SAD_CNT = 1, 1
XFRMNLGRP_SA, XFRMNLGRP_POLICY = 3, 4
XFRM_USERPOLICY_BLOCK = 1
NLM_F_REQUEST, NLMSG_ERROR = 0x1, 2
PFKEY_PROC = "/proc/net/pfkey"
# The modes whose datapath sees packets decrypted by this box.
MODES_SEEING_DECRYPTED = ("auto", "skb", "afpacket")


@dataclass(frozen=True)
class Xfrm:
    """This network namespace's IPsec, as far as forwarding meets it."""

    fwd_policies: int = 0
    out_policies: int = 0
    fwd_default_block: bool = False
    out_default_block: bool = False
    states: int = 0


def findings(x: Xfrm, mode: str = "auto") -> list[str]:
    """What the kernel would apply to forwarded packets and xdpfwd in
    `mode` would skip: one phrase each, none when IPsec is out of the way."""
    out = []
    if x.fwd_policies:
        out.append(f"{_n(x.fwd_policies, 'policy', 'policies')} dir fwd")
    if x.out_policies:
        out.append(f"{_n(x.out_policies, 'policy', 'policies')} dir out")
    if x.fwd_default_block:
        out.append("default policy fwd block")
    if x.out_default_block:
        out.append("default policy out block")
    if x.states and mode in MODES_SEEING_DECRYPTED:
        out.append(f"{_n(x.states, 'SA', 'SAs')} (packets they decrypt come back through the "
                   "ports)")
    return out


def judged_mode(attached: set[str]) -> str:
    """The mode to judge the ports xdpfwd forwards on in (native, skb or
    afpacket each), or, with none attached, what attach does by default."""
    return "native" if attached == {"native"} else "auto"


def summary(found: list[str]) -> str:
    return ", ".join(found)


def warnings(found: list[str]) -> list[str]:
    return [f"warning: bypassing IPsec: {summary(found)}"] if found else []


def changes(before: list[str], after: list[str]) -> list[str]:
    """The line `run` logs when what the forward path meets has changed."""
    if before == after:
        return []
    if after:
        return [f"warning: IPsec: forward path now meets {summary(after)}: bypassed by xdpfwd"]
    return ["IPsec: forward path meets none any more: nothing bypassed"]


def follow(mode: str, log, every: float = 3.0, stop=None, ready=None) -> None:
    """Log each change of what xdpfwd in `mode` skips, until stop() is
    true. The kernel announces policies, default policies
    (xfrm_notify_userpolicy()) and SAs on XFRMNLGRP_POLICY and
    XFRMNLGRP_SA; an event is only a cue to read again, and so is every
    `every` seconds, should one be lost. ready() is called once subscribed
    and read (also where this kernel has no xfrm)."""
    sock = _socket()
    if sock is None:
        if ready:
            ready()
        return  # no IPsec in this kernel: nothing can change
    sock.bind((0, (1 << (XFRMNLGRP_SA - 1)) | (1 << (XFRMNLGRP_POLICY - 1))))
    sock.setblocking(False)
    with sock:
        known = _findings(mode, log) or []
        if ready:
            ready()
        while not (stop and stop()):
            follower.wait(sock, every)
            now = _findings(mode, log)
            if now is None:
                continue
            for line in changes(known, now):
                log(line)
            known = now


def _findings(mode: str, log) -> list[str] | None:
    try:
        return scan(mode)
    except XdpfwdError as e:
        log(f"IPsec: {e}")
        return None


def scan(mode: str = "auto") -> list[str]:
    """Read this namespace's xfrm and return what xdpfwd would bypass.
    Raises XdpfwdError (PermissionDenied without CAP_NET_ADMIN) when the
    kernel cannot be read: not knowing is no licence to bypass."""
    return findings(read(), mode)


def _socket() -> socket.socket | None:
    """A NETLINK_XFRM socket, or None where this kernel has no xfrm."""
    try:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
    except OSError as e:
        # No xfrm_user in this kernel: nothing can have made a policy or an
        # SA over netlink. PF_KEY (af_key, racoon's interface) can, into the
        # same tables, and is not read here: where it exists, not knowing.
        if e.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT) \
                and not os.path.exists(PFKEY_PROC):
            return None
        raise XdpfwdError(f"cannot read IPsec (xfrm): {e.strerror or e}") from None


def read() -> Xfrm:
    sock = _socket()
    if sock is None:
        return Xfrm()
    try:
        with sock:
            sock.settimeout(5)  # the kernel answers at once; never hang attach
            sock.bind((0, 0))
            spd = _ask(sock, XFRM_MSG_GETSPDINFO, struct.pack("=I", 0), XFRM_MSG_NEWSPDINFO)
            sad = _ask(sock, XFRM_MSG_GETSADINFO, struct.pack("=I", 0), XFRM_MSG_NEWSADINFO)
            try:
                default = _ask(sock, XFRM_MSG_GETDEFAULT, bytes(4), XFRM_MSG_GETDEFAULT)
            except OSError as e:
                if e.errno != errno.EINVAL:  # before 5.16: an unknown type, and no defaults
                    raise
                default = b""
    except PermissionError:
        raise PermissionDenied("reading IPsec (xfrm) needs CAP_NET_ADMIN",
                               hint="run as root") from None
    except OSError as e:
        raise XdpfwdError(f"cannot read IPsec (xfrm): {e.strerror or e}") from None
    return parse(spd, sad, default)


def parse(spd: bytes, sad: bytes, default: bytes) -> Xfrm:
    """The three replies' bodies (after the netlink header) -> Xfrm."""
    info = netlink.attributes(spd, 4).get(XFRMA_SPD_INFO, b"")
    cnt = netlink.attributes(sad, 4).get(XFRMA_SAD_CNT, b"")
    if len(info) < 12 or len(cnt) < 4 or 0 < len(default) < 3:
        raise XdpfwdError("cannot read IPsec (xfrm): the kernel's answer lacks the counts")
    # struct xfrmu_spdinfo: incnt, outcnt, fwdcnt (then the per-socket ones)
    _, out_count, fwd_count = struct.unpack_from("=III", info)
    (states,) = struct.unpack_from("=I", cnt)
    # struct xfrm_userpolicy_default: in, fwd, out; b"": no defaults, accept
    fwd_default, out_default = (default[1], default[2]) if default else (0, 0)
    return Xfrm(fwd_policies=fwd_count, out_policies=out_count,
                fwd_default_block=fwd_default == XFRM_USERPOLICY_BLOCK,
                out_default_block=out_default == XFRM_USERPOLICY_BLOCK, states=states)


def _ask(sock: socket.socket, kind: int, payload: bytes, reply: int) -> bytes:
    """One request, its one reply's body. OSError for the kernel's error."""
    sock.send(struct.pack("=IHHII", 16 + len(payload), kind, NLM_F_REQUEST, kind, 0) + payload)
    while True:
        data = sock.recv(65536)
        length, mtype, _, seq, _ = struct.unpack_from("=IHHII", data)
        body = data[16:length]
        if mtype == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0]
            if code:
                raise OSError(code, os.strerror(code))
        elif mtype == reply and seq == kind:
            return body


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"
