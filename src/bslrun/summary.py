"""Summary tables of runs: completed runs grouped by the command-line overrides that differ
between them (the replicates ``seed`` and ``data.split``, and keys that cannot change
results, excluded); each cell is the mean and standard error over the group's finite
values, with a count of those that were not finite (``(n=4, 1 nan)``). Above the table,
the settings every run shares; below it, one row per run. Rendered as Markdown, CSV and
HTML (``report_html``); the figures are ``report_plots``'.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bslrun.errors import ConfigError
from bslrun.runs import (
    EXCLUDED_KEYS,
    MISSING,
    REPLICATES,
    Run,
    group_value,
    has_no_effect,
    relative,
)

PREFERRED = ("accuracy", "bits_per_dim", "coverage_95", "ece", "elbo", "kl_to_true", "nll", "rmse")
MAX_DEFAULT_METRICS = 6


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
    """Override keys whose values are not the same in every run, sorted; replicates (seed,
    data.split) and keys that cannot change results (config.KEY_POLICY) left out. Give
    the runs that are then grouped (the completed ones): a failed run's extra override is
    not a group key."""
    keys = {k for run in runs for k in run.overrides}
    keys = sorted(k for k in keys if k not in EXCLUDED_KEYS and not has_no_effect(k))
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


# Which way each metric is better, by its name in any section of metrics.json: the one
# home for the marks on the report's columns, its plots' reference lines and the
# published tables' marks. A metric named in neither set (a spread, a count, a time) has
# no better way.
LOWER_IS_BETTER = frozenset(
    {"bits_per_dim", "ece", "error", "final_loss", "kl_to_true", "neg_elbo", "nll", "rmse"}
)
HIGHER_IS_BETTER = frozenset({"accuracy", "elbo", "recon"})
# coverage_95: the share of points inside their central 95% predictive interval; a
# calibrated model's is 0.95, so neither more nor less is better.
COVERAGE = re.compile(r"coverage_(\d+)")


class Better(NamedTuple):
    sign: int  # -1: lower is better; 1: higher; 0: closest to target
    target: float = math.nan

    @property
    def mark(self) -> str:
        return {-1: "↓", 1: "↑"}.get(self.sign, f"→{self.target:g}")

    @property
    def meaning(self) -> str:
        return {-1: "lower is better", 1: "higher is better"}.get(
            self.sign, f"closer to {self.target:g} is better"
        )


def better(metric: str, sign: int = 1) -> Better | None:
    """Which way ``metric`` (``test.rmse``) is better; ``sign=-1`` for a column that shows
    its negative (a published log-likelihood is -test.nll). None: neither way."""
    name = metric.rsplit(".", 1)[-1]
    match = COVERAGE.fullmatch(name)
    if match:
        return Better(0, sign * int(match.group(1)) / 100)
    if name in LOWER_IS_BETTER | HIGHER_IS_BETTER:
        return Better(sign if name in HIGHER_IS_BETTER else -sign)
    return None


def marked(label: str, metric: str, sign: int = 1) -> str:
    """``label`` with the mark of which way ``metric`` is better: ``test.rmse ↓``."""
    way = better(metric, sign)
    return label if way is None else f"{label} {way.mark}"


def marks_note(metrics: list[str]) -> str:
    """What the marks on ``metrics`` mean, each once: ``↓ lower is better; ...``."""
    ways = dict.fromkeys(w for w in map(better, metrics) if w is not None)
    return "; ".join(f"{w.mark} {w.meaning}" for w in ways)


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


def cell_note(rows: list[Row], metrics: list[str] = ()) -> str:
    """What the cells and the marks on the columns mean."""
    left_out = any(s.nan or s.missing for row in rows for s in row.stats.values())
    marks = marks_note(metrics)
    parts = [CELL_NOTE, LEFT_OUT_NOTE if left_out else "", f"Columns: {marks}." if marks else ""]
    return " ".join(p for p in parts if p)


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
    """Header row (metrics marked with which way is better) then one row per group."""
    replicates = replicate_columns(rows)
    cells = [[*keys, "n", *replicates, *[marked(m, m) for m in metrics]]]
    for row in rows:
        stats = [format_cell(*row.stats[m]) for m in metrics]
        counts = [replicates_text(row.runs, c) for c in replicates]
        cells.append([*row.values, str(len(row.runs)), *counts, *stats])
    return cells


# ------------------------------------------------------- settings and runs


def shared_settings(runs: list[Run], keys: list[str] = ()) -> dict:
    """``{config key: value}`` the same in every run (an override counts over the config
    file), in the config's order; left out: the group ``keys``, null values, the seed
    (the table's seeds column) and keys that cannot change results."""
    first, *rest = runs
    shared = {}
    for key in first.config:
        value = group_value(first, key)
        if key in keys or key == REPLICATES["seeds"] or has_no_effect(key) or value == MISSING:
            continue
        if all(group_value(run, key) == value for run in rest):
            shared[key] = value
    return shared


def settings_lines(settings: dict) -> list[tuple[str, str]]:
    """``[("model", "family=bnn, hidden=[50, 50]"), ...]``: one line per config section."""
    sections: dict = {}
    for key, value in settings.items():
        section, _, name = key.partition(".")
        sections.setdefault(section if name else "", []).append(f"{name or key}={value}")
    return [(section, ", ".join(items)) for section, items in sections.items()]


def report_title(runs: list[Run]) -> str:
    """``bslrun report: uci_wine_red`` when every run has that (resolved) name."""
    names = {run.config.get("name") for run in runs}
    name = names.pop() if len(names) == 1 else None
    return f"bslrun report: {name}" if name and "${" not in name else "bslrun report"


def shorten(text: str, limit: int) -> str:
    """At most ``limit`` characters: the middle of a longer text becomes ``…``."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head) :]}"


class Link(NamedTuple):
    """A table cell that links to ``href`` (relative to the report's folder)."""

    text: str
    href: str
    title: str = ""  # the whole text, where ``text`` is shortened


MAX_LINK_TEXT = 40  # characters: Hydra names a sweep's job folders by their overrides


def folder_link(path: Path, base: Path) -> Link:
    """``path`` shown relative to ``base`` and linked from the report's folder ``base``."""
    href = Path(os.path.relpath(path, base.resolve())).as_posix()
    text = relative(path, base)
    return Link(shorten(text, MAX_LINK_TEXT), urllib.parse.quote(href) + "/", text)


def value_text(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if math.isfinite(value) else "–"


def run_order(rows: list[Row], others: list[Run]) -> list[Run]:
    """The completed runs group by group, by seed within one; then the others."""
    done = [r for row in rows for r in sorted(row.runs, key=lambda r: sort_key(str(r.seed)))]
    return done + others


def runs_cells(rows: list[Row], others: list[Run], keys: list[str], metrics: list, base: Path):
    """Header then one row per run: its folder (a link), status, group values, seed and
    metrics (blank where it has none)."""
    cells = [["run", "status", *keys, "seed", *[marked(m, m) for m in metrics]]]
    for run in run_order(rows, others):
        values = [group_value(run, k) for k in keys]
        numbers = [value_text(run.metrics.get(m)) for m in metrics]
        seed = "" if run.seed is None else str(run.seed)
        cells.append([folder_link(run.path, base), run.status, *values, seed, *numbers])
    return cells


# ------------------------------------------------------------------ render


@dataclass
class Page:
    """Everything the report shows, rendered by ``markdown_report`` and ``report_html.html_report``."""

    title: str
    settings: dict  # shared by every completed run
    cells: list  # the group table
    note: str
    base: Path  # the report's folder: links and paths are relative to it
    completed: int  # runs summarised
    others: list = field(default_factory=list)  # runs not completed
    runs: list = field(default_factory=list)  # the per-run table's cells
    extra: str = ""  # Markdown sections after the table
    sections: tuple = ()  # (title, cells, notes) tables for the HTML page
    plots: dict = field(default_factory=dict)  # heading -> PNG bytes


ENTITY = re.compile(r"&(?=#?\w+;)")  # the start of ``&lt;``; a lone ``&`` reads as itself


def markdown_text(text) -> str:
    """``text`` as it reads: a tag (``<script>``) or an entity in a run's name, override or
    error line is shown in Markdown, never interpreted, as report.html escapes it."""
    text = ENTITY.sub("&amp;", str(text)).replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\n", " ")


def code_span(text: str) -> str:
    """``text`` in a Markdown code span whose fence no backtick inside can close."""
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def cell_markdown(cell) -> str:
    """A table cell, escaped: ``|`` (which would end the cell) and a backslash before it too."""
    if isinstance(cell, Link):
        text = re.sub(r"([\\\[\]])", r"\\\1", markdown_text(cell.text))
        cell = f"[{text}]({cell.href})"
    else:
        cell = markdown_text(cell).replace("\\", "\\\\")
    return cell.replace("|", "\\|")


def markdown_table(cells: list[list]) -> str:
    def line(items):
        return "| " + " | ".join(map(cell_markdown, items)) + " |"

    return "\n".join([line(cells[0]), line(["---"] * len(cells[0])), *map(line, cells[1:])])


def others_lines(others: list[Run], base: Path) -> list[str]:
    return [
        f"- {r.status}: {code_span(relative(r.path, base))}: {markdown_text(r.message)}"
        for r in others
    ]


def settings_markdown(settings: dict, count: int) -> str:
    lines = [
        f"- **{markdown_text(section or 'run')}**: {markdown_text(text)}"
        for section, text in settings_lines(settings)
    ]
    head = f"Settings shared by all {count} completed runs:" if count > 1 else "Settings:"
    return f"{head}\n\n" + "\n".join(lines) + "\n\n" if lines else ""


def markdown_report(page: Page, with_runs: bool = True) -> str:
    """Title, shared settings, the table, ``extra`` sections, the failed and unfinished
    runs, then (``with_runs``) the table of every run."""
    text = f"# {markdown_text(page.title)}\n\n" + settings_markdown(page.settings, page.completed)
    text += markdown_table(page.cells) + f"\n\n{page.note}\n"
    if page.extra:
        text += "\n" + page.extra
    if page.others:
        text += "\n## Failed or unfinished runs\n\n"
        text += "\n".join(others_lines(page.others, page.base)) + "\n"
    if with_runs and page.runs:
        text += "\n## Runs\n\n" + markdown_table(page.runs) + "\n"
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
