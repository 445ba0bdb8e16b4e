"""What the experiment loggers cost ``make run``'s training (the default BNN on white wine).

Each repetition runs ``bslrun`` once per logger choice (csv, the default, which adds no
logger; tensorboard; mlflow; wandb, offline), in rotating order, each in its own process
with its own output folder, and reads the run's ``metrics.json``. ``--epochs N`` trains N
epochs without early stopping instead (make run's default stops after about a second of
training, where a logger's start-up dominates):

- ``handover_s``: ``timing.log_s``, the training loop's own time on the loggers (handing
  each epoch's row to the loggers' thread);
- ``train_s``: ``timing.train_s + timing.val_s``, the training loop's compiled work, which a
  logger's thread (or W&B's service process) can slow by competing for the CPU cores.

``overhead`` is the median over repetitions of (train_s with the logger) / (train_s with
csv in the same repetition) - 1, and ``handover_fraction`` the median of handover_s /
train_s. Target: each logger at most 2% of the training time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Options, environment

NAME = "logging_overhead"
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
REPS = 3
TARGET = 0.02


def one_run(root: Path, logger: str, rep: int, epochs: int | None) -> dict:
    run_dir = root / f"{logger}_{rep}"
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(root), WANDB_MODE="offline")
    command = [sys.executable, "-m", "bslrun", "trainer.progress=false", f"logger={logger}"]
    if epochs:  # a longer run than make run's (which stops early after about a second)
        command += [f"trainer.epochs={epochs}", "trainer.patience=0"]
    subprocess.run([*command, f"hydra.run.dir={run_dir}"], check=True, env=env, cwd=root,
                   capture_output=True)  # fmt: skip
    timing = json.loads((run_dir / "metrics.json").read_text())["timing"]
    return {"train_s": timing["train_s"] + timing["val_s"], "handover_s": timing["log_s"]}


def run(opts: Options) -> dict:
    reps = opts.reps or REPS
    runs: dict[str, list[dict]] = {name: [] for name in LOGGERS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            order = LOGGERS[rep % len(LOGGERS) :] + LOGGERS[: rep % len(LOGGERS)]
            for name in order:
                runs[name].append(one_run(Path(tmp), name, rep, opts.epochs))
    base = [r["train_s"] for r in runs["csv"]]
    loggers = {}
    for name in LOGGERS[1:]:
        ratios = [r["train_s"] / b - 1 for r, b in zip(runs[name], base, strict=True)]
        handover = [r["handover_s"] / r["train_s"] for r in runs[name]]
        loggers[name] = {
            "overhead": statistics.median(ratios),
            "overhead_reps": ratios,
            "handover_fraction": statistics.median(handover),
            "train_s_reps": [r["train_s"] for r in runs[name]],
        }
    return {
        "epochs": opts.epochs or "make run's",
        "csv_train_s_reps": base,
        "loggers": loggers,
        "target": TARGET,
        "met": {name: v["overhead"] <= TARGET for name, v in loggers.items()},
        "environment": environment(),
    }


def summarise(result: dict) -> str:
    parts = [
        f"{name} {100 * v['overhead']:+.1f}% (hand-over {100 * v['handover_fraction']:.2f}%)"
        for name, v in result["loggers"].items()
    ]
    base = statistics.median(result["csv_train_s_reps"])
    verdict = ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in result["met"].items())
    return (
        f"logging overhead on make run's training ({result.get('epochs', 'make run')} epochs, "
        f"{base:.2f} s with csv): "
        f"{'; '.join(parts)}; target {100 * result['target']:.0f}%: {verdict}"
    )
