"""Helpers shared by the benchmarks: options, timing statistics, environment, JSON output."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bslrun import artifacts, seeding
from bslrun.data.splits import IDENTITY, DataSpec
from bslrun.inference import engine

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Options:
    """Command-line knobs; None keeps each benchmark's own default."""

    epochs: int | None = None  # timed epochs per repetition
    reps: int | None = None  # timed repetitions per method
    seed: int = 0
    results_dir: Path = RESULTS_DIR  # where results are written (and earlier ones read)


def spread(values: list) -> dict:
    """Median and every repetition (the median resists one noisy repetition)."""
    return {"median": statistics.median(values), "reps": list(values)}


def environment() -> dict:
    """Package versions, operating system and the JAX device that ran the benchmark."""
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
    payload = {"benchmark": name, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    return artifacts.write_json(results_dir / f"{name}.json", payload)


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
        self.methods = list(methods)
        self.states = {m.name: state0 for m in methods}
        self.done = {m.name: 0 for m in methods}
        self.last_loss: dict = {}
        self.seconds = {m.name: [] for m in methods}

    def train(self, method, epochs: int) -> None:
        for _ in range(epochs):
            self.done[method.name] += 1
            state, loss = method.epoch(self.states[method.name], self.done[method.name])
            self.states[method.name] = state
            self.last_loss[method.name] = float(loss)  # the one host sync per epoch

    def time(self, epochs: int, reps: int, warmup: int, after_rep=None) -> None:
        """``warmup`` untimed epochs each, then ``reps`` timed repetitions of ``epochs``.

        Repetitions alternate the methods' order so that both share the machine's noise;
        ``after_rep()`` runs after each repetition (e.g. a matmul probe).
        """
        for method in self.methods:
            self.train(method, warmup)
        for rep in range(reps):
            for method in self.methods if rep % 2 == 0 else self.methods[::-1]:
                tick = time.perf_counter()
                self.train(method, epochs)
                self.seconds[method.name].append(time.perf_counter() - tick)
            if after_rep is not None:
                after_rep()

    def summary(self, examples_per_rep: int) -> dict:
        """Per method: examples per second (median and reps), compile time, final loss."""
        out = {}
        for m in self.methods:
            rates = [examples_per_rep / s for s in self.seconds[m.name]]
            out[m.name] = {
                "examples_per_sec": spread(rates),
                "min_over_max_rep": min(rates) / max(rates),
                "seconds_per_rep": self.seconds[m.name],
                "compile_s": m.compile_s,
                "final_loss": self.last_loss[m.name],
            }
        return out

    def ratio(self, fast: str = "fused", slow: str = "loop") -> tuple[float, list]:
        """Median throughput ratio, and each repetition's paired ratio."""
        medians = {m: self.summary(1)[m]["examples_per_sec"]["median"] for m in (fast, slow)}
        paired = [s / f for f, s in zip(self.seconds[fast], self.seconds[slow], strict=True)]
        return medians[fast] / medians[slow], paired


class Fused:
    """The engine's epoch: one compiled program per epoch, called as ``engine.fit`` calls it."""

    name = "fused"

    def __init__(self, family, svi, x, y, batch_size, num_batches, state, key):
        self.family, self.x, self.y, self.key = family, x, y, key
        self.finite = True
        tick = time.perf_counter()
        fn = jax.jit(engine.epoch_fn(svi, batch_size, num_batches))
        kwargs = engine.epoch_kwargs(family, 1)
        self.run_epoch = fn.lower(state, key, x, y, kwargs).compile()
        self.compile_s = time.perf_counter() - tick

    def epoch(self, state, index):
        state, loss, finite = self.run_epoch(
            state,
            jax.random.fold_in(self.key, index),
            self.x,
            self.y,
            engine.epoch_kwargs(self.family, index),
        )
        loss, finite = jax.device_get((loss, finite))  # the one host sync per epoch
        self.finite = self.finite and bool(finite)
        return state, loss


class Loop:
    """The usual NumPyro pattern: a host loop of jitted ``svi.update`` steps, batches
    gathered per step from the device arrays with a host-side numpy permutation."""

    name = "loop"

    def __init__(self, family, svi, x, y, batch_size, num_batches, state, key):
        self.family, self.x, self.y = family, x, y
        self.batch_size, self.num_batches = batch_size, num_batches
        self.rng = seeding.numpy_rng(key)
        self.update = jax.jit(svi.update)
        # Compile time: trace + compile + one step of the first call (plus the gathers').
        tick = time.perf_counter()
        idx = np.arange(batch_size)
        kwargs = engine.epoch_kwargs(family, 1)
        jax.block_until_ready(self.update(state, x[idx], y[idx], **kwargs))
        self.compile_s = time.perf_counter() - tick

    def epoch(self, state, index):
        kwargs = engine.epoch_kwargs(self.family, index)
        perm = self.rng.permutation(self.x.shape[0])
        losses = []
        for b in range(self.num_batches):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            state, loss = self.update(state, self.x[idx], self.y[idx], **kwargs)
            losses.append(loss)
        return state, float(jnp.mean(jnp.stack(losses)))  # the one host sync per epoch

    def compilations(self):
        size = getattr(self.update, "_cache_size", None)
        return size() if size is not None else None


def fused_against_loop(setup, opts: Options, description: str, defaults: dict) -> dict:
    """The standard benchmark: the engine's fused epoch against the per-step loop.

    ``setup(seed, epochs_total)`` returns (family, svi, x, y, batch_size, num_batches,
    state, key, config); ``defaults`` holds epochs, reps, warmup, target and tolerance.
    """
    epochs = opts.epochs or defaults["epochs"]
    reps = opts.reps or defaults["reps"]
    warmup = defaults["warmup"]
    family, svi, x, y, batch_size, num_batches, state0, key, config = setup(
        opts.seed, warmup + epochs * reps
    )
    methods = [
        cls(family, svi, x, y, batch_size, num_batches, state0, key) for cls in (Fused, Loop)
    ]
    race = Race(methods, state0)
    race.time(epochs, reps, warmup)
    ratio, paired = race.ratio()
    return {
        "description": description,
        "config": {**config, "epochs_per_rep": epochs, "reps": reps, "warmup_epochs": warmup},
        "environment": environment(),
        "methods": race.summary(epochs * batch_size * num_batches),
        "ratio": ratio,
        "ratio_paired_reps": paired,
        "target": defaults["target"],
        "meets_target": ratio >= defaults["target"],
        "sanity": sanity(
            race.done["fused"],
            race.last_loss["fused"],
            race.last_loss["loop"],
            defaults["tolerance"],
            methods[1].compilations(),
            params_finite=methods[0].finite,
        ),
    }


def summarise_race(result: dict, title: str) -> str:
    """A few lines: each method's throughput and the fused/loop ratio against its target."""
    cfg, check = result["config"], result["sanity"]
    lines = [
        f"{title}, batch {cfg['batch_size']}, {cfg['reps']} reps x {cfg['epochs_per_rep']}"
        f" epochs, {result['environment']['device']}"
    ]
    for name in ("fused", "loop"):
        method = result["methods"][name]
        lines.append(
            f"  {name:<6} {method['examples_per_sec']['median']:>10,.0f} examples/s (median)"
            f"  compile {method['compile_s']:.2f} s  final loss {method['final_loss']:.4f}"
        )
    lines.append(
        f"  ratio fused/loop {result['ratio']:.2f}x (target {result['target']:.1f}x:"
        f" {'met' if result['meets_target'] else 'NOT met'});"
        f" sanity {'passed' if check['passed'] else 'FAILED'}"
    )
    return "\n".join(lines)


def random_image_spec(n: int, image_shape: tuple) -> DataSpec:
    """The data spec of ``n`` random binary images (the benchmarks' stand-in for MNIST)."""
    return DataSpec(
        name="random_binary",
        task="classification",
        input_dim=int(image_shape[0] * image_shape[1] * image_shape[2]),
        num_classes=10,
        x_scaler=IDENTITY,
        y_scaler=IDENTITY,
        feature_names=(),
        target_name="digit",
        n_total=n,
        image_shape=tuple(image_shape),
    )
