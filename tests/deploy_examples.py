"""The commented example jobs of deploy/prometheus/prometheus.yml, as YAML
that a test can hand to promtool or to a real Prometheus."""

import re
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "prometheus.yml"


def example_job(name: str, replace: dict[str, str] | None = None) -> str:
    """The job between "# ---- NAME (start) ----" and "(end)", uncommented,
    indented as a scrape_configs entry, each key of replace replaced."""
    text = CONFIG.read_text()
    block = text.split(f"# ---- {name} (start) ----")[1].split(f"# ---- {name} (end) ----")[0]
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# - job_name:"))
    job = "\n".join(re.sub(r"^  # ?", "  ", line) for line in lines[start:] if line.strip())
    for old, new in (replace or {}).items():
        assert old in job, f"{old} is not in the example {name!r}"
        job = job.replace(old, new)
    return job
