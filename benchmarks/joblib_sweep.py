"""A 2-job sweep with Hydra's joblib launcher against the same two runs one after the other.

The same sweep, ``bslrun -m seed=S,S+1`` of the default BNN on white wine with a
few tens of epochs, runs as a ``bslrun`` subprocess with Hydra's basic launcher
(the two jobs one after the other, in one process) and with
``hydra/launcher=joblib hydra.launcher.n_jobs=2`` (two worker processes at once).
Both write to a temporary ``BSLRUN_OUTPUT_DIR``; the whole command is timed,
start-up included, since that is what a user waits for. Repetitions alternate
the order of the two launchers so that both share the machine's noise. The cores
each sweep kept busy, and those other processes took meanwhile, are recorded
(Linux /proc/stat): a sequential sweep already uses more than one core (XLA's
thread pools), and a shared machine slows a parallel sweep more than a sequential one.

The ratio is sequential seconds / parallel seconds (above 1: joblib is faster).
Sanity: every job wrote metrics.json and each seed's test NLL is the same under
both launchers (same seed, same machine).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Options, environment, spread

NAME = "joblib_sweep"
EPOCHS = 40  # per run: long enough that training, not start-up, dominates a job
REPS = 3
TARGET_RATIO = 1.0  # the joblib sweep finishes faster than the sequential one
LAUNCHERS = {
    "sequential": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}


def cpu_sample() -> tuple | None:
    """(wall, busy CPU seconds of the machine, CPU seconds of this process and its children)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[i] for i in (0, 1, 2, 5, 6)) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system


def cores(start: tuple | None, end: tuple | None) -> dict:
    """Cores used on average by this benchmark's sweep, and by every other process."""
    if start is None or end is None:
        return {"sweep_cores": None, "other_processes_cores": None}
    wall, busy, own = (b - a for a, b in zip(start, end, strict=True))
    return {"sweep_cores": own / wall, "other_processes_cores": max(0.0, busy - own) / wall}


def timed(command: list, env: dict, cwd: Path, what: str) -> tuple[float, dict]:
    """Run ``command``; (its wall seconds, the cores it and other processes used)."""
    start = cpu_sample()
    tick = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - tick
    load = cores(start, cpu_sample())
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stderr[-2000:]}")
    return seconds, load


def sweep(launcher: str, seeds: list[int], epochs: int, root: Path) -> dict:
    """Run the sweep as a subprocess; its wall time, load and each job's metrics."""
    sweep_dir = root / f"{launcher}_{time.time_ns()}"
    command = [
        sys.executable, "-m", "bslrun", "-m", f"seed={','.join(map(str, seeds))}",
        f"trainer.epochs={epochs}", "trainer.progress=false", *LAUNCHERS[launcher],
        f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(root))
    seconds, load = timed(command, env, root, f"{launcher} sweep")
    jobs = {}
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        jobs[metrics["seed"]] = {
            "test_nll": metrics["test"]["nll"],
            "startup_s": metrics["timing"]["startup_s"],
            "train_s": metrics["timing"]["train_s"],
        }
    return {"seconds": seconds, **load, "jobs": jobs}


def run(opts: Options) -> dict:
    epochs, reps = opts.epochs or EPOCHS, opts.reps or REPS
    seeds = [opts.seed, opts.seed + 1]
    runs: dict[str, list] = {name: [] for name in LAUNCHERS}
    with tempfile.TemporaryDirectory(prefix="bslrun_joblib_sweep_") as tmp:
        for rep in range(reps):
            order = list(LAUNCHERS) if rep % 2 == 0 else list(LAUNCHERS)[::-1]
            for name in order:
                runs[name].append(sweep(name, seeds, epochs, Path(tmp)))
    seconds = {name: [r["seconds"] for r in runs[name]] for name in LAUNCHERS}
    paired = [s / p for s, p in zip(seconds["sequential"], seconds["joblib"], strict=True)]
    ratio = statistics.median(seconds["sequential"]) / statistics.median(seconds["joblib"])
    complete = all(sorted(r["jobs"]) == seeds for rs in runs.values() for r in rs)
    nll = {s: [r["jobs"][s]["test_nll"] for rs in runs.values() for r in rs] for s in seeds}
    same = complete and all(math.isclose(min(v), max(v), rel_tol=1e-5) for v in nll.values())
    return {
        "description": "2-job sweep: Hydra's joblib launcher (2 processes) vs basic (sequential)",
        "config": {
            "command": "bslrun -m seed=S,S+1 trainer.epochs=E [hydra/launcher=joblib"
            " hydra.launcher.n_jobs=2]",
            "seeds": seeds,
            "epochs": epochs,
            "reps": reps,
        },
        "environment": environment(),
        "methods": {
            name: {"seconds": spread(seconds[name]), "runs": runs[name]} for name in LAUNCHERS
        },
        "ratio": ratio,
        "ratio_paired_reps": paired,
        "target": TARGET_RATIO,
        "meets_target": ratio > TARGET_RATIO,
        "sanity": {"all_jobs_wrote_metrics": complete, "same_test_nll_per_seed": same,
                   "passed": complete and same},
    }  # fmt: skip


def summarise(result: dict) -> str:
    cfg, methods = result["config"], result["methods"]
    lines = [
        f"{NAME}: default BNN, {cfg['epochs']} epochs, seeds {cfg['seeds']},"
        f" {cfg['reps']} alternating reps, {result['environment']['cpu_count']} CPUs"
    ]
    for name, method in methods.items():
        line = f"  {name:<10} {method['seconds']['median']:6.1f} s median"
        used = [r["sweep_cores"] for r in method["runs"]]
        others = [r["other_processes_cores"] for r in method["runs"]]
        if None not in used:
            line += f"; cores used: {statistics.mean(used):.2f} by the sweep,"
            line += f" {statistics.mean(others):.2f} by other processes"
        lines.append(line)
    lines.append(
        f"  ratio sequential/joblib {result['ratio']:.2f}x (paired reps "
        + ", ".join(f"{r:.2f}" for r in result["ratio_paired_reps"])
        + f"; target > {result['target']:.1f}: {'met' if result['meets_target'] else 'NOT met'});"
        f" sanity {'passed' if result['sanity']['passed'] else 'FAILED'}"
    )
    return "\n".join(lines)
