"""Data sets: ``load`` finds a data set's loader in the registry (``bslrun.registry``).

A module here registers its data sets in a module-level ``DATASETS`` dict of
``registry.DataSet`` (loader, schema, task); a loader has the signature
``load(cfg, key) -> Dataset``. The modules import JAX only inside functions, so that the
registry can collect them while checking a config.
"""

from __future__ import annotations

from bslrun import registry


def load(cfg, key):
    """Load ``cfg.name`` and split it with randomness from ``key``."""
    return registry.datasets()[cfg.name].loader(cfg, key)


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
