"""The Prometheus config, alerting/recording rules and Grafana dashboard in deploy/.

promtool (Debian's `prometheus` package) checks the config and the rules and
runs the rules' unit tests; it is required, never skipped. The rest checks
that every PromQL expression names only metrics the exporter serves, with
labels they have, and that the dashboard is laid out and filtered properly.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # PyYAML: Debian's python3-yaml, seen through --system-site-packages

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "xdpfwd.rules.yml"
RULES_TEST = PROM_DIR / "xdpfwd.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "xdpfwd-dashboard.json"

# ---------------------------------------------------------------------------
# What the exporter serves: metric name -> its labels (besides job and
# instance, which Prometheus adds at scrape time). Written out, so that a
# rename in the exporter shows up here (test_metric_list_is_what_the_exporter_serves)
# and then in every rule and panel that uses the old name.

PASS_REASONS = {
    "not_ip", "vlan", "malformed", "multicast", "bad_checksum", "ip_options",
    "link_local", "ttl_exceeded", "fib_blackhole", "fib_unreachable",
    "fib_prohibit", "fib_not_forwarded", "fib_forwarding_disabled",
    "fib_unsupported_lwt", "fib_no_neighbour", "fib_frag_needed", "fib_other",
    "egress_not_a_port", "egress_is_ingress", "other_host", "martian_source",
    "martian_destination", "reverse_path", "ipv6_disabled", "route_mtu", "ndp", "icmp_error",
    "multipath_hash",
}
DROP_REASONS = {"redirect_failed"}

METRICS: dict[str, set[str]] = {
    "xdpfwd_up": set(),
    "xdpfwd_device_info": {"device", "mode", "prog_id"},
    "xdpfwd_exporter_scrape_duration_seconds": set(),
    "xdpfwd_exporter_scrape_errors_total": set(),
    "xdpfwd_exporter_build_info": {"version"},
    "xdpfwd_netfilter_bypassed_chains": set(),
    "xdpfwd_ipsec_bypassed": set(),
    # prometheus_client's process collector.
    "process_cpu_seconds_total": set(),
    "process_open_fds": set(),
    "process_max_fds": set(),
    "process_virtual_memory_bytes": set(),
    "process_resident_memory_bytes": set(),
    "process_start_time_seconds": set(),
    # Prometheus' own, per target.
    "up": set(),
}
for _direction in ("receive", "transmit", "forwarded"):
    for _unit in ("packets", "bytes"):
        METRICS[f"xdpfwd_{_direction}_{_unit}_total"] = {"device"}
for _kind in ("passed", "dropped"):
    for _unit in ("packets", "bytes"):
        METRICS[f"xdpfwd_{_kind}_{_unit}_total"] = {"device", "reason"}

TARGET_LABELS = {"job", "instance"}
LABEL_VALUES = {
    "reason": {"xdpfwd_passed": PASS_REASONS, "xdpfwd_dropped": DROP_REASONS},
    "mode": {"xdpfwd_device_info": {"native", "skb", "afpacket"}},
}

ALERTS = {
    "XdpfwdExporterDown", "XdpfwdNotForwarding", "XdpfwdForwardingStopped",
    "XdpfwdNoNeighbourSurge", "XdpfwdNoRouteSurge", "XdpfwdRedirectFailures",
    "XdpfwdScrapeErrors", "XdpfwdBypassesNetfilter", "XdpfwdBypassesIpsec",
}


def test_metric_list_is_what_the_exporter_serves(monkeypatch):
    # The exporter's own registry and collector; its reader (the injection
    # point the collector is built around) hands over a fixed Snapshot with
    # every outcome of the shared layout instead of reading the kernel.
    from xdpfwd.counters import PortCounters
    from xdpfwd.exporter import server
    from helpers import device, snapshot_of
    from xdpfwd.layout import RECEIVED, TRANSMITTED, layout

    monkeypatch.setattr("xdpfwd.netfilter.scan", lambda ports, mode: [])  # not this machine's rules
    monkeypatch.setattr("xdpfwd.ipsec.scan", lambda mode: [])
    outcomes = layout().outcomes
    counts = PortCounters.of({o.label: (1, 64) for o in outcomes}
                             | {RECEIVED: (1, 64), TRANSMITTED: (1, 64)})

    class FixedReader:
        def read(self):
            return snapshot_of([device("eth0", "native", 7)], counters={"eth0": counts})

    served: dict[str, set[str]] = {}
    reasons: dict[str, set[str]] = {}
    for family in server.registry(FixedReader()).collect():
        for s in family.samples:
            served.setdefault(s.name, set()).update(s.labels)
            if "reason" in s.labels:
                reasons.setdefault(s.name, set()).add(s.labels["reason"])
    assert served == {name: labels for name, labels in METRICS.items() if name != "up"}
    assert reasons["xdpfwd_passed_packets_total"] == PASS_REASONS
    assert reasons["xdpfwd_dropped_packets_total"] == DROP_REASONS
    assert {o.label for o in outcomes} == {"forwarded"} | PASS_REASONS | DROP_REASONS


# ---------------------------------------------------------------------------
# A small PromQL scanner: enough to find every series selector (metric name
# and label matchers) in an expression, and nothing else. Function names are
# identifiers followed by "(" (or, for aggregations, by "by"/"without"),
# grouping labels sit inside by/without/on/
# ignoring/group_left/group_right "(...)", strings, ranges and durations are
# tokens of their own, so none of them is mistaken for a metric name.

_STR = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_TOKEN = re.compile(rf"""
    (?P<str>{_STR})
  | (?P<braces>\{{(?:{_STR}|[^{{}}"'`])*\}})
  | (?P<range>\[[^\]]*\])
  | (?P<num>(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:(?:ms|[smhdwy])\d*)*)
  | (?P<var>\$\{{[^}}]*\}}|\$\w+)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<ws>\s+)
  | (?P<op>.)
""", re.VERBOSE | re.DOTALL)
_MATCHER = re.compile(rf"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*({_STR})\s*,?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan", "start", "end"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.*),\s*[A-Za-z_]\w*\s*\)\s*$", re.DOTALL)


def _matchers(braces: str) -> list[tuple[str, str, str]]:
    body = braces[1:-1]
    found, pos = [], 0
    while body[pos:].strip():
        m = _MATCHER.match(body, pos)
        assert m, f"cannot parse label matchers {braces!r}"
        name, op, quoted = m.groups()
        found.append((name, op, quoted[1:-1]))
        pos = m.end()
    return found


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Every series selector in `expr`: (metric name, [(label, op, value)])."""
    m = _LABEL_VALUES.match(expr)  # Grafana's label_values(query, label)
    if m:
        expr = m.group("expr")
    tokens = [(t.lastgroup, t.group()) for t in _TOKEN.finditer(expr) if t.lastgroup != "ws"]
    found, i = [], 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text.lower() in _GROUPING and nxt == ("op", "("):
            while i < len(tokens) and tokens[i] != ("op", ")"):
                i += 1  # skip the label list
        elif (kind == "ident" and nxt != ("op", "(") and text.lower() not in _KEYWORDS
              and not (nxt[0] == "ident" and nxt[1].lower() in ("by", "without"))):  # sum by (..) (..)
            matchers = _matchers(nxt[1]) if nxt[0] == "braces" else []
            found.append((text, matchers))
            if nxt[0] == "braces":
                i += 1
        elif kind == "braces":  # {__name__="..."} without a leading name
            matchers = _matchers(text)
            names = [v for label, op, v in matchers if label == "__name__"]
            found.append((names[0] if names else "", matchers))
        i += 1
    return found


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr)}


