"""The C fast path (control/afpacket/fastpath.c) against packet.decide(), the
readable reference: the same frames through both, the same outcome, egress
and bytes out. Pure logic: the fib is test_afpacket_packet's stand-in, and
the rings of the last tests are memory laid out as the kernel lays them."""

import hashlib
import random
import socket
import struct
from pathlib import Path

import pytest
import test_afpacket_packet as table
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.ipsec import AH

from xdpfwd.afpacket import _fastpath, packet, rings, worker
from xdpfwd.layout import layout

IN, OUT = table.IN, table.OUT
AFPACKET = Path(__file__).resolve().parents[2] / "control" / "afpacket"


def test_the_extension_is_built_from_this_trees_source():
    # As setup.py hashes them: every C file of the package, by name.
    sources = sorted(AFPACKET.glob("*.[ch]"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    assert _fastpath.SOURCE_HASH == digest, \
        "the C fast path was built from other sources: run `make setup`"


def test_transmit_slots_agree_on_where_a_frame_starts():
    assert _fastpath.TX_DATA_OFFSET == rings.TX_DATA_OFFSET
    assert _fastpath.TX_FRAME_OFFSET == rings.TX_FRAME_OFFSET


def fast(disabled=frozenset(), rx=(), tx=()):
    return worker.fast_path([IN, OUT], disabled, rx, tx)


def c_decide(fp, raw, vlan=False):
    """The C's decision once it has learnt what it lacked, as a worker teaches it."""
    result = fp.decide(raw, IN, vlan)
    if result is None:
        worker.learn(fp, table.FIB, raw, IN, vlan)
        result = fp.decide(raw, IN, vlan)
    assert result is not None, "the C still lacks an answer after learn()"
    return result


def python_decide(raw, vlan=False, disabled=frozenset()):
    return packet.decide(raw, IN, vlan, table.FIB, {IN, OUT}, disabled)


FORWARDED = [
    table.frame(table.v4(ttl=64)),
    table.frame(table.v4(ttl=2)),
    table.frame(table.v6(hlim=64)),
    table.frame(table.v6(hlim=2)),
    table.frame(table.v4()) + bytes(18),  # Ethernet padding: cut to the IP length
    table.frame(table.v6()) + bytes(7),
    table.frame(IP(src="10.0.10.10", dst="10.0.93.5") / UDP() / bytes(972)),  # the MTU exactly
    table.ipv6(ICMPv6EchoRequest()),
    table.ipv6(AH(nh=17, payloadlen=4, icv=bytes(12)), UDP()),  # AH: no header the flow dissector walks
] + [
    # Checksums across the range, as test_checksum_update_matches_a_full_recomputation
    table.frame(IP(bytes(IP(src="10.0.10.10", dst="10.0.11.20", ttl=64, id=ident) / UDP())))
    for ident in range(0, 0x10000, 0x0FFF)
]
FORWARDED += table.ICMP_FORWARDED
FRAMES = FORWARDED + [raw for raw, _ in table.TO_THE_STACK]


@pytest.mark.parametrize("raw", FRAMES, ids=range(len(FRAMES)))
def test_the_c_decides_as_packet_py(raw):
    assert c_decide(fast(), raw) == python_decide(raw)


def test_forwarded_frames_are_forwarded():
    # The table above compares; this says it compares forwarding too.
    fp = fast()
    assert {c_decide(fp, raw)[0] for raw in FORWARDED} == {packet.FORWARDED}


def test_vlan_metadata_and_disabled_forwarding():
    raw4, raw6 = table.frame(table.v4()), table.frame(table.v6())
    assert c_decide(fast(), raw4, vlan=True) == python_decide(raw4, vlan=True)
    off = frozenset({(6, IN)})
    assert c_decide(fast(off), raw6) == python_decide(raw6, disabled=off)
    assert c_decide(fast(off), raw4) == python_decide(raw4, disabled=off)


@pytest.mark.parametrize("raw", table.IPV6_ON_A_DISABLED_PORT + [table.frame(table.v4())],
                         ids=range(len(table.IPV6_ON_A_DISABLED_PORT) + 1))
def test_ipv6_disabled_on_the_ingress_port(raw):
    fp = fast()
    result = fp.decide(raw, IN, False)
    if result is None:
        worker.learn(fp, table.V6_OFF_FIB, raw, IN, False)
        result = fp.decide(raw, IN, False)
    assert result == packet.decide(raw, IN, False, table.V6_OFF_FIB, {IN, OUT})


def test_mutated_frames_decide_alike():
    """Every byte of the headers may be anything: frames derived from
    forwarded ones by changing, cutting or extending them."""
    rng = random.Random(12)
    fp = fast()
    seeds = [table.frame(table.v4()), table.frame(table.v6()),
             table.frame(IP(src="10.0.10.10", dst="10.0.93.5") / UDP() / bytes(1200)),
             table.ipv6(IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(), ICMPv6ND_NS()),
             table.ipv6(*[IPv6ExtHdrDestOpt()] * 6, ICMPv6ND_NA())]
    for _ in range(3000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(min(len(raw), 110))
            raw[at] = rng.choice((0, 1, 2, 0x40, 0x45, 0x60, 0x7F, 0x80, 0xFE, 0xFF, rng.randrange(256)))
        if rng.random() < 0.2:
            raw = raw[:rng.randrange(len(raw) + 1)]
        elif rng.random() < 0.1:
            raw += bytes(rng.randrange(20))
        raw = bytes(raw)
        # Mutated destinations miss the stand-in's table: fib_not_forwarded.
        assert c_decide(fp, raw) == python_decide(raw), raw.hex()


def test_a_flush_forgets_every_answer():
    fp = fast()
    raw = table.frame(table.v4())
    c_decide(fp, raw)
    assert fp.missing(raw, IN, False) is None
    fp.flush()
    assert fp.missing(raw, IN, False) == ("port",)
    assert fp.decide(raw, IN, False) is None


# -- rings laid out as the kernel lays them (<linux/if_packet.h>) -----------

BLOCK_SIZE, BLOCK_NR, FRAME_SIZE, FRAME_NR = 4096, 2, 2048, 4
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1's
# block_status, num_pkts, offset_to_first_pkt, blk_len
BLOCK = struct.Struct("=IIIIII")
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len,
# tp_status, tp_mac, tp_net (then hv1, unread)
PKT = struct.Struct("=IIIIIIHH")
FIRST, MAC = 64, 80  # where the first frame's header and its data start


class Rx:
    def __init__(self, ifindex, frames):
        self.ifindex, self.block_size, self.block_nr = ifindex, BLOCK_SIZE, BLOCK_NR
        self.map = bytearray(BLOCK_SIZE * BLOCK_NR)
        self.next_block = self.read = 0
        self.fill(0, frames)

    def fill(self, block, frames):
        base, off = block * BLOCK_SIZE, FIRST
        for i, (raw, vlan) in enumerate(frames):
            step = (MAC + len(raw) + 15) // 16 * 16
            PKT.pack_into(self.map, base + off, 0 if i == len(frames) - 1 else step, 0, 0,
                          len(raw), len(raw), rings.TP_STATUS_USER | (vlan and rings.TP_STATUS_VLAN_VALID),
                          MAC, MAC)
            self.map[base + off + MAC:base + off + MAC + len(raw)] = raw
            off += step
        BLOCK.pack_into(self.map, base, 3, 0, rings.TP_STATUS_USER, len(frames), FIRST, off)

    def status(self, block):
        return BLOCK.unpack_from(self.map, block * BLOCK_SIZE)[2]


class Tx:
    def __init__(self, ifindex):
        self.ifindex, self.frame_size, self.frame_nr = ifindex, FRAME_SIZE, FRAME_NR
        # Dirty slots, as a reused ring's are (status AVAILABLE): what the
        # C leaves unwritten shows.
        self.map = bytearray(b"\xff" * (FRAME_SIZE * FRAME_NR))
        for i in range(FRAME_NR):
            struct.pack_into("=I", self.map, i * FRAME_SIZE, 0)
        self.next = self.queued = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def sent(self, i):
        status, length = struct.unpack_from("=II", self.map, i * FRAME_SIZE)
        # The virtio_net_hdr first: the whole frame copied, no offloads.
        vnet = rings.VNET_HDR.unpack_from(self.map, i * FRAME_SIZE + rings.TX_DATA_OFFSET)
        length -= rings.VNET_HDR.size
        assert vnet == (0, 0, length, 0, 0, 0)
        start = i * FRAME_SIZE + rings.TX_FRAME_OFFSET
        return status, bytes(self.map[start:start + length])


def test_run_reads_blocks_counts_and_fills_the_transmit_ring():
    lay = layout()
    forward, forward6 = table.frame(table.v4()) + bytes(18), table.frame(table.v6())
    slow, other = table.frame(table.v4(ttl=1)), table.frame(table.v4(), dst="02:00:00:00:00:99")
    rx = [Rx(IN, [(forward, False), (slow, False)]), Rx(OUT, [])]
    BLOCK.pack_into(rx[1].map, 0, 3, 0, 0, 0, FIRST, 0)  # the kernel's: nothing to read
    tx = [Tx(IN), Tx(OUT)]
    fp = fast(rx=rx, tx=tx)
    words = [0] * (2 * lay.value_size // 8)
    out = lay.value_size // 8  # OUT's first word

    # Nothing learnt yet: every frame goes back, counted as received only.
    back = fp.run()
    assert back == [(0, forward, False, True), (0, slow, False, True)]
    assert (rx[0].next_block, rx[0].read, rx[0].status(0)) == (1, 2, rings.TP_STATUS_KERNEL)
    for index, raw, vlan, missed in back:
        worker.learn(fp, table.FIB, raw, IN, vlan)
    fp.add_counts(words)
    assert words[2 * lay.received_index:2 * lay.received_index + 2] == [2, len(forward) + len(slow)]
    assert sum(words) == 2 + len(forward) + len(slow)

    # Learnt: forwarded in C, the slow one handed back, the other host counted.
    rx[0].fill(1, [(forward, False), (slow, False), (other, False), (forward6, True)])
    words = [0] * len(words)
    assert fp.run() == [(0, slow, False, False)]
    assert (rx[0].next_block, rx[0].read, rx[0].status(1)) == (0, 6, rings.TP_STATUS_KERNEL)
    expected = python_decide(forward)[2]
    assert tx[1].sent(0) == (rings.TP_STATUS_SEND_REQUEST, expected)
    assert (tx[1].next, tx[1].queued, tx[0].next, tx[0].queued) == (1, 1, 0, 0)
    fp.add_counts(words)
    count = lambda base, outcome: words[base + 2 * lay.outcome_index(outcome):][:2]  # noqa: E731
    assert count(0, packet.FORWARDED) == [1, len(forward)]
    assert count(0, packet.OTHER_HOST) == [1, len(other)]
    assert count(0, packet.VLAN) == [1, len(forward6)]
    assert count(0, packet.TTL) == [0, 0]  # the Python path counts what it was handed
    assert words[2 * lay.received_index:][:2] == \
        [4, len(forward) + len(slow) + len(other) + len(forward6)]
    assert words[out + 2 * lay.transmitted_index:][:2] == [1, len(expected)]
    for sock in (t.sock for t in tx):
        sock.close()


def test_a_full_transmit_ring_fails_the_frame_as_redirect_failed():
    lay = layout()
    forward = table.frame(table.v4())
    rx, tx = [Rx(IN, []), Rx(OUT, [])], [Tx(IN), Tx(OUT)]
    for r in rx:
        BLOCK.pack_into(r.map, 0, 3, 0, 0, 0, FIRST, 0)
    fp = fast(rx=rx, tx=tx)
    worker.learn(fp, table.FIB, forward, IN, False)
    for i in range(FRAME_NR):  # every slot still waits for the kernel
        struct.pack_into("=I", tx[1].map, i * FRAME_SIZE, rings.TP_STATUS_SEND_REQUEST)
    rx[0].fill(0, [(forward, False)])
    assert fp.run() == []
    words = [0] * (2 * lay.value_size // 8)
    fp.add_counts(words)
    assert words[2 * lay.outcome_index(packet.REDIRECT_FAILED)] == 1
    assert words[2 * lay.outcome_index(packet.FORWARDED)] == 0
    for t in tx:
        t.sock.close()
