"""The IPsec decision (xdpfwd.ipsec), pure: which of the kernel's xfrm
state xdpfwd would skip in each mode, and the netlink replies read into
it. The replies are the bytes this kernel sent (tests/lab/test_ipsec.py
makes the real ones); the SA count is set by hand, since no SA can be made
on this kernel (no ESP, AH or IPcomp)."""

import errno
import struct

import pytest
from prometheus_client import CollectorRegistry

from helpers import device, snapshot_of
from xdpfwd import doctor, forwarder, ipsec
from xdpfwd.errors import IpsecInPath, PermissionDenied
from xdpfwd.exporter.collector import XdpfwdCollector

# XFRM_MSG_NEWSPDINFO after `ip xfrm policy add ... dir out` and `... dir fwd`
SPD_OUT1_FWD1 = bytes.fromhex(
    "000000001c000100" "00000000" "01000000" "01000000" "00000000" "00000000" "00000000"
    "0c00020007000000000010000600030020200000060004008080000000")
# XFRM_MSG_NEWSADINFO with no SA: flags, XFRMA_SAD_CNT 0, XFRMA_SAD_HINFO
SAD_NONE = bytes.fromhex("00000000" "0800010000000000" "0c0002000800000000001000")
SAD_THREE = bytes.fromhex("00000000" "0800010003000000" "0c0002000800000000001000")
# XFRM_MSG_GETDEFAULT after `ip xfrm policy setdefault fwd block`: in, fwd, out
DEFAULT_FWD_BLOCK = bytes.fromhex("02010200")


def test_the_kernels_replies_are_read():
    assert ipsec.parse(SPD_OUT1_FWD1, SAD_THREE, DEFAULT_FWD_BLOCK) == ipsec.Xfrm(
        fwd_policies=1, out_policies=1, fwd_default_block=True, out_default_block=False,
        states=3)


def test_a_kernel_without_default_policies_means_accept():
    assert ipsec.parse(SPD_OUT1_FWD1, SAD_NONE, b"") == ipsec.Xfrm(fwd_policies=1, out_policies=1)


@pytest.mark.parametrize("spd, sad, default", [
    (bytes(4), SAD_NONE, DEFAULT_FWD_BLOCK),  # no XFRMA_SPD_INFO
    (SPD_OUT1_FWD1, bytes(4), DEFAULT_FWD_BLOCK),  # no XFRMA_SAD_CNT
    (SPD_OUT1_FWD1, SAD_NONE, b"\x02\x01"),  # a default reply cut short
])
def test_a_reply_without_the_counts_is_an_error_not_a_zero(spd, sad, default):
    with pytest.raises(ipsec.XdpfwdError, match="lacks the counts"):
        ipsec.parse(spd, sad, default)


class FakeXfrmSocket:
    """Replays the kernel's side of NETLINK_XFRM: a reply (or an errno)
    per request type, framed as the kernel frames them."""

    def __init__(self, replies):
        self.replies, self.pending = replies, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def settimeout(self, t):
        pass

    def bind(self, addr):
        pass

    def send(self, msg):
        _, kind, _, seq, _ = struct.unpack_from("=IHHII", msg)
        reply_type, body = self.replies[kind]
        if isinstance(body, int):  # an errno: NLMSG_ERROR with -errno and the request
            reply_type, body = ipsec.NLMSG_ERROR, struct.pack("=i", -body) + msg[:16]
        self.pending.append(struct.pack("=IHHII", 16 + len(body), reply_type, 0, seq, 0) + body)

    def recv(self, size):
        return self.pending.pop(0)


def kernel(monkeypatch, default=DEFAULT_FWD_BLOCK, spd=SPD_OUT1_FWD1):
    replies = {ipsec.XFRM_MSG_GETSPDINFO: (ipsec.XFRM_MSG_NEWSPDINFO, spd),
               ipsec.XFRM_MSG_GETSADINFO: (ipsec.XFRM_MSG_NEWSADINFO, SAD_THREE),
               ipsec.XFRM_MSG_GETDEFAULT: (ipsec.XFRM_MSG_GETDEFAULT, default)}
    monkeypatch.setattr(ipsec.socket, "socket", lambda *a: FakeXfrmSocket(replies))


def test_read_asks_the_three_questions(monkeypatch):
    kernel(monkeypatch)
    assert ipsec.read() == ipsec.Xfrm(fwd_policies=1, out_policies=1, fwd_default_block=True,
                                      states=3)


def test_a_kernel_that_does_not_know_getdefault_has_accepting_defaults(monkeypatch):
    # xfrm_user_rcv_msg(): a type above XFRM_MSG_MAX is -EINVAL.
    kernel(monkeypatch, default=errno.EINVAL)
    assert ipsec.read() == ipsec.Xfrm(fwd_policies=1, out_policies=1, states=3)


def test_no_cap_net_admin_is_permission_denied(monkeypatch):
    kernel(monkeypatch, spd=errno.EPERM)
    with pytest.raises(PermissionDenied, match="needs CAP_NET_ADMIN"):
        ipsec.read()


def test_without_xfrm_user_nothing_is_configured_unless_pf_key_could_have(monkeypatch, tmp_path):
    def no_xfrm_user(*args):
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")

    monkeypatch.setattr(ipsec.socket, "socket", no_xfrm_user)
    monkeypatch.setattr(ipsec, "PFKEY_PROC", str(tmp_path / "pfkey"))
    assert ipsec.read() == ipsec.Xfrm()
    (tmp_path / "pfkey").write_text("")
    with pytest.raises(ipsec.XdpfwdError, match="cannot read IPsec"):
        ipsec.read()


