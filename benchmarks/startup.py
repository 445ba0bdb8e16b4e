"""Start-up: the whole ``bslrun`` command, with the compilation cache off, cold and warm.

What a user waits for, measured as a subprocess from the shell's point of view:

- ``bslrun trainer.epochs=1`` (the default BNN on white wine, one epoch), REPS times in
  each mode: ``off`` (``trainer.compilation_cache=off``: every program compiled, as before
  the cache), ``cold`` (an empty cache folder each repetition: compiled and written) and
  ``warm`` (that folder after one more run: every program loaded). Each run's
  ``metrics.json`` gives the time to the first training step (``timing.startup_s``) and
  the phases (import, init, compile, train, eval_compile, eval, write).
- ``bslrun -m 'seed=range(20)' trainer.epochs=1``, a 20-job sweep in one process (Hydra's
  basic launcher), off, cold and warm, once each (SWEEP_REPS).
- ``bslrun --help`` and a config error (``model=nope``), which must answer at once.

Targets (issue 16): warm at most 8 s with the first step within 4 s; cold at most 15 s;
the sweep at least 3x faster warm than off; help and a config error under 1 s. Sanity:
the single run's test and validation metrics are identical, to the bit, in all three modes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Options, environment, spread

NAME = "startup"
REPS = 3
SWEEP_JOBS = 20
SWEEP_REPS = 1
TARGETS = {"warm_s": 8.0, "warm_first_step_s": 4.0, "cold_s": 15.0, "sweep_speedup": 3.0,
           "answer_s": 1.0}  # fmt: skip
PHASES = ("import_s", "init_s", "compile_s", "train_s", "eval_compile_s", "eval_s", "write_s")
CHECKOUT = Path(__file__).resolve().parents[1]


def command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "bslrun", *overrides]


def timed(args: list[str], env: dict, ok: bool = True) -> float:
    """Wall seconds of one command; it must succeed (or fail, for ``ok=False``)."""
    tick = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=CHECKOUT)
    seconds = time.perf_counter() - tick
    if (done.returncode == 0) != ok:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


def one_run(out: Path, cache: str, env: dict) -> dict:
    """One ``bslrun trainer.epochs=1``: wall seconds, its timing and its scores."""
    run_dir = out / f"run_{time.time_ns()}"
    wall = timed(command("trainer.epochs=1", "trainer.progress=false",
                         f"trainer.compilation_cache={cache}", f"hydra.run.dir={run_dir}"),
                 env)  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timing = metrics["timing"]
    return {
        "wall_s": wall,
        "first_step_s": timing["startup_s"],
        "phases": {k: timing.get(k) for k in PHASES},
        "scores": {"test": metrics["test"], "val": metrics["val"]},
    }


def sweep(out: Path, cache: str, env: dict) -> float:
    sweep_dir = out / f"sweep_{time.time_ns()}"
    return timed(command("-m", f"seed=range({SWEEP_JOBS})", "trainer.epochs=1",
                         "trainer.progress=false", f"trainer.compilation_cache={cache}",
                         f"hydra.sweep.dir={sweep_dir}"), env)  # fmt: skip


def run(opts: Options) -> dict:
    reps = opts.reps or REPS
    with tempfile.TemporaryDirectory(prefix="bslrun_startup_") as tmp:
        out = Path(tmp)
        env = {**os.environ, "BSLRUN_OUTPUT_DIR": str(out / "experiments")}
        singles = {"off": [], "cold": [], "warm": []}
        for rep in range(reps):
            cache = out / f"cache_{rep}"
            singles["off"].append(one_run(out, "off", env))
            singles["cold"].append(one_run(out, str(cache), env))
            # The first process that loads from a cache lowers the epoch with its operations
            # in another order than the one that filled it, and adds that program (see
            # docs/speed.md); warm is a cache after that.
            one_run(out, str(cache), env)
            singles["warm"].append(one_run(out, str(cache), env))
        sweeps = {"off": [], "cold": [], "warm": []}
        for rep in range(SWEEP_REPS):
            cache = out / f"sweep_cache_{rep}"
            for mode in ("off", "cold", "warm"):
                sweeps[mode].append(sweep(out, "off" if mode == "off" else str(cache), env))
        answers = {
            "help_s": spread([timed(command("--help"), env) for _ in range(reps)]),
            "config_error_s": spread(
                [timed(command("model=nope"), env, ok=False) for _ in range(reps)]
            ),  # fmt: skip
        }
    scores = [r["scores"] for mode in singles.values() for r in mode]
    single = {
        mode: {
            "wall_s": spread([r["wall_s"] for r in rs]),
            "first_step_s": spread([r["first_step_s"] for r in rs]),
            "phases_median": {k: statistics.median(r["phases"][k] for r in rs) for k in PHASES},
        }
        for mode, rs in singles.items()
    }
    sweep_medians = {mode: statistics.median(v) for mode, v in sweeps.items()}
    return {
        "reps": reps,
        "single_run": single,
        "sweep": {
            "jobs": SWEEP_JOBS,
            **{m: spread(v) for m, v in sweeps.items()},
            "speedup_warm": sweep_medians["off"] / sweep_medians["warm"],
            "speedup_cold": sweep_medians["off"] / sweep_medians["cold"],
        },  # fmt: skip
        "answers": answers,
        "targets": TARGETS,
        "sanity": {
            "passed": all(s == scores[0] for s in scores),
            "check": "identical test and validation metrics off, cold and warm",
        },
        "environment": environment(),
    }


def summarise(result: dict) -> str:
    single, swept, answers = result["single_run"], result["sweep"], result["answers"]
    lines = []
    for mode in ("off", "cold", "warm"):
        s = single[mode]
        phases = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in s["phases_median"].items())
        lines.append(f"  {mode:4s}: {s['wall_s']['median']:.2f} s wall, first step "
                     f"{s['first_step_s']['median']:.2f} s ({phases})")  # fmt: skip
    lines.append(f"  sweep of {swept['jobs']}: off {swept['off']['median']:.1f} s, cold "
                 f"{swept['cold']['median']:.1f} s, warm {swept['warm']['median']:.1f} s: "
                 f"{swept['speedup_warm']:.2f}x warm, {swept['speedup_cold']:.2f}x cold")  # fmt: skip
    lines.append(f"  --help {answers['help_s']['median']:.2f} s, config error "
                 f"{answers['config_error_s']['median']:.2f} s")  # fmt: skip
    t = result["targets"]
    met = {
        f"warm <= {t['warm_s']:g} s": single["warm"]["wall_s"]["median"] <= t["warm_s"],
        f"warm first step <= {t['warm_first_step_s']:g} s":
            single["warm"]["first_step_s"]["median"] <= t["warm_first_step_s"],
        f"cold <= {t['cold_s']:g} s": single["cold"]["wall_s"]["median"] <= t["cold_s"],
        f"sweep >= {t['sweep_speedup']:g}x": swept["speedup_warm"] >= t["sweep_speedup"],
    }  # fmt: skip
    lines.append("  targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}"
                                           for k, v in met.items()))  # fmt: skip
    lines.append(f"  same metrics off, cold and warm: {result['sanity']['passed']}")
    return "\n".join(lines)
