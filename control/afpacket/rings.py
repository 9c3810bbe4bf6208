"""AF_PACKET sockets with memory-mapped rings: a TPACKET_V3 receive ring and
a TPACKET_V2 transmit ring, so that a batch of packets costs one poll()
and one send() rather than a system call per packet.

Layouts are those of <linux/if_packet.h>; offsets are written out here
because Python has no binding for them.
"""

import ctypes
import errno
import mmap
import socket
import struct

SOL_PACKET = 263
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
MEMBARRIER_CMD_GLOBAL = 1
NR_MEMBARRIER = 324  # x86_64
ETH_P_ALL = 0x0003
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_VNET_HDR = 15
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_STATISTICS = 6
TPACKET_V2, TPACKET_V3 = 1, 2
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_WRONG_FORMAT = 1 << 2

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
# block_status, num_pkts, offset_to_first_pkt, blk_len, ...
BLOCK_HDR = struct.Struct("=IIIIII")
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len,
# tp_status, tp_mac (u16), tp_net (u16)
PKT3_HDR = struct.Struct("=IIIIIIHH")
# struct tpacket2_hdr begins tp_status, tp_len; its frame's data starts at
# TPACKET_ALIGN(sizeof(struct tpacket2_hdr)) = 32 (without PACKET_TX_HAS_OFF).
TX_DATA_OFFSET = 32
TX_STATUS_LEN = struct.Struct("=II")
# struct virtio_net_hdr (PACKET_VNET_HDR): flags, gso_type, hdr_len,
# gso_size, csum_start, csum_offset, in the host's byte order (the packet
# socket reads them with vio_le(), virtio_legacy_is_little_endian()). It
# precedes each frame in the TX ring; see TxRing for why.
VNET_HDR = struct.Struct("=BBHHHH")
TX_FRAME_OFFSET = TX_DATA_OFFSET + VNET_HDR.size
# send() errors that mean the device dropped the frame at the ring's head
# (tpacket_snd() gives net_xmit_errno(NET_XMIT_DROP) for a full veth peer
# or no carrier), or that the device is down or gone: the kernel's own
# forwarding drops the frame then, and so does the TX ring (drop_pending()).
DEVICE_DROPPED = (errno.ENOBUFS, errno.ENETDOWN, errno.ENXIO, errno.ENODEV)


DROP_ALL = [(0x06, 0, 0, 0)]  # classic BPF: ret #0

_libc = ctypes.CDLL(None, use_errno=True)


