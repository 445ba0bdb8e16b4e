"""Fused SVI epoch against a per-step loop of jitted ``SVI.update`` calls, on the lecture MAF.

The flow is the course notebook's: 3 masked autoregressive layers, each a MADE
with hidden layers [128, 128] (ReLU) followed by a permutation, fitted to
10,000 two-moons points (noise 0.05) with Adam (lr 1e-3) in batches of 256.
Both methods train it with the same ``engine.make_svi`` object from the same
initial state in one process (see ``benchmarks.common.Fused`` and ``Loop``):
the fused epoch is what ``engine.fit`` runs; the loop is the usual NumPyro
pattern. Throughput is training examples per second, excluding compilation.
"""

from __future__ import annotations

from benchmarks.common import Options, fused_against_loop, summarise_race
from bslrun import seeding
from bslrun.config import FlowConfig, OptimConfig, Schedule, ToyDataConfig, as_dict
from bslrun.data import load as load_data
from bslrun.inference import engine
from bslrun.models import build as build_family

NAME = "maf_epoch"
TARGET_RATIO = 1.7  # from the issue: the fused epoch at least 1.7x the per-step loop
BATCH_SIZE = 256
EPOCHS = 10  # timed epochs per repetition
REPS = 5
WARMUP_EPOCHS = 1
LOSS_TOLERANCE = 0.1


def setup(seed: int, epochs_total: int):
    """Data, family, SVI and the shared initial state, built as ``engine.fit`` builds them."""
    keys = seeding.streams(seed)
    data_cfg = ToyDataConfig(name="moons", n_train=10000, n_val=0, n_test=1, noise=0.05)
    model_cfg = FlowConfig(flow="maf", depth=3, hidden=[128, 128])
    optim_cfg = OptimConfig(lr=1e-3, schedule=Schedule.constant)
    data = load_data(data_cfg, keys.data)
    family = build_family(model_cfg, data.spec, len(data.train), keys.structure)
    s = engine.prepare(family, data.train, optim_cfg, BATCH_SIZE, epochs_total, 1, keys.init)
    svi, x, y, state = s.svi, s.x, s.y, s.state
    batch_size, num_batches = s.batch_size, s.num_batches
    config = {
        "data": as_dict(data_cfg),
        "model": as_dict(model_cfg),
        "optim": as_dict(optim_cfg),
        "n_train": int(x.shape[0]),
        "batch_size": batch_size,
        "batches_per_epoch": num_batches,
        "examples_per_epoch": batch_size * num_batches,
    }
    return family, svi, x, y, batch_size, num_batches, state, keys.train, config


DEFAULTS = dict(
    epochs=EPOCHS, reps=REPS, warmup=WARMUP_EPOCHS, target=TARGET_RATIO, tolerance=LOSS_TOLERANCE
)


def run(opts: Options) -> dict:
    return fused_against_loop(
        setup,
        opts,
        "Lecture MAF on two moons: fused lax.scan epoch vs per-step jitted loop",
        DEFAULTS,
    )


def summarise(result: dict) -> str:
    cfg = result["config"]
    return summarise_race(
        result,
        f"{NAME}: MAF 3 x MADE [128, 128] on moons (n={cfg['n_train']})",
    )
