"""python -m bench [--quick] [--command TEXT]: see bench/run.py. As root."""

import argparse
import os
import signal
import sys

# Never the unprefixed lab: other people's tests run there.
os.environ.setdefault("XDPFWD_LAB_PREFIX", "bench-")


def _terminate(*_):
    raise KeyboardInterrupt  # SIGTERM tears down as Ctrl-C does


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="2 rounds x 3 s, 64 B, 1 flow")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--seconds", type=float, help="override the seconds per measurement")
    parser.add_argument("--rows", help="only these rows (comma-separated keys), for trying things out")
    parser.add_argument("--command", default=" ".join(["python -m bench", *sys.argv[1:]]),
                        help="the command to name in the report")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (XDP, namespaces, sysctls)", file=sys.stderr)
        return 3

    from bench import run
    from bench.testbed import GENERATOR_CPU

    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C too, even where a non-interactive shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # This process's own work (reading counters, starting commands) stays
    # on the generator's CPU, away from the router's.
    os.sched_setaffinity(0, {GENERATOR_CPU})
    try:
        return run.run(run.Plan(args.quick, args.rounds, args.seconds,
                                 args.rows.split(",") if args.rows else None), args.command)
    except KeyboardInterrupt:
        print("bench: interrupted; the lab was removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
