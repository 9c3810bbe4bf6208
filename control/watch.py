"""`xdpfwd stats --watch`: per-interface packets/s and bits/s for each
outcome, from two readings of the counters a second apart."""

import time

from xdpfwd.counters import PortCounters


def human(value: float) -> str:
    """412345 -> '412.3k', as ip -h and iftop show rates."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def rates(before: dict[str, PortCounters], after: dict[str, PortCounters],
          seconds: float) -> dict[str, list[tuple[str, float, float]]]:
    """{device: [(row, packets/s, bits/s)]}: the totals, then each reason
    that moved, under the outcome it belongs to."""
    table = {}
    for device, now in after.items():
        d = now - before.get(device, PortCounters.of({}))
        rows = []
        for row, count in (("received", d.received), ("forwarded", d.total("forwarded")),
                           ("passed", d.total("passed")), ("dropped", d.total("dropped")),
                           ("transmitted", d.transmitted)):
            rows.append((row, count.packets / seconds, 8 * count.bytes / seconds))
            if row in ("passed", "dropped"):
                rows += [(f"  {reason}", c.packets / seconds, 8 * c.bytes / seconds)
                         for reason, c in d.reasons(row).items() if c.packets]
        table[device] = rows
    return table


def render(table, interval: float, clock: float) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(clock))
    lines = [f"xdpfwd stats   every {interval:g}s   {stamp}   (Ctrl-C to stop)",
             f"{'IFACE':<12} {'OUTCOME':<26} {'PKT/S':>10} {'BIT/S':>10}"]
    for device, rows in table.items():
        for i, (row, pps, bps) in enumerate(rows):
            lines.append(f"{device if i == 0 else '':<12} {row:<26} {human(pps):>10} {human(bps):>10}")
    if not table:
        lines.append("no counters: xdpfwd is not attached here")
    return "\n".join(lines)


def counters() -> dict[str, PortCounters]:
    """Every port's counters, from the snapshot `stats` and the exporter read."""
    from xdpfwd import snapshot

    return snapshot.read().check().counters


def watch(read=counters, interval: float = 1.0, out=None, tty: bool = False,
          frames: int | None = None) -> None:
    """Print a frame every interval until interrupted (or `frames` frames)."""
    import sys

    out = out or sys.stdout
    before, t0 = read(), time.monotonic()
    shown = 0
    while frames is None or shown < frames:
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
        after, t1 = read(), time.monotonic()
        frame = render(rates(before, after, t1 - t0), interval, time.time())
        out.write(("\x1b[H\x1b[2J" + frame) if tty else (frame + "\n\n"))
        out.flush()
        before, t0 = after, t1
        shown += 1
