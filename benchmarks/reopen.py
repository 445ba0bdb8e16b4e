"""Reopening a run: ``bslrun.load`` of the default wine BNN, and ``run.predict`` on many rows.

The default BNN on white wine (11-50-50-1, mean-field) is trained for one epoch (its
parameters' values do not change the cost) by a ``bslrun`` subprocess. Then, in a fresh
process for each repetition:

- ``load_s``: ``bslrun.load(run_dir)`` after ``import bslrun.reopen`` (the import, which
  brings in JAX, is ``import_s``);
- ``predict_first_s``: ``run.predict`` on 100,000 rows with 200 posterior draws, the
  compilation included; ``predict_again_s``: the same call once compiled;
- memory: the process's peak resident set before and after predicting 100,000 rows, then
  400,000 rows. Predictions run in chunks of rows, so the growth is the inputs and outputs
  (O(rows)), not the rows x draws x width activations that one unchunked pass would hold
  (``unchunked_activation_mb``).

Targets: load at most 1 s, the first predict at most 3 s (on this machine's CPUs).
Sanity: the predictions are finite and the 95% intervals hold their means.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Options, environment, spread

NAME = "reopen"
ROWS = 100_000
MORE_ROWS = 400_000
DRAWS = 200
REPS = 3
TARGETS = {"load_s": 1.0, "predict_first_s": 3.0}

PROBE = """
import json, resource, sys, time
import numpy as np

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

tick = time.perf_counter()
import bslrun.reopen
out = {"import_s": time.perf_counter() - tick}
tick = time.perf_counter()
run = bslrun.load(sys.argv[1])
out["load_s"] = time.perf_counter() - tick
rng = np.random.default_rng(0)
scaler = run.spec.x_scaler

def rows(n):
    return rng.normal(size=(n, run.spec.input_dim)) * scaler.std + scaler.mean

x = rows(%(rows)d)
out["peak_before_mb"] = peak_mb()
tick = time.perf_counter()
pred = run.predict(x, num_samples=%(draws)d, seed=0)
out["predict_first_s"] = time.perf_counter() - tick
out["peak_after_mb"] = peak_mb()
tick = time.perf_counter()
pred = run.predict(x, num_samples=%(draws)d, seed=1)
out["predict_again_s"] = time.perf_counter() - tick
out["finite"] = bool(np.isfinite(pred.mean).all() and np.isfinite(pred.std).all())
out["intervals_hold_means"] = bool(np.all((pred.lower_95 <= pred.mean) & (pred.mean <= pred.upper_95)))
more = rows(%(more)d)
pred = run.predict(more, num_samples=%(draws)d, seed=0)
out["peak_after_more_mb"] = peak_mb()
out["widths"] = list(run.config["model"]["hidden"])
print(json.dumps(out))
"""


def train(root: Path) -> Path:
    run_dir = root / "bnn"
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(root))
    command = [sys.executable, "-m", "bslrun", "trainer.epochs=1", "trainer.progress=false"]
    subprocess.run([*command, f"hydra.run.dir={run_dir}"], check=True, env=env, cwd=root,
                   capture_output=True)  # fmt: skip
    return run_dir


def probe(run_dir: Path) -> dict:
    script = PROBE % {"rows": ROWS, "more": MORE_ROWS, "draws": DRAWS}
    done = subprocess.run([sys.executable, "-c", script, str(run_dir)], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(opts: Options) -> dict:
    reps = opts.reps or REPS
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = train(Path(tmp))
        probes = [probe(run_dir) for _ in range(reps)]
    keys = ("import_s", "load_s", "predict_first_s", "predict_again_s")
    timings = {k: spread([p[k] for p in probes]) for k in keys}
    first = probes[0]
    widths = first["widths"]
    unchunked = DRAWS * ROWS * sum(widths) * 4 / 2**20  # float32 activations of one pass
    memory = {
        "growth_100k_rows_mb": first["peak_after_mb"] - first["peak_before_mb"],
        "growth_400k_rows_mb": first["peak_after_more_mb"] - first["peak_before_mb"],
        "unchunked_activation_mb": unchunked,
    }
    met = {k: timings[k]["median"] <= target for k, target in TARGETS.items()}
    return {
        "rows": ROWS,
        "draws": DRAWS,
        "timings": timings,
        "memory": memory,
        "targets": TARGETS,
        "met": met,
        "sanity": {
            "finite": all(p["finite"] for p in probes),
            "intervals_hold_means": all(p["intervals_hold_means"] for p in probes),
            "passed": all(p["finite"] and p["intervals_hold_means"] for p in probes),
        },
        "environment": environment(),
    }


def summarise(result: dict) -> str:
    t, m = result["timings"], result["memory"]
    verdict = ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in result["met"].items())
    return (
        f"reopen: load {t['load_s']['median']:.2f} s (after {t['import_s']['median']:.2f} s of "
        f"imports); predict {result['rows']:,} rows x {result['draws']} draws: first "
        f"{t['predict_first_s']['median']:.2f} s, again {t['predict_again_s']['median']:.2f} s; "
        f"peak memory +{m['growth_100k_rows_mb']:.0f} MB (100k rows), "
        f"+{m['growth_400k_rows_mb']:.0f} MB (400k rows) against "
        f"{m['unchunked_activation_mb']:.0f} MB for one unchunked pass; {verdict}"
    )
