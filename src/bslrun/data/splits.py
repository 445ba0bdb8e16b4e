"""Splitting, sub-sampling and standardising tabular data.

Standardisation is fitted on the training split only and travels with the
data (``DataSpec``) so that metrics can be reported in original units.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bslrun.data import paths
from bslrun.errors import DataError
from bslrun.seeding import numpy_rng, split_keys


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

    def to_json(self) -> dict:
        return {"mean": np.asarray(self.mean).tolist(), "std": np.asarray(self.std).tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Standardiser:
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


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
    # How ``log_density`` is rebuilt when a run is reopened (toy2d.log_density's arguments).
    density_args: dict | None = None
    class_names: tuple = ()  # the labels behind class codes 0..K-1, where they have names

    def scaler_arrays(self) -> tuple:
        """The standardisers (x mean, x std, y mean, y std) as float32 arrays. A program
        takes them as arguments (``with_scalers`` inside it): the data's numbers then stay
        out of the compiled program, which runs on other splits and seeds share."""
        parts = (self.x_scaler.mean, self.x_scaler.std, self.y_scaler.mean, self.y_scaler.std)
        return tuple(np.asarray(a, np.float32) for a in parts)

    def with_scalers(self, arrays: tuple) -> DataSpec:
        """This spec with the standardisers ``arrays`` (``scaler_arrays``; may be traced)."""
        xm, xs, ym, ys = arrays
        return replace(self, x_scaler=Standardiser(xm, xs), y_scaler=Standardiser(ym, ys))

    def to_json(self) -> dict:
        """The spec as plain JSON (data.json of a run folder; ``bslrun.data.spec_from_json``
        reads it back). The true density travels as the arguments that rebuild it."""
        return {
            "name": self.name,
            "task": self.task,
            "input_dim": self.input_dim,
            "num_classes": self.num_classes,
            "feature_names": list(self.feature_names),
            "target_name": self.target_name,
            "class_names": list(self.class_names),
            "n_total": self.n_total,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "dynamic_binarize": self.dynamic_binarize,
            "x_scaler": self.x_scaler.to_json(),
            "y_scaler": self.y_scaler.to_json(),
            "density": self.density_args,
        }


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split | None  # None when the config asks for no validation split
    test: Split
    spec: DataSpec


# A column whose spread is below this fraction of its magnitude is constant but for
# rounding (naval's column 11: std 2e-13 of values near 1); scaling by that spread would
# blow its rounding up to values of 1e5.
CONSTANT = 1e-9


def fit_standardiser(a: np.ndarray) -> Standardiser:
    """Column means and standard deviations; constant columns (to rounding) keep scale 1."""
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    std = np.where(std > CONSTANT * np.abs(mean), std, 1.0)
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


# Every UCI preset reads its split folder below this variable (configs/data/<name>.yaml).
UCI_DIR_VARIABLE = "BSLRUN_UCI_DIR"
UCI_DIR_DEFAULT = "../shared/data/uci_regression"
SPLIT_FILES = "data.txt, index_features.txt, index_target.txt and index_{train,test}_<k>.txt"


def read_split_dir(split_dir: str, split: int):
    """Read a UCI benchmark split folder (Hernandez-Lobato & Adams 2015 layout).

    Returns (x, y, train_idx, test_idx) with 0-based row indices; every fault of the
    folder or its files is one line (DataError, or ResourceError where the machine refused).
    """
    label = f"data.split_dir={paths.shown(split_dir)}"
    root = paths.expand(split_dir, "data.split_dir")
    fix = (
        f"set {UCI_DIR_VARIABLE} to the folder holding the UCI benchmark's data set folders "
        f"(the presets' default: {UCI_DIR_DEFAULT}), or point data.split_dir at a folder "
        f"holding {SPLIT_FILES}"
    )
    if os.environ.get("BSLRUN_UCI_SPLITS"):  # what experiment=uci_wine_red once read
        fix += f" (BSLRUN_UCI_SPLITS is no longer read: {UCI_DIR_VARIABLE} replaces it)"
    if not paths.folder(root, label, fix):
        raise paths.no_such(root, label, "folder", fix)
    table = read_split_file(root / "data.txt", np.float64, ndmin=2)
    features = read_split_file(root / "index_features.txt", np.int64)
    target = read_split_file(root / "index_target.txt", np.int64)[:1]
    train_idx = read_split_file(root / f"index_train_{split}.txt", np.int64)
    test_idx = read_split_file(root / f"index_test_{split}.txt", np.int64)
    n, m = table.shape
    for name, idx, bound, what in (
        ("index_features.txt", features, m, "column"),
        ("index_target.txt", target, m, "column"),
        (f"index_train_{split}.txt", train_idx, n, "row"),
        (f"index_test_{split}.txt", test_idx, n, "row"),
    ):
        bad = (idx < 0) | (idx >= bound)
        if bad.any():
            raise DataError(
                f"split file {paths.shown(root / name)} lists {what} {idx[bad][0]}, but "
                f"data.txt has {bound} {what}s (0-based: 0..{bound - 1}); fix the index file"
            )
    columns = np.concatenate([features, target])
    used = table[:, columns]
    if not np.isfinite(used).all():
        i, j = np.argwhere(~np.isfinite(used))[0]
        raise DataError(
            f"split file {paths.shown(root / 'data.txt')}: row {i + 1}, column {columns[j]} "
            f"(0-based) holds {used[i, j]}; replace the value, or remove the row and re-make "
            "the index files"
        )
    return table[:, features], table[:, target[0]], train_idx, test_idx


def read_split_file(path: Path, dtype, ndmin: int = 1) -> np.ndarray:
    """A whitespace-separated numeric file of the split folder (index files flattened)."""
    label = f"split file {paths.shown(path)}"
    info = paths.probe(path, label)
    if info is None:
        raise DataError(f"{label} is missing; data.split_dir must hold {SPLIT_FILES}")
    if stat.S_ISDIR(info.st_mode):
        raise paths.named_wrongly(errno.EISDIR, label)
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{label} is not a regular file; data.split_dir must hold {SPLIT_FILES}")
    try:
        with paths.open_file(path, label, "r", encoding="utf-8") as handle:
            with warnings.catch_warnings():  # an empty file is reported below, not warned of
                warnings.simplefilter("ignore", UserWarning)
                values = np.loadtxt(handle, dtype=dtype, ndmin=ndmin)
    except ValueError as exc:  # text, ragged rows, not UTF-8
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{label} is not a numeric table ({reason}); fix the file") from None
    except OSError as exc:  # the disk failed while reading
        raise paths.fault(exc, label) from None
    if values.size == 0:
        raise DataError(f"{label} is empty; data.split_dir must hold {SPLIT_FILES}")
    return values if ndmin == 2 else values.ravel()


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
    split_rng, val_rng, subset_rng = (numpy_rng(k) for k in split_keys(key, 3))
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
