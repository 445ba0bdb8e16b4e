"""The lecture MAF trained by the fused epoch and by per-step loops, from one initial state.

``python -m benchmarks.fused_vs_loop [--epochs N] [--seed S] [--out FILE.json]``

The config is ``experiment=lecture_maf_moons`` composed as the command line composes it
(two moons, 3 MADE [128, 128] layers, Adam 1e-3, batch 256). Three trainings start from
the state ``engine.prepare`` draws, in one process:

- fused: ``engine.fit``'s compiled epoch (one ``lax.scan`` of ``svi.update`` over a
  device-side permutation drawn from ``fold_in(key, epoch)``);
- loop: ``jax.jit(svi.update)`` per batch from a host loop, over the same batches in
  the same order (the permutation computed as ``engine.epoch_fn`` computes it);
- loop_host_order: the same loop over batches of a host-side numpy permutation (the
  order ``benchmarks.common.Loop`` uses, as in ``maf_epoch``).

fused and loop are the same computation: they differ only by float rounding (XLA may
fuse the step differently inside the scan), so on a CPU their losses agree closely. On
a GPU, float32 matmuls may run in TF32 (JAX's default precision there); run once more
with ``JAX_DEFAULT_MATMUL_PRECISION=highest`` to tell that rounding from a real
difference. loop_host_order shows how far another order of the same batches alone moves
the loss: this flow's epoch losses spike (by a nat and more between neighbouring
epochs at lr 1e-3), so two trainings that see different batches end apart by chance.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import environment
from bslrun import artifacts, seeding
from bslrun.data import load as load_data
from bslrun.inference import engine
from bslrun.models import build as build_family

PRESET = "lecture_maf_moons"
EPOCHS = 51  # maf_epoch's schedule: 1 warm-up epoch + 5 repetitions x 10 epochs


def compose(seed: int):
    """The typed config of ``bslrun experiment=lecture_maf_moons seed=<seed>``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bslrun import cli
    from bslrun.registry import register

    register()
    with initialize_config_dir(config_dir=str(cli.CONFIG_DIR), version_base="1.3"):
        return cli.to_config(hydra_compose("config", [f"experiment={PRESET}", f"seed={seed}"]))


def setup(cfg):
    """Data, family and ``engine.prepare``'s set-up, keyed as a run of ``cfg`` is."""
    keys = seeding.streams(cfg.seed)
    data = load_data(cfg.data, keys.data)
    family = build_family(cfg.model, data.spec, len(data.train), keys.structure)
    s = engine.prepare(
        family, data.train, cfg.optim, cfg.trainer.batch_size, cfg.trainer.epochs, 1, keys.init
    )
    epochs_key = jax.random.split(keys.train)[0]  # engine.fit's split of the train stream
    return family, s, epochs_key


def same_batches(key, n: int, batch_size: int, num_batches: int):
    """The batch indices ``engine.epoch_fn`` draws from ``key``."""
    perm = jax.random.permutation(key, n)
    return perm[: num_batches * batch_size].reshape(num_batches, batch_size)


def host_batches(rng, n: int, batch_size: int, num_batches: int):
    perm = rng.permutation(n)[: num_batches * batch_size]
    return perm.reshape(num_batches, batch_size)


def train(family, s, epochs_key, epochs: int, rng) -> dict:
    """Each method's loss per epoch (mean over its batches) and final parameters."""
    kwargs = engine.epoch_kwargs(family, 1)  # the flow has none; kept for other families
    fused = engine._compiled_epoch(family, s, epochs_key, family.spec.dynamic_binarize)
    update = jax.jit(lambda state, x, y: s.svi.update(state, x, y, **kwargs))
    states = {name: s.state for name in ("fused", "loop", "loop_host_order")}
    losses = {name: [] for name in states}
    n = s.x.shape[0]
    for epoch in range(1, epochs + 1):
        key = jax.random.fold_in(epochs_key, epoch)
        states["fused"], loss, _ = fused(states["fused"], key, s.x, s.y, kwargs)
        losses["fused"].append(float(loss))
        orders = {
            "loop": same_batches(key, n, s.batch_size, s.num_batches),
            "loop_host_order": host_batches(rng, n, s.batch_size, s.num_batches),
        }
        for name, batches in orders.items():
            state, step_losses = states[name], []
            for idx in batches:
                state, loss = update(state, s.x[idx], s.y[idx])
                step_losses.append(loss)
            states[name] = state
            losses[name].append(float(np.mean(jax.device_get(step_losses))))
    params = {name: s.svi.get_params(state) for name, state in states.items()}
    return {"losses": losses, "params": params}


def max_relative_difference(a, b) -> float:
    """Largest |a - b| over the leaves, relative to the largest |b|."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)
    scale = max(float(np.max(np.abs(np.asarray(y)))) for y in jax.tree.leaves(b))
    return diff / max(scale, 1e-30)


def first_divergence(a: list, b: list, tolerance: float = 1e-3):
    """The first epoch whose losses differ by more than ``tolerance`` (relative), or None."""
    for epoch, (x, y) in enumerate(zip(a, b, strict=True), start=1):
        if abs(x - y) > tolerance * max(1.0, abs(y)):
            return epoch
    return None


def run(epochs: int, seed: int) -> dict:
    cfg = compose(seed)
    family, s, epochs_key = setup(cfg)
    tick = time.perf_counter()
    out = train(family, s, epochs_key, epochs, seeding.numpy_rng(jax.random.fold_in(epochs_key, 0)))
    losses, params = out["losses"], out["params"]
    final = {name: values[-1] for name, values in losses.items()}
    return {
        "preset": PRESET,
        "epochs": epochs,
        "seed": seed,
        "batch_size": s.batch_size,
        "batches_per_epoch": s.num_batches,
        "matmul_precision": os.environ.get("JAX_DEFAULT_MATMUL_PRECISION", "default"),
        "environment": environment(),
        "wall_s": time.perf_counter() - tick,
        "final_loss": final,
        "best_loss": {name: min(values) for name, values in losses.items()},
        "fused_minus_loop": final["fused"] - final["loop"],
        "params_max_relative_difference_fused_vs_loop": max_relative_difference(
            params["fused"], params["loop"]
        ),
        "first_epoch_fused_and_loop_differ_by_1e-3": first_divergence(
            losses["fused"], losses["loop"]
        ),
        "all_finite": all(math.isfinite(v) for values in losses.values() for v in values),
        "losses": losses,
    }


def summarise(result: dict) -> str:
    final, best = result["final_loss"], result["best_loss"]
    lines = [
        f"fused_vs_loop: {result['preset']}, {result['epochs']} epochs x"
        f" {result['batches_per_epoch']} batches of {result['batch_size']},"
        f" {result['environment']['device']}, matmul precision {result['matmul_precision']}"
    ]
    for name in final:
        lines.append(f"  {name:<16} final loss {final[name]:.4f}  best {best[name]:.4f}")
    lines.append(
        f"  fused - loop (same batches) {result['fused_minus_loop']:+.2e};"
        f" parameters differ by {result['params_max_relative_difference_fused_vs_loop']:.1e}"
        f" of their largest; losses first differ by >1e-3 at epoch"
        f" {result['first_epoch_fused_and_loop_differ_by_1e-3']}"
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = parser.parse_args(argv)
    result = run(args.epochs, args.seed)
    print(summarise(result))
    if args.out:
        print(f"  wrote {artifacts.write_json(args.out, result)}")


if __name__ == "__main__":
    main()
