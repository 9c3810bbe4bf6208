"""The map layout, read from bpf/counters.h: the one description C and Python share.

The header keeps the names of the program and its maps as defines and the
list of outcomes as an X-macro, X(ENUM, kind, label). This module parses
exactly those two shapes, so a change to the header reaches user space
without a second copy to keep in step.
"""

import importlib.resources
import re
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# The bpf/ folder: beside this module when installed, the checkout's own
# under an editable install (pip install -e .), which maps it to xdpfwd.bpf.
BPF_DIR = Path(str(importlib.resources.files("xdpfwd.bpf")))
HEADER = BPF_DIR / "counters.h"
SOURCE = BPF_DIR / "redirect.c"

KINDS = ("forwarded", "passed", "dropped")
RECEIVED = "received"  # not an outcome: every frame a port received, counted apart
TRANSMITTED = "transmitted"  # not an outcome: the egress count of a port
COUNT_FORMAT = "=QQ"  # struct xdpfwd_count: packets, bytes
COUNT_SIZE = struct.calcsize(COUNT_FORMAT)
PORT_FORMAT = "=I6sBBII"  # struct xdpfwd_port: ifindex, mac, ipv6_disabled, hash_policy, ipv4_route_mtu, ipv6_route_mtu
PORT_SIZE = struct.calcsize(PORT_FORMAT)


@dataclass(frozen=True)
class Outcome:
    index: int
    enum: str
    kind: str
    label: str


@dataclass(frozen=True)
class Layout:
    prog_name: str
    stats_map: str
    ports_map: str
    config_map: str
    max_ports: int
    outcomes: tuple[Outcome, ...]

    @property
    def value_size(self) -> int:
        """sizeof(struct xdpfwd_counters): received, the outcomes, transmitted."""
        return COUNT_SIZE * (len(self.outcomes) + 2)

    @staticmethod
    def outcome_index(outcome: int) -> int:
        """Where outcome[outcome] sits, counted in struct xdpfwd_count."""
        return 1 + outcome

    received_index = 0

    @property
    def transmitted_index(self) -> int:
        """Where `transmitted` sits, counted in struct xdpfwd_count."""
        return len(self.outcomes) + 1

    # The same places counted in u64 words (packets, then bytes), as the
    # AF_PACKET forwarder's counters file and its C fast path address them.

    @property
    def port_words(self) -> int:
        return self.value_size // 8

    @property
    def received_word(self) -> int:
        return 2 * self.received_index

    def outcome_word(self, outcome: int) -> int:
        return 2 * self.outcome_index(outcome)

    @property
    def transmitted_word(self) -> int:
        return 2 * self.transmitted_index



_DEFINE = re.compile(r"^#define\s+(XDPFWD_\w+)\s+(\w+)\s*$", re.M)
_OUTCOME = re.compile(r"X\((\w+),\s*(\w+),\s*\"(\w+)\"\)")


def parse(text: str) -> Layout:
    defines = dict(_DEFINE.findall(text))
    outcomes = tuple(
        Outcome(i, enum, kind, label)
        for i, (enum, kind, label) in enumerate(_OUTCOME.findall(text))
    )
    for o in outcomes:
        if o.kind not in KINDS:
            raise ValueError(f"counters.h: outcome {o.enum} has unknown kind {o.kind!r}")
    if not outcomes or outcomes[0].kind != "forwarded":
        raise ValueError("counters.h: the first outcome must be FORWARDED")
    return Layout(
        prog_name=defines["XDPFWD_PROG_NAME"],
        stats_map=defines["XDPFWD_STATS_MAP"],
        ports_map=defines["XDPFWD_PORTS_MAP"],
        config_map=defines["XDPFWD_CONFIG_MAP"],
        max_ports=int(defines["XDPFWD_MAX_PORTS"]),
        outcomes=outcomes,
    )


@cache
def layout() -> Layout:
    return parse(HEADER.read_text())
