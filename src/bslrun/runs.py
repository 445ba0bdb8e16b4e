"""Reading run folders: find them, and read each one's state, overrides and metrics.

A run folder is any folder holding ``.hydra/config.yaml``. A run's state is the one its
``status.json`` records (``artifacts.read_status``); a ``running`` run whose process has
gone on this host is ``killed``. Folders written before status.json existed are judged by
their ``metrics.json`` and ``run.log`` (``classify``). Nothing here imports JAX.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import socket
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from bslrun import config
from bslrun.artifacts import STATUS_FILE, RunFolder, read_status
from bslrun.errors import ConfigError, ResourceError

SECTIONS = ("test", "val", "train", "data", "timing")
# Replicates, never group keys by default: column name -> override key.
REPLICATES = {"seeds": "seed", "splits": "data.split"}
EXCLUDED_KEYS = tuple(REPLICATES.values())
MISSING = "(default)"
METRICS_FILE = RunFolder(".").metrics.name
# The config's enums by class name: OmegaConf accepts, and may save, ``Posterior.mean_field``
# for ``mean_field``.
ENUMS = {
    name: kind
    for name, kind in vars(config).items()
    if isinstance(kind, type) and issubclass(kind, Enum) and kind is not Enum
}


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
    config: dict = field(default_factory=dict)  # flat: "model.posterior" -> "map" (plain)
    choices: dict = field(default_factory=dict)  # config groups chosen: "data" -> "wine_red"


# ------------------------------------------------------------------ reading


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Every folder under ``paths`` (recursively) holding ``.hydra/config.yaml``, sorted;
    a run split into replicas (``trainer.replicas``) counts as its replicas."""
    found = set()
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path} does not exist; give a run folder or a folder of runs")
        if RunFolder(path).hydra_config.is_file():
            found.add(path.resolve())
        marker = RunFolder(".").hydra_config.as_posix()  # .hydra/config.yaml
        found.update(p.parent.parent.resolve() for p in path.rglob(marker))
    # A run of trainer.replicas replicas is its replicas' folders, each a run.
    return sorted((p for p in found if not RunFolder(p).replica(0).is_dir()), key=natural_order)


def natural_order(path: Path) -> list:
    """Sort key: the numbers in a path compare as numbers (job ``2_...`` before ``10_...``,
    ``replica_2`` before ``replica_10``), the rest as text."""
    parts = re.split(r"(\d+)", str(path))
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts]


