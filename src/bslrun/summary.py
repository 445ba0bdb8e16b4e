"""Summary tables of runs: completed runs grouped by the command-line overrides that differ
between them (the replicates ``seed`` and ``data.split`` excluded); each cell is the mean
and standard error over the group's finite values, with a count of those that were not
finite (``(n=4, 1 nan)``). Rendered as Markdown, CSV, HTML and PNG bar charts.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bslrun.errors import ConfigError
from bslrun.runs import EXCLUDED_KEYS, MISSING, REPLICATES, Run, group_value, relative

PREFERRED = ("accuracy", "bits_per_dim", "coverage_95", "ece", "elbo", "kl_to_true", "nll", "rmse")
MAX_DEFAULT_METRICS = 6
TITLE = "bslrun-report"  # of the HTML page


class Stat(NamedTuple):
    """One metric over one group of runs."""

    mean: float  # of the finite values
    se: float  # their standard error (sample sd / sqrt(n)); nan for n < 2
    n: int  # finite values used
    nan: int = 0  # values that were NaN, infinite or null: left out
    missing: int = 0  # runs whose metrics.json lacks the metric


@dataclass
class Row:
    values: tuple  # the group keys' values, in key order
    runs: list
    stats: dict  # metric -> Stat


def differing_keys(runs: list[Run]) -> list[str]:
    """Override keys (seed excluded) whose values are not the same in every run, sorted.
    Give the runs that are then grouped (the completed ones): a failed run's extra
    override is not a group key."""
    keys = sorted({k for run in runs for k in run.overrides if k not in EXCLUDED_KEYS})
    return [k for k in keys if len({run.overrides.get(k, MISSING) for run in runs}) > 1]


def sort_key(value: str):
    """Numbers in numeric order, before words in alphabetical order."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def group_runs(runs: list[Run], keys: list[str]) -> dict:
    """``{values tuple: [runs]}`` in the order of the values (numbers numerically)."""
    groups: dict = {}
    for run in runs:
        groups.setdefault(tuple(group_value(run, k) for k in keys), []).append(run)
    return dict(sorted(groups.items(), key=lambda item: [sort_key(v) for v in item[0]]))


