"""``bslrun-report``: summarise run folders (e.g. a sweep) as one table and a few plots.

A run folder is any folder holding ``.hydra/config.yaml``. A run's state is the one its
``status.json`` records (``artifacts.read_status``); a ``running`` run whose process has
gone on this host is ``killed``. Folders written before status.json existed are judged by
their ``metrics.json`` and ``run.log`` (``classify``). Completed runs are grouped by the
command-line overrides that differ between them (the replicates ``seed`` and
``data.split`` excluded); each cell is the mean and standard error over the group's finite
values, with a count of those that were not finite (``(n=4, 1 nan)``). The other runs are
listed with their error line and stay out of the statistics. ``--published <benchmark>``
adds the groups beside published results (``bslrun.published``).

The table is printed before any file is written, so an output folder that cannot be
written still shows it. Nothing is re-run and JAX is never imported, so the report starts
in well under a second.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import errno
import html
import io
import json
import math
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bslrun.artifacts import STATUS_FILE, RunFolder, read_status, write_bytes
from bslrun.errors import BslrunError, ConfigError, ResourceError

PROG = "bslrun-report"
SECTIONS = ("test", "val", "train", "data", "timing")
PREFERRED = ("accuracy", "bits_per_dim", "coverage_95", "ece", "elbo", "kl_to_true", "nll", "rmse")
MAX_DEFAULT_METRICS = 6
# Replicates, never group keys by default: column name -> override key.
REPLICATES = {"seeds": "seed", "splits": "data.split"}
EXCLUDED_KEYS = tuple(REPLICATES.values())
MISSING = "(default)"
METRICS_FILE = RunFolder(".").metrics.name


@dataclass
class Run:
    path: Path
    overrides: dict
    # "completed", or why not: "failed", "diverged", "interrupted", "running", "killed"
    # (running, but its process is gone) or "damaged" (a file of the folder is unreadable)
    status: str
    metrics: dict = field(default_factory=dict)  # flat: "test.rmse" -> float
    seed: object = None
    message: str = ""  # one line: the error, or why the run is not completed


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


# ------------------------------------------------------------------ reading


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Every folder under ``paths`` (recursively) holding ``.hydra/config.yaml``, sorted."""
    found = set()
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path} does not exist; give a run folder or a folder of runs")
        if RunFolder(path).hydra_config.is_file():
            found.add(path.resolve())
        marker = RunFolder(".").hydra_config.as_posix()  # .hydra/config.yaml
        found.update(p.parent.parent.resolve() for p in path.rglob(marker))
    return sorted(found)


