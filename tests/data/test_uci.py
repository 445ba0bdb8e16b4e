"""The UCI regression benchmark's data sets read from their split folders: the published
sizes, the split's rows, standardisation on training rows only, and one-line refusals."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import compose

from bslrun.data import load
from bslrun.errors import DataError

SHARED = Path(os.environ.get("BSLRUN_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
UCI_DIR = SHARED / "data" / "uci_regression"
pytestmark = pytest.mark.skipif(not UCI_DIR.is_dir(), reason=f"no UCI split folders at {UCI_DIR}")

# name: (rows, inputs, splits) as the benchmark publishes them (Hernández-Lobato & Adams 2015;
# naval keeps 16 of its 18 columns as inputs, the constant ones dropped)
SIZES = {
    "boston": (506, 13, 20), "concrete": (1030, 8, 20), "energy": (768, 8, 20),
    "kin8nm": (8192, 8, 20), "naval": (11934, 16, 20), "power": (9568, 4, 20),
    "protein": (45730, 9, 5), "wine_red": (1599, 11, 20), "yacht": (308, 6, 20),
}  # fmt: skip


@pytest.fixture(autouse=True)
def uci_dir(monkeypatch):
    monkeypatch.setenv("BSLRUN_UCI_DIR", str(UCI_DIR))


@pytest.mark.parametrize("name", sorted(SIZES))
def test_each_data_set_has_its_published_size_and_splits(name):
    rows, inputs, splits = SIZES[name]
    cfg = compose(f"experiment=uci/{name}", f"data.split={splits - 1}", "data.val_fraction=0")
    assert cfg.name == f"uci_{name}"
    assert list(cfg.model.hidden) == ([100] if name == "protein" else [50])
    data = load(cfg.data, jax.random.PRNGKey(0))
    assert data.spec.input_dim == inputs and data.spec.n_total == rows
    folder = Path(cfg.data.split_dir)
    test_rows = np.loadtxt(folder / f"index_test_{splits - 1}.txt", dtype=int)
    assert len(data.test) == len(test_rows) and len(data.train) == rows - len(test_rows)
    # standardised on the training rows: mean 0 and std 1 there, not on the test rows
    np.testing.assert_allclose(data.train.y.mean(), 0.0, atol=1e-4)
    np.testing.assert_allclose(data.train.y.std(), 1.0, atol=1e-4)
    # every input standardised to a sane range (naval's columns constant but for rounding
    # keep scale 1: standardised by their 1e-13 spread they reached 1e5 and training diverged;
    # protein's heaviest tail is at 51)
    assert np.abs(data.train.x).max() < 1000 and np.abs(data.test.x).max() < 1000
    table = np.loadtxt(folder / "data.txt")
    target = int(np.loadtxt(folder / "index_target.txt"))
    expected = table[test_rows, target]
    got = data.spec.y_scaler.inverse(data.test.y)  # float32: to 1e-5 of the spread
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.std())
    assert not (folder / f"index_train_{splits}.txt").exists()


def test_the_validation_rows_are_carved_from_the_training_part_only():
    cfg = compose("experiment=uci/yacht", "data.split=3")
    data = load(cfg.data, jax.random.PRNGKey(0))
    assert len(data.val) == round(0.1 * (308 - len(data.test)))
    assert len(data.train) + len(data.val) + len(data.test) == 308


def test_a_data_set_without_its_split_folder_is_refused_in_one_line():
    cfg = compose("data=boston", "data.split_dir=null")
    with pytest.raises(DataError, match="data.split_dir=<folder>") as error:
        load(cfg.data, jax.random.PRNGKey(0))
    assert "\n" not in str(error.value)
