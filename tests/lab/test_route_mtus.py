"""The route MTUs the XDP program is given (netlink.unlocked_route_mtus(),
read by a raw dump of every table): what `ip route` set, read back from the
lab router's kernel, in a table large enough to take many datagrams."""

import socket
import subprocess

from helpers import inside, router_ip
from xdpfwd import netlink

BIG_TABLE = 200
ROUTES = 20000


def unlocked(family: int) -> dict[tuple[int, int, str], int]:
    with inside("router"):
        found = netlink.unlocked_route_mtus(family)
    return {(table, dst_len, socket.inet_ntop(family, dst) if dst else "default"): mtu
            for (fam, table, dst_len, dst), mtu in found.items() if fam == family}


def test_unlocked_route_mtus_of_every_table_and_both_families(lab):
    batch = "".join(f"route add 100.{i >> 8}.{i & 255}.0/24 via 10.0.11.20 table {BIG_TABLE}\n"
                    for i in range(ROUTES))
    batch += f"route add 100.250.0.0/24 via 10.0.11.20 mtu 1280 table {BIG_TABLE}\n"  # the dump's last part
    added = [
        ("route", "add", "10.0.95.0/24", "via", "10.0.11.20", "mtu", "1300"),
        ("route", "add", "10.0.96.0/24", "via", "10.0.11.20", "mtu", "lock", "1200"),
        ("route", "add", "default", "via", "10.0.11.20", "mtu", "1450", "table", "101"),
        ("route", "add", "10.0.97.0/24", "mtu", "1350", "nexthop", "via", "10.0.11.20",
         "nexthop", "via", "10.0.10.10"),
        ("-6", "route", "add", "fd00:97::/64", "via", "fd00:11::20", "mtu", "1400"),
        ("-6", "route", "add", "fd00:98::/64", "via", "fd00:11::20", "mtu", "lock", "1300"),
        ("-6", "route", "add", "default", "via", "fd00:11::20", "mtu", "1420", "table", "101"),
    ]
    try:
        subprocess.run(["ip", "-n", lab.ns("router"), "-batch", "-"], input=batch, text=True, check=True)
        for args in added:
            router_ip(*args)
        assert unlocked(socket.AF_INET) == {
            (254, 24, "10.0.95.0"): 1300, (101, 0, "default"): 1450, (254, 24, "10.0.97.0"): 1350,
            (BIG_TABLE, 24, "100.250.0.0"): 1280}
        assert unlocked(socket.AF_INET6) == {(254, 64, "fd00:97::"): 1400, (101, 0, "default"): 1420}
    finally:
        for args in added:  # "add" becomes "del", the route's words as they were
            words = list(args)
            words[words.index("add")] = "del"
            subprocess.run(["ip", "-n", lab.ns("router"), *words], capture_output=True)
        router_ip("route", "flush", "table", str(BIG_TABLE))
    assert unlocked(socket.AF_INET) == {} and unlocked(socket.AF_INET6) == {}
