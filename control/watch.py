"""`xdpfwd stats --watch`: per-interface packets/s and bits/s for each
outcome, from two readings of the counters a second apart."""

import time

from xdpfwd.datapath import summarize

ROWS = (("received", "rx"), ("forwarded", "forwarded"), ("passed", "passed"),
        ("dropped", "dropped"), ("transmitted", "tx"))


def human(value: float) -> str:
    """412345 -> '412.3k', as ip -h and iftop show rates."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def rates(before: dict, after: dict, seconds: float) -> dict[str, list[tuple[str, float, float]]]:
    """{device: [(row, packets/s, bits/s)]}: the totals, then each reason
    that moved, under the outcome it belongs to."""
    table = {}
    for device, counts in after.items():
        now, then = summarize(counts), summarize(before.get(device, {}))
        rows = []
        for row, key in ROWS:
            pps = (now[f"{key}_packets"] - then[f"{key}_packets"]) / seconds
            bps = 8 * (now[f"{key}_bytes"] - then[f"{key}_bytes"]) / seconds
            rows.append((row, pps, bps))
            if row in ("passed", "dropped"):
                for reason, (packets, nbytes) in counts.items():
                    if reason not in now[f"{'pass' if row == 'passed' else 'drop'}_reasons"]:
                        continue
                    p0, b0 = before.get(device, {}).get(reason, (0, 0))
                    if packets != p0:
                        rows.append((f"  {reason}", (packets - p0) / seconds, 8 * (nbytes - b0) / seconds))
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


def watch(read, interval: float = 1.0, out=None, tty: bool = False, frames: int | None = None) -> None:
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
