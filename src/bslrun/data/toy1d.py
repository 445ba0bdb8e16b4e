"""1D regression toys: a curve plus Gaussian noise, sampled afresh from the seed.

Each toy draws x from an input density p(x) and y = f(x) + sigma(x) eps, eps ~ N(0, 1),
with f(x) = sin(x) (the lecture's BNN pictures, e.g. Blundell et al. 2015, fig. 5):

* sine_gap: x ~ U([-4, -1.5] u [1.5, 4]), sigma(x) = s (default 0.1). No input falls in
  the gap (-1.5, 1.5), so the posterior over functions is free there and the epistemic
  part of the predictive spread should grow in the gap and beyond the data (Foong et al.
  2019, "'In-between' uncertainty in Bayesian neural networks", arXiv:1906.11537).
* heteroscedastic: x ~ U(-4, 4), sigma(x) = s exp(x / 4) (default s = 0.2): the noise grows
  from 0.07 to 0.54 across the range. Its log is linear in x, so ``model.noise=linear``
  (or ``model.likelihood=heteroscedastic``) can represent it exactly.

``noise`` (``data.noise``) replaces s. Inputs and targets are standardised with the
training split's mean and std (as the tables are), so the BNN's N(0, 1) prior suits them;
predictions and figures come back in these original units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bslrun.config import ToyDataConfig
from bslrun.data.splits import Dataset, DataSpec, Split, fit_standardiser
from bslrun.registry import DataSet
from bslrun.seeding import numpy_rng, split_keys

SPAN = 4.0  # inputs lie in [-SPAN, SPAN]
GAP = 1.5  # sine_gap: no input in (-GAP, GAP)


def curve(x: np.ndarray) -> np.ndarray:
    """The noiseless regression function f(x) = sin(x)."""
    return np.sin(x)


def gap_inputs(rng, n: int) -> np.ndarray:
    """U([-SPAN, -GAP] u [GAP, SPAN]): a uniform |x| in [GAP, SPAN] with a random sign."""
    return rng.choice([-1.0, 1.0], n) * rng.uniform(GAP, SPAN, n)


def wide_inputs(rng, n: int) -> np.ndarray:
    return rng.uniform(-SPAN, SPAN, n)


def constant_noise(x: np.ndarray, s: float) -> np.ndarray:
    return np.full_like(x, s)


def growing_noise(x: np.ndarray, s: float) -> np.ndarray:
    """sigma(x) = s exp(x / 4): log sigma is linear in x."""
    return s * np.exp(x / SPAN)


@dataclass(frozen=True)
class Toy1d:
    inputs: Callable  # (rng, n) -> x (n,)
    noise_std: Callable  # (x, s) -> sigma(x) (n,)
    default_noise: float

    def sample(self, rng, n: int, noise: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(x (n,), y (n,)) in float64: y = f(x) + sigma(x) eps."""
        s = self.default_noise if noise is None else float(noise)
        x = self.inputs(rng, n)
        return x, curve(x) + self.noise_std(x, s) * rng.standard_normal(n)


TOYS = {
    "sine_gap": Toy1d(gap_inputs, constant_noise, 0.1),
    "heteroscedastic": Toy1d(wide_inputs, growing_noise, 0.2),
}


def load(cfg, key) -> Dataset:
    """Fresh i.i.d. draws of toy ``cfg.name``: independent keys for train, val and test
    (val None if n_val = 0), standardised with the training rows' mean and std."""
    toy = TOYS[cfg.name]
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    keys = dict(zip(sizes, split_keys(key, 3), strict=True))
    drawn = {
        part: toy.sample(numpy_rng(keys[part]), n, cfg.noise) for part, n in sizes.items() if n > 0
    }
    x_scaler = fit_standardiser(drawn["train"][0][:, None])
    y_scaler = fit_standardiser(drawn["train"][1])
    parts = {
        part: Split(x_scaler.forward(x[:, None]), y_scaler.forward(y))
        for part, (x, y) in drawn.items()
    }
    spec = DataSpec(
        name=cfg.name,
        task="regression",
        input_dim=1,
        num_classes=0,
        x_scaler=x_scaler,
        y_scaler=y_scaler,
        feature_names=("x",),
        target_name="y",
        n_total=sum(sizes.values()),
    )
    return Dataset(train=parts["train"], val=parts.get("val"), test=parts["test"], spec=spec)


DATASETS = {name: DataSet(load, ToyDataConfig, "regression") for name in TOYS}
