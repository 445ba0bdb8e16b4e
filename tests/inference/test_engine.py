"""The SVI engine: batch plan, the fused epoch, early stopping, the NaN guard, compile count."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from conftest import CompileCounter, linear_regression_data, make_dataset

from bslrun.config import (
    BnnConfig,
    Monitor,
    OptimConfig,
    OptimName,
    Posterior,
    Schedule,
    TrainerConfig,
)
from bslrun.errors import DivergenceError
from bslrun.inference import engine
from bslrun.models.bnn import BnnFamily

N, DIM = 64, 3


def tiny_problem(*, posterior="mean_field", val=True, noise_scale=None, seed=0):
    rng = np.random.default_rng(seed)
    x, y = linear_regression_data(rng, N + 16, DIM, 0.3)
    y = y + np.sin(2 * x[:, 0])  # a little non-linearity for the hidden layer
    data = make_dataset(x[:N], y[:N], val=(x[N:], y[N:]) if val else None)
    cfg = BnnConfig(
        hidden=[8], posterior=Posterior(posterior), noise_scale=noise_scale, init_scale=0.01
    )
    return BnnFamily(cfg, data.spec, n_train=N), data


def trainer(**kw):
    base = dict(epochs=10, batch_size=16, num_particles=1, progress=False)
    base.update(kw)
    return TrainerConfig(**base)


def run_fit(family, data, optim_cfg, trainer_cfg, seed=0, checkpoints=None):
    return engine.fit(
        family,
        data,
        optim_cfg,
        trainer_cfg,
        jax.random.PRNGKey(seed),
        jax.random.PRNGKey(seed + 1),
        8,
        checkpoints=checkpoints,
    )


# ----------------------------------------------------------------------------- batch plan


@pytest.mark.parametrize(
    "n, batch, expected",
    [
        (100, 32, (32, 3)),
        (64, 16, (16, 4)),
        (10, 64, (10, 1)),
        (7, 7, (7, 1)),
        (5, 1, (1, 5)),
        (33, 32, (32, 1)),
    ],
)
def test_batch_plan(n, batch, expected):
    size, count = engine.batch_plan(n, batch)
    assert (size, count) == expected
    # Fixed shapes: every batch full, never more rows than exist, fewer than one batch dropped.
    assert 1 <= size <= n and size * count <= n < size * (count + 1)


# ----------------------------------------------------------------------------- a short fit


def test_fit_history_and_decreasing_loss():
    family, data = tiny_problem()
    result = run_fit(
        family, data, OptimConfig(lr=0.02, schedule=Schedule.constant), trainer(epochs=30)
    )
    history = result.history
    assert len(history) == result.epochs_run == 30
    assert [row["epoch"] for row in history] == list(range(1, 31))
    losses = np.array([row["train_loss"] for row in history])
    assert np.all(np.isfinite(losses))
    # Noisy (one-particle ELBO), so compare averages over the first and last epochs.
    assert losses[-5:].mean() < losses[:5].mean() - 0.1
    for row in history:
        assert math.isfinite(row["val_nll"]) and math.isfinite(row["val_rmse"])
        assert row["lr"] == pytest.approx(0.02)
    assert not result.stopped_early
    assert 1 <= result.best_epoch <= 30
    # The best epoch has the lowest validation NLL (the default monitor).
    val_nll = [row["val_nll"] for row in history]
    assert result.best_epoch == 1 + int(np.argmin(val_nll))
    leaves = jax.tree.leaves(result.params)
    assert leaves and all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves)
    assert result.params["w_loc"].shape == (family.num_weights,)


def test_cosine_schedule_logged_per_epoch():
    family, data = tiny_problem(val=False, noise_scale=0.3)
    epochs, lr = 4, 0.01
    result = run_fit(
        family, data, OptimConfig(lr=lr, schedule=Schedule.cosine), trainer(epochs=epochs)
    )
    steps_per_epoch = N // 16
    total = steps_per_epoch * epochs
    for row in result.history:
        step = row["epoch"] * steps_per_epoch - 1  # the last step of the epoch
        expected = 0.5 * lr * (1 + math.cos(math.pi * step / total))
        assert row["lr"] == pytest.approx(expected, rel=1e-5)
    # Without validation the last state is returned.
    assert result.best_epoch == epochs == result.epochs_run


def test_early_stopping_when_validation_cannot_improve():
    # A learning rate of 1e-30 leaves every float32 parameter unchanged, so each
    # validation (same key, same parameters) repeats the first score exactly:
    # nothing after epoch 1 is an improvement.
    family, data = tiny_problem(posterior="map")
    opt = OptimConfig(name=OptimName.sgd, lr=1e-30, momentum=0.0, schedule=Schedule.constant)
    result = run_fit(family, data, opt, trainer(epochs=50, patience=3, monitor=Monitor.rmse))
    assert result.stopped_early
    assert result.epochs_run == len(result.history) == 1 + 3
    assert result.best_epoch == 1
    rmse = {row["val_rmse"] for row in result.history}
    assert len(rmse) == 1


def test_patience_zero_never_stops_early():
    family, data = tiny_problem(posterior="map")
    opt = OptimConfig(name=OptimName.sgd, lr=1e-30, momentum=0.0, schedule=Schedule.constant)
    result = run_fit(family, data, opt, trainer(epochs=6, patience=0))
    assert not result.stopped_early and result.epochs_run == 6


def check_divergence(error_info, epochs, loss_finite=False):
    result = error_info.value.result
    history = result.history
    assert 1 <= len(history) <= epochs
    # The diverged epoch is the last row: its loss is NaN/inf, unless the loss was
    # still finite and the epoch's last update overflowed the parameters.
    assert math.isfinite(history[-1]["train_loss"]) == loss_finite
    assert all(math.isfinite(row["train_loss"]) for row in history[:-1])
    leaves = jax.tree.leaves(result.params)
    assert leaves and all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves)
    assert "diverged" in str(error_info.value)


def test_divergence_from_huge_learning_rate():
    family, data = tiny_problem(val=False, noise_scale=0.3)
    opt = OptimConfig(name=OptimName.sgd, lr=1e30, momentum=0.0, schedule=Schedule.constant)
    epochs = 10
    with pytest.raises(DivergenceError) as info:
        run_fit(family, data, opt, trainer(epochs=epochs, batch_size=N))
    check_divergence(info, epochs)
    # The first epoch's loss is evaluated before any update, so it is finite.
    assert len(info.value.result.history) >= 2


def test_divergence_result_params_finite_when_update_overflows():
    # lr = 1e38: epoch 1's loss (taken before its update) is finite, but the update
    # itself overflows float32 to inf; epoch 2's loss is then NaN.
    family, data = tiny_problem(val=False, noise_scale=0.3)
    opt = OptimConfig(name=OptimName.sgd, lr=1e38, momentum=0.0, schedule=Schedule.constant)
    with pytest.raises(DivergenceError) as info:
        run_fit(family, data, opt, trainer(epochs=10, batch_size=N))
    check_divergence(info, 10, loss_finite=True)
    assert "parameters overflowed" in str(info.value)


def test_divergence_from_infinite_data():
    family, data = tiny_problem(val=False, noise_scale=0.3)
    data.train.y[3] = np.inf  # the arrays are plain numpy: poison one target
    with pytest.raises(DivergenceError) as info:
        run_fit(
            family,
            data,
            OptimConfig(lr=1e-3, schedule=Schedule.constant),
            trainer(epochs=5, batch_size=N),
        )
    check_divergence(info, 5)
    assert len(info.value.result.history) == 1


# ----------------------------------------------------------------------------- compile once


def test_epoch_compiled_once_regardless_of_epochs():
    family, data = tiny_problem()
    opt = OptimConfig(lr=0.01, schedule=Schedule.warmup_cosine, warmup_epochs=1)
    # A first run compiles whatever eager helpers need compiling once per process.
    run_fit(family, data, opt, trainer(epochs=2))
    counts = {}
    for epochs in (3, 6):
        with CompileCounter() as counter:
            result = run_fit(family, data, opt, trainer(epochs=epochs))
        assert result.epochs_run == epochs
        counts[epochs] = counter.names
    # The epoch program is compiled exactly once per fit.
    assert counts[3].count("jit(epoch)") == 1, counts[3]
    assert counts[6].count("jit(epoch)") == 1, counts[6]
    # Nothing else is compiled per epoch either: 6 epochs compile exactly what 3 do.
    assert sorted(counts[6]) == sorted(counts[3]), (counts[3], counts[6])


# ------------------------------------------------------------------- progress without a bar


def test_without_a_terminal_progress_is_a_line_every_progress_every_s(caplog):
    """Under pytest stderr is no terminal, so the bar is off; with a tiny interval every
    epoch after the first says where training is, and with 0 none does."""
    family, data = tiny_problem()
    optim = OptimConfig(lr=1e-2, schedule=Schedule.constant)
    with caplog.at_level("INFO", logger="bslrun"):
        run_fit(family, data, optim, trainer(epochs=4, progress=True, progress_every_s=1e-9))
    lines = [r.getMessage() for r in caplog.records if " so far, about " in r.getMessage()]
    assert [line.split(",")[0] for line in lines] == [f"train: epoch {e}/4" for e in (2, 3, 4)]
    assert all("loss=" in line and "val_nll=" in line for line in lines), lines
    caplog.clear()
    with caplog.at_level("INFO", logger="bslrun"):
        run_fit(family, data, optim, trainer(epochs=4, progress=True, progress_every_s=0))
    assert not [r for r in caplog.records if " so far, about " in r.getMessage()]


def test_a_progress_line_gives_the_time_left_at_the_pace_so_far():
    from bslrun.clock import ProgressLines

    class NoBar:  # tqdm where stderr is no terminal
        disable = True

        def update(self):
            pass

    lines = ProgressLines(NoBar(), "bnn", total=100, done=9, every_s=30)  # epoch 10 just ended
    lines.epoch = 30  # 20 epochs in 40 s since: 2 s an epoch, 70 epochs to go
    assert lines.line(40.0) == "bnn: epoch 30/100; 40 s so far, about 2 min 20 s left"
    lines.epoch = 11  # one epoch in 7300 s, 89 to go: 649,700 s
    assert lines.line(7300.0) == "bnn: epoch 11/100; 2 h 01 min so far, about 180 h 28 min left"
