"""Replicas trained together: each computes what ``engine.fit`` computes for it alone."""

from __future__ import annotations

import dataclasses
import signal

import jax
import numpy as np
import pytest
from conftest import linear_regression_data, make_dataset

from bslrun.config import BnnConfig, EvalConfig, OptimConfig, Posterior, Schedule, TrainerConfig
from bslrun.data.splits import Standardiser
from bslrun.errors import DivergenceError, RunInterrupted
from bslrun.inference import engine, vectorised
from bslrun.models.bnn import BnnFamily

N, DIM = 64, 3
# Batched matrix products may sum in another order than single ones: float32 rounding,
# carried through a few hundred Adam steps.
TOLERANCE = 1e-4


def dataset(seed: int, y_shift: float = 0.0, y_scale: float = 1.0):
    """A small regression set; its y standardiser differs per replica (a split's own)."""
    rng = np.random.default_rng(seed)
    x, y = linear_regression_data(rng, N + 16, DIM, 0.3)
    y = y + np.sin(2 * x[:, 0])
    data = make_dataset(x[:N], y[:N], val=(x[N:], y[N:]))
    scaler = Standardiser(np.float32(y_shift), np.float32(y_scale))
    return dataclasses.replace(data, spec=dataclasses.replace(data.spec, y_scaler=scaler))


def replica(seed: int, lr: float = 0.01, prior_scale: float = 1.0, **data_kw):
    model = BnnConfig(hidden=[8], posterior=Posterior.mean_field, init_scale=0.01,
                      prior_scale=prior_scale)  # fmt: skip
    optim = OptimConfig(lr=lr, schedule=Schedule.cosine)
    return vectorised.Replica(
        dataset(seed, **data_kw), jax.random.PRNGKey(seed), jax.random.PRNGKey(100 + seed),
        model, optim,
    )  # fmt: skip


def trainer(**kw):
    return TrainerConfig(**{"epochs": 12, "batch_size": 16, "progress": False, **kw})


def alone(r: vectorised.Replica, trainer_cfg):
    family = BnnFamily(r.model_cfg, r.data.spec, n_train=len(r.data.train))
    return engine.fit(family, r.data, r.optim_cfg, trainer_cfg, r.init_key, r.key,
                      family.val_samples(EvalConfig()))  # fmt: skip


def together(replicas, trainer_cfg, **kw):
    key = jax.random.PRNGKey(0)  # the BNN's structure draws nothing
    return vectorised.fit_replicas(replicas, trainer_cfg, EvalConfig(), key, "test", **kw)


def assert_same_fit(a: engine.Fitted, b: engine.Fitted):
    assert (a.epochs_run, a.best_epoch, a.stopped_early) == (b.epochs_run, b.best_epoch,
                                                             b.stopped_early)  # fmt: skip
    for row_a, row_b in zip(a.history, b.history, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_b[key] == pytest.approx(row_a[key], rel=TOLERANCE, abs=TOLERANCE), key
    jax.tree.map(
        lambda u, v: np.testing.assert_allclose(v, u, rtol=TOLERANCE, atol=TOLERANCE),
        a.params, b.params,
    )  # fmt: skip


def test_each_replica_is_its_run_alone():
    """Seeds, learning rates, prior scales and the data's standardisers all differ; one
    replica stops early, the others run to the end; each matches its run alone."""
    replicas = [
        replica(0),
        replica(1, lr=0.1, prior_scale=0.5, y_shift=2.0, y_scale=3.0),
        replica(2, lr=0.003, prior_scale=2.0, y_shift=-1.0, y_scale=0.5),
    ]
    trainer_cfg = trainer(patience=2)
    group = together(replicas, trainer_cfg)
    results = [alone(r, trainer_cfg) for r in replicas]
    assert {r.stopped_early for r in results} == {True, False}  # the test covers both
    for mine, theirs in zip(group.outcomes, results, strict=True):
        assert isinstance(mine, engine.Fitted)
        assert_same_fit(theirs, mine)
        assert mine.timing["replicas"] == len(replicas)


def test_a_diverged_replica_leaves_the_others_training():
    replicas = [replica(0), replica(1, lr=1e30)]
    group = together(replicas, trainer(epochs=4))
    good, bad = group.outcomes
    assert isinstance(bad, DivergenceError)
    assert "training diverged at epoch 1" in str(bad)
    assert bad.result.epochs_run == 1  # its history is written, with the last finite params
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(bad.result.params))
    assert isinstance(good, engine.Fitted) and good.epochs_run == 4


def test_a_stop_signal_gives_every_replica_what_it_has():
    asked = iter([None, signal.SIGTERM])
    group = together([replica(0), replica(1)], trainer(epochs=6),
                     stop_requested=lambda: next(asked))  # fmt: skip
    for outcome in group.outcomes:
        assert isinstance(outcome, RunInterrupted)
        assert outcome.signum == signal.SIGTERM
        assert outcome.result.epochs_run == 2
        assert "keep no checkpoint" in str(outcome)


def test_apply_evaluates_each_replica_in_its_own_units():
    """``Group.apply`` builds each replica's family from its own standardiser: the test
    metrics (original units) equal each family's own evaluation."""
    replicas = [replica(0), replica(1, y_shift=5.0, y_scale=4.0)]
    group = together(replicas, trainer(epochs=2))
    params = vectorised.stacked([o.params for o in group.outcomes])
    x = np.stack([r.data.test.x for r in replicas])
    y = np.stack([r.data.test.y for r in replicas])
    keys = np.stack([jax.random.PRNGKey(7)] * 2)
    scores = group.apply(lambda f, p, x, y, k: f.evaluate(p, x, y, k, 16), params, x, y, keys)
    for i, (r, outcome) in enumerate(zip(replicas, group.outcomes, strict=True)):
        family = BnnFamily(r.model_cfg, r.data.spec, n_train=N)
        own = jax.jit(family.evaluate, static_argnums=4)(
            outcome.params, r.data.test.x, r.data.test.y, keys[i], 16
        )
        for name, value in own.items():
            assert scores[name][i] == pytest.approx(float(value), rel=1e-5, abs=1e-6), name
    assert scores["rmse"][1] > 2 * scores["rmse"][0]  # in units 4 times larger