def mean_se(values) -> Stat:
    """Mean and standard error (sample sd / sqrt(n)) of the finite values; se is nan for
    n < 2. NaN and infinite values are counted (``nan``), None ones too (``missing``)."""
    present = [float(v) for v in values if v is not None]
    x = np.asarray([v for v in present if math.isfinite(v)], dtype=float)
    nan, missing = len(present) - x.size, len(values) - len(present)
    if x.size == 0:
        return Stat(math.nan, math.nan, 0, nan, missing)
    se = float(np.std(x, ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return Stat(float(np.mean(x)), se, int(x.size), nan, missing)


def summarise(runs: list[Run], keys: list[str], metrics: list[str]) -> list[Row]:
    rows = []
    for values, members in group_runs(runs, keys).items():
        stats = {m: mean_se([r.metrics.get(m) for r in members]) for m in metrics}
        rows.append(Row(values, members, stats))
    return rows


# ----------------------------------------------------------------- metrics


def available_metrics(runs: list[Run]) -> list[str]:
    return sorted({m for run in runs for m in run.metrics})


def default_metrics(runs: list[Run]) -> list[str]:
    """Numeric test.* metrics present in every run; the well-known ones if there are many."""
    common = set.intersection(*(set(run.metrics) for run in runs))
    test = sorted(m for m in common if m.startswith("test."))
    if len(test) <= MAX_DEFAULT_METRICS:
        return test
    preferred = [m for m in test if m.split(".", 1)[1] in PREFERRED]
    return preferred or test[:MAX_DEFAULT_METRICS]


def choose_metrics(runs: list[Run], requested: list[str] | None) -> list[str]:
    if not requested:
        return default_metrics(runs)
    known = available_metrics(runs)
    unknown = [m for m in requested if m not in known]
    if unknown:
        raise ConfigError(
            f"unknown metric {', '.join(unknown)}; available: {', '.join(known) or 'none'}"
        )
    return requested


# -------------------------------------------------------------- formatting


def format_cell(mean: float, se: float, n: int, nan: int = 0, missing: int = 0) -> str:
    """``mean ± se`` rounded to the standard error's second significant digit; then, when
    some values were left out, ``(n=<finite values used>, <k> nan, <j> missing)``."""
    left_out = [f"{k} {what}" for k, what in ((nan, "nan"), (missing, "missing")) if k]
    suffix = f" (n={n}, {', '.join(left_out)})" if left_out else ""
    if n == 0 or not math.isfinite(mean):
        return "–" + suffix
    if n < 2 or not math.isfinite(se) or se == 0:
        return f"{mean:.4g}" + suffix
    decimals = min(max(1 - math.floor(math.log10(se)), 0), 8)
    return f"{mean:.{decimals}f} ± {se:.{decimals}f}" + suffix


CELL_NOTE = "Cells: mean ± standard error over the group's completed runs."
LEFT_OUT_NOTE = (
    "(n=k, j nan): the mean of the k finite values; j runs recorded NaN, an infinity or "
    "null and are left out (missing: runs without the metric)."
)


def cell_note(rows: list[Row]) -> str:
    left_out = any(s.nan or s.missing for row in rows for s in row.stats.values())
    return f"{CELL_NOTE} {LEFT_OUT_NOTE}" if left_out else CELL_NOTE


def compact(values) -> str:
    """Distinct values in order; four or more consecutive integers as one range (0-19)."""
    distinct = sorted({str(v) for v in values}, key=sort_key)
    ints = [int(v) for v in distinct if v.lstrip("-").isdigit()]
    if len(ints) == len(distinct) >= 4 and ints[-1] - ints[0] == len(ints) - 1:
        return f"{ints[0]}-{ints[-1]}"
    return ",".join(distinct)


def replicate_columns(rows: list[Row]) -> list[str]:
    """``seeds``, and ``splits`` when some run chose data.split on the command line."""
    split_key = REPLICATES["splits"]
    swept = any(split_key in run.overrides for row in rows for run in row.runs)
    return ["seeds", "splits"] if swept else ["seeds"]


def replicates_text(runs: list[Run], column: str) -> str:
    if column == "seeds":
        return compact(r.seed for r in runs)
    return compact(group_value(r, REPLICATES[column]) for r in runs)


def table_cells(rows: list[Row], keys: list[str], metrics: list[str]) -> list[list[str]]:
    """Header row then one row of strings per group."""
    replicates = replicate_columns(rows)
    cells = [[*keys, "n", *replicates, *metrics]]
    for row in rows:
        stats = [format_cell(*row.stats[m]) for m in metrics]
        counts = [replicates_text(row.runs, c) for c in replicates]
        cells.append([*row.values, str(len(row.runs)), *counts, *stats])
    return cells


def markdown_table(cells: list[list[str]]) -> str:
    def line(items):
        return "| " + " | ".join(s.replace("|", "\\|") for s in items) + " |"

    return "\n".join([line(cells[0]), line(["---"] * len(cells[0])), *map(line, cells[1:])])


def others_lines(others: list[Run], base: Path) -> list[str]:
    return [f"- {r.status}: `{relative(r.path, base)}`: {r.message}" for r in others]


def markdown_report(
    cells: list, others: list[Run], base: Path, extra: str = "", note: str = CELL_NOTE
) -> str:
    """The table, then ``extra`` sections (Markdown), then the failed and unfinished runs."""
    text = "# bslrun report\n\n" + markdown_table(cells) + "\n"
    text += f"\n{note}\n"
    if extra:
        text += "\n" + extra
    if others:
        text += "\n## Failed or unfinished runs\n\n" + "\n".join(others_lines(others, base)) + "\n"
    return text


CSV_STATS = ("mean", "se", "n", "nan")


def csv_report(rows: list[Row], keys: list[str], metrics: list[str]) -> str:
    """One row per group: its keys, ``n`` runs, the replicates, then per metric
    ``<metric>_mean`` and ``_se`` (empty when not finite) over the ``<metric>_n`` finite
    values, and ``<metric>_nan``: the values left out as NaN, infinite or null. Runs
    without the metric make up the rest of ``n``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    stat_columns = [f"{m}_{s}" for m in metrics for s in CSV_STATS]
    replicates = replicate_columns(rows)
    writer.writerow([*keys, "n", *replicates, *stat_columns])
    for row in rows:
        stats = []
        for m in metrics:
            stat = row.stats[m]
            stats += [repr(v) if math.isfinite(v) else "" for v in (stat.mean, stat.se)]
            stats += [stat.n, stat.nan]
        counts = [replicates_text(row.runs, c) for c in replicates]
        writer.writerow([*row.values, len(row.runs), *counts, *stats])
    return buffer.getvalue()


CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th{background:#f3f3f3}img{max-width:100%;margin:1em 0}code{background:#f6f6f6}"
)


def html_table(cells: list) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in cells[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in cells[1:]
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(
    cells: list,
    others: list[Run],
    base: Path,
    plots: dict,
    sections: tuple = (),
    note: str = CELL_NOTE,
) -> str:
    """``sections``: (title, cells, notes) tables shown after the main one."""
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{TITLE}</title>",
        f"<style>{CSS}</style></head><body><h1>bslrun report</h1>",
        html_table(cells),
        f"<p>{esc(note)}</p>",
    ]
    for title, section_cells, notes in sections:
        items = "".join(f"<li>{esc(note)}</li>" for note in notes)
        parts.append(f"<h2>{esc(title)}</h2>{html_table(section_cells)}<ul>{items}</ul>")
    if others:
        items = "".join(
            f"<li>{esc(r.status)}: <code>{esc(relative(r.path, base))}</code>: {esc(r.message)}</li>"
            for r in others
        )
        parts.append(f"<h2>Failed or unfinished runs</h2><ul>{items}</ul>")
    for metric, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<h2>{esc(metric)}</h2><img alt='{esc(metric)}' src='data:image/png;base64,{data}'>"
        )
    return "".join(parts) + "</body></html>\n"


# ------------------------------------------------------------------- plots


def group_label(keys: list[str], values: tuple) -> str:
    if len(keys) == 1:
        return values[0]
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "all runs"


def plot_metric(rows: list[Row], keys: list[str], metric: str) -> bytes:
    """Mean ± standard error per group, each run as a faint dot; PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.2 * len(rows) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0)
    for i, row in enumerate(rows):
        values = [r.metrics.get(metric, math.nan) for r in row.runs]
        values = [v if math.isfinite(v) else math.nan for v in values]  # no inf on the axis
        ax.scatter(
            i + jitter.uniform(-0.15, 0.15, len(values)), values, color="C0", alpha=0.3, s=14
        )
        mean, se = row.stats[metric][:2]
        ax.errorbar(
            i, mean, yerr=0 if not math.isfinite(se) else se, fmt="o", color="C3", capsize=4
        )
    labels = [group_label(keys, row.values) for row in rows]
    rotate = len(rows) > 3 or max(map(len, labels)) > 16
    ax.set_xticks(
        range(len(rows)), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center"
    )
    ax.set_xlabel(keys[0] if len(keys) == 1 else "")
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean ± standard error (dots: runs)")
    ax.grid(alpha=0.3, axis="y")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


# -------------------------------------------------------------------- main
