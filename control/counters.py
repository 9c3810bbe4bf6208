"""One port's counters as a type, decoded from struct xdpfwd_counters.

The XDP program keeps one struct per port and CPU, the AF_PACKET forwarder
one per port and worker (bpf/counters.h describes both); decode() sums
them. Everything that shows counters (`stats`, `stats --watch`, the
exporter) takes a PortCounters, so the arithmetic by outcome kind is
written once, here.
"""

import struct
from dataclasses import dataclass, field

from xdpfwd.layout import COUNT_FORMAT, COUNT_SIZE, KINDS, RECEIVED, TRANSMITTED, layout


@dataclass(frozen=True)
class Count:
    packets: int = 0
    bytes: int = 0

    def __add__(self, other: "Count") -> "Count":
        return Count(self.packets + other.packets, self.bytes + other.bytes)

    def __sub__(self, other: "Count") -> "Count":
        return Count(self.packets - other.packets, self.bytes - other.bytes)


ZERO = Count()


@dataclass(frozen=True)
class PortCounters:
    """received: every frame that arrived, counted before any decision;
    outcomes: {label: Count} for every outcome of the layout, in its order;
    transmitted: what was sent out of the port (its egress side)."""

    received: Count = ZERO
    outcomes: dict[str, Count] = field(default_factory=dict)
    transmitted: Count = ZERO

    @classmethod
    def decode(cls, values: list[bytes]) -> "PortCounters":
        """The sum of several struct xdpfwd_counters (per CPU, per worker)."""
        lay = layout()
        slots = len(lay.outcomes) + 2
        totals = [[0, 0] for _ in range(slots)]
        for raw in values:
            for i in range(slots):
                packets, nbytes = struct.unpack_from(COUNT_FORMAT, raw, i * COUNT_SIZE)
                totals[i][0] += packets
                totals[i][1] += nbytes
        counts = [Count(p, b) for p, b in totals]
        return cls(counts[lay.received_index],
                   {o.label: counts[lay.outcome_index(o.index)] for o in lay.outcomes},
                   counts[lay.transmitted_index])

    @classmethod
    def of(cls, counts: dict[str, tuple[int, int]]) -> "PortCounters":
        """From {label: (packets, bytes)}, RECEIVED and TRANSMITTED among
        them; what is missing is zero (fixtures, tests)."""
        return cls(Count(*counts.get(RECEIVED, (0, 0))),
                   {o.label: Count(*counts.get(o.label, (0, 0))) for o in layout().outcomes},
                   Count(*counts.get(TRANSMITTED, (0, 0))))

    def as_dict(self) -> dict[str, tuple[int, int]]:
        """{label: (packets, bytes)} with RECEIVED and TRANSMITTED."""
        return {RECEIVED: (self.received.packets, self.received.bytes),
                **{label: (c.packets, c.bytes) for label, c in self.outcomes.items()},
                TRANSMITTED: (self.transmitted.packets, self.transmitted.bytes)}

    def total(self, kind: str) -> Count:
        """All outcomes of a kind: forwarded, passed or dropped."""
        total = ZERO
        for o in layout().outcomes:
            if o.kind == kind:
                total += self.outcomes.get(o.label, ZERO)
        return total

    def reasons(self, kind: str) -> dict[str, Count]:
        """{label: Count} of the outcomes of a kind (the passed and
        dropped reasons)."""
        return {o.label: self.outcomes.get(o.label, ZERO) for o in layout().outcomes
                if o.kind == kind}

    def __sub__(self, before: "PortCounters") -> "PortCounters":
        return PortCounters(self.received - before.received,
                            {label: c - before.outcomes.get(label, ZERO)
                             for label, c in self.outcomes.items()},
                            self.transmitted - before.transmitted)

    def record(self) -> dict:
        """The `stats --json` record of one interface."""
        out = {"rx_packets": self.received.packets, "rx_bytes": self.received.bytes}
        for kind in KINDS:
            c = self.total(kind)
            out[f"{kind}_packets"], out[f"{kind}_bytes"] = c.packets, c.bytes
        out["tx_packets"], out["tx_bytes"] = self.transmitted.packets, self.transmitted.bytes
        out["pass_reasons"] = {label: c.packets for label, c in self.reasons("passed").items()}
        out["drop_reasons"] = {label: c.packets for label, c in self.reasons("dropped").items()}
        return out
