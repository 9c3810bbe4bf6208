"""Both datapaths against the reference model, frame by frame.

The XDP program runs each generated frame through BPF_PROG_TEST_RUN in
the router's namespace (its real routes and neighbours); the AF_PACKET
packet function runs it with the real netlink Fib of that namespace, and
so does its C fast path, taught by that Fib as a worker teaches it; the
model reads the same namespace's tables with `ip -j` and decides from the
spec. Action, outcome (which counter grew) and output bytes must agree.

`make test` runs a fixed-seed set (XDPFWD_DIFF_FRAMES, default 4000);
`make soak` runs 100 000. A mismatch prints the frame in hex.
"""

import os

import pytest

from frames import FrameGenerator
from helpers import inside, router_with_every_route
from model import decide as model_decide
from model import read_tables
from xdpfwd import bpfsys, lab, xdp
from xdpfwd.afpacket import packet, worker
from xdpfwd.afpacket.fib import Fib
from xdpfwd.layout import layout

FRAMES = int(os.environ.get("XDPFWD_DIFF_FRAMES", "4000"))
SEED = int(os.environ.get("XDPFWD_DIFF_SEED", "20261127"))
ACTIONS = {1: "drop", 2: "pass", 4: "redirect"}
LABEL = {o.index: o.label for o in layout().outcomes}


@pytest.fixture(scope="module")
def router(lab):
    with router_with_every_route() as r:
        yield r["links"]


@pytest.fixture(scope="module")
def datapaths(router):
    ports = [router["eth1"].index, router["eth0"].index]
    with inside("router"):
        prog = xdp.load_program(ports)
        fib = Fib()
    prog_id = bpfsys.prog_info(prog.prog_fd).id
    ours = xdp.identify(prog_id)
    tables = read_tables(lab.ns("router"), set(ports))
    yield {"prog": prog, "id": ours.prog_id, "fib": fib, "tables": tables, "ports": ports,
           "links": router}
    fib.close()


def xdp_outcome(prog_id, ingress, before):
    after = xdp.program_counters(prog_id)[ingress].as_dict()
    grew = [label for label in after if label not in ("transmitted", "received")
            and after[label] != before[label]]
    # Every frame is also counted as received, apart from its outcome.
    if after["received"][0] != before["received"][0] + 1:
        grew.append("received did not grow by one")
    return grew, after


def describe(frame, ingress, **sides):
    lines = [f"frame ({len(frame)} bytes, ingress {ingress}): {frame.hex()}"]
    lines += [f"  {name}: {value}" for name, value in sides.items()]
    return "\n".join(lines)


def test_datapaths_agree_with_the_model(datapaths):
    d = datapaths
    lay = layout()
    eth1, eth0 = d["ports"]
    gen = FrameGenerator(SEED, bytes.fromhex(d["links"]["eth1"].mac.replace(":", "")),
                         [bytes.fromhex("020000000099")])
    mismatches, seen = [], {}
    counts = {i: c.as_dict() for i, c in xdp.program_counters(d["id"]).items()}
    portset = frozenset(d["ports"])
    fast = worker.fast_path(d["ports"], frozenset())
    with inside("router"):
        for i in range(FRAMES):
            frame = gen.frame()
            ingress = eth1 if gen.r.random() < 0.8 else eth0
            if ingress == eth0 and frame[:6] == gen.router_mac:
                frame = bytes.fromhex(d["links"]["eth0"].mac.replace(":", "")) + frame[6:]
            want = model_decide(frame, ingress, d["tables"])
            seen[want.outcome] = seen.get(want.outcome, 0) + 1

            run = bpfsys.test_run(d["prog"].prog_fd, frame, ingress)
            grew, counts[ingress] = xdp_outcome(d["id"], ingress, counts[ingress])
            verdict = (ACTIONS.get(run.retval, run.retval), grew)
            xdp_out = run.data if run.retval == 4 else None
            if verdict != (want.action, [want.outcome]) or (xdp_out or None) != want.frame or \
                    (run.retval != 4 and run.data != frame):
                mismatches.append(describe(frame, ingress, model=want, xdp=verdict, xdp_out=run.data.hex()))

            outcome, egress, out = packet.decide(frame, ingress, False, d["fib"], portset)
            if (LABEL[outcome], out) != (want.outcome, want.frame) or \
                    (out is not None and egress != want.egress):
                mismatches.append(describe(frame, ingress, model=want,
                                           afpacket=(LABEL[outcome], egress, out and out.hex())))
            result = fast.decide(frame, ingress, False)
            if result is None:
                worker.learn(fast, d["fib"], frame, ingress, False)
                result = fast.decide(frame, ingress, False)
            if result is None:
                mismatches.append(describe(frame, ingress, model=want, fastpath="no answer"))
            else:
                outcome, egress, out = result
                if (LABEL[outcome], out) != (want.outcome, want.frame) or \
                        (out is not None and egress != want.egress):
                    mismatches.append(describe(frame, ingress, model=want,
                                               fastpath=(LABEL[outcome], egress, out and out.hex())))
            if len(mismatches) >= 5:
                break
    assert not mismatches, f"seed {SEED}, after {i + 1} frames:\n" + "\n".join(mismatches)
    # The generator must reach every branch the lab can produce, or the
    # agreement says little.
    expected = {o.label for o in lay.outcomes} - {
        "fib_forwarding_disabled",  # needs the sysctl off: test_verdicts covers it
        "ipv6_disabled",  # needs disable_ipv6 on a port: test_verdicts and test_kernel_rules
        # XDP only, and only with an unlocked route MTU (the lab's are locked; AF_PACKET
        # and the model check each route's own): test_verdicts and test_kernel_rules
        "route_mtu",
        # XDP only, with fib_multipath_hash_policy 2 or 3: test_verdicts and test_ecmp
        "multipath_hash",
        "fib_unsupported_lwt", "fib_other", "redirect_failed",  # not producible here
    }
    if FRAMES >= 2000:
        assert expected <= set(seen), f"never produced: {sorted(expected - set(seen))}"
