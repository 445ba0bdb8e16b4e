"""Data-parallel training (trainer.devices): the same loss trajectory as one device.

JAX fixes its device count when it starts, so the two-device check runs in a child
process with XLA_FLAGS=--xla_force_host_platform_device_count=2 (two CPU devices).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import compose

from bslrun.errors import ConfigError
from bslrun.inference.devices import Placement

HERE = Path(__file__).resolve().parent
TESTS = [str(HERE), str(HERE.parent)]  # test_engine, and the conftest it imports

CHILD = """
import json, sys
sys.path[:0] = {tests!r}
import jax
from test_engine import run_fit, tiny_problem, trainer
from bslrun.config import OptimConfig, Schedule
from bslrun.inference import engine
from bslrun.inference.devices import Placement

family, data = tiny_problem()
optim_cfg, out = OptimConfig(lr=1e-2, schedule=Schedule.constant), {{"device_count": jax.device_count()}}
for devices in (1, 2):
    result = run_fit(family, data, optim_cfg, trainer(epochs=6, patience=0, devices=devices))
    out[devices] = {{
        "train_loss": [row["train_loss"] for row in result.history],
        "val_nll": [row["val_nll"] for row in result.history],
        "params": [jax.numpy.ravel(leaf).tolist() for leaf in jax.tree.leaves(result.params)],
    }}
placement = Placement(2)
setup = engine.prepare(family, data.train, optim_cfg, 16, 6, 1, jax.random.PRNGKey(0), placement)
epoch = engine.epoch_fn(setup.svi, setup.batch_size, setup.num_batches, placement=placement)
compiled = jax.jit(epoch).lower(setup.state, jax.random.PRNGKey(1), setup.x, setup.y, {{}}).compile()
out["hlo"] = compiled.as_text()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def two_devices() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["JAX_PLATFORMS"] = "cpu"
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(tests=TESTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_two_devices_follow_one_devices_loss_trajectory(two_devices):
    assert two_devices["device_count"] == 2
    one, two = two_devices["1"], two_devices["2"]
    # Only the order of floating-point sums differs (float32).
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(two["val_nll"], one["val_nll"], rtol=1e-5)
    for got, want in zip(two["params"], one["params"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_two_device_epoch_is_partitioned_with_a_gradient_all_reduce(two_devices):
    hlo = two_devices["hlo"]
    assert "num_partitions=2" in hlo  # one program, SPMD-partitioned over the two devices
    assert "all-reduce" in hlo  # each device's share of the batch gradient is summed


def test_more_devices_than_jax_sees_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"trainer.devices=\d+ but JAX sees") as error:
        Placement(jax.device_count() + 1)
    assert "xla_force_host_platform_device_count" in str(error.value)


def test_a_whole_training_set_batch_that_does_not_split_evenly_is_refused():
    placement = Placement(1)
    placement.check_batch(7)  # one device takes any batch
    placement.devices = 2  # the check itself, without needing a second device here
    with pytest.raises(ConfigError, match="does not split over trainer.devices=2"):
        placement.check_batch(7)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.devices=0", "trainer.devices=0 must be a positive integer"),
        ("trainer.devices=3", "trainer.batch_size=64 must be a multiple of trainer.devices=3"),
        ("trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1 must be zero"),
    ],
)
def test_bad_trainer_values_are_refused_before_compiling(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        compose(override)
