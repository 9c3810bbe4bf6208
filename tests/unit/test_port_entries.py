"""What the XDP program keeps of each port (struct xdpfwd_port in
bpf/counters.h): its packing in user space, and the words attach, `run`
and doctor use when the port has changed under it."""

import re
import struct

from xdpfwd import xdp
from xdpfwd.layout import HEADER, PORT_FORMAT, PORT_SIZE

C_TYPES = {"__u8": "B", "__u16": "H", "__u32": "I", "__u64": "Q"}


def test_port_format_is_the_headers_struct():
    body = re.search(r"struct xdpfwd_port \{(.*?)\};", HEADER.read_text(), re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = re.findall(r"(__u\d+)\s+(\w+)(?:\[(\d+)\])?;", body)
    assert [f[1] for f in fields] == ["ifindex", "mac", "ipv6_disabled", "pad"]
    fmt = "=" + "".join(f"{n}s" if n else C_TYPES[t] for t, _, n in fields)  # arrays: of __u8
    assert fmt == PORT_FORMAT and struct.calcsize(fmt) == PORT_SIZE == 12


def entry(mac="02:00:00:00:00:01", ipv6_disabled=False):
    return struct.pack(PORT_FORMAT, 7, bytes.fromhex(mac.replace(":", "")), int(ipv6_disabled), 0)


def test_unchanged_says_nothing():
    assert xdp.port_changes("eth1", entry(), entry()) == []
    assert xdp.port_changes("eth1", None, entry()) == []  # a new slot: nothing was there to change


def test_each_change_is_one_line():
    assert xdp.port_changes("eth1", entry(), entry("02:00:00:00:00:02", True)) == [
        "eth1: MAC address now 02:00:00:00:00:02: frames to it are forwarded, "
        "frames to 02:00:00:00:00:01 go to the stack",
        "eth1: IPv6 disabled (disable_ipv6, or no IPv6): its IPv6 goes to the stack",
    ]
    assert xdp.port_changes("eth1", entry(ipv6_disabled=True), entry()) == [
        "eth1: IPv6 enabled again: its IPv6 is forwarded"]


def test_drift_says_what_the_program_still_does():
    assert xdp.port_drift(entry(), entry()) == []
    assert xdp.port_drift(entry(), entry("02:00:00:00:00:02")) == [
        "the program still has MAC 02:00:00:00:00:01, the port's is 02:00:00:00:00:02: frames to "
        "02:00:00:00:00:01 are still forwarded, frames to the new one go to the stack"]
    assert xdp.port_drift(entry(ipv6_disabled=True), entry()) == [
        "IPv6 is on again, but the program still passes the port's IPv6 to the stack"]
