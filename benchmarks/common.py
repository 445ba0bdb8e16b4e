"""Helpers shared by the benchmarks: options, timing statistics, environment, JSON output."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Options:
    """Command-line knobs; None keeps each benchmark's own default."""

    epochs: int | None = None  # timed epochs per repetition
    reps: int | None = None  # timed repetitions per method
    seed: int = 0


def spread(values: list) -> dict:
    """Median and every repetition (the median resists one noisy repetition)."""
    return {"median": statistics.median(values), "reps": list(values)}


def environment() -> dict:
    """Package versions, operating system and the JAX device that ran the benchmark."""
    import jax

    from bslrun.run import versions

    found = versions()
    device = jax.devices()[0]
    return {
        "versions": found,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": str(device),
        "device_kind": getattr(device, "device_kind", None),
        "device_count": jax.device_count(),
    }


def write(name: str, result: dict, results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``result`` to ``results_dir/<name>.json`` atomically; return the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    payload = {"benchmark": name, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def sanity(epochs: int, fused_loss: float, loop_loss: float, tolerance: float,
           loop_compilations, params_finite: bool = True) -> dict:  # fmt: skip
    """Both methods trained to a finite, similar loss, and the loop compiled its step once."""
    finite = math.isfinite(fused_loss) and math.isfinite(loop_loss) and params_finite
    gap = abs(fused_loss - loop_loss) / max(1.0, abs(loop_loss)) if finite else float("nan")
    return {
        "epochs_trained_each": epochs,
        "final_loss_fused": fused_loss,
        "final_loss_loop": loop_loss,
        "finite": finite,
        "relative_gap": gap,
        "tolerance": tolerance,
        "loop_update_compilations": loop_compilations,
        "passed": finite and gap <= tolerance and loop_compilations in (None, 1),
    }


class Race:
    """Each method's training state, epoch count and last loss, advanced epoch by epoch."""

    def __init__(self, methods, state0):
        self.states = {m.name: state0 for m in methods}
        self.done = {m.name: 0 for m in methods}
        self.last_loss: dict = {}

    def train(self, method, epochs: int) -> None:
        for _ in range(epochs):
            self.done[method.name] += 1
            state, loss = method.epoch(self.states[method.name], self.done[method.name])
            self.states[method.name] = state
            self.last_loss[method.name] = float(loss)  # the one host sync per epoch