def grace_period() -> None:
    """Wait until every receive (and forward) the kernel had begun is over."""
    if _libc.syscall(NR_MEMBARRIER, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0:
        return
    # Without membarrier (nohz_full, or not built): packet_release() calls
    # synchronize_net() for the same reason, so that no receive still runs.
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()


def attach_filter(sock: socket.socket, insns) -> None:
    """A classic BPF socket filter, [(code, jt, jf, k), ...]."""
    prog = b"".join(struct.pack("=HBBI", *insn) for insn in insns)
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HL", len(insns), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_rx_rings(ports: list[int], fanout_base: int) -> list["RxRing"]:
    """One receive ring per port, each in its port's fanout group, that
    takes only what the group hands it: each frame reaches one ring of the
    group, once.

    A socket can join a group only once bound (PACKET_SOCK_RUNNING), so for
    a while its own hook takes every frame of the port while the group
    hands the same frames to the other members; and fanout_add()
    (net/packet/af_packet.c) unhooks it with __dev_remove_pack(), which does
    not wait, then links it into the group at once: a receive on another CPU
    that walked past the socket's own hook in __netif_receive_skb_core()
    (net/core/dev.c) still delivers to it there, and the group may then
    choose the same socket again (seen: one frame twice in a new ring, then
    sent twice). So the rings join with a filter that drops everything; once
    a grace period has passed no receive still holds their own hooks, and
    the filters go. What the group gave them meanwhile is dropped: on a
    start the kernel still forwards it (handover.py); on a worker restart it
    is lost, as a full ring loses frames (README, AF_PACKET MODE)."""
    rings = []
    try:
        for i, ifindex in enumerate(ports):
            rings.append(RxRing(ifindex, fanout_id=fanout_base + i))
        grace_period()
        for ring in rings:
            ring.open_gate()
    except BaseException:
        for ring in rings:
            ring.close()
        raise
    return rings


def _socket() -> socket.socket:
    # Protocol 0: the socket receives nothing until bind() names the
    # interface, so no other interface's frames land in the ring first.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setblocking(False)
    return sock


def _bind(sock: socket.socket, ifindex: int, protocol: int) -> None:
    # Python's AF_PACKET address takes the interface's name.
    sock.bind((socket.if_indextoname(ifindex), protocol))


class RxRing:
    """Frames received on one interface, a block at a time: blocks() here,
    or the fast path (fastpath.c), which moves `next_block` and `read` on
    as blocks() does.

    Joining the fanout group `fanout_id` spreads flows (by hash) over every
    socket in the group: one per worker process. Such a ring takes nothing
    until open_gate() (open_rx_rings() says why). PACKET_IGNORE_OUTGOING
    keeps the frames the stack transmits out (the forwarder's own never
    reach a tap: PACKET_QDISC_BYPASS); in a fanout group only the group's
    hook counts, so the group is joined with PACKET_FANOUT_FLAG_IGNORE_OUTGOING
    (fanout_add(), net/packet/af_packet.c; since Linux 6.2).
    """

    # Many small blocks rather than a few large ones: at a low rate the 1 ms
    # timeout hands over a block per millisecond however little it holds,
    # so the block count is how long (in ms) a worker may pause before the
    # kernel has no room left (prb_retire_rx_blk_timer_expired()); at a
    # high rate 32 KiB still holds about 200 small frames per poll().
    def __init__(self, ifindex: int, fanout_id: int | None = None, block_size: int = 1 << 15,
                 block_nr: int = 128, frame_size: int = 2048, timeout_ms: int = 1):
        self.sock = _socket()
        s = self.sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        frame_nr = block_size * block_nr // frame_size
        # tpacket_req3; the timeout hands a part-filled block over after
        # timeout_ms, so a lone ping is not held back.
        req = struct.pack("=7I", block_size, block_nr, frame_size, frame_nr, timeout_ms, 0, 0)
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.map = mmap.mmap(s.fileno(), block_size * block_nr, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        if fanout_id is not None:
            attach_filter(s, DROP_ALL)  # until open_gate(): see open_rx_rings()
        _bind(s, ifindex, ETH_P_ALL)
        if fanout_id is not None:
            group = fanout_id & 0xFFFF
            try:
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, group | (
                    (PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_IGNORE_OUTGOING) << 16))
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # Before 6.2 the flag is unknown: the group then also hands
                # over what the stack sends on the port (ARP, ND, ICMP), which
                # the decision passes to the stack, where it came from.
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, group | (PACKET_FANOUT_HASH << 16))
        self.ifindex = ifindex
        self.block_size = block_size
        self.block_nr = block_nr
        self.next_block = 0
        self.read = 0  # frames read from the ring since it opened
        self.dropped = 0  # frames the kernel found no room for
        self._received = 0

    def received(self) -> int:
        """Frames the kernel has put in the ring since it opened. Frames are
        placed in order and counted under the ring's lock (tpacket_rcv()),
        so once `read` reaches this figure, every one of them was read."""
        # struct tpacket_stats_v3: tp_packets (drops included), tp_drops,
        # tp_freeze_q_cnt; each read resets them.
        packets, drops, _ = struct.unpack(
            "=III", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
        self._received += packets - drops
        self.dropped += drops
        return self._received

    def total_dropped(self) -> int:
        """Frames the kernel found no room for in this ring since it opened."""
        self.received()
        return self.dropped

    def open_gate(self) -> None:
        """Take frames from now on (the filter the group was joined with goes)."""
        self.sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)

    def fileno(self) -> int:
        return self.sock.fileno()

    def blocks(self):
        """Yield (frames, release) for each block the kernel has handed over;
        frames is a list of (bytes, vlan_tagged). Call release() when done so
        the kernel can refill the block."""
        m = self.map
        while True:
            base = self.next_block * self.block_size
            _, _, status, num, first, _ = BLOCK_HDR.unpack_from(m, base)
            if not status & TP_STATUS_USER:
                return
            frames = []
            off = base + first
            for _ in range(num):
                nxt, _, _, snaplen, _, pstatus, mac, _ = PKT3_HDR.unpack_from(m, off)
                start = off + mac
                frames.append((m[start:start + snaplen], bool(pstatus & TP_STATUS_VLAN_VALID)))
                off += nxt
            self.read += num
            yield frames
            struct.pack_into("=I", m, base + 8, TP_STATUS_KERNEL)
            self.next_block = (self.next_block + 1) % self.block_nr

    def close(self) -> None:
        self.map.close()
        self.sock.close()