def test_nothing_configured_is_no_finding_in_any_mode():
    for mode in ("auto", "native", "skb", "afpacket"):
        assert ipsec.findings(ipsec.Xfrm(), mode) == []


def test_policies_and_blocking_defaults_count_in_every_mode():
    x = ipsec.Xfrm(fwd_policies=2, out_policies=1, fwd_default_block=True,
                   out_default_block=True)
    for mode in ("auto", "native", "skb", "afpacket"):
        assert ipsec.findings(x, mode) == ["2 policies dir fwd", "1 policy dir out",
                                           "default policy fwd block", "default policy out block"]


def test_sas_count_where_decrypted_packets_come_back_through_the_ports():
    # xfrm_input() hands a tunnel-mode packet it decrypted back to the
    # device it came in on: generic XDP and the packet tap see it, native
    # XDP (the driver's frames only) does not.
    x = ipsec.Xfrm(states=1)
    assert ipsec.findings(x, "native") == []
    for mode in ("auto", "skb", "afpacket"):
        assert ipsec.findings(x, mode) == [
            "1 SA (packets they decrypt come back through the ports)"]


def test_attach_refuses_with_the_findings_and_bypass_warns(monkeypatch):
    monkeypatch.setattr(ipsec, "read", lambda: ipsec.Xfrm(out_policies=1))
    with pytest.raises(IpsecInPath, match="would be bypassed: 1 policy dir out") as e:
        forwarder._check_ipsec("native", bypass=False)
    assert e.value.exit_code == 8 and "--bypass-ipsec" in str(e.value)
    assert forwarder._check_ipsec("native", bypass=True) == [
        "warning: bypassing IPsec: 1 policy dir out"]


def test_unreadable_xfrm_refuses_unless_bypassed(monkeypatch):
    def denied():
        raise PermissionDenied("reading IPsec (xfrm) needs CAP_NET_ADMIN", hint="run as root",
                               errno=errno.EPERM)

    monkeypatch.setattr(ipsec, "read", denied)
    with pytest.raises(PermissionDenied) as e:
        forwarder._check_ipsec("auto", bypass=False)
    assert str(e.value) == ("reading IPsec (xfrm) needs CAP_NET_ADMIN; cannot tell whether IPsec "
                            "would be bypassed; run as root, or --bypass-ipsec forwards anyway")
    assert forwarder._check_ipsec("auto", bypass=True) == [
        "warning: bypassing IPsec, unread: reading IPsec (xfrm) needs CAP_NET_ADMIN; run as root"]


# -- the exporter's gauge --------------------------------------------------------


def ipsec_gauge(devices, scan):
    """(the gauge, scrape errors) from one scrape."""

    class Reader:
        def read(self):
            return snapshot_of(devices, counters={})

    reg = CollectorRegistry()
    reg.register(XdpfwdCollector(Reader(), netfilter_scan=lambda ports, mode: [], ipsec_scan=scan))
    samples = {s.name: s.value for family in reg.collect() for s in family.samples}
    return samples.get("xdpfwd_ipsec_bypassed"), samples["xdpfwd_exporter_scrape_errors_total"]


def test_gauge_says_whether_the_attached_modes_skip_ipsec_at_scrape_time():
    asked = []

    def scan(mode):
        asked.append(mode)
        return ipsec.findings(ipsec.Xfrm(states=1), mode)

    native = [device("eth1", "native", 7), device("eth0", "native", 7)]
    assert ipsec_gauge(native, scan) == (0, 0)  # an SA alone: native XDP never sees its packets
    skb = [device("eth1", "skb", 7), device("eth0", "skb", 7)]
    assert ipsec_gauge(skb, scan) == (1, 0)
    assert asked == ["native", "auto"]


def test_gauge_is_zero_when_nothing_is_attached_and_absent_when_unreadable():
    assert ipsec_gauge([], lambda mode: 1 / 0) == (0, 0)

    def broken(mode):
        raise ipsec.XdpfwdError("cannot read IPsec (xfrm): boom")

    assert ipsec_gauge([device("eth1", "skb", 3)], broken) == (None, 1)


# -- doctor's line ---------------------------------------------------------------


def test_doctor_judges_the_modes_attached_or_what_attach_would_meet():
    sa = ipsec.Xfrm(states=2)
    (line,) = doctor.ipsec_results(sa, {"native"})
    assert line.level == "ok"
    (line,) = doctor.ipsec_results(sa, {"skb"})
    assert line.level == "warn" and line.message == (
        "IPsec (xfrm): 2 SAs (packets they decrypt come back through the ports): "
        "xdpfwd's packets skip it")
    (line,) = doctor.ipsec_results(sa, set())
    assert line.message.endswith(": attach refuses")
    assert line.fix == "attach --mode native, or attach --bypass-ipsec"
    (line,) = doctor.ipsec_results(ipsec.Xfrm(out_policies=1, states=2), set())
    assert line.fix == "remove them (ip xfrm policy, ip xfrm state), or attach --bypass-ipsec"


# -- run's log -------------------------------------------------------------------


def test_run_logs_a_line_when_what_forwarding_meets_changes():
    assert ipsec.changes([], []) == []
    assert ipsec.changes(["1 policy dir out"], ["1 policy dir out"]) == []
    assert ipsec.changes([], ["1 policy dir out"]) == [
        "warning: IPsec: forward path now meets 1 policy dir out: bypassed by xdpfwd"]
    assert ipsec.changes(["1 policy dir out"], ["2 policies dir out", "default policy fwd block"]) == [
        "warning: IPsec: forward path now meets 2 policies dir out, default policy fwd block: "
        "bypassed by xdpfwd"]
    assert ipsec.changes(["1 policy dir out"], []) == [
        "IPsec: forward path meets none any more: nothing bypassed"]