def is_hydra_override(override: str) -> bool:
    """``hydra.x=...``, ``hydra/launcher=joblib``: Hydra's own settings, not the run's."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def parse_overrides(lines: list) -> dict:
    """``["seed=3", "+a.b=1", "hydra.x=y"]`` -> ``{"seed": "3", "a.b": "1"}`` (no hydra.*)."""
    out = {}
    for line in lines or []:
        key, sep, value = str(line).partition("=")
        if sep and not is_hydra_override(key):
            out[key.lstrip("+~")] = value
    return out


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def read_yaml(path: Path) -> tuple[object, str]:
    """(the YAML's value, "") or (None, why it cannot be read)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(path.read_text(), Loader=loader), ""
    except (OSError, ValueError, yaml.YAMLError) as error:  # ValueError: not UTF-8
        return None, one_line(error)


def load_yaml(path: Path):
    """The YAML's value; None when absent or unreadable."""
    return read_yaml(path)[0]


def read_overrides(run_dir: Path) -> tuple[dict, str]:
    """(the run's overrides, "") or ({}, why .hydra/overrides.yaml is unusable). A folder
    without the file (made by hand) has no overrides."""
    path = RunFolder(run_dir).hydra_overrides
    if not path.exists():
        return {}, ""
    lines, problem = read_yaml(path)
    if not problem and not isinstance(lines, (list, type(None))):
        kind = "a mapping" if isinstance(lines, dict) else "a single value"
        problem = f"{kind}, not a list of overrides"
    if problem:
        return {}, (
            f"unreadable .hydra/overrides.yaml ({problem}); restore the list Hydra wrote "
            "(- key=value lines) or move the folder out of the report's path"
        )
    return parse_overrides(lines), ""


def flatten_metrics(metrics: dict) -> dict:
    """Numeric leaves of the metric sections as ``section.name`` -> float (None -> nan)."""
    flat = {}
    for section in SECTIONS:
        for key, value in (metrics.get(section) or {}).items():
            if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                flat[f"{section}.{key}"] = math.nan if value is None else float(value)
    return flat


def read_metrics(run_dir: Path) -> tuple[dict | None, str]:
    """(metrics.json as a dict, "") or (None, why it is missing or unusable)."""
    path = RunFolder(run_dir).metrics
    if not path.is_file():
        return None, f"recorded as completed but {METRICS_FILE} is missing; rerun it"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, f"unreadable {METRICS_FILE} ({one_line(error)}); rerun it"
    sections_ok = isinstance(metrics, dict) and all(
        isinstance(metrics.get(s) or {}, dict) for s in SECTIONS
    )
    if not sections_ok:
        return None, f"{METRICS_FILE} is not an object of metric sections (test, ...); rerun it"
    return metrics, ""


def error_line(log_text: str) -> str:
    """The last line of a run.log that records an error (the CLI logs it at ERROR level)."""
    hits = [
        line.strip()
        for line in log_text.splitlines()
        if "[ERROR]" in line or "error:" in line.lower() or "Traceback" in line
    ]
    return hits[-1] if hits else ""


def read_log(run_dir: Path) -> str:
    try:
        return RunFolder(run_dir).log.read_text(errors="replace")
    except OSError:
        return ""


def classify(run_dir: Path) -> tuple[str, str]:
    """A folder written before status.json existed, without metrics.json: ("failed", the
    error line) or ("running", why), from run.log's wording."""
    text = read_log(run_dir)
    line = error_line(text)
    if line:
        return "failed", line
    if RunFolder(run_dir).history.is_file() and "diverged" in text:
        return "failed", "training diverged (see run.log)"
    return "running", "no metrics.json and no error in run.log (still running, or killed)"


def running_state(status: dict) -> tuple[str, str]:
    """("running", since when and where) or, when its process is gone from this host,
    ("killed", why): a run that ends in any way bslrun sees records its end."""
    pid, host = status.get("pid"), status.get("host")
    if host == socket.gethostname() and type(pid) is int and 0 < pid < 2**31:
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return "killed", (
                f"process {pid} ended without recording an end "
                "(out of memory, SIGKILL or power loss)"
            )
        except OSError:
            pass  # PermissionError: it exists, as another user's process
    return "running", f"running since {status.get('started')} (process {pid} on {host})"


def recorded_state(run_dir: Path, status: dict | None) -> tuple[str, str]:
    """(state, message) from status.json, or from the old signs when there is none."""
    if status is None:
        if RunFolder(run_dir).metrics.is_file():
            return "completed", ""
        return classify(run_dir)
    state = status["status"]
    if state == "running":
        return running_state(status)
    if state == "completed":
        return state, ""
    error = status.get("error")
    if not error:
        line = error_line(read_log(run_dir))
        error = line or f"no error recorded (exit code {status.get('exit_code')}); see run.log"
    return state, " ".join(str(error).split())


def load_run(run_dir: Path) -> Run:
    overrides, problem = read_overrides(run_dir)
    if problem:
        return Run(run_dir, {}, "damaged", message=problem)
    seed = overrides.get("seed")
    status = read_status(run_dir)
    if status is None and RunFolder(run_dir).status.exists():
        message = (
            f"unreadable {STATUS_FILE} (not a JSON object with a known status); delete it "
            "to judge the run by its run.log and metrics.json"
        )
        return Run(run_dir, overrides, "damaged", seed=seed, message=message)
    state, message = recorded_state(run_dir, status)
    if state != "completed":
        if state == "killed" and RunFolder(run_dir).metrics.is_file():
            message += "; its metrics.json is left out: rerun it"
        return Run(run_dir, overrides, state, seed=seed, message=message)
    metrics, problem = read_metrics(run_dir)
    if metrics is None:
        return Run(run_dir, overrides, "failed", seed=seed, message=problem)
    seed = metrics.get("seed", seed)
    return Run(run_dir, overrides, "completed", flatten_metrics(metrics), seed)


# ---------------------------------------------------------------- grouping


def config_value(run_dir: Path, key: str) -> str:
    """A key missing from a run's overrides: the config group chosen, else the config value."""
    choices = load_yaml(RunFolder(run_dir).hydra_settings)
    for part in ("hydra", "runtime", "choices"):
        choices = choices.get(part) if isinstance(choices, dict) else None
    if isinstance(choices, dict) and key in choices:
        return str(choices[key])
    node = load_yaml(RunFolder(run_dir).hydra_config)
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return MISSING if node is None or isinstance(node, (dict, list)) else str(node)


def group_value(run: Run, key: str) -> str:
    return run.overrides[key] if key in run.overrides else config_value(run.path, key)


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


def relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)


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
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{PROG}</title>",
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


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like bslrun's own errors
        raise ConfigError(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run folders or folders of runs")
    parser.add_argument("--metrics", help="comma-separated, e.g. test.rmse,test.nll")
    parser.add_argument("--out", type=Path, help="output folder (default: the first PATH)")
    parser.add_argument("--group-by", help="comma-separated override keys ('' for one group)")
    parser.add_argument(
        "--published",
        metavar="BENCHMARK",
        help="also write the groups beside a benchmark's published results (e.g. uci_wine_red)",
    )
    return parser.parse_args(argv)


def split_list(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def check_group_keys(runs: list[Run], keys: list[str]) -> None:
    """Each key must have a value in some of ``runs``: the runs that are then grouped."""
    unknown = [k for k in keys if all(group_value(r, k) == MISSING for r in runs)]
    if unknown:
        known = sorted({k for r in runs for k in r.overrides})
        raise ConfigError(
            f"unknown group key {', '.join(unknown)} (no completed run has it); group by an "
            f"override of theirs ({', '.join(known) or 'none'}) or a config key"
        )


def write_error(out: Path, error: OSError) -> ResourceError:
    """One line for an output folder that cannot be written (the table is printed)."""
    why = error.strerror or one_line(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space there or give another folder with --out"
    else:
        fix = "give a folder you can write with --out"
    return ResourceError(f"cannot write the report into {out} ({why}); {fix}")


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def write_files(out: Path, files: dict) -> None:
    """Write ``{relative path: bytes}`` under ``out``, each atomically. On failure, the
    folders this call made and left empty are removed: nothing half-done stays."""
    made = missing_folders(out / "plots")
    try:
        for name, data in files.items():
            write_bytes(out / name, data)
    except OSError as error:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty one
        raise write_error(out, error) from None


def show(text: str) -> None:
    """Print to stdout; a reader gone (``bslrun-report ... | head``) does not stop the
    report from writing its files."""
    try:
        print(text, end="", flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as Python's docs do


def report(args: argparse.Namespace) -> int:
    from bslrun import published

    bench = published.load(args.published) if args.published else None
    run_dirs = find_run_dirs(args.paths)
    if not run_dirs:
        raise ConfigError(
            f"no run folders (with .hydra/config.yaml) under {args.paths[0]}; give a run "
            "folder or a folder of runs (e.g. experiments/<name>)"
        )
    runs = [load_run(d) for d in run_dirs]
    done = [r for r in runs if r.status == "completed"]
    others = [r for r in runs if r.status != "completed"]
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent)
    if not done:
        show("\n".join(others_lines(others, out)) + "\n")
        raise BslrunError(
            f"no completed runs among {len(runs)} run folders (listed above); "
            "fix or rerun them, or wait for the running ones"
        )
    metrics = choose_metrics(done, split_list(args.metrics))
    keys = split_list(args.group_by)
    keys = differing_keys(done) if keys is None else keys
    check_group_keys(done, keys)
    rows = summarise(done, keys, metrics)
    cells, note = table_cells(rows, keys, metrics), cell_note(rows)
    extra, sections, files = "", (), {}
    if bench is not None:
        ours = published.compare(done, keys, args.published)[1]
        extra = published.markdown(bench, ours)
        sections = ((published.title(bench), published.cells(bench, ours), published.notes(bench)),)
        files["published.md"] = extra.encode()
        files["published.csv"] = published.csv_text(bench, ours).encode()
    text = markdown_report(cells, others, out, extra, note)
    show(text)  # before any file: an unwritable --out still shows the table
    plots = {m: plot_metric(rows, keys, m) for m in metrics}
    html_text = html_report(cells, others, out, plots, sections, note)
    files = {
        "report.md": text.encode(),
        "report.csv": csv_report(rows, keys, metrics).encode(),
        "report.html": html_text.encode(),
        **files,
        **{f"plots/report_{m.replace('.', '_')}.png": png for m, png in plots.items()},
    }
    write_files(out, files)
    also = ", published.md, published.csv" if bench else ""
    print(f"\nwrote {out / 'report.md'}, report.csv, report.html{also} and plots/", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit 0, or one line on stderr: 2 usage, 5 an unwritable output folder, 1 no
    completed run or a bug (HYDRA_FULL_ERROR=1 shows a bug's traceback)."""
    try:
        return report(parse_args(argv))
    except BslrunError as error:
        sys.stdout.flush()
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.stdout.flush()
        print(
            f"{PROG}: error: unexpected {type(error).__name__}: {one_line(error)}; a bug in "
            f"{PROG}: please report it (HYDRA_FULL_ERROR=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
