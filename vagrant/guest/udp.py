#!/usr/bin/env python3
"""Numbered UDP datagrams across the VM lab, and the TTL they arrive with.

    udp.py recv --port P --count N --out FILE [--family 4|6] [--timeout S]
    udp.py send --to ADDR --port P --count N [--rate PPS]

recv binds, writes FILE.ready, and waits until N distinct datagrams came or
nothing came for --idle seconds; it writes {"received", "distinct",
"duplicates", "ttl": {TTL: count}} to FILE and exits 0 only if every
datagram came exactly once. (xdpfwd lab traffic does the same across
namespaces on one host; here sender and receiver are different machines.)
"""

import argparse
import json
import os
import socket
import struct
import sys
import time

MAGIC = b"xdpfwd-vm-lab"
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Linux value; absent from some Pythons


def recv(a) -> int:
    fam = socket.AF_INET6 if a.family == 6 else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        s.bind(("::", a.port))
    else:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        s.bind(("0.0.0.0", a.port))
    with open(a.out + ".ready", "w"):
        pass
    seen: set[int] = set()
    received = 0
    ttl: dict[int, int] = {}
    deadline = time.monotonic() + a.timeout
    last = None
    while len(seen) < a.count:
        now = time.monotonic()
        wait = deadline - now if last is None else min(deadline - now, last + a.idle - now)
        if wait <= 0:
            break
        s.settimeout(wait)
        try:
            data, anc, _, _ = s.recvmsg(2048, socket.CMSG_SPACE(4))
        except socket.timeout:
            break
        if not data.startswith(MAGIC):
            continue
        last = time.monotonic()
        received += 1
        seen.add(int(data[len(MAGIC) + 1:].split(b" ")[0]))
        for level, kind, value in anc:
            if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, IPV6_HOPLIMIT)):
                t = struct.unpack("i", value[:4])[0]
                ttl[t] = ttl.get(t, 0) + 1
    result = {"expected": a.count, "received": received, "distinct": len(seen),
              "duplicates": received - len(seen), "ttl": ttl}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, a.out)
    print(json.dumps(result))
    return 0 if len(seen) == a.count and received == a.count else 1


def send(a) -> int:
    fam = socket.AF_INET6 if ":" in a.to else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    start = time.monotonic()
    for i in range(a.count):
        # Paced: an emulated CPU drains a virtio ring slowly.
        ahead = start + i / a.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        payload = MAGIC + b" " + str(i).encode() + b" " + b"." * max(0, a.size - 24)
        s.sendto(payload, (a.to, a.port))
    print(json.dumps({"sent": a.count, "to": a.to, "port": a.port,
                      "seconds": round(time.monotonic() - start, 2)}))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--family", type=int, choices=(4, 6), default=4)
    r.add_argument("--timeout", type=float, default=120, help="overall limit, seconds")
    r.add_argument("--idle", type=float, default=5, help="give up after this long without a datagram")
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--rate", type=float, default=500, help="datagrams per second")
    s.add_argument("--size", type=int, default=100, help="payload bytes")
    a = p.parse_args()
    return recv(a) if a.cmd == "recv" else send(a)


if __name__ == "__main__":
    sys.exit(main())
