"""Every figure the README gives comes from a run committed in docs/runs/:
the BENCHMARK section's table rows and TARGET lines verbatim from the
benchmark's own report, the exporter's load figures verbatim from the
tests' output, and each measured number in the prose ("Where it stands")
from those files. A README figure no committed run backs fails here."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
RUNS = ROOT / "docs" / "runs"
# A measured quantity as the reports print it: 1.74x, 343 ns, 2.25M, 459k, 1.9 ms, 33.1 MB.
FIGURE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:x|k|M)|\d+(?:\.\d+)? (?:ns|ms|MB))(?![\w])")


def section(name: str) -> str:
    start = README.index(f"\n## {name}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def runs_text() -> str:
    return "\n".join(p.read_text() for p in sorted(RUNS.glob("*.md")))


def where_it_stands() -> list[str]:
    return [p for p in README.split("\n\n") if p.startswith("Where it stands")]


def test_the_benchmark_section_quotes_the_committed_report():
    quoted = [line for line in section("BENCHMARK").splitlines()
              if line.startswith(("| ", "TARGET "))]
    assert len(quoted) > 10, "the section quotes no table"
    report = {line for p in RUNS.glob("bench-*.md") for line in p.read_text().splitlines()}
    assert [line for line in quoted if line not in report] == []


def test_the_exporters_figures_are_the_committed_output():
    lines = [line for line in README.splitlines()
             if re.match(r"(scrape \d|https?(\+auth)?: )", line)]
    assert lines, "the README quotes no exporter figure"
    committed = set((RUNS / "exporter.md").read_text().splitlines())
    assert [line for line in lines if line not in committed] == []


def test_every_figure_in_the_prose_is_in_a_committed_run():
    paragraphs = where_it_stands()
    assert paragraphs, "no 'Where it stands' paragraph"
    committed = runs_text()
    figures = {f for p in paragraphs for f in FIGURE.findall(p)}
    assert figures, "the paragraphs give no figure"
    assert sorted(f for f in figures if f not in committed) == []
