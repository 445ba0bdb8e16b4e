"""Training's peak memory, estimated from shapes before anything compiles
(bslrun.inference.memory): exact where it can be (the SVI state), and a refusal in
one line, in seconds, for a model that cannot fit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CompileCounter, compose, linear_regression_data, make_dataset

from bslrun import seeding
from bslrun.config import BnnConfig, OptimConfig, Posterior, Schedule, TrainerConfig
from bslrun.data import load
from bslrun.errors import ConfigError
from bslrun.inference import engine, memory, optim
from bslrun.models import build
from bslrun.models.family import VAL_SAMPLES

FEATURES, HIDDEN, ROWS = 3, 7, 50


def small_bnn(posterior: str = "mean_field"):
    x, y = linear_regression_data(np.random.default_rng(0), ROWS, FEATURES, 0.3)
    data = make_dataset(x, y, val=(x[:10], y[:10]))
    cfg = BnnConfig(hidden=[HIDDEN], posterior=Posterior(posterior))
    return build(cfg, data.spec, ROWS), data


def composed(*overrides):
    """The CLI's config, data and family for ``overrides`` (as run.py builds them)."""
    cfg = compose(*overrides)
    keys = seeding.streams(cfg.seed)
    data = load(cfg.data, keys.data)
    return cfg, data, build(cfg.model, data.spec, len(data.train), keys.structure)


