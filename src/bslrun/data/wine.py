"""UCI Wine Quality (Cortez et al. 2009), shipped inside the package.

White wine: 4,898 rows; red wine: 1,599 rows; 11 physico-chemical inputs and
the sensory quality score (0-10) as the regression target. CC BY 4.0, see
``resources/LICENSE-wine-quality.md``.
"""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np

from bslrun.config import DataConfig
from bslrun.data.splits import Dataset, assemble, partition
from bslrun.errors import DataError, ResourceError
from bslrun.registry import DataSet

FILES = {"white": "winequality-white.csv", "red": "winequality-red.csv"}


def read_table(colour: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(inputs (n, 11), quality (n,), feature names) from the shipped CSV."""
    path = resources.files("bslrun.data") / "resources" / FILES[colour]
    try:
        with path.open() as handle:
            rows = list(csv.reader(handle, delimiter=";"))
    except FileNotFoundError:
        raise DataError(f"shipped data file {path} is missing; reinstall bslrun") from None
    except OSError as exc:  # permissions or a disk error in the installation
        raise ResourceError(
            f"shipped data file {path} cannot be read ({exc.strerror or exc}); reinstall bslrun"
        ) from None
    header, body = rows[0], [r for r in rows[1:] if r]
    try:
        table = np.asarray(body, dtype=np.float64)
    except ValueError:
        raise DataError(f"{path} holds a non-numeric value; reinstall bslrun") from None
    return table[:, :-1], table[:, -1], tuple(header[:-1])


def _load(colour: str, cfg, key) -> Dataset:
    x, y, names = read_table(colour)
    x, y, parts = partition(cfg, key, len(y), x, y)
    fields = dict(
        name=f"wine_{colour}",
        task="regression",
        num_classes=0,
        feature_names=names,
        target_name="quality",
    )
    return assemble(x, y, parts, cfg, fields, regression=True)


def load_white(cfg, key) -> Dataset:
    return _load("white", cfg, key)


def load_red(cfg, key) -> Dataset:
    return _load("red", cfg, key)


DATASETS = {
    "wine_white": DataSet(load_white, DataConfig, "regression"),
    "wine_red": DataSet(load_red, DataConfig, "regression"),
}
