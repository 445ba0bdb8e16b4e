"""The whole model x data matrix: every pairing runs with its natural likelihood on
tiny settings, or is refused with one line before anything is compiled."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import compose

from bslrun import run
from bslrun.config import ToyDataConfig
from bslrun.data import toy2d, uci
from bslrun.errors import ConfigError
from bslrun.registry import FAMILIES, datasets

SHARED = Path(os.environ.get("BSLRUN_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
MNIST_DIR = SHARED / "data" / "mnist"
UCI_DIR = SHARED / "data" / "uci_regression"
os.environ.setdefault("BSLRUN_UCI_DIR", str(UCI_DIR))  # where the UCI data YAMLs look
DATASETS = datasets()
TOYS = [name for name, entry in DATASETS.items() if entry.schema is ToyDataConfig]

TINY_MODEL = {
    "bnn": ["model.hidden=[8]"],
    "vae": ["model.hidden=[16]", "model.latent_dim=2"],
    "flow": ["model.depth=2", "model.hidden=[8]"],
}
# Pairings that must be refused, and a word the one-line message must contain.
REFUSED = {("vae", name): "image" for name in DATASETS if "mnist" not in name}
# What each family reports on the test set, whatever the data.
REPORTS = {"bnn": "nll", "vae": "nll", "flow": "nll"}


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A small CSV with two numeric inputs, a text column and a text class label."""
    path = tmp_path_factory.mktemp("table") / "points.csv"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    rows = ["a,b,note,label"] + [
        f"{a:.4f},{b:.4f},row{i},{'yes' if a + b > 0 else 'no'}" for i, (a, b) in enumerate(x)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def data_overrides(name: str, model: str, table: Path) -> list[str]:
    if name in TOYS:
        return ["data.n_train=64", "data.n_val=32", "data.n_test=32"]
    if name.startswith("wine") or name in uci.TARGETS:
        return ["data.train_subset=0.05"]
    if name == "file":
        target = [] if model == "flow" else ["data.target=label"]
        return [f"data.path={table}", "data.columns=[a,b]", *target]
    return [
        f"data.root={MNIST_DIR}",
        "data.download=false",
        "data.train_subset=0.002",
        "data.val_size=64",
    ]


def overrides(model: str, name: str, table: Path) -> list[str]:
    return [
        f"model={model}",
        f"data={name}",
        "debug=tiny",
        "trainer.batch_size=32",
        *TINY_MODEL[model],
        *data_overrides(name, model, table),
    ]


MATRIX = [(model, name) for model in sorted(FAMILIES) for name in sorted(DATASETS)]


@pytest.mark.parametrize("model, name", MATRIX)
def test_every_pairing_validates_or_is_refused_in_one_line(model, name, table):
    args = overrides(model, name, table)
    if (model, name) in REFUSED:
        with pytest.raises(ConfigError) as error:
            compose(*args)
        message = str(error.value)
        assert "\n" not in message and REFUSED[model, name] in message
    else:
        cfg = compose(*args)
        assert cfg.model.family == model and cfg.data.name == name


def runnable(model: str, name: str) -> bool:
    if (model, name) in REFUSED:
        return False
    if name == "fashion_mnist":
        return False  # no offline copy: its loader is tested in test_mnist.py
    if name in uci.TARGETS:  # one stands for the eight (their loader: tests/data/test_uci.py)
        return name == "yacht" and UCI_DIR.is_dir()
    return name != "mnist" or MNIST_DIR.is_dir()


@pytest.mark.parametrize("model, name", [p for p in MATRIX if runnable(*p)])
def test_every_pairing_runs_end_to_end(model, name, table, tmp_path):
    cfg = compose(*overrides(model, name, table))
    metrics = run.run(cfg, tmp_path)
    value = metrics["test"][REPORTS[model]]
    assert math.isfinite(value), metrics["test"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test"] == metrics["test"]
    assert (tmp_path / "plots" / "learning_curves.png").is_file()
    if model == "flow" and name in toy2d.TOYS:
        for plot in ("density", "samples", "base_to_data"):
            assert (tmp_path / "plots" / f"{plot}.png").is_file(), plot
        if name != "pinwheel":  # the one toy without a closed-form or quadrature density
            assert math.isfinite(metrics["test"]["kl_to_true"])
    if model == "bnn" and name in TOYS:
        figure = "uncertainty.png" if name in toy2d.TOYS else "regression.png"
        assert (tmp_path / "plots" / figure).is_file()
