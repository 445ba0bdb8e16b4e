"""1D regression toys (bslrun.data.toy1d) against their definitions: y = sin(x) + sigma(x) eps
with the stated input ranges and noise scales, checked statistically on large draws."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bslrun.config import ToyDataConfig
from bslrun.data import load, toy1d
from bslrun.registry import datasets

N = 40_000  # the std of a sample std is sigma / sqrt(2N) = 0.35% of sigma


def draw(name: str, n: int = N, noise=None, seed: int = 0):
    """(x, y) of a training split in original units, and its Dataset."""
    cfg = ToyDataConfig(name=name, n_train=n, n_val=0, n_test=10, noise=noise)
    data = load(cfg, jax.random.PRNGKey(seed))
    spec = data.spec
    x = spec.x_scaler.inverse(data.train.x[:, 0].astype(np.float64))
    y = spec.y_scaler.inverse(data.train.y.astype(np.float64))
    return x, y, data


def test_sine_gap_has_constant_noise_and_no_inputs_in_the_gap():
    x, y, _ = draw("sine_gap")
    assert np.all(np.abs(x) >= toy1d.GAP - 1e-5) and np.all(np.abs(x) <= toy1d.SPAN + 1e-5)
    assert 0.48 < np.mean(x > 0) < 0.52  # both sides equally likely
    residual = y - np.sin(x)
    assert np.mean(residual) == pytest.approx(0.0, abs=4 * 0.1 / np.sqrt(N))
    assert np.std(residual) == pytest.approx(0.1, rel=0.015)
    # The noise does not depend on x: the same std on each side.
    for side in (x < 0, x > 0):
        assert np.std(residual[side]) == pytest.approx(0.1, rel=0.025)


def test_heteroscedastic_noise_std_follows_its_definition():
    x, y, _ = draw("heteroscedastic")
    assert np.all(np.abs(x) <= toy1d.SPAN + 1e-5)
    residual = y - np.sin(x)
    # eps = residual / sigma(x) is standard normal: std 1, kurtosis 3.
    eps = residual / (0.2 * np.exp(x / 4))
    assert np.std(eps) == pytest.approx(1.0, rel=0.015)
    assert np.mean(eps**4) == pytest.approx(3.0, rel=0.06)
    # Binned: the std of the residual within each eighth of the range is the rms of
    # sigma(x) = 0.2 exp(x / 4) over that bin.
    edges = np.linspace(-4, 4, 9)
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        t = np.linspace(low, high, 1001)
        expected = np.sqrt(np.mean((0.2 * np.exp(t / 4)) ** 2))
        inside = (x >= low) & (x < high)
        assert np.std(residual[inside]) == pytest.approx(expected, rel=0.05), (low, high)


def test_data_noise_replaces_the_default_scale():
    x, y, _ = draw("sine_gap", n=20_000, noise=0.3)
    assert np.std(y - np.sin(x)) == pytest.approx(0.3, rel=0.02)


def test_same_seed_same_data_and_training_split_standardised():
    _, _, a = draw("heteroscedastic", n=300, seed=3)
    _, _, b = draw("heteroscedastic", n=300, seed=3)
    _, _, c = draw("heteroscedastic", n=300, seed=4)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert not np.array_equal(a.train.x, c.train.x)
    assert a.train.x.shape == (300, 1) and a.train.x.dtype == np.float32
    assert np.mean(a.train.x) == pytest.approx(0.0, abs=1e-5)
    assert np.std(a.train.y) == pytest.approx(1.0, rel=1e-4)
    assert a.spec.task == "regression" and a.spec.input_dim == 1 and a.val is None


@pytest.mark.parametrize("name", sorted(toy1d.TOYS))
def test_registered_as_regression_toys(name):
    entry = datasets()[name]
    assert entry.loader is toy1d.load and entry.task == "regression"
    assert entry.schema is ToyDataConfig