def is_hydra_override(override: str) -> bool:
    """``hydra.x=...``, ``hydra/launcher=joblib``: Hydra's own settings, not the run's."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def has_no_effect(key: str) -> bool:
    """Whether ``key`` (``a.b`` or a config group ``a/b``) cannot change results
    (``config.KEY_POLICY``): the report neither groups by it nor lists it."""
    return not config.changes_results(key)


def plain(value) -> str:
    """One spelling per value, as text: an enum as its value (``Posterior.mean_field`` ->
    ``mean_field``), booleans and null in YAML's lower case (an override may say
    ``False``), lists with ", " between items (``[50,50]`` -> ``[50, 50]``)."""
    if isinstance(value, list):
        return "[" + ", ".join(map(plain, value)) + "]"
    if isinstance(value, (bool, type(None))):
        return json.dumps(value)
    text = str(value).strip()
    kind, _, member = text.partition(".")
    if kind in ENUMS and member in ENUMS[kind].__members__:
        return str(ENUMS[kind][member].value)
    if text.lower() in ("true", "false", "null"):
        return text.lower()
    if text.startswith("[") and text.endswith("]"):
        return re.sub(r"\s*,\s*", ", ", text)
    return text


def parse_overrides(lines: list) -> dict:
    """``["seed=3", "+a.b=1", "hydra.x=y"]`` -> ``{"seed": "3", "a.b": "1"}`` (no hydra.*),
    each value in its ``plain`` spelling."""
    out = {}
    for line in lines or []:
        key, sep, value = str(line).partition("=")
        if sep and not is_hydra_override(key):
            out[key.lstrip("+~")] = plain(value)
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
    # ValueError: not UTF-8; RecursionError: nested too deep for the parser
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as error:
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
    except (OSError, ValueError, RecursionError) as error:
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


def read_config(run_dir: Path) -> dict:
    """The run's config as flat ``plain`` text values: config.json (resolved by bslrun),
    else .hydra/config.yaml (as composed); {} when neither can be read."""
    try:
        tree = json.loads(RunFolder(run_dir).config.read_text())
    except (OSError, ValueError, RecursionError):
        tree = load_yaml(RunFolder(run_dir).hydra_config)
    if not isinstance(tree, dict):
        return {}
    return {key: plain(value) for key, value in config.flatten(tree).items()}


def read_choices(run_dir: Path) -> dict:
    """The config groups the run chose (``data`` -> ``wine_red``), from .hydra/hydra.yaml."""
    choices = load_yaml(RunFolder(run_dir).hydra_settings)
    for part in ("hydra", "runtime", "choices"):
        choices = choices.get(part) if isinstance(choices, dict) else None
    if not isinstance(choices, dict):
        return {}
    return {str(k): plain(v) for k, v in choices.items() if v is not None}


# What hand-edited or damaged files raise while a folder is read (a value of an unexpected
# type, nesting too deep for the parser, a field over csv's limit): that folder is damaged,
# the others are still reported.
READ_FAULTS = (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError, csv.Error)


def load_run(run_dir: Path) -> Run:
    """The run of ``run_dir``; a folder that cannot be read is a ``damaged`` run saying why."""
    try:
        return read_run(run_dir)
    except READ_FAULTS as error:
        message = (
            f"cannot be read ({type(error).__name__}: {one_line(error)[:120]}); restore its "
            "files from a copy or move the folder out of the report's path"
        )
        return Run(run_dir, {}, "damaged", message=message)


def read_run(run_dir: Path) -> Run:
    overrides, problem = read_overrides(run_dir)
    if problem:
        return Run(run_dir, {}, "damaged", message=problem)
    settings = {"config": read_config(run_dir), "choices": read_choices(run_dir)}
    seed = overrides.get("seed", settings["config"].get("seed"))
    status = read_status(run_dir)
    if status is None and RunFolder(run_dir).status.exists():
        message = (
            f"unreadable {STATUS_FILE} (not a JSON object with a known status); delete it "
            "to judge the run by its run.log and metrics.json"
        )
        return Run(run_dir, overrides, "damaged", seed=seed, message=message, **settings)
    state, message = recorded_state(run_dir, status)
    if state != "completed":
        if state == "killed" and RunFolder(run_dir).metrics.is_file():
            message += "; its metrics.json is left out: rerun it"
        return Run(run_dir, overrides, state, seed=seed, message=message, **settings)
    metrics, problem = read_metrics(run_dir)
    if metrics is None:
        return Run(run_dir, overrides, "failed", seed=seed, message=problem, **settings)
    seed = metrics.get("seed", seed)
    return Run(run_dir, overrides, "completed", flatten_metrics(metrics), seed, **settings)


class History(dict):
    """history.csv's columns by name; a column the run did not record (``val_nll`` of a
    run without a validation split) is a KeyError naming the ones it did."""

    def __missing__(self, column):
        raise KeyError(
            f"history has no column {column!r}; the run recorded {', '.join(self) or 'none'} "
            "(a run without a validation split records no val_* columns)"
        )


def read_history(path: Path) -> History:
    """history.csv as {column: float array} (NaN where a row has no value); empty when absent."""
    if not path.is_file():
        return History()
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        columns = rows[0].keys() if rows else []
        return History(
            {c: np.array([float(r[c]) if r[c] else math.nan for r in rows]) for c in columns}
        )
    # csv.Error: a field over csv's size limit (128 kB), a NUL byte
    except (OSError, ValueError, TypeError, csv.Error) as error:
        raise ResourceError(
            f"cannot read the history {path} ({type(error).__name__}: "
            f"{one_line(error)[:120]}); restore it from a copy of the run folder"
        ) from None


# ---------------------------------------------------------------- grouping


def group_value(run: Run, key: str) -> str:
    """The run's override of ``key``, else the config group it chose, else its config
    value; MISSING for a key it lacks or leaves null."""
    value = run.overrides.get(key, run.choices.get(key, run.config.get(key, MISSING)))
    return MISSING if value == "null" else value


def relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)
