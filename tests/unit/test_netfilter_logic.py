"""netfilter.py's pure parts: which chains are findings, the iptables-legacy
entry blob, the lines people read, the follower's change log, and the
exporter's gauge and doctor's lines built on them."""

import struct

from prometheus_client import CollectorRegistry

from xdpfwd import doctor, netfilter
from xdpfwd.exporter.collector import XdpfwdCollector
from helpers import device, snapshot_of
from xdpfwd.netfilter import Chain, Finding

PORTS = ["eth1", "eth0"]


def nft(family="inet", table="filter", name="forward", hook="forward", policy="accept",
        rules=0, type="filter", devices=()):
    return Chain("nftables", family, table, name, hook, policy, rules, type, tuple(devices))


def lines(chains, ports=PORTS, mode="auto"):
    return [f.line() for f in netfilter.findings(chains, ports, mode)]


# -- which chains are findings ------------------------------------------------


def test_a_forward_chain_with_rules_or_a_drop_policy_is_a_finding():
    assert lines([nft(rules=2), nft(name="f2", policy="drop")]) == [
        "nftables inet filter chain forward (hook forward, policy accept, 2 rules)",
        "nftables inet filter chain f2 (hook forward, policy drop, 0 rules)",
    ]


def test_an_empty_accepting_chain_is_no_finding_whatever_its_type_or_hook():
    chains = [nft(), nft(hook="prerouting"), nft(family="ip", table="nat", hook="prerouting",
                                                  type="nat"),
              nft(family="netdev", hook="ingress", devices=["eth1"])]
    assert lines(chains) == []


def test_every_forward_path_hook_of_ip_ip6_inet_counts_and_no_other():
    chains = [nft(family=fam, hook=hook, rules=1)
              for fam in ("ip", "ip6", "inet", "arp", "bridge")
              for hook in ("prerouting", "input", "forward", "output", "postrouting")]
    found = netfilter.findings(chains, PORTS)
    assert {(f.chain.family, f.chain.hook) for f in found} == {
        (fam, hook) for fam in ("ip", "ip6", "inet") for hook in netfilter.FORWARD_PATH}


def test_a_nat_chain_with_a_rule_is_named_with_its_type():
    assert lines([nft(family="ip", table="nat", name="pre", hook="prerouting", type="nat",
                      rules=1)]) == [
        "nftables ip nat chain pre (type nat hook prerouting, policy accept, 1 rule)"]


def test_device_chains_count_only_on_the_ports_and_once_per_port():
    chains = [nft(family="netdev", table="nd", name="in", hook="ingress", rules=1,
                  devices=["eth1", "spare0"]),
              nft(family="netdev", table="nd", name="other", hook="ingress", rules=1,
                  devices=["spare0"]),
              nft(family="inet", name="ing", hook="ingress", policy="drop", devices=["eth0"]),
              nft(family="netdev", table="nd", name="all", hook="ingress", rules=1,
                  devices=["eth*"])]
    found = netfilter.findings(chains, PORTS)
    assert [(f.chain.name, f.device) for f in found] == [
        ("in", "eth1"), ("ing", "eth0"), ("all", "eth1"), ("all", "eth0")]
    assert found[0].line() == "nftables netdev nd chain in (hook ingress device eth1, policy accept, 1 rule)"


def test_egress_chains_are_bypassed_by_xdp_but_not_by_afpacket():
    # packet_xmit() (net/packet/af_packet.c) passes nf_hook_egress.
    chain = nft(family="netdev", table="nd", name="out", hook="egress", rules=1, devices=["eth0"])
    for mode in ("auto", "native", "skb"):
        assert [f.device for f in netfilter.findings([chain], PORTS, mode)] == ["eth0"]
    assert netfilter.findings([chain], PORTS, "afpacket") == []
    ingress = nft(family="netdev", table="nd", name="in", hook="ingress", rules=1, devices=["eth0"])
    assert len(netfilter.findings([ingress], PORTS, "afpacket")) == 1


def test_legacy_lines_name_the_table_not_a_family():
    chain = Chain("iptables-legacy", "ip", "filter", "FORWARD", "forward", "drop", 0)
    assert Finding(chain).line() == "iptables-legacy filter chain FORWARD (hook forward, policy drop, 0 rules)"


# -- the iptables-legacy blob -------------------------------------------------

ENTRY4 = 112  # sizeof(struct ipt_entry)


def _entry(verdict: int | None = None, target: bytes = b"") -> bytes:
    """An ipt_entry with a standard target (verdict) or a named one."""
    if verdict is not None:
        tgt = struct.pack("=H29sBi4x", 40, b"", 0, verdict)
    else:
        tgt = struct.pack("=H29sB8x", 40, target, 0)
    head = bytearray(ENTRY4)
    struct.pack_into("=HH", head, 88, ENTRY4, ENTRY4 + len(tgt))
    return bytes(head) + tgt


