"""The xdpfwd command line: parse, call one module, print. Nothing else.

Errors: every XdpfwdError and every usage error becomes one line on stderr,
"xdpfwd: ...", and the exit status of its class (errors.py); any other
exception one line too, with status 70 (--verbose adds the traceback). No
traceback reaches the user unasked.
"""

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import click
import typer
import typer.core

from xdpfwd import __version__
from xdpfwd.errors import UsageError, XdpfwdError

# The exit status of an unexpected exception (a bug, or a state nobody
# foresaw): sysexits.h's EX_SOFTWARE, apart from the statuses of errors.py.
EXIT_INTERNAL = 70

# Plain help like other networking tools: typer escapes "[default: ...]"
# for rich whenever rich is importable, even with rich_markup_mode=None.
typer.core.rich = None

app = typer.Typer(
    help="Route IPv4 and IPv6 between interfaces in the kernel's XDP hook.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, like other networking tools
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
lab_app = typer.Typer(help="The namespace lab: sendbox -- router -- recvbox.",
                      no_args_is_help=True, rich_markup_mode=None)
app.add_typer(lab_app, name="lab")

_options = {"verbose": False}


class Mode(str, Enum):
    auto = "auto"
    native = "native"
    skb = "skb"
    afpacket = "afpacket"


MODE_HELP = ("native (driver XDP), skb (generic XDP), afpacket (user space), or auto: "
             "native, else skb, else afpacket where XDP cannot run.")

# Parameters that attach, run and exporter share, declared once.
Ports = Annotated[List[str], typer.Argument(metavar="IFACE IFACE...",
                                            help="The ports to forward between (two or more).")]
ModeOption = Annotated[Mode, typer.Option("--mode", "-m", help=MODE_HELP)]
EnableForwarding = Annotated[bool, typer.Option("--enable-forwarding",
                                                help="Turn on the ports' ipv4/ipv6 forwarding sysctls.")]
BypassNetfilter = Annotated[bool, typer.Option(
    "--bypass-netfilter",
    help="Forward even where nftables/iptables rules sit on the forward path; they are then "
         "skipped for the forwarded packets (one warning per chain on stderr).")]
BypassIpsec = Annotated[bool, typer.Option(
    "--bypass-ipsec",
    help="Forward even where IPsec (xfrm) policies or SAs would act on forwarded packets; "
         "they are then skipped, and the packets leave in clear (a warning on stderr).")]
TlsCert = Annotated[Optional[str], typer.Option("--tls-cert", metavar="FILE",
                                                help="Serve the metrics over HTTPS with this certificate.")]
TlsKey = Annotated[Optional[str], typer.Option("--tls-key", metavar="FILE",
                                               help="The certificate's private key (PEM).")]
WebConfig = Annotated[Optional[str], typer.Option(
    "--web.config.file", metavar="FILE",
    help="TLS, client certificates and basic auth, in the Prometheus exporter-toolkit's "
         "web configuration format (instead of --tls-cert/--tls-key).")]


def _version(value: bool):
    if value:
        print(f"xdpfwd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the compiler and verifier log."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
):
    _options["verbose"] = verbose


def _json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _note(text: str) -> None:
    print(f"xdpfwd: {text}", file=sys.stderr)


def _report(result) -> None:
    for note in result.notes:
        _note(note)
    names = ", ".join(result.modes)
    modes = ", ".join(sorted(set(result.modes.values())))
    what = f"pid {result.pid}" if result.pid else f"program {result.prog_id}"
    if result.already:
        print(f"{names}: already attached ({what}, {modes}); not reattaching")
        return
    for name, got in result.modes.items():
        print(f"{name}: attached {what} in {got} mode")


@app.command()
def attach(interfaces: Ports, mode: ModeOption = Mode.auto, enable_forwarding: EnableForwarding = False,
           bypass_netfilter: BypassNetfilter = False, bypass_ipsec: BypassIpsec = False):
    """Start forwarding between the interfaces, and return.

    Forwarding goes on after the command exits. All or nothing: if one
    interface fails, none is left attached.
    """
    from xdpfwd import forwarder

    _report(forwarder.attach(interfaces, mode.value, enable_forwarding, _options["verbose"],
                             bypass_netfilter, bypass_ipsec))


@app.command()
def run(
    interfaces: Ports,
    mode: ModeOption = Mode.auto,
    enable_forwarding: EnableForwarding = False,
    bypass_netfilter: BypassNetfilter = False,
    bypass_ipsec: BypassIpsec = False,
    metrics: Annotated[Optional[str], typer.Option(
        "--metrics", metavar="HOST:PORT", help="Also serve /metrics there (as `exporter`).")] = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    web_config: WebConfig = None,
):
    """Attach, stay in the foreground, detach on SIGTERM or SIGINT (for systemd)."""
    from xdpfwd import forwarder, systemd

    settings = None
    if metrics:
        from xdpfwd.exporter import server

        # A typo or a bad web configuration fails before anything is attached.
        settings = server.prepare(metrics, web_config, tls_cert, tls_key)
    elif tls_cert or tls_key or web_config:
        raise UsageError("--tls-cert, --tls-key and --web.config.file need --metrics")

    def ready(result):
        _report(result)
        if settings:
            server.start(settings)
            print(f"serving {settings.scheme}://{metrics}/metrics")
        sys.stdout.flush()
        systemd.notify("READY=1")

    code = forwarder.run(interfaces, mode.value, enable_forwarding, _options["verbose"], ready,
                         bypass_netfilter, bypass_ipsec)
    print("detached")
    raise typer.Exit(code)


@app.command()
def detach(
    interfaces: Optional[List[str]] = typer.Argument(None, metavar="[IFACE...]",
                                                     help="Default: every interface xdpfwd is on."),
):
    """Stop forwarding; programs of other tools are left alone."""
    from xdpfwd import forwarder

    done, notes = forwarder.detach(interfaces or None)
    for note in notes:
        _note(note)
    if not done:
        print("nothing to detach: xdpfwd is not attached here")
    for name in done:
        print(f"{name}: detached")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Show, per interface, whether xdpfwd forwards there, the mode, program or pid."""
    from xdpfwd import snapshot

    states = snapshot.read(counters=False).check().ports
    if as_json:
        out = {}
        for name, s in states.items():
            out[name] = {"attached": s.attached, "mode": s.mode if s.attached else None,
                         "prog_id": s.prog_id or None}
            if s.afpacket_pid:
                out[name].update(mode="afpacket", pid=s.afpacket_pid, running=s.afpacket_running)
            if s.foreign:
                out[name]["foreign"] = {"prog_id": s.foreign.prog_id, "name": s.foreign.name}
        _json({"interfaces": out})
        return
    print(f"{'IFACE':<16} {'XDPFWD':<8} {'MODE':<9} {'PROGRAM':<8} NOTE")
    for name, s in states.items():
        notes = []
        if s.foreign:
            notes.append(f"foreign program {s.foreign.prog_id} ({s.foreign.name})")
        if s.afpacket_pid:
            notes.append(f"pid {s.afpacket_pid}" if s.afpacket_running else
                         f"forwarder pid {s.afpacket_pid} is not running: run detach to clean up")
        attached = "yes" if s.attached else "no"
        mode = s.mode if s.attached or s.afpacket_pid else "-"
        prog = str(s.prog_id) if s.prog_id else "-"
        print(f"{name:<16} {attached:<8} {mode:<9} {prog:<8} {'; '.join(notes)}".rstrip())


@app.command()
def stats(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    watch: bool = typer.Option(False, "--watch", "-w",
                               help="Packets/s and bits/s per outcome, every second, until Ctrl-C."),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between --watch frames."),
):
    """Show the counters of every interface xdpfwd forwards on."""
    from xdpfwd import snapshot

    if watch:
        from xdpfwd import watch as live

        try:
            live.watch(interval=interval, tty=sys.stdout.isatty())
        except KeyboardInterrupt:  # the way to stop watching: not an error
            print()
        return
    records = {name: c.record() for name, c in snapshot.read().check().counters.items()}
    if as_json:
        _json(records)
        return
    if not records:
        print("no counters: xdpfwd is not attached here")
        return
    print(f"{'IFACE':<10} {'RX_PKTS':>11} {'RX_BYTES':>13} {'FWD_PKTS':>11} "
          f"{'PASS_PKTS':>9} {'DROP_PKTS':>9} {'TX_PKTS':>11}")
    for name, r in records.items():
        print(f"{name:<10} {r['rx_packets']:>11} {r['rx_bytes']:>13} {r['forwarded_packets']:>11} "
              f"{r['passed_packets']:>9} {r['dropped_packets']:>9} {r['tx_packets']:>11}")
        for kind, key in (("passed", "pass_reasons"), ("dropped", "drop_reasons")):
            shown = ", ".join(f"{k} {v}" for k, v in r[key].items() if v)
            if shown:
                print(f"  {kind}: {shown}")


@app.command()
def exporter(
    listen: str = typer.Option("127.0.0.1:10420", "--listen", "-l", metavar="HOST:PORT",
                               help="Where to serve /metrics. Loopback unless told otherwise."),
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    web_config: WebConfig = None,
):
    """Serve xdpfwd's counters to Prometheus, read from the kernel at scrape time."""
    from xdpfwd.exporter import server

    settings = server.prepare(listen, web_config, tls_cert, tls_key)

    def ready():
        print(f"serving {settings.scheme}://{listen}/metrics", flush=True)

    server.serve_forever(settings, on_ready=ready)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Check what xdpfwd needs, and say how to fix what is missing."""
    from xdpfwd import doctor as checks

    results = checks.run()
    if as_json:
        _json([r.as_dict() for r in results])
    else:
        for r in results:
            print(r.line())
    if any(r.level == "fail" for r in results):
        raise typer.Exit(1)


@lab_app.command("up")
def lab_up(verbose: bool = typer.Option(False, "--verbose", "-v", help="Print each command.")):
    """Create the namespaces sendbox, router, recvbox and their links."""
    from xdpfwd import forwarder, lab

    forwarder.require_privileges()
    log: list[str] = []
    if not lab.up(log):
        print("lab is already up")
        return
    if verbose or _options["verbose"]:
        print("\n".join(log))
    print("lab up: sendbox 10.0.10.10 -- 10.0.10.20 [router] 10.0.11.10 -- 10.0.11.20 recvbox")
    print("        (IPv6 fd00:10::10 -- fd00:10::20 [router] fd00:11::10 -- fd00:11::20)")


@lab_app.command("down")
def lab_down():
    """Delete the lab's namespaces. Safe to run twice."""
    from xdpfwd import forwarder, lab

    forwarder.require_privileges()
    removed = lab.down()
    print(f"lab down: removed {', '.join(removed)}" if removed else "lab is not up")


@lab_app.command("status")
def lab_status():
    """Show the lab's namespaces and addresses."""
    from xdpfwd import lab

    for host in lab.status():
        if not host.present:
            print(f"{host.name}: absent")
            continue
        print(f"{host.name}:")
        for line in host.addresses.splitlines():
            print(f"  {line}")


@lab_app.command("traffic")
def lab_traffic(
    count: int = typer.Option(10, "--count", "-c", min=1, help="Datagrams to send."),
    ipv6: bool = typer.Option(False, "--ipv6", "-6", help="Use IPv6."),
    reverse: bool = typer.Option(False, "--reverse", "-R", help="recvbox -> sendbox."),
    size: int = typer.Option(64, "--size", min=6, max=1400, help="UDP payload bytes."),
    flows: int = typer.Option(1, "--flows", min=1, max=1000, help="Source ports to spread over."),
    rate: Optional[float] = typer.Option(None, "--rate", min=1, help="Datagrams per second at most."),
):
    """Send numbered UDP datagrams across the router and report what arrived."""
    from xdpfwd import forwarder, lab, traffic

    forwarder.require_privileges()
    if not lab.is_up():
        raise XdpfwdError("the lab is not up", hint="run 'xdpfwd lab up' first")
    src, dst = ("recvbox", "sendbox") if reverse else ("sendbox", "recvbox")
    d = traffic.send_udp(count, src, dst, 6 if ipv6 else 4, size=size, flows=flows, rate=rate)
    ttls = ", ".join(str(t) for t in sorted(d.ttls)) or "-"
    over = f" over {flows} flows" if flows > 1 else ""
    print(f"sent {d.sent} UDP datagrams{over} {src} {d.src} -> {dst} [{d.dst}]:{d.port}")
    order = "in order" if d.in_order else "REORDERED"
    print(f"received {d.received} ({d.unique} distinct, {d.duplicates} duplicates, {order}), TTL {ttls}")
    if not d.exactly_once:
        raise typer.Exit(1)


def _command(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")]
    return " ".join(words[:2] if words[:1] == ["lab"] else words[:1]) or "xdpfwd"


def _unexpected(e: Exception) -> None:
    """One line for an exception nobody foresaw: what failed, where, and
    how to see the whole traceback."""
    import traceback

    cmd = _command(sys.argv[1:])
    if _options["verbose"]:
        traceback.print_exception(e)
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}()" \
        if frames else ""
    what = " ".join(f"{type(e).__name__}: {e}".split())  # one line, whatever the message
    hint = "" if _options["verbose"] else f"; `xdpfwd --verbose {cmd} ...` shows the traceback"
    print(f"xdpfwd: {cmd}: unexpected error: {what}{where}{hint}", file=sys.stderr)
    sys.exit(EXIT_INTERNAL)


def main() -> None:
    command = typer.main.get_command(app)
    try:
        rc = command.main(prog_name="xdpfwd", standalone_mode=False)
    except XdpfwdError as e:
        print(f"xdpfwd: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        print("xdpfwd: interrupted", file=sys.stderr)
        sys.exit(130)
    except click.UsageError as e:
        print(f"xdpfwd: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as e:
        print(f"xdpfwd: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("xdpfwd: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        # A system call refused outside the paths that expect it (a sysctl
        # not writable, a full disk): still one line, never a traceback.
        where = f": {e.filename}" if e.filename else ""
        print(f"xdpfwd: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the promise: never a traceback
        _unexpected(e)
    # standalone_mode=False hands back typer.Exit's code instead of exiting.
    sys.exit(rc if isinstance(rc, int) else 0)