class TxRing:
    """Frames to send on one interface: queue() fills ring slots, flush()
    hands all queued frames to the kernel with one send(). The fast path
    (fastpath.c) fills the same slots from C and moves `next` and `queued`
    on as queue() does.

    PACKET_QDISC_BYPASS: a forwarder's frames need no qdisc of their own;
    the driver's queue is enough (as for XDP_REDIRECT).

    PACKET_VNET_HDR, with each frame's virtio_net_hdr saying hdr_len = the
    whole frame: tpacket_snd() then copies the frame into the skb's own
    buffer. Without it, it copies the Ethernet header only and hangs the
    rest on as the ring's pages, marked zero-copy; veth must then copy them
    all the same (____dev_forward_skb() -> skb_orphan_frags() ->
    skb_copy_ubufs(): a fresh page per frame, 16% of the router's CPU in the
    benchmark), as must a packet tap (skb_orphan_frags_rx()). The price: a
    NIC that could have sent the pages as they were now gets a copy made
    once, a memcpy of the frame. The header asks for nothing else (no
    checksum offload, no GSO).
    """

    def __init__(self, ifindex: int, frame_size: int = 2048, frame_nr: int = 1024):
        self.sock = _socket()
        s = self.sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        # A slot with a bad format is skipped rather than stopping the ring:
        # how drop_pending() drops a frame the device refused.
        s.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)  # before the ring: EBUSY after
        block_size = 1 << 16
        req = struct.pack("=4I", block_size, frame_size * frame_nr // block_size, frame_size, frame_nr)
        s.setsockopt(SOL_PACKET, PACKET_TX_RING, req)
        self.map = mmap.mmap(s.fileno(), frame_size * frame_nr, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        # Protocol 0: a sending socket must not also queue every received
        # frame; the kernel takes each sent frame's protocol from its header.
        _bind(s, ifindex, 0)
        self.ifindex = ifindex
        self.frame_size = frame_size
        self.frame_nr = frame_nr
        self.max_len = frame_size - TX_FRAME_OFFSET
        self.next = 0
        self.queued = 0

    def queue(self, frame: bytes) -> bool:
        """Put one frame in the ring; False when the ring is full (the
        kernel has not sent the earlier frames yet) or the frame too long."""
        n = len(frame)
        if n > self.max_len:
            return False
        off = self.next * self.frame_size
        m = self.map
        status = struct.unpack_from("=I", m, off)[0]
        if status != TP_STATUS_AVAILABLE and status != TP_STATUS_WRONG_FORMAT:
            self.flush()
            status = struct.unpack_from("=I", m, off)[0]
            if status != TP_STATUS_AVAILABLE and status != TP_STATUS_WRONG_FORMAT:
                return False
        VNET_HDR.pack_into(m, off + TX_DATA_OFFSET, 0, 0, n, 0, 0, 0)
        m[off + TX_FRAME_OFFSET:off + TX_FRAME_OFFSET + n] = frame
        # Length first, status last: the kernel reads a slot only once its
        # status says SEND_REQUEST, and only during send().
        TX_STATUS_LEN.pack_into(m, off, TP_STATUS_SEND_REQUEST, VNET_HDR.size + n)
        self.next = (self.next + 1) % self.frame_nr
        self.queued += 1
        return True

    def unsent(self) -> bool:
        """The newest slot is still marked for sending. The kernel sends
        from the ring's head in order, so this is true whenever any frame
        is left: a send() that stopped short (no send buffer left for the
        next frame: tpacket_snd() returns what it sent, and success) or a
        kick of the fast path's that met a refusal (it ignores send()'s
        errors and leaves them to flush())."""
        off = (self.next - 1) % self.frame_nr * self.frame_size
        return struct.unpack_from("=I", self.map, off)[0] == TP_STATUS_SEND_REQUEST

    def flush(self) -> None:
        if not self.queued and not self.unsent():
            return
        for _ in range(self.frame_nr):
            try:
                self.sock.send(b"")
            except (BlockingIOError, InterruptedError):
                pass  # frames stay queued; the next flush sends them
            except OSError as e:
                if e.errno not in DEVICE_DROPPED:
                    raise
                # ENOBUFS: the head frame was refused, the ones behind it
                # may still go. Down or gone: none of them can.
                if self.drop_pending(every=e.errno != errno.ENOBUFS):
                    continue
            break
        self.queued = 0

    def drop_pending(self, every: bool) -> bool:
        """Drop the frame the kernel failed to send (every: all frames not
        sent yet). tpacket_snd() puts a frame the device dropped back at the
        ring's head, marked for sending, and offers it again on every
        send(): it would arrive late, or never while the device refuses,
        with every frame behind it held. The kernel's forwarding drops such
        a frame (veth counts it in tx_dropped); so does this: a zero length
        (shorter than the virtio_net_hdr) fails, and PACKET_LOSS makes tpacket_snd()
        skip the slot. The frames not sent yet are the slots marked for
        sending that run back from the next free one. False when no frame
        was left to drop."""
        m = self.map
        pending = []
        index = (self.next - 1) % self.frame_nr
        for _ in range(self.frame_nr):
            status, length = TX_STATUS_LEN.unpack_from(m, index * self.frame_size)
            if status != TP_STATUS_SEND_REQUEST:
                break
            pending.append((index, length))
            index = (index - 1) % self.frame_nr
        dropped = False
        for index, length in reversed(pending):  # from the head on
            if length:
                TX_STATUS_LEN.pack_into(m, index * self.frame_size, TP_STATUS_SEND_REQUEST, 0)
                dropped = True
                if not every:
                    break
        return dropped

    def close(self) -> None:
        self.flush()
        self.map.close()
        self.sock.close()
