"""Splitting, sub-sampling and standardising tabular data.

Standardisation is fitted on the training split only and travels with the
data (``DataSpec``) so that metrics can be reported in original units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from bslrun.errors import DataError
from bslrun.seeding import numpy_rng


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (n, d) float32 inputs, standardised if the config says so
    y: np.ndarray  # (n,) float32 targets (standardised) or int32 labels

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class Standardiser:
    """Affine map a -> (a - mean) / std fitted on training data."""

    mean: np.ndarray
    std: np.ndarray

    def forward(self, a: np.ndarray) -> np.ndarray:
        return ((a - self.mean) / self.std).astype(np.float32)

    def inverse(self, a):
        return a * self.std + self.mean


IDENTITY = Standardiser(np.float32(0.0), np.float32(1.0))


@dataclass(frozen=True)
class DataSpec:
    name: str
    task: str  # "regression" or "classification"
    input_dim: int
    num_classes: int  # 0 for regression
    x_scaler: Standardiser
    y_scaler: Standardiser  # IDENTITY for classification
    feature_names: tuple
    target_name: str
    n_total: int  # rows before splitting
    image_shape: tuple | None = None  # (height, width, channels) when x holds flattened images
    # Training images are intensities to be binarised afresh in every step (see engine).
    dynamic_binarize: bool = False
    # The true log-density of x (n, d) -> (n,) in original units, where the data is
    # synthetic and it is known (2D toys); flows report their KL to it.
    log_density: Callable | None = None


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split | None  # None when the config asks for no validation split
    test: Split
    spec: DataSpec


def fit_standardiser(a: np.ndarray) -> Standardiser:
    """Column means and standard deviations; constant columns keep scale 1."""
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return Standardiser(mean.astype(np.float32), std.astype(np.float32))


def split_indices(rng: np.random.Generator, n: int, fractions: Sequence[float]) -> list[np.ndarray]:
    """A seeded permutation of range(n) cut into consecutive parts.

    Part sizes are round(fraction * n); the last part takes the remainder, so
    the parts are disjoint and cover every row exactly once.
    """
    perm = rng.permutation(n)
    sizes = [int(round(f * n)) for f in fractions[:-1]]
    cuts = np.cumsum(sizes)
    return [np.sort(part) for part in np.split(perm, cuts)]


def subsample(rng: np.random.Generator, idx: np.ndarray, fraction: float) -> np.ndarray:
    """A seeded subset of ``idx`` holding round(fraction * len) rows (at least one)."""
    if fraction >= 1.0:
        return idx
    keep = max(1, int(round(fraction * len(idx))))
    return np.sort(rng.permutation(idx)[:keep])


def read_split_dir(split_dir: str, split: int):
    """Read a UCI benchmark split folder (Hernandez-Lobato & Adams 2015 layout).

    Returns (x, y, train_idx, test_idx) with 0-based row indices.
    """
    root = Path(split_dir)

    def read(name: str, dtype) -> np.ndarray:
        path = root / name
        if not path.is_file():
            raise DataError(
                f"split file {path} is missing; data.split_dir must hold data.txt, "
                "index_features.txt, index_target.txt and index_{train,test}_<k>.txt"
            )
        try:
            return np.loadtxt(path, dtype=dtype, ndmin=1)
        except ValueError as exc:
            raise DataError(f"split file {path} is not a numeric table ({exc})") from None

    table = read("data.txt", np.float64)
    features = read("index_features.txt", np.int64)
    target = int(read("index_target.txt", np.int64).ravel()[0])
    train_idx = read(f"index_train_{split}.txt", np.int64)
    test_idx = read(f"index_test_{split}.txt", np.int64)
    if table.ndim != 2 or max(train_idx.max(), test_idx.max()) >= table.shape[0]:
        raise DataError(f"split {split} in {root} indexes rows beyond data.txt's {len(table)}")
    return table[:, features], table[:, target], train_idx, test_idx


def assemble(x, y, parts, cfg, spec_fields: dict, *, regression: bool) -> Dataset:
    """Cut rows into splits, fit standardisers on training rows, build the Dataset."""
    train_idx, val_idx, test_idx = parts
    x_scaler = fit_standardiser(x[train_idx]) if cfg.standardize else IDENTITY
    if regression and cfg.standardize:
        y_scaler = fit_standardiser(y[train_idx])
    else:
        y_scaler = IDENTITY

    def cut(idx):
        ys = y_scaler.forward(y[idx]) if regression else y[idx].astype(np.int32)
        return Split(x_scaler.forward(x[idx]), ys)

    spec = DataSpec(
        x_scaler=x_scaler,
        y_scaler=y_scaler,
        input_dim=int(x.shape[1]),
        n_total=int(x.shape[0]),
        **spec_fields,
    )
    val = cut(val_idx) if len(val_idx) else None
    return Dataset(train=cut(train_idx), val=val, test=cut(test_idx), spec=spec)


def partition(cfg, key, n: int, x, y):
    """Row indices (train, val, test) for ``cfg``: seeded fractions or a benchmark split.

    With ``data.split_dir`` the benchmark's train/test indices are used and the
    validation rows are carved from its training part (``val_fraction`` of it).
    ``train_subset`` then keeps a seeded fraction of the training rows.
    """
    split_rng, val_rng, subset_rng = (numpy_rng(k) for k in jax.random.split(key, 3))
    if cfg.split_dir is not None:
        x, y, train_idx, test_idx = read_split_dir(cfg.split_dir, cfg.split)
        n_val = int(round(cfg.val_fraction * len(train_idx)))
        perm = val_rng.permutation(train_idx)
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    else:
        fractions = (cfg.train_fraction, cfg.val_fraction, cfg.test_fraction)
        train_idx, val_idx, test_idx = split_indices(split_rng, n, fractions)
    train_idx = subsample(subset_rng, train_idx, cfg.train_subset)
    return x, y, (train_idx, val_idx, test_idx)