def problems(expr: str, recorded: set[str]) -> list[str]:
    """What is wrong with `expr`: unknown metrics, labels or label values."""
    out = []
    for name, matchers in selectors(expr):
        if name in recorded:
            labels = {"device", "reason"}
        elif name in METRICS:
            labels = METRICS[name]
        else:
            out.append(f"unknown metric {name!r}")
            continue
        for label, op, value in matchers:
            if label == "__name__":
                continue
            if label not in labels | TARGET_LABELS:
                out.append(f"{name} has no label {label!r}")
            base = name.split(":")[1] if ":" in name else name  # level:metric:operations
            for prefix, allowed in LABEL_VALUES.get(label, {}).items():
                if base.startswith(prefix) and "$" not in value:
                    values = value.split("|") if op in ("=~", "!~") else [value]
                    out += [f"{name}: unknown {label} {v!r}" for v in values if v not in allowed]
    return out


# ---------------------------------------------------------------------------
# Loading the files.


def _load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _rules():
    return [r for g in _load_yaml(RULES)["groups"] for r in g["rules"]]


def _recorded() -> set[str]:
    return {r["record"] for r in _rules() if "record" in r}


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dash=None) -> list[dict]:
    out = []
    for p in (dash or _dashboard())["panels"]:
        out.append(p)
        out += p.get("panels", [])  # a collapsed row holds its panels
    return out


