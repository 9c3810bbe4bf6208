"""Prometheus metric families built fresh at each scrape from a reader's
snapshot.Snapshot (the reader is injected, so tests feed it fixtures).

Naming follows Prometheus practice: one `xdpfwd_` prefix, `_total`
counters in base units, receive and transmit as separate metrics, label
values from a fixed set (devices, outcome reasons), an `_up` gauge and the
exporter's own health. Per-CPU and per-worker values arrive summed.
"""

import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from xdpfwd import __version__, ipsec, netfilter
from xdpfwd.counters import ZERO
from xdpfwd.layout import layout

KIND_HELP = {
    "forwarded": "arrived on the device and were forwarded",
    "passed": "arrived on the device and were left to the kernel's stack, by reason",
    "dropped": "arrived on the device and were dropped, by reason",
}


class XdpfwdCollector(Collector):
    def __init__(self, reader, netfilter_scan=None, ipsec_scan=None):
        self.reader = reader
        # (ports, mode) -> findings, (mode) -> findings; read at each
        # scrape, so a rule or policy added after attach shows up at the
        # next one.
        self.netfilter_scan = netfilter_scan
        self.ipsec_scan = ipsec_scan
        self.scrape_errors = 0  # cumulative: a counter

    def collect(self):
        start = time.perf_counter()
        try:
            snap = self.reader.read()
        except Exception:  # a scrape must answer whatever happens
            snap = None
        if snap is None:
            self.scrape_errors += 1
            devices, counters = [], {}
        else:
            self.scrape_errors += len(snap.errors)
            devices, counters = snap.attached, snap.counters

        yield GaugeMetricFamily("xdpfwd_up", "Whether xdpfwd forwards in this network namespace.",
                                value=1 if devices else 0)
        info = GaugeMetricFamily("xdpfwd_device_info", "A device xdpfwd forwards on, with its mode.",
                                 labels=["device", "mode", "prog_id"])
        for d in devices:
            info.add_metric([d.name, d.mode, str(d.prog_id) if d.prog_id else ""], 1)
        yield info
        yield from self._counters(counters)
        yield from self._netfilter(devices)
        yield from self._ipsec(devices)

        build = GaugeMetricFamily("xdpfwd_exporter_build_info", "The exporter's version.",
                                  labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        yield CounterMetricFamily("xdpfwd_exporter_scrape_errors",
                                  "Kernel maps or forwarder state the exporter could not read.",
                                  value=self.scrape_errors)
        yield GaugeMetricFamily("xdpfwd_exporter_scrape_duration_seconds",
                                "Time this scrape took to read the counters.",
                                value=time.perf_counter() - start)

    def _netfilter(self, devices):
        """How many netfilter chains the forwarded packets skip; 0 while
        xdpfwd forwards nothing here. Left out when unreadable."""
        count = 0
        if devices:
            mode = "afpacket" if {d.mode for d in devices} == {"afpacket"} else "auto"
            try:
                count = len((self.netfilter_scan or netfilter.scan)([d.name for d in devices], mode))
            except Exception:
                self.scrape_errors += 1
                return
        yield GaugeMetricFamily("xdpfwd_netfilter_bypassed_chains",
                                "nftables/iptables chains on the forward path that xdpfwd's "
                                "forwarded packets skip.", value=count)

    def _ipsec(self, devices):
        """1 where the forwarded packets skip IPsec the kernel would apply;
        0 while xdpfwd forwards nothing here. Left out when unreadable."""
        found = False
        if devices:
            mode = ipsec.judged_mode({d.mode for d in devices})
            try:
                found = bool((self.ipsec_scan or ipsec.scan)(mode))
            except Exception:
                self.scrape_errors += 1
                return
        yield GaugeMetricFamily("xdpfwd_ipsec_bypassed",
                                "1 where IPsec (xfrm) policies, a blocking default or SAs would "
                                "act on the packets xdpfwd forwards, which skip them.",
                                value=1 if found else 0)

    @staticmethod
    def _counters(counters):
        lay = layout()
        families = {}

        def family(name, help_text, labels):
            if name not in families:
                families[name] = CounterMetricFamily(name, help_text, labels=labels)
            return families[name]

        for unit in ("packets", "bytes"):
            family(f"xdpfwd_receive_{unit}", f"All {unit} that arrived on the device.", ["device"])
            family(f"xdpfwd_transmit_{unit}", f"{unit.capitalize()} forwarded out of the device.",
                   ["device"])
            for kind, text in KIND_HELP.items():
                labels = ["device"] if kind == "forwarded" else ["device", "reason"]
                family(f"xdpfwd_{kind}_{unit}", f"{unit.capitalize()} that {text}.", labels)

        for device, counts in sorted(counters.items()):
            for o in lay.outcomes:
                c = counts.outcomes.get(o.label, ZERO)
                for unit, value in (("packets", c.packets), ("bytes", c.bytes)):
                    labels = [device] if o.kind == "forwarded" else [device, o.label]
                    families[f"xdpfwd_{o.kind}_{unit}"].add_metric(labels, value)
            # receive is counted on arrival, apart from the outcomes: it
            # equals their sum only while every path counts one.
            for unit in ("packets", "bytes"):
                families[f"xdpfwd_receive_{unit}"].add_metric([device], getattr(counts.received, unit))
                families[f"xdpfwd_transmit_{unit}"].add_metric([device], getattr(counts.transmitted, unit))
        yield from families.values()