@pytest.mark.parametrize("posterior", ["mean_field", "full_rank"])
def test_state_bytes_equal_those_of_an_actual_svi_init(posterior):
    family, data = small_bnn(posterior)
    trainer = TrainerConfig(batch_size=16, progress=False)
    optim_cfg = OptimConfig(schedule=Schedule.constant)
    estimate = memory.estimate(family, data, optim_cfg, trainer, VAL_SAMPLES)

    optimiser, _ = optim.build(optim_cfg, ROWS // 16, trainer.epochs)
    svi = engine.make_svi(family, optimiser, trainer.num_particles)
    state = svi.init(jax.random.PRNGKey(0), data.train.x[:16], data.train.y[:16])
    params = svi.optim.get_params(state.optim_state)
    assert estimate.parameters == sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    assert estimate.state == sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    # By hand: D = (3 + 1) * 7 + (7 + 1) * 1 weights; float32 loc and scale (mean-field) or
    # loc, scale and a D x D triangle (full-rank), and the noise scale.
    d = (FEATURES + 1) * HIDDEN + (HIDDEN + 1)
    floats = {"mean_field": 2 * d, "full_rank": 2 * d + d * d}[posterior] + 1
    assert estimate.parameters == 4 * floats
    # Adam's two moments are parameter-sized; the rest is step counters and the key.
    assert 2 * estimate.parameters <= estimate.optimiser < 2 * estimate.parameters + 64
    # A step holds at least the gradients, the new state and the scan's carried state.
    assert estimate.step >= estimate.parameters + 2 * estimate.state
    # The data: 50 training and 10 validation rows of 3 float32 inputs and a target.
    assert estimate.data == 4 * (ROWS + 10) * (FEATURES + 1)
    assert estimate.state_copies == 3  # initial, current and best


def test_peak_follows_liveness():
    """Values are freed after their last use: a chain holds two arrays at a time, a
    computation that keeps every intermediate holds them all."""
    n = 1000  # float32: 4 kB per array

    def chain(x):
        for _ in range(10):
            x = jnp.sin(x)
        return x

    def keep_all(x):
        values = [x]
        for _ in range(10):
            values.append(jnp.sin(values[-1]))
        return sum(values)

    x = jax.ShapeDtypeStruct((n,), jnp.float32)
    assert memory.peak(jax.make_jaxpr(chain)(x).jaxpr) == 2 * 4 * n
    assert memory.peak(jax.make_jaxpr(keep_all)(x).jaxpr) >= 10 * 4 * n


def test_step_grows_with_batch_and_particles():
    family, data = small_bnn()
    base = memory.estimate(
        family, data, OptimConfig(schedule=Schedule.constant), TrainerConfig(batch_size=8), 1
    )
    big = memory.estimate(
        family, data, OptimConfig(schedule=Schedule.constant), TrainerConfig(batch_size=32), 1
    )
    many = memory.estimate(
        family,
        data,
        OptimConfig(schedule=Schedule.constant),
        TrainerConfig(batch_size=8, num_particles=64),
        1,
    )
    # The hidden layer's activations alone: 32 x 7 float32 values, and 64 x 8 x 7.
    assert big.step - base.step >= 4 * 24 * HIDDEN
    assert many.step - base.step >= 4 * 63 * 8 * HIDDEN


def test_a_huge_hidden_layer_is_refused_in_one_line_before_anything_compiles():
    cfg, data, family = composed("model.hidden=[100000000]", "trainer.epochs=1")
    keys = seeding.streams(cfg.seed)
    with CompileCounter() as compiled, pytest.raises(ConfigError) as info:
        engine.fit(family, data, cfg.optim, cfg.trainer, keys.init, keys.train, VAL_SAMPLES)
    message = str(info.value)
    assert compiled.names == []  # refused from shapes alone: nothing was compiled
    assert "\n" not in message
    assert message.startswith("training needs about ")
    assert "TB of memory" in message  # 1.3e9 weights, and 32 draws of a 1e8-wide layer
    assert "one training step" in message and "but available RAM is" in message
    assert "use a smaller model.hidden or trainer.batch_size" in message
    assert "trainer.max_memory_gb" in message


def test_a_tiny_limit_refuses_the_default_run():
    cfg, data, family = composed("trainer.max_memory_gb=0.001")
    with pytest.raises(ConfigError) as info:
        memory.check(family, data, cfg.optim, cfg.trainer, VAL_SAMPLES)
    message = str(info.value)
    assert "but trainer.max_memory_gb is 1 MB" in message
    assert message.endswith("or raise trainer.max_memory_gb") and "\n" not in message


def test_a_generous_limit_passes():
    cfg, data, family = composed("trainer.max_memory_gb=1000")
    estimate = memory.check(family, data, cfg.optim, cfg.trainer, VAL_SAMPLES)
    assert 0 < estimate.total < 1000 * memory.GB
    # The default run's estimate: the validation pass (32 posterior draws of the network on
    # 490 rows: 32 x 490 x 50 float32 activations per layer) dominates.
    rows, columns = data.train.x.shape
    assert estimate.data >= 4 * rows * columns
    assert estimate.evaluation >= 4 * VAL_SAMPLES * len(data.val) * 50


def test_the_default_limit_is_what_the_machine_has():
    limit, source = memory.available(TrainerConfig())
    if jax.devices()[0].platform == "cpu":
        assert source == "available RAM"
        assert limit is not None and limit > 0
    assert memory.available(TrainerConfig(max_memory_gb=2.5)) == (
        int(2.5 * memory.GB),
        "trainer.max_memory_gb",
    )


def test_sizes_read_well():
    assert memory._gb(12.6e12) == "12.6 TB"
    assert memory._gb(23.6e9) == "23.6 GB"
    assert memory._gb(1e6) == "1 MB"
    assert memory._gb(231_000) == "231 kB"
    assert memory._gb(12) == "12 bytes"


def test_a_second_run_of_the_same_shapes_reuses_the_estimate(monkeypatch):
    """The jobs of a sweep over seeds share shapes: the model is traced for the estimate once
    per process; another shape (a wider layer) is estimated afresh."""
    traced = []
    original = memory.estimate
    monkeypatch.setattr(memory, "estimate", lambda *a: traced.append(a) or original(*a))
    monkeypatch.setattr(memory, "_estimates", {})
    runs = [composed("trainer.epochs=1", f"seed={seed}") for seed in (1, 2)]
    runs.append(composed("trainer.epochs=1", "model.hidden=[7]"))
    for cfg, data, family in runs:
        memory.check(family, data, cfg.optim, cfg.trainer, VAL_SAMPLES, 200)
    assert len(traced) == 2
    assert traced[1][0].cfg.hidden == [7]
