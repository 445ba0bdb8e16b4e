"""The 20-split UCI red-wine sweep with three launchers: vectorised, basic and joblib.

``bslrun -m sweep=uci_splits experiment=uci_wine_red`` (20 jobs of 270 epochs each, the
published protocol) runs as a subprocess with Hydra's basic launcher (one job after the
other, in one process), with ``hydra/launcher=joblib hydra.launcher.n_jobs=2`` (two worker
processes) and with ``hydra/launcher=vectorised`` (the 20 jobs trained as one program).
The whole command is timed, start-up included: that is what a user waits for. Repetitions
rotate the launchers' order. ``--epochs N`` shortens every job (a quick look; the targets
are judged at the preset's 270).

Targets (issue 14, reported, not fatal): vectorised at least 5x faster than basic and 3x
faster than joblib, with every split's test metrics equal to the basic launcher's within
1e-4. The preset's training amplifies float32 rounding (a difference of 6e-6 in the
parameters after one epoch is 7e-3 after eight), so only bit-identical arithmetic meets
1e-4 at 270 epochs. The sanity check asks what rounding cannot break: every split wrote
its metrics, and over the 20 splits the vectorised mean of each metric lies within two
standard errors of the basic launcher's.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Options, environment, spread
from benchmarks.joblib_sweep import timed

NAME = "uci_sweep"
REPS = 1  # a basic sweep of the preset takes about 9 minutes on 2 cores
SPLITS = 20
LAUNCHERS = {
    "vectorised": ["hydra/launcher=vectorised"],
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}
TARGETS = {"basic": 5.0, "joblib": 3.0}  # vectorised must be this many times faster
TOLERANCE = 1e-4  # per-split test metrics, vectorised against basic
COMPARED = ("rmse", "nll")
UCI_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci_regression"


def sweep(launcher: str, epochs: int | None, root: Path) -> dict:
    """Run the sweep as a subprocess; its wall time, load and each split's test metrics."""
    sweep_dir = root / f"{launcher}_{time.time_ns()}"
    command = [
        sys.executable, "-m", "bslrun", "-m", "sweep=uci_splits", "experiment=uci_wine_red",
        "trainer.progress=false", *LAUNCHERS[launcher], f"hydra.sweep.dir={sweep_dir}",
        *([f"trainer.epochs={epochs}"] if epochs else []),
    ]  # fmt: skip
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(root))
    env.setdefault("BSLRUN_UCI_DIR", str(UCI_DIR))
    seconds, load = timed(command, env, root, f"{launcher} sweep")
    splits = {}
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        split = metrics["config"]["data"]["split"]
        splits[split] = {name: metrics["test"][name] for name in COMPARED}
    return {"seconds": seconds, **load, "splits": splits}


def largest_difference(a: dict, b: dict) -> float:
    """The largest |a - b| over the splits and metrics both sweeps have."""
    return max(abs(a[s][name] - b[s][name]) for s in a.keys() & b.keys() for name in COMPARED)


def same_means(a: dict, b: dict) -> bool:
    """Whether the mean over splits of each metric of ``a`` lies within two standard
    errors (of ``b``'s splits) of ``b``'s."""
    for name in COMPARED:
        values = [b[s][name] for s in b]
        error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        if abs(statistics.mean(a[s][name] for s in a) - statistics.mean(values)) > 2 * error:
            return False
    return True


def run(opts: Options) -> dict:
    reps = opts.reps or REPS
    runs: dict[str, list] = {name: [] for name in LAUNCHERS}
    with tempfile.TemporaryDirectory(prefix="bslrun_uci_sweep_") as tmp:
        for rep in range(reps):
            names = list(LAUNCHERS)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                runs[name].append(sweep(name, opts.epochs, Path(tmp)))
    seconds = {name: statistics.median(r["seconds"] for r in runs[name]) for name in LAUNCHERS}
    speedup = {other: seconds[other] / seconds["vectorised"] for other in TARGETS}
    complete = all(sorted(r["splits"]) == list(range(SPLITS)) for rs in runs.values() for r in rs)
    difference = max(
        largest_difference(v["splits"], b["splits"])
        for v, b in zip(runs["vectorised"], runs["basic"], strict=True)
    )
    means = complete and all(
        same_means(v["splits"], b["splits"])
        for v, b in zip(runs["vectorised"], runs["basic"], strict=True)
    )
    return {
        "description": "20-split UCI red-wine sweep: vectorised launcher vs basic and joblib",
        "config": {
            "command": "bslrun -m sweep=uci_splits experiment=uci_wine_red [launcher]",
            "epochs": opts.epochs or "the preset's (270)",
            "reps": reps,
        },
        "environment": environment(),
        "methods": {
            name: {"seconds": spread([r["seconds"] for r in runs[name]]), "runs": runs[name]}
            for name in LAUNCHERS
        },
        "speedup": speedup,
        "targets": TARGETS,
        "meets_targets": {k: speedup[k] >= TARGETS[k] for k in TARGETS},
        "largest_test_difference": difference,
        "test_metrics_within_tolerance": difference <= TOLERANCE,
        "tolerance": TOLERANCE,
        "sanity": {
            "all_splits_wrote_metrics": complete,
            "same_means_within_two_standard_errors": means,
            "passed": complete and means,
        },
    }


def summarise(result: dict) -> str:
    lines = [
        f"{NAME}: 20 UCI red-wine splits, epochs {result['config']['epochs']},"
        f" {result['config']['reps']} rep(s), {result['environment']['cpu_count']} CPUs"
    ]
    for name, method in result["methods"].items():
        used = statistics.mean(r["sweep_cores"] or 0.0 for r in method["runs"])
        others = statistics.mean(r["other_processes_cores"] or 0.0 for r in method["runs"])
        lines.append(
            f"  {name:<10} {method['seconds']['median']:7.1f} s median;"
            f" cores used {used:.2f} by the sweep, {others:.2f} by other processes"
        )
    for other, target in result["targets"].items():
        met = "met" if result["meets_targets"][other] else "NOT met"
        lines.append(
            f"  vectorised is {result['speedup'][other]:.2f}x faster than {other}"
            f" (target {target:.0f}x: {met})"
        )
    within = "met" if result["test_metrics_within_tolerance"] else "NOT met"
    lines.append(
        f"  largest per-split test difference against basic:"
        f" {result['largest_test_difference']:.2e} (target {result['tolerance']:.0e}: {within});"
        f" sanity (means within 2 standard errors) {'passed' if result['sanity']['passed'] else 'FAILED'}"
    )
    return "\n".join(lines)