def _dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and template variable query."""
    out = []
    for p in _panels():
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} target {t['refId']}", t["expr"]))
    for v in _dashboard()["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable ${v['name']}", q))
    return out


# ---------------------------------------------------------------------------
# promtool.


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, ("promtool is not on PATH and these tests need it: "
                  "apt-get install prometheus (it provides /usr/bin/promtool)")
    return path


def _promtool(promtool, *args, cwd=ROOT):
    proc = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (f"promtool {' '.join(map(str, args))} exited {proc.returncode}:\n"
                                  f"{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


def test_promtool_check_config(promtool):
    out = _promtool(promtool, "check", "config", CONFIG)
    assert "1 rule files found" in out  # it followed rule_files to the rules


def test_config_scrapes_the_exporter():
    config = _load_yaml(CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["xdpfwd.rules.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "xdpfwd"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:10420"]
    assert "# - router:10420" in CONFIG.read_text()


def test_commented_tls_example_is_a_valid_job(promtool, tmp_path):
    # The example is in comments (its ca_file does not exist here); uncomment
    # it, point ca_file at a file that does, and let promtool judge it.
    text = CONFIG.read_text()
    block = text.split("# ---- TLS example (start) ----")[1].split("# ---- TLS example (end) ----")[0]
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# - job_name:"))
    job = "\n".join(re.sub(r"^  # ?", "  ", line) for line in lines[start:] if line.strip())
    assert "scheme: https" in job and "ca_file:" in job
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    job = re.sub(r"ca_file: \S+", f"ca_file: {ca}", job)
    config = tmp_path / "prometheus.yml"
    config.write_text(f"scrape_configs:\n{job}\n")
    parsed = _load_yaml(config)["scrape_configs"][0]
    assert parsed["job_name"] == "xdpfwd" and parsed["scheme"] == "https"
    assert parsed["tls_config"]["ca_file"] == str(ca)
    _promtool(promtool, "check", "config", config)


def test_commented_mtls_example_is_a_valid_job(promtool, tmp_path):
    # The job the lab's Prometheus scrapes with (test_exporter_hostile.py),
    # its files made to exist here.
    from deploy_examples import example_job

    files = {}
    for name in ("ca.pem", "prometheus.pem", "prometheus.key", "password"):
        files[f"/etc/prometheus/xdpfwd/{name}"] = str(tmp_path / name)
        (tmp_path / name).write_text("")
    job = example_job("mTLS and basic auth example", files)
    config = tmp_path / "prometheus.yml"
    config.write_text(f"scrape_configs:\n{job}\n")
    parsed = _load_yaml(config)["scrape_configs"][0]
    assert parsed["job_name"] == "xdpfwd" and parsed["scheme"] == "https"
    assert parsed["basic_auth"]["username"] == "prometheus"
    _promtool(promtool, "check", "config", config)


def test_promtool_check_rules(promtool):
    out = _promtool(promtool, "check", "rules", RULES)
    assert f"{len(_rules())} rules found" in out


def test_promtool_test_rules(promtool):
    # The test file names its rule file relative to itself.
    out = _promtool(promtool, "test", "rules", RULES_TEST.name, cwd=PROM_DIR)
    assert "SUCCESS" in out


# ---------------------------------------------------------------------------
# The rules.


def test_alerts_are_complete():
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert "for" in rule, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        for key in ("summary", "description"):
            assert "$labels." in rule["annotations"][key], f"{name} {key} uses no $labels"
    groups = {g["name"] for g in _load_yaml(RULES)["groups"]}
    assert groups == {"xdpfwd", "xdpfwd-recording"}


def test_recording_rules_follow_naming_conventions():
    recorded = _recorded()
    assert "device:xdpfwd_receive_packets:rate1m" in recorded
    for stem in ("forwarded_packets", "transmit_packets", "receive_bytes"):
        assert f"device:xdpfwd_{stem}:rate1m" in recorded
    assert "device_reason:xdpfwd_passed_packets:rate1m" in recorded
    for name in recorded:
        level, metric, ops = name.split(":")
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", level), name
        assert metric.startswith("xdpfwd_") and not metric.endswith("_total"), name
        assert re.fullmatch(r"[a-z0-9_]+", ops), name


def test_every_alert_is_tested_firing_and_not_firing():
    tests = _load_yaml(RULES_TEST)
    assert tests["rule_files"] == [RULES.name]
    cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
    for alert in ALERTS:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(not c.get("exp_alerts") for c in mine), f"{alert}: no case where it does not fire"
        firing = [a for c in mine for a in c.get("exp_alerts") or []]
        assert firing, f"{alert}: no case where it fires"
        assert all(a.get("exp_labels") and a.get("exp_annotations") for a in firing), alert
    exprs = [c["expr"] for t in tests["tests"] for c in t.get("promql_expr_test", [])]
    assert any(metric_names(e) & _recorded() for e in exprs), "no promql_expr_test of a recording rule"


def test_rule_test_inputs_are_real_metrics():
    # A test fed a misspelt series would pass its "does not fire" cases vacuously.
    for t in _load_yaml(RULES_TEST)["tests"]:
        for s in t["input_series"]:
            assert not problems(s["series"], set()), s["series"]


# ---------------------------------------------------------------------------
# Every expression uses only what the exporter serves.


def test_rules_use_only_known_metrics():
    recorded = _recorded()
    for rule in _rules():
        name = rule.get("alert") or rule.get("record")
        assert metric_names(rule["expr"]), f"{name}: no metric found in its expr"
        assert not problems(rule["expr"], recorded), f"{name}: {problems(rule['expr'], recorded)}"


def test_dashboard_uses_only_known_metrics():
    recorded = _recorded()
    exprs = _dashboard_exprs()
    assert len(exprs) > 10
    for where, expr in exprs:
        assert metric_names(expr), f"{where}: no metric found in {expr!r}"
        assert not problems(expr, recorded), f"{where}: {problems(expr, recorded)}"


def test_scanner_finds_metrics_and_nothing_else():
    expr = ('sum by (job, instance, device) (rate(xdpfwd_receive_packets_total[5m])) > 10\n'
            'unless on (device) sum without (reason) (increase(xdpfwd_forwarded_packets_total'
            '{reason=~"a|b", device=~"$device"}[$__rate_interval] offset 1h30m)) > 0 '
            'and ignoring(x) group_left(mode) xdpfwd_device_info * 8 or vector(1e3) '
            'or device:xdpfwd_receive_packets:rate1m')
    assert metric_names(expr) == {"xdpfwd_receive_packets_total", "xdpfwd_forwarded_packets_total",
                                  "xdpfwd_device_info", "device:xdpfwd_receive_packets:rate1m"}
    assert metric_names('label_values(xdpfwd_device_info{instance=~"$instance"}, device)') \
        == {"xdpfwd_device_info"}
    assert metric_names('{__name__="xdpfwd_up"}') == {"xdpfwd_up"}


@pytest.mark.parametrize("expr", [
    'xdpfwd_forwarded_total',
    'rate(xdpfwd_forwarded_total{instance=~"$instance", device=~"$device"}[$__rate_interval])',
    'sum by (device) (rate(xdpfwd_forwarded_total[5m])) > 0',
    'xdpfwd_up == 0 and xdpfwd_forwarded_total > 0',
    'label_values(xdpfwd_forwarded_total, device)',
])
def test_checker_rejects_an_unknown_metric(expr):
    assert problems(expr, _recorded()) == ["unknown metric 'xdpfwd_forwarded_total'"]


@pytest.mark.parametrize("expr, problem", [
    ('xdpfwd_receive_packets_total{reason="not_ip"}', "has no label 'reason'"),
    ('xdpfwd_passed_packets_total{reason="fib_no_neighbor"}', "unknown reason 'fib_no_neighbor'"),
    ('xdpfwd_passed_packets_total{reason=~"fib_blackhole|fib_unreachabel"}', "unknown reason"),
    ('xdpfwd_dropped_packets_total{reason="ttl_exceeded"}', "unknown reason 'ttl_exceeded'"),
    ('xdpfwd_device_info{mode="generic"}', "unknown mode 'generic'"),
])
def test_checker_rejects_unknown_labels_and_values(expr, problem):
    assert any(problem in p for p in problems(expr, _recorded())), problems(expr, _recorded())


# ---------------------------------------------------------------------------
# The dashboard.


def test_dashboard_is_valid_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["panels"], list)
    assert 36 <= dash["schemaVersion"] <= 41


def test_dashboard_variables():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "device"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert f", {name})" in variables[name]["definition"]  # label_values(..., name)
    assert variables["device"]["multi"] and variables["device"]["includeAll"]
    assert '$instance' in variables["device"]["definition"]


def test_every_panel_queries_the_chosen_datasource():
    for p in _panels():
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], p["title"]


def _overlaps(panels: list[dict]) -> list[tuple[str, str]]:
    found = []
    for i, a in enumerate(panels):
        ga = a["gridPos"]
        for b in panels[i + 1:]:
            gb = b["gridPos"]
            if (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                    and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]):
                found.append((a["title"], b["title"]))
    return found


def test_panels_do_not_overlap():
    panels = _panels()
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"
    assert _overlaps(panels) == []
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are not unique"


def test_overlap_check_sees_an_overlap():
    a = {"title": "a", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}}
    b = {"title": "b", "gridPos": {"x": 11, "y": 7, "w": 4, "h": 4}}
    c = {"title": "c", "gridPos": {"x": 12, "y": 0, "w": 12, "h": 8}}
    assert _overlaps([a, b, c]) == [("a", "b"), ("b", "c")]
    assert _overlaps([a, c]) == []


def test_panels_have_units():
    units = {}
    for p in _panels():
        if p["type"] in ("timeseries", "stat"):
            units[p["title"]] = p["fieldConfig"]["defaults"].get("unit")
            assert units[p["title"]], f"{p['title']} has no unit"
    assert {"pps", "bps", "s"} <= set(units.values())
    for p in _panels():
        exprs = " ".join(t["expr"] for t in p.get("targets", []))
        if "_bytes_total" in exprs:
            assert units[p["title"]] == "bps" and "* 8" in exprs, p["title"]  # bits, not bytes
        elif "_packets_total" in exprs:
            assert units[p["title"]] == "pps", p["title"]
        elif "_seconds" in exprs:
            assert units[p["title"]] == "s", p["title"]


def test_panels_required_are_there():
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in _panels()}
    everything = " ".join(exprs.values())
    for metric in ("xdpfwd_up", "xdpfwd_device_info", "xdpfwd_receive_packets_total",
                   "xdpfwd_forwarded_packets_total", "xdpfwd_transmit_packets_total",
                   "xdpfwd_receive_bytes_total", "xdpfwd_passed_packets_total",
                   "xdpfwd_dropped_packets_total", "xdpfwd_exporter_scrape_duration_seconds",
                   "xdpfwd_exporter_scrape_errors_total"):
        assert metric in everything, f"no panel shows {metric}"
    (passed,) = [p for p in _panels() if "xdpfwd_passed_packets_total" in exprs[p["title"]]]
    assert passed["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert "{{reason}}" in passed["targets"][0]["legendFormat"]


def test_every_target_filters_on_instance_and_device():
    for where, expr in _dashboard_exprs():
        if where.startswith("variable"):
            continue
        for name, matchers in selectors(expr):
            assert ("instance", "=~", "$instance") in matchers, f"{where}: {name} ignores $instance"
            if "device" in METRICS.get(name, ()):
                assert ("device", "=~", "$device") in matchers, f"{where}: {name} ignores $device"
