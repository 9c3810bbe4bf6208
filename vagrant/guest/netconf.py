#!/usr/bin/env python3
"""Network set-up of a lab VM, from control/lab.json (through labinfo).

    netconf.py names ROLE [--boot]   # give the lab NICs their lab names, by MAC
    netconf.py config ROLE           # hostname, static addresses and routes, forwarding

names: each lab NIC is found by the MAC address labinfo derives from its
address and renamed to its name in lab.json (eth0, eth1), whatever the
guest kernel called it (ens3, enp0s8...). Another NIC holding a lab name
(Vagrant's management NIC is often eth0) becomes mgmt0. Renames happen
now when no NIC involved is in use (the qemu lab, where nothing is
configured yet); otherwise (a Vagrant VM, reached through its management
NIC) they are left to xdpfwd-lab-names.service early at the next boot,
before any network configuration, and ifupdown's configuration follows the
management NIC's new name: then this prints "reboot required". The unit is
installed in both cases, so the names survive reboots.

config: systemd-networkd files with the static addresses and routes (no
DHCP, no router advertisements, no duplicate address detection), IP
forwarding on the router, and the hostname; then waits until every address
and route is in place.
"""

import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repo's vagrant/
sys.path.insert(0, str(HERE))         # an installed copy: labinfo.py beside this file
import labinfo  # noqa: E402

LIB = Path("/usr/local/lib/xdpfwd-lab")
UNIT = Path("/etc/systemd/system/xdpfwd-lab-names.service")
NETWORKD = Path("/etc/systemd/network")
REBOOT_FLAG = Path("/run/xdpfwd-lab/reboot-required")
DHCLIENT = Path("/var/lib/dhcp")


def say(msg: str) -> None:
    print(f"netconf: {msg}", flush=True)


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def links() -> dict[str, str]:
    """ifname -> MAC of every Ethernet NIC."""
    out = {}
    for d in Path("/sys/class/net").iterdir():
        if (d / "type").read_text().strip() == "1" and d.name != "lo":
            out[d.name] = (d / "address").read_text().strip().lower()
    return out


def in_use(ifname: str) -> bool:
    """Up with a global IPv4 address: renaming it would cut a connection."""
    info = json.loads(sh("ip", "-j", "addr", "show", "dev", ifname))[0]
    return "UP" in info.get("flags", []) and any(
        a.get("family") == "inet" and a.get("scope") == "global" for a in info.get("addr_info", []))


def plan(role: str) -> dict[str, str]:
    """current name -> new name, for every NIC that must change."""
    want = {m: name for name, m in labinfo.nics(role)}
    current = links()
    by_mac = {m: n for n, m in current.items()}
    missing = [f"{name} ({m})" for m, name in want.items() if m not in by_mac]
    if missing:
        raise LookupError(f"no NIC with the MAC address of {', '.join(missing)}; "
                          f"NICs here: {', '.join(f'{n} {m}' for n, m in sorted(current.items()))}")
    renames = {by_mac[m]: name for m, name in want.items() if by_mac[m] != name}
    taken = set(current) - set(renames)
    n = 0
    for ifname, m in sorted(current.items()):
        if m not in want and ifname in want.values():
            while f"mgmt{n}" in taken:
                n += 1
            renames[ifname] = f"mgmt{n}"
            taken.add(f"mgmt{n}")
    return renames


def rename_now(renames: dict[str, str]) -> None:
    """Through temporary names, so swaps (eth0 <-> eth1) work."""
    tmp = {}
    for i, (old, new) in enumerate(renames.items()):
        tmp[old] = f"xdplab{i}"
        sh("ip", "link", "set", "dev", old, "down")
        sh("ip", "link", "set", "dev", old, "name", tmp[old])
    for old, new in renames.items():
        sh("ip", "link", "set", "dev", tmp[old], "name", new)
        say(f"renamed {old} -> {new}")


def install_unit(role: str) -> None:
    LIB.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "netconf.py", LIB / "netconf.py")
    shutil.copy2(HERE / "nic-prep", LIB / "nic-prep")
    shutil.copy2(Path(labinfo.__file__), LIB / "labinfo.py")
    shutil.copy2(labinfo._find(), LIB / "lab.json")
    UNIT.write_text(f"""\
# Written by xdpfwd's vagrant/guest/netconf.py: the lab NICs get their lab
# names (lab.json) by MAC address, before any network configuration.
[Unit]
Description=xdpfwd VM lab: name the lab NICs by MAC address
DefaultDependencies=no
After=systemd-udev-trigger.service
Before=network-pre.target networking.service systemd-networkd.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 {LIB}/netconf.py names {role} --boot

[Install]
WantedBy=multi-user.target
""")
    sh("systemctl", "daemon-reload")
    sh("systemctl", "enable", UNIT.name)


