#!/usr/bin/env python3
"""The lab's topology for the VM labs, read from control/lab.json, the one
place the namespace lab (xdpfwd lab) also reads. Nothing here repeats an
address; the Vagrantfile reads the same file with Ruby's JSON.

A lab NIC's MAC address is derived from its IPv4 address, so both VM labs
can find each interface by MAC whatever the guest kernel names it:
52:54 followed by the four bytes of the address (locally administered,
unicast), e.g. 192.0.2.7 -> 52:54:c0:00:02:07. The Vagrantfile derives it
the same way.

    labinfo.py hosts                 # sendbox router recvbox
    labinfo.py router                # the router's name
    labinfo.py ports                 # the router's ports, as xdpfwd run takes them
    labinfo.py nics HOST             # IFNAME MAC, one a line
    labinfo.py addr HOST [IFNAME] [4|6]
    labinfo.py udp-port
"""

import ipaddress
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _find() -> Path:
    env = os.environ.get("XDPFWD_LAB_JSON")
    for p in ([Path(env)] if env else []) + [HERE.parent / "control" / "lab.json", HERE / "lab.json"]:
        if p.is_file():
            return p
    raise SystemExit("labinfo: control/lab.json not found")


TOPOLOGY = json.loads(_find().read_text())
HOSTS: dict = TOPOLOGY["hosts"]
ROUTER: str = TOPOLOGY["router"]
UDP_PORT: int = TOPOLOGY["udp_port"]


def addr(host: str, ifname: str | None = None, family: int = 4) -> str:
    """An address of a host, without its prefix length."""
    ifaces = HOSTS[host]["interfaces"]
    for name in [ifname] if ifname else list(ifaces):
        for a in ifaces[name]:
            if ipaddress.ip_interface(a).version == family:
                return a.split("/")[0]
    raise KeyError(f"{host} has no IPv{family} address")


def mac(host: str, ifname: str) -> str:
    v4 = ipaddress.IPv4Address(addr(host, ifname, 4)).packed
    return ":".join(f"{b:02x}" for b in b"\x52\x54" + v4)


def nics(host: str) -> list[tuple[str, str]]:
    return [(ifname, mac(host, ifname)) for ifname in HOSTS[host]["interfaces"]]


def peer(host: str, ifname: str) -> tuple[str, str]:
    """The (host, ifname) at the other end of a host's link."""
    for a, b in TOPOLOGY["links"]:
        if tuple(a) == (host, ifname):
            return tuple(b)
        if tuple(b) == (host, ifname):
            return tuple(a)
    raise KeyError(f"{host}/{ifname} is on no link")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "hosts":
        print(" ".join(HOSTS))
    elif cmd == "router":
        print(ROUTER)
    elif cmd == "ports":
        print(" ".join(HOSTS[ROUTER]["interfaces"]))
    elif cmd == "nics":
        for ifname, m in nics(args[0]):
            print(ifname, m)
    elif cmd == "addr":
        host = args[0]
        ifname = args[1] if len(args) > 1 and args[1] not in ("4", "6") else None
        family = int(args[-1]) if args[-1] in ("4", "6") else 4
        print(addr(host, ifname, family))
    elif cmd == "udp-port":
        print(UDP_PORT)
    else:
        print(f"labinfo: unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
