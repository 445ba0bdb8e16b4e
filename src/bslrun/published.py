"""Published results beside a sweep: ``bslrun-report --published <benchmark>``.

The numbers live in one data file shipped with the package, ``published.json``:
per benchmark, the compared columns (each names the bslrun metric it shows and a
sign: a published log-likelihood is -test.nll), the published rows with their
sources, and the references. bslrun's rows are the report's groups (mean ±
standard error over their runs); nothing is re-run and JAX is never imported.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from importlib import resources

from bslrun import runs, summary
from bslrun.errors import BslrunError, ConfigError

DATA_FILE = "published.json"


@dataclass
class Ours:
    """One group of runs: its label, run count and {metric: summary.Stat}."""

    label: str
    n: int
    stats: dict


def benchmarks() -> dict:
    """Every benchmark in the shipped data file, by name."""
    path = resources.files("bslrun") / DATA_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BslrunError(f"{path} is unreadable ({error}); reinstall bslrun") from None


def load(name: str) -> dict:
    known = benchmarks()
    if name not in known:
        raise ConfigError(
            f"unknown benchmark --published {name}; choose one of: {', '.join(sorted(known))}"
        )
    return known[name]


def benchmark_of(done: list) -> dict | None:
    """The benchmark every run in ``done`` was made for, by the name its preset gives the
    runs (experiment=uci_wine_red names them uci_wine_red); None when they share none."""
    names = {run.config.get("name") for run in done}
    return benchmarks().get(names.pop()) if len(names) == 1 else None


def references(bench: dict, metric: str) -> list[tuple[str, float]]:
    """(method, value) of each published row for the bslrun ``metric``, in its sign (a
    published log-likelihood becomes a test.nll): the reference lines of its plot."""
    lines = []
    for column in bench["columns"]:
        if column["metric"] != metric:
            continue
        for row in bench["rows"]:
            if row.get(column["name"]) is not None:
                lines.append((row["method"], column["sign"] * row[column["name"]]))
    return lines


def compare(done: list, keys: list[str], name: str) -> tuple:
    """(benchmark, bslrun's groups as Ours) for ``--published name``; the completed runs
    ``done`` must hold the metrics its columns compare."""
    bench = load(name)
    needed = metrics(bench)
    missing = [m for m in needed if m not in summary.available_metrics(done)]
    if missing:
        raise ConfigError(
            f"--published {name} compares {', '.join(needed)}; the runs' metrics.json lack "
            f"{', '.join(missing)}"
        )
    rows = summary.summarise(done, keys, needed)
    return bench, [Ours(label(bench, keys, row), len(row.runs), row.stats) for row in rows]


def title(bench: dict) -> str:
    return f"Beside the published results: {bench['title']}"


def label(bench: dict, keys: list[str], row) -> str:
    """``bslrun (posterior=lowrank, likelihood=regression)``: the benchmark's describing
    config keys, then the row's group keys (values shared by its runs joined with /)."""
    parts = []
    for key in [*bench.get("describe", []), *keys]:
        values = sorted({runs.group_value(run, key) for run in row.runs} - {runs.MISSING})
        if not values:
            continue
        part = f"{key.rsplit('.', 1)[-1]}={'/'.join(values)}"
        if part not in parts:
            parts.append(part)
    return f"bslrun ({', '.join(parts)})" if parts else "bslrun"


def metrics(bench: dict) -> list[str]:
    """The bslrun metrics (metrics.json, dotted) the benchmark's columns show."""
    return [column["metric"] for column in bench["columns"]]


def _number(value: float) -> str:
    return "–" if value is None else f"{value:g}"


def cells(bench: dict, ours: list[Ours]) -> list[list[str]]:
    """Header, then bslrun's rows, then the published ones (as printed in their sources)."""
    columns = bench["columns"]
    labels = [summary.marked(c["label"], c["metric"], c["sign"]) for c in columns]
    table = [["method", bench.get("replicates", "n"), *labels, "source"]]
    for group in ours:
        values = []
        for column in columns:
            stat = group.stats[column["metric"]]
            values.append(summary.format_cell(column["sign"] * stat.mean, *stat[1:]))
        table.append([group.label, str(group.n), *values, "these runs"])
    for row in bench["rows"]:
        values = [_number(row.get(c["name"])) for c in columns]
        table.append([row["method"], str(row.get("n", "")), *values, row["source"]])
    return table


def notes(bench: dict) -> list[str]:
    cell_note = (
        "bslrun cells: mean ± standard error over the completed runs; (n=k, j nan): over "
        "the k finite values, j NaN, infinite or null left out."
    )
    references = [f"{key}: {text}" for key, text in bench.get("references", {}).items()]
    return [cell_note, *bench.get("notes", []), *references]


def markdown(bench: dict, ours: list[Ours]) -> str:
    """The section for report.md and published.md."""
    table = summary.markdown_table(cells(bench, ours))
    lines = [f"## {title(bench)}", "", table, ""]
    lines += [f"- {note}" for note in notes(bench)]
    return "\n".join(lines) + "\n"


def csv_text(bench: dict, ours: list[Ours]) -> str:
    """One row per method: method, source, n, then <column>_mean and <column>_se.

    bslrun's rows carry full precision; published rows their printed values, and an
    empty _se where the source's standard error is not recorded. n is the number of runs;
    a bslrun mean over fewer (values not finite) is in report.csv with its _n and _nan.
    """
    columns = bench["columns"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["method", "source", "n", *[f"{c['name']}_{s}" for c in columns for s in ("mean", "se")]]
    )

    def text(value):
        return "" if value is None or not math.isfinite(value) else repr(float(value))

    for group in ours:
        values = []
        for column in columns:
            stat = group.stats[column["metric"]]
            values += [text(column["sign"] * stat.mean), text(stat.se)]
        writer.writerow([group.label, "these runs", group.n, *values])
    for row in bench["rows"]:
        values = [text(row.get(f"{c['name']}{s}")) for c in columns for s in ("", "_se")]
        writer.writerow([row["method"], row["source"], row.get("n", ""), *values])
    return buffer.getvalue()