def test_legacy_rules_and_policies_are_read_from_the_entry_blob():
    accept, drop = -netfilter.NF_ACCEPT - 1, -netfilter.NF_DROP - 1
    # filter: INPUT policy; FORWARD two rules then policy DROP; OUTPUT policy; ERROR.
    entries = [_entry(accept), _entry(target=b"ACCEPT"), _entry(target=b"LOG"), _entry(drop),
               _entry(accept), _entry(target=b"ERROR")]
    offsets = [sum(len(e) for e in entries[:i]) for i in range(len(entries))]
    hook_entry = [0, offsets[0], offsets[1], offsets[4], 0]
    underflow = [0, offsets[0], offsets[3], offsets[4], 0]
    blob = b"".join(entries)
    info = struct.pack("=32sI5I5III", b"filter", 0b01110, *hook_entry, *underflow, 6, len(blob))
    chains = netfilter.parse_legacy("iptables-legacy", "ip", "filter", info, blob, 88)
    assert chains == [Chain("iptables-legacy", "ip", "filter", "FORWARD", "forward", "drop", 2)]

    # nat: PREROUTING and POSTROUTING, empty and accepting.
    entries = [_entry(accept)] * 4 + [_entry(target=b"ERROR")]
    blob = b"".join(entries)
    step = len(entries[0])
    hook_entry = underflow = [0, step, 0, 2 * step, 3 * step]
    info = struct.pack("=32sI5I5III", b"nat", 0b11011, *hook_entry, *underflow, 5, len(blob))
    chains = netfilter.parse_legacy("iptables-legacy", "ip", "nat", info, blob, 88)
    assert [(c.name, c.policy, c.rules) for c in chains] == [
        ("PREROUTING", "accept", 0), ("POSTROUTING", "accept", 0)]
    assert netfilter.findings(chains, PORTS) == []


# -- messages -----------------------------------------------------------------


def test_summary_names_three_and_counts_the_rest():
    found = [Finding(nft(name=f"c{i}", rules=1)) for i in range(5)]
    text = netfilter.summary(found)
    assert text.count("nftables inet filter chain") == 3
    assert text.endswith("; and 2 more (xdpfwd doctor lists them)")
    assert netfilter.warnings(found[:1]) == [
        "warning: bypassing netfilter: nftables inet filter chain c0 (hook forward, policy accept, 1 rule)"]


def test_changes_say_gained_changed_and_lost_once_per_chain():
    one = Finding(nft(rules=1))
    two = Finding(nft(rules=2))
    other = Finding(nft(name="x", policy="drop"))
    snap = lambda *fs: {f.key: f.line() for f in fs}  # noqa: E731
    assert netfilter.changes(snap(), snap(one)) == [
        "warning: netfilter: forward path gained nftables inet filter chain forward "
        "(hook forward, policy accept, 1 rule): bypassed by xdpfwd"]
    assert netfilter.changes(snap(one), snap(two)) == [
        "warning: netfilter: forward path changed: nftables inet filter chain forward "
        "(hook forward, policy accept, 2 rules): bypassed by xdpfwd"]
    assert netfilter.changes(snap(two, other), snap(other)) == [
        "netfilter: forward path lost nftables inet filter chain forward "
        "(hook forward, policy accept, 2 rules): nothing bypassed there any more"]
    assert netfilter.changes(snap(other), snap(other)) == []


# -- the exporter's gauge and doctor's lines ---------------------------------


class Reader:
    def __init__(self, devices):
        self.devices = devices

    def read(self):
        return snapshot_of(self.devices, counters={})


def gauge(devices, scan):
    """(the gauge, scrape errors) from ONE scrape (get_sample_value scrapes each time)."""
    reg = CollectorRegistry()
    reg.register(XdpfwdCollector(Reader(devices), netfilter_scan=scan))
    samples = {s.name: s.value for family in reg.collect() for s in family.samples}
    return (samples.get("xdpfwd_netfilter_bypassed_chains"),
            samples["xdpfwd_exporter_scrape_errors_total"])


def test_gauge_counts_findings_for_the_attached_ports_at_scrape_time():
    asked = []

    def scan(ports, mode):
        asked.append((ports, mode))
        return [Finding(nft(rules=1))] * len(asked)

    devices = [device("eth1", "native", 7), device("eth0", "native", 7)]
    assert gauge(devices, scan) == (1, 0)
    assert asked == [(["eth1", "eth0"], "auto")]
    afp = [device("eth1", "afpacket"), device("eth0", "afpacket")]
    assert gauge(afp, scan) == (2, 0)
    assert asked[-1] == (["eth1", "eth0"], "afpacket")


def test_gauge_is_zero_when_nothing_is_attached_and_absent_when_unreadable():
    assert gauge([], lambda ports, mode: 1 / 0) == (0, 0)

    def broken(ports, mode):
        raise netfilter.XdpfwdError("cannot read nftables: boom")

    assert gauge([device("eth1", "skb", 3)], broken) == (None, 1)


def test_doctor_lines_say_what_attach_does_or_what_is_bypassed():
    f = Finding(nft(family="netdev", table="nd", name="in", hook="ingress", rules=1,
                    devices=["eth1"]), "eth1")
    (before,) = doctor.netfilter_results([f], attached=False)
    assert before.line() == ("warn eth1: nftables netdev nd chain in (hook ingress device eth1, "
                             "policy accept, 1 rule): attach refuses; fix: remove the rules, "
                             "or attach --bypass-netfilter")
    (after,) = doctor.netfilter_results([Finding(nft(rules=1))], attached=True)
    assert after.level == "warn" and after.interface is None
    assert after.message.endswith(": xdpfwd's packets skip it")
    (ok,) = doctor.netfilter_results([], attached=True)
    assert ok.line() == "ok   netfilter: no nftables or iptables rule on the forward path"
