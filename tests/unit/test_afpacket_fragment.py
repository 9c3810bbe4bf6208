"""fragment.py: ip_do_fragment()'s layout on scapy packets (pure logic)."""

import pytest
from scapy.layers.inet import IP, UDP, IPOption_NOP, IPOption_RR, IPOption_Security

from xdpfwd.afpacket import fragment


def packet(size, **kw):
    return bytes(IP(src="10.0.10.10", dst="10.0.93.5", id=4242, ttl=63, **kw)
                 / UDP(sport=1, dport=9) / (b"p" * size))


def test_decision_follows_df_and_mtu():
    assert fragment.decision(packet(972), 1000) == "fits"  # exactly 1000 bytes
    assert fragment.decision(packet(973), 1000) == "fragment"
    assert fragment.decision(packet(973, flags="DF"), 1000) == "frag_needed"


def test_layout_offsets_flags_and_checksums():
    original = packet(2472)  # 2500 bytes: 2480 of data after the header
    pieces = fragment.fragment(original, 1000)
    assert [len(p) for p in pieces] == [996, 996, 548]  # 976 = 980 rounded down to 8
    for i, p in enumerate(pieces):
        ip = IP(p)
        assert ip.id == 4242 and ip.ttl == 63 and ip.frag == i * 976 // 8
        assert ip.flags.MF == (i < 2)
        assert fragment.checksum(p[:20]) == 0  # header checksum valid
    assert b"".join(p[20:] for p in pieces) == original[20:]


def test_a_fragment_keeps_mf_and_its_offset():
    first_half = IP(packet(2472))
    first_half.flags = "MF"
    pieces = fragment.fragment(bytes(first_half), 1000)
    assert all(IP(p).flags.MF for p in pieces)


def test_only_copied_options_after_the_first_fragment():
    original = packet(1500, options=[IPOption_RR(routers=["1.2.3.4"]), IPOption_Security(),
                                     IPOption_NOP()])
    hlen = (original[0] & 0xF) * 4
    pieces = fragment.fragment(original, 1000)
    assert pieces[0][20:hlen] == original[20:hlen]
    rr_len = original[21]
    later = pieces[1][20:hlen]
    assert later[:rr_len] == b"\x01" * rr_len            # record route: not copied
    assert later[rr_len:rr_len + 2] == original[20 + rr_len:22 + rr_len]  # security: copied
    assert all((p[0] & 0xF) * 4 == hlen for p in pieces)


def test_never_fragments_df_and_needs_room():
    with pytest.raises(ValueError):
        fragment.fragment(packet(1500, flags="DF"), 1000)
    with pytest.raises(ValueError):
        fragment.fragment(packet(100), 27)
    assert fragment.fragment(packet(100), 1500) == [packet(100)]