def follow_in_ifupdown(renames: dict[str, str]) -> None:
    """The management NIC keeps its ifupdown configuration under its new
    name; `auto` rather than `allow-hotplug`, since a renamed NIC sends no
    new hotplug event."""
    files = [Path("/etc/network/interfaces"), *Path("/etc/network/interfaces.d").glob("*")]
    for f in files:
        if not f.is_file():
            continue
        text = orig = f.read_text()
        for old, new in renames.items():
            if new.startswith("mgmt"):
                text = re.sub(rf"\b{re.escape(old)}\b", new, text)
                text = re.sub(rf"^allow-hotplug\s+{new}\b", f"auto {new}", text, flags=re.M)
        if text != orig:
            f.write_text(text)
            say(f"{f}: {', '.join(f'{o} -> {n}' for o, n in renames.items() if n.startswith('mgmt'))}")
    # dhclient keeps its DUID, hence its client identifier, in the lease
    # files named after the NIC: without them it makes a new DUID under the
    # new name, the DHCP server hands out another address, and Vagrant keeps
    # knocking at the old one (seen: "No route to host" after the reboot).
    for old, new in renames.items():
        if not new.startswith("mgmt"):
            continue
        for pattern in ("dhclient.{}.leases", "dhclient6.{}.leases"):
            src, dst = DHCLIENT / pattern.format(old), DHCLIENT / pattern.format(new)
            if src.is_file():
                dst.write_text(src.read_text().replace(f'interface "{old}"', f'interface "{new}"'))
                say(f"{dst}: the DHCP leases and DUID of {old}")


def cmd_names(role: str, boot: bool) -> int:
    deadline = time.monotonic() + (60 if boot else 10)
    while True:
        try:
            renames = plan(role)
            break
        except LookupError as e:  # at boot, a NIC may not be there yet
            if time.monotonic() > deadline:
                print(f"netconf: {e}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    if not boot:
        install_unit(role)
    if not renames:
        say(f"names: {', '.join(f'{n} {m}' for n, m in labinfo.nics(role))}: in place")
        return 0
    busy = [old for old in renames if in_use(old)]
    if busy and not boot:
        follow_in_ifupdown(renames)
        REBOOT_FLAG.parent.mkdir(parents=True, exist_ok=True)
        REBOOT_FLAG.write_text(" ".join(f"{o}->{n}" for o, n in renames.items()))
        say(f"reboot required: {', '.join(busy)} in use; "
            f"renames at the next boot: {', '.join(f'{o} -> {n}' for o, n in renames.items())}")
        return 0
    rename_now(renames)
    return 0


def network_file(role: str, ifname: str, addrs: list[str], routes: list[list[str]], router: bool) -> str:
    lines = ["# Written by xdpfwd's vagrant/guest/netconf.py from control/lab.json.",
             "[Match]", f"Name={ifname}", "",
             "[Link]", "RequiredForOnline=yes", "",
             "[Network]", "DHCP=no", "IPv6AcceptRA=no", "LinkLocalAddressing=ipv6",
             "ConfigureWithoutCarrier=yes"]
    if router:
        lines += ["IPForward=yes"]
    for a in addrs:
        lines += ["", "[Address]", f"Address={a}", "DuplicateAddressDetection=none"]
    nets = [ipaddress.ip_interface(a).network for a in addrs]
    for dst, via in routes:
        if any(ipaddress.ip_address(via) in n for n in nets):
            lines += ["", "[Route]", f"Destination={dst}", f"Gateway={via}"]
    return "\n".join(lines) + "\n"


def cmd_config(role: str) -> int:
    host = labinfo.HOSTS[role]
    router = role == labinfo.ROUTER
    current = links()
    wrong = [i for i in host["interfaces"] if i not in current]
    if wrong:
        print(f"netconf: {', '.join(wrong)} missing: run `netconf.py names {role}` "
              f"(and reboot if it says so)", file=sys.stderr)
        return 1
    Path("/etc/hostname").write_text(role + "\n")
    sh("hostname", role)
    hosts = Path("/etc/hosts")
    text = hosts.read_text()
    if not re.search(rf"^127\.0\.1\.1\s+{role}$", text, re.M):
        text = re.sub(r"^127\.0\.1\.1\s.*\n", "", text, flags=re.M) + f"127.0.1.1 {role}\n"
        hosts.write_text(text)
    if router:
        conf = Path("/etc/sysctl.d/60-xdpfwd-lab.conf")
        conf.write_text("# xdpfwd VM lab: the router forwards.\n"
                        "net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 1\n")
        sh("sysctl", "-q", "-p", str(conf))
    NETWORKD.mkdir(parents=True, exist_ok=True)
    for ifname, addrs in host["interfaces"].items():
        f = NETWORKD / f"20-xdpfwd-lab-{ifname}.network"
        f.write_text(network_file(role, ifname, addrs, host["routes"], router))
    sh("systemctl", "enable", "systemd-networkd")
    sh("systemctl", "restart", "systemd-networkd")
    # Everything in place: every address, and a route for every lab route.
    deadline = time.monotonic() + 60
    while True:
        missing = []
        for ifname, addrs in host["interfaces"].items():
            have = sh("ip", "-o", "addr", "show", "dev", ifname)
            missing += [f"{ifname} {a}" for a in addrs if f" {a} " not in have]
        for dst, _via in host["routes"]:
            fam = "-6" if ":" in dst else "-4"
            if not sh("ip", fam, "route", "show", dst).strip():
                missing.append(f"route {dst}")
        if not missing:
            break
        if time.monotonic() > deadline:
            print(f"netconf: not configured after 60 s: {', '.join(missing)}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    for ifname in host["interfaces"]:
        say(" ".join(sh("ip", "-br", "addr", "show", "dev", ifname).split()))
    for fam in ("-4", "-6"):
        for line in sh("ip", fam, "route", "show", "proto", "static").splitlines():
            say(f"route {line.strip()}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("names", "config") or argv[1] not in labinfo.HOSTS:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "names":
        return cmd_names(argv[1], "--boot" in argv[2:])
    return cmd_config(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
