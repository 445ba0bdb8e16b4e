"""Published results beside a sweep: ``bslrun-report --published <benchmark>``.

The numbers live in one data file shipped with the package, ``published.json``: per data
set (``uci_boston``, ``uci_wine_red``, ...) its published rows with their sources; per
whole table (``uci``) the data sets it joins, the compared columns (each names the
bslrun metric it shows and a sign: a published log-likelihood is -test.nll), the notes
and the references, which its data sets share. bslrun's rows are the report's groups
(mean ± standard error over their runs), in a whole table per data set, by the runs'
``data.name``; nothing is re-run and JAX is never imported.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources

from bslrun import runs, summary
from bslrun.errors import BslrunError, ConfigError

DATA_FILE = "published.json"
DATA_KEY = "data.name"  # the config key naming a run's data set, as a part's "data" does
SHARED = ("replicates", "columns", "describe", "notes", "references")  # a table's, for its parts


@dataclass
class Ours:
    """One group of runs: its label, run count, {metric: summary.Stat} and, in a whole
    table, its data set (``data.name``)."""

    label: str
    n: int
    stats: dict
    data: str | None = None


def read() -> dict:
    """The shipped data file as written: entries by name."""
    path = resources.files("bslrun") / DATA_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BslrunError(f"{path} is unreadable ({error}); reinstall bslrun") from None


def resolve(raw: dict, name: str, table: str | None) -> dict:
    """Entry ``name`` complete: a data set's with the fields its ``table`` shares (its
    notes first), a whole table's with its data sets' rows, each marked with its "data"
    (and "parts": their data names, in order)."""
    entry = raw[name]
    if "parts" in entry:
        parts = [raw[part] for part in entry["parts"]]
        rows = [{**row, "data": part["data"]} for part in parts for row in part["rows"]]
        return {**entry, "rows": rows, "parts": [part["data"] for part in parts]}
    if table is None:
        return entry
    shared = {key: raw[table][key] for key in SHARED if key in raw[table]}
    return {**shared, **entry, "notes": [*shared.get("notes", []), *entry.get("notes", [])]}


def benchmarks() -> dict:
    """Every benchmark in the shipped data file, by name, complete (``resolve``)."""
    raw = read()
    tables = {part: name for name, entry in raw.items() for part in entry.get("parts", [])}
    return {name: resolve(raw, name, tables.get(name)) for name in raw}


def load(name: str) -> dict:
    known = benchmarks()
    if name not in known:
        raise ConfigError(
            f"unknown benchmark --published {name}; choose one of: {', '.join(known)}"
        )
    return known[name]


def benchmark_of(done: list) -> dict | None:
    """The benchmark every run in ``done`` was made for, by the name its preset gives the
    runs (experiment=uci_wine_red names them uci_wine_red); None when they share none."""
    names = {run.config.get("name") for run in done}
    return benchmarks().get(names.pop()) if len(names) == 1 else None


def plotted(bench: dict | None, done: list) -> dict | None:
    """The benchmark whose rows the plots draw as lines: ``bench`` when it is one data
    set's, else the one the runs were made for (a whole table's data sets share no axis)."""
    return bench if bench is not None and "parts" not in bench else benchmark_of(done)


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
    if "parts" in bench:
        return by_data_set(bench, done, keys, name)
    rows = summary.summarise(done, keys, needed)
    return bench, [Ours(label(bench, keys, row), len(row.runs), row.stats) for row in rows]


def by_data_set(bench: dict, done: list, keys: list[str], name: str) -> tuple:
    """A whole table's (benchmark, Ours): each data set's runs (by ``data.name``) grouped
    by those of ``keys`` whose values differ among them. The benchmark comes back with a
    note on the data sets without runs and the runs of no data set of the table."""
    ours, absent = [], []
    for data in bench["parts"]:
        members = [run for run in done if runs.group_value(run, DATA_KEY) == data]
        differ = [k for k in keys if len({runs.group_value(r, k) for r in members}) > 1]
        rows = summary.summarise(members, differ, metrics(bench))
        ours += [Ours(label(bench, differ, r), len(r.runs), r.stats, data) for r in rows]
        absent += [] if members else [data]
    others = sorted({runs.group_value(r, DATA_KEY) for r in done} - set(bench["parts"]))
    if not ours:
        raise ConfigError(
            f"--published {name} compares runs of {', '.join(bench['parts'])} (their "
            f"{DATA_KEY}); these runs are of {', '.join(others)}: give runs of those data sets"
        )
    notes = list(bench.get("notes", []))
    if absent:
        notes.append(f"No runs here of {', '.join(absent)}: their published rows are left out.")
    if others:
        outside = sum(runs.group_value(r, DATA_KEY) in others for r in done)
        notes.append(f"Left out: {outside} runs of {', '.join(others)}, not in this table.")
    return {**bench, "notes": notes}, ours


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


def decimals(value: float) -> int:
    """The decimal places of ``value`` as written in the data file (1.0: 1, 4.8e-05: 6)."""
    return max(-Decimal(repr(value)).as_tuple().exponent, 0)


def published_cell(row: dict, name: str) -> str:
    """A published value as its source prints it: ``mean ± se``, ``mean (sd s)`` where the
    source gives a standard deviation instead, or the mean alone; the two with the same
    decimal places (a source's 0.10 ± 0.00 is 0.1 and 0.0 in the data file)."""
    mean, se, sd = (row.get(f"{name}{suffix}") for suffix in ("", "_se", "_sd"))
    if mean is None:
        return "–"
    spread = sd if se is None else se
    if spread is None:
        return f"{mean:g}"
    places = max(decimals(mean), decimals(spread))
    text = f"{mean:.{places}f}"
    return f"{text} ± {se:.{places}f}" if se is not None else f"{text} (sd {sd:.{places}f})"


def shown(bench: dict, ours: list[Ours]) -> list:
    """The data sets a table shows, in order: a whole table's with runs here (their data
    names); [None] for one data set's benchmark."""
    if "parts" not in bench:
        return [None]
    return [data for data in bench["parts"] if any(group.data == data for group in ours)]


def sections(bench: dict, ours: list[Ours]):
    """Per data set shown: (its leading cells, [data] in a whole table, else none),
    bslrun's groups of it, and its published rows."""
    whole = "parts" in bench
    for data in shown(bench, ours):
        groups = [group for group in ours if group.data == data]
        rows = [row for row in bench["rows"] if row.get("data") == data]
        yield ([data] if whole else []), groups, rows


def cells(bench: dict, ours: list[Ours]) -> list[list[str]]:
    """Header, then per data set shown (first column the data set, in a whole table)
    bslrun's rows, then the published ones as printed in their sources."""
    columns, whole = bench["columns"], "parts" in bench
    labels = [summary.marked(c["label"], c["metric"], c["sign"]) for c in columns]
    first = ["data set"] if whole else []
    table = [[*first, "method", bench.get("replicates", "n"), *labels, "source"]]
    for lead, groups, rows in sections(bench, ours):
        for group in groups:
            values = []
            for column in columns:
                stat = group.stats[column["metric"]]
                values.append(summary.format_cell(column["sign"] * stat.mean, *stat[1:]))
            table.append([*lead, group.label, str(group.n), *values, "these runs"])
        for row in rows:
            values = [published_cell(row, c["name"]) for c in columns]
            table.append([*lead, row["method"], str(row.get("n", "")), *values, row["source"]])
    return table


def notes(bench: dict) -> list[str]:
    """The cell note, the benchmark's notes, then the references its rows name (as source
    or in the method, e.g. VI (Graves 2011))."""
    cell_note = (
        "bslrun cells: mean ± standard error over the completed runs; (n=k, j nan): over "
        "the k finite values, j NaN, infinite or null left out."
    )
    cited = " ".join(f"{row['method']} {row['source']}" for row in bench["rows"])
    refs = [f"{key}: {text}" for key, text in bench.get("references", {}).items() if key in cited]
    return [cell_note, *bench.get("notes", []), *refs]


def markdown(bench: dict, ours: list[Ours]) -> str:
    """The section for report.md and published.md."""
    table = summary.markdown_table(cells(bench, ours))
    lines = [f"## {title(bench)}", "", table, ""]
    lines += [f"- {note}" for note in notes(bench)]
    return "\n".join(lines) + "\n"


def csv_text(bench: dict, ours: list[Ours]) -> str:
    """One row per method: (a whole table's data set,) method, source, n, then per column
    <column>_mean and <column>_se, and <column>_sd where a source gives a standard
    deviation over splits instead of a standard error.

    bslrun's rows carry full precision; published rows their printed values, and an
    empty _se where the source's standard error is not recorded. n is the number of runs;
    a bslrun mean over fewer (values not finite) is in report.csv with its _n and _nan.
    """
    columns, whole = bench["columns"], "parts" in bench
    with_sd = any(f"{c['name']}_sd" in row for c in columns for row in bench["rows"])
    suffixes = {"mean": "", "se": "_se", **({"sd": "_sd"} if with_sd else {})}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = [f"{c['name']}_{s}" for c in columns for s in suffixes]
    writer.writerow([*(["data"] if whole else []), "method", "source", "n", *header])

    def text(value):
        return "" if value is None or not math.isfinite(value) else repr(float(value))

    for lead, groups, rows in sections(bench, ours):
        for group in groups:
            values = []
            for column in columns:
                stat = group.stats[column["metric"]]
                values += [text(column["sign"] * stat.mean), text(stat.se)]
                values += [""] if with_sd else []
            writer.writerow([*lead, group.label, "these runs", group.n, *values])
        for row in rows:
            values = [
                text(row.get(c["name"] + suffix)) for c in columns for suffix in suffixes.values()
            ]
            writer.writerow([*lead, row["method"], row["source"], row.get("n", ""), *values])
    return buffer.getvalue()
