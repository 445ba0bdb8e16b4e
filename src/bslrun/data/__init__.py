"""Datasets: a registry from config names to loaders.

A loader has the signature ``load(cfg: DataConfig, key) -> Dataset``. The
registry maps names to module paths so that validating a config does not
import JAX.
"""

from __future__ import annotations

import importlib

# name -> "module:function"
DATASETS = {
    "wine_white": "bslrun.data.wine:load_white",
    "wine_red": "bslrun.data.wine:load_red",
    "mnist": "bslrun.data.mnist:load_mnist",
    "fashion_mnist": "bslrun.data.mnist:load_fashion_mnist",
    "moons": "bslrun.data.toy2d:load",
    "circles": "bslrun.data.toy2d:load",
    "8gaussians": "bslrun.data.toy2d:load",
    "checkerboard": "bslrun.data.toy2d:load",
    "pinwheel": "bslrun.data.toy2d:load",
    "2spirals": "bslrun.data.toy2d:load",
    "rings": "bslrun.data.toy2d:load",
    "file": "bslrun.data.files:load",
}

# name -> the kind of target it provides, so that configs are checked before loading
TASKS = {
    "wine_white": "regression",
    "wine_red": "regression",
    "mnist": "classification",
    "fashion_mnist": "classification",
    "moons": "classification",
    "circles": "classification",
    "8gaussians": "classification",
    "checkerboard": "classification",
    "pinwheel": "classification",
    "2spirals": "classification",
    "rings": "classification",
    "file": None,  # the config (data.target, data.task) or the file's contents tell
}


def load(cfg, key):
    """Load ``cfg.name`` and split it with randomness from ``key``."""
    module, function = DATASETS[cfg.name].split(":")
    return getattr(importlib.import_module(module), function)(cfg, key)


def spec_from_json(d: dict):
    """The ``DataSpec`` that ``DataSpec.to_json`` wrote (a reopened run's data spec)."""
    from bslrun.data.splits import DataSpec, Standardiser

    density = d.get("density")
    log_density = None
    if density is not None:
        from bslrun.data.toy2d import log_density as toy_log_density

        log_density = toy_log_density(**density)
    shape = d.get("image_shape")
    return DataSpec(
        name=d["name"],
        task=d["task"],
        input_dim=int(d["input_dim"]),
        num_classes=int(d["num_classes"]),
        x_scaler=Standardiser.from_json(d["x_scaler"]),
        y_scaler=Standardiser.from_json(d["y_scaler"]),
        feature_names=tuple(d["feature_names"]),
        target_name=d["target_name"],
        n_total=int(d["n_total"]),
        image_shape=None if shape is None else tuple(shape),
        dynamic_binarize=bool(d["dynamic_binarize"]),
        log_density=log_density,
        density_args=density,
        class_names=tuple(d.get("class_names", ())),
    )
