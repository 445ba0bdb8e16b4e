"""Fused SVI epoch against a per-step loop of jitted ``SVI.update`` calls, on the wine BNN.

Both methods train the same BNN (11 inputs, one hidden layer of 50, output 1,
mean-field posterior, Adam) with the same ``engine.make_svi`` object, from the
same initial state, in one process:

- fused: ``engine.epoch_fn`` compiled once, one ``lax.scan`` of ``SVI.update``
  over a device-side permutation (what ``engine.fit`` runs);
- loop: the usual NumPyro pattern, ``jax.jit(svi.update)`` called from a host
  loop over batches gathered from the device arrays with a host-side numpy
  permutation.

Both sync with the host once per epoch only (the mean loss), so the loop is a
fair baseline. Throughput is training examples per second, excluding
compilation (reported separately); repetitions alternate the methods' order so
both share the machine's noise.
"""

from __future__ import annotations

from benchmarks.common import Options, fused_against_loop, summarise_race
from bslrun import seeding
from bslrun.config import BnnConfig, DataConfig, OptimConfig, Posterior, Schedule, as_dict
from bslrun.data import load as load_data
from bslrun.inference import engine
from bslrun.models import build as build_family

NAME = "bnn_epoch"
TARGET_RATIO = 3.0  # from the issue: the fused epoch at least 3x the per-step loop
BATCH_SIZE = 32
EPOCHS = 30  # timed epochs per repetition (a fused rep then lasts ~0.25 s on 2 CPU cores)
REPS = 5
WARMUP_EPOCHS = 1  # untimed, after compiling: warms dispatch caches of the eager gathers
LOSS_TOLERANCE = 0.1  # |fused - loop| final loss, per datum, relative to max(1, |loss|)


def setup(seed: int, epochs_total: int):
    """Data, family, SVI and the shared initial state, built as ``engine.fit`` builds them."""
    keys = seeding.streams(seed)
    data_cfg = DataConfig()
    model_cfg = BnnConfig(hidden=[50], posterior=Posterior.mean_field)
    optim_cfg = OptimConfig(lr=1e-3, schedule=Schedule.constant)  # Adam, constant lr
    data = load_data(data_cfg, keys.data)
    family = build_family(model_cfg, data.spec, len(data.train))
    s = engine.prepare(family, data.train, optim_cfg, BATCH_SIZE, epochs_total, 1, keys.init)
    svi, x, y, state = s.svi, s.x, s.y, s.state
    batch_size, num_batches = s.batch_size, s.num_batches
    config = {
        "data": data_cfg.name,
        "n_train": int(x.shape[0]),
        "input_dim": int(x.shape[1]),
        "hidden": list(model_cfg.hidden),
        "output_dim": 1,
        "num_weights": family.num_weights,
        "model": as_dict(model_cfg),
        "optim": as_dict(optim_cfg),
        "batch_size": batch_size,
        "batches_per_epoch": num_batches,
        "examples_per_epoch": batch_size * num_batches,
        "num_particles": 1,
    }
    return family, svi, x, y, batch_size, num_batches, state, keys.train, config


DEFAULTS = dict(
    epochs=EPOCHS, reps=REPS, warmup=WARMUP_EPOCHS, target=TARGET_RATIO, tolerance=LOSS_TOLERANCE
)


def run(opts: Options) -> dict:
    return fused_against_loop(
        setup,
        opts,
        "BNN training throughput: fused lax.scan epoch vs per-step jitted SVI.update loop",
        DEFAULTS,
    )


def summarise(result: dict) -> str:
    cfg = result["config"]
    return summarise_race(
        result,
        f"{NAME}: BNN {cfg['input_dim']}-{'-'.join(map(str, cfg['hidden']))}-{cfg['output_dim']}"
        f" on {cfg['data']} (n={cfg['n_train']})",
    )
