"""Registries: every data set and model family by its config name, with the facts that
checking a config needs (schema, task, checks) and where its code lives. Code is named as
"module:attribute" and imported on use, so checking a config imports no JAX.

Adding a data set: its loader module, a line in ``DATASETS`` and ``configs/data/<name>.yaml``.
Adding a model family: its module, a line in ``FAMILIES`` (with its schema and checks in
config.py) and ``configs/model/<name>.yaml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from bslrun.config import (
    DATA_CHECKS,
    TASKS_WITH_TARGETS,
    Architecture,
    Binarize,
    BnnConfig,
    Config,
    DataConfig,
    FileDataConfig,
    FileTask,
    FlowConfig,
    ImageDataConfig,
    OptimConfig,
    ToyDataConfig,
    TrainerConfig,
    VaeConfig,
    check_bnn,
    check_flow,
    check_likelihood_fits,
    check_name,
    check_optim,
    check_seed,
    check_trainer,
    check_vae,
    natural_likelihood,
)
from bslrun.errors import ConfigError


@dataclass(frozen=True)
class DataSet:
    loader: str  # "module:function", function(cfg, key) -> Dataset
    schema: type  # the dataclass of its config group
    task: str | None  # "regression" or "classification"; None: the config or the file tells


@dataclass(frozen=True)
class ModelFamily:
    family: str  # "module:class", a bslrun.models.family.Family
    schema: type
    check: Callable  # check(model config): ConfigError naming the key


TOYS = ("moons", "circles", "8gaussians", "checkerboard", "pinwheel", "2spirals", "rings")
DATASETS = {
    "wine_white": DataSet("bslrun.data.wine:load_white", DataConfig, "regression"),
    "wine_red": DataSet("bslrun.data.wine:load_red", DataConfig, "regression"),
    "mnist": DataSet("bslrun.data.mnist:load_mnist", ImageDataConfig, "classification"),
    "fashion_mnist": DataSet(
        "bslrun.data.mnist:load_fashion_mnist", ImageDataConfig, "classification"
    ),
    **{toy: DataSet("bslrun.data.toy2d:load", ToyDataConfig, "classification") for toy in TOYS},
    "file": DataSet("bslrun.data.files:load", FileDataConfig, None),
}

FAMILIES = {
    "bnn": ModelFamily("bslrun.models.bnn:BnnFamily", BnnConfig, check_bnn),
    "vae": ModelFamily("bslrun.models.vae:VaeFamily", VaeConfig, check_vae),
    "flow": ModelFamily("bslrun.models.flow:FlowFamily", FlowConfig, check_flow),
}


# The names that YAML files extend (``defaults: - /schema/data/images@_here_``).
DATA_SCHEMA_NAMES = {DataConfig: "data", ImageDataConfig: "images", ToyDataConfig: "toy",
                     FileDataConfig: "file"}  # fmt: skip


def register() -> None:
    """Store the schemas in Hydra's ConfigStore so that YAML files can extend them."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for schema in {entry.schema for entry in DATASETS.values()}:
        store.store(group="schema/data", name=DATA_SCHEMA_NAMES[schema], node=schema)
    for name, entry in FAMILIES.items():
        store.store(group="schema/model", name=name, node=entry.schema)
    store.store(group="schema/optim", name="optim", node=OptimConfig)
    store.store(group="schema/trainer", name="trainer", node=TrainerConfig)


def load(path: str):
    """The attribute that ``"module:attribute"`` names (importing its module)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def data_task(d) -> str | None:
    """ "regression", "classification" or "density" (no target), as far as the config tells;
    None when only the file's contents can tell (data=file with data.target and no data.task)."""
    if isinstance(d, FileDataConfig):
        if d.target is None:
            return "density"
        return FileTask(d.task).value if d.task is not None else None
    return DATASETS[d.name].task


def resolve_defaults(cfg: Config) -> None:
    """Fill the null "natural choice" values that depend on the model-data pairing."""
    family = getattr(cfg.model, "family", None)
    task = data_task(cfg.data)
    if family == "bnn" and cfg.model.likelihood is None and task in TASKS_WITH_TARGETS:
        cfg.model.likelihood = natural_likelihood(task)
    if isinstance(cfg.data, ImageDataConfig) and cfg.data.binarize is None:
        cfg.data.binarize = Binarize.dynamic if family == "vae" else Binarize.none


def validate(cfg: Config) -> Config:
    """Check ranges and cross-field rules; raise ConfigError naming the key."""
    if type(cfg.data) not in DATA_CHECKS:
        raise ConfigError("data is not set; choose one with data=<name>")
    if cfg.data.name not in DATASETS:
        raise ConfigError(
            f"data.name={cfg.data.name!r} is unknown; choose one of {', '.join(sorted(DATASETS))}"
        )
    family = getattr(cfg.model, "family", None)
    if family not in FAMILIES:
        raise ConfigError(
            f"model.family={family!r} is unknown; choose one of {', '.join(sorted(FAMILIES))}"
        )
    check_seed(cfg.seed)
    check_name(cfg.name)
    resolve_defaults(cfg)
    DATA_CHECKS[type(cfg.data)](cfg.data)
    FAMILIES[family].check(cfg.model)
    check_pairing(cfg, family)
    check_training(cfg)
    return cfg


def check_pairing(cfg: Config, family: str) -> None:
    """Rules that involve both the model and the data (or the trainer)."""
    if family == "bnn":
        check_likelihood_fits(cfg.model, data_task(cfg.data), cfg.data.name)
    if (
        family == "flow"
        and isinstance(cfg.data, ImageDataConfig)
        and Binarize(cfg.data.binarize) is not Binarize.none
    ):
        raise ConfigError(
            "model=flow models dequantised 8-bit intensities; use data.binarize=none "
            f"(not {Binarize(cfg.data.binarize).value})"
        )
    if (
        family == "vae"
        and Architecture(cfg.model.architecture) is Architecture.conv
        and cfg.trainer.num_particles > 1
    ):
        raise ConfigError(
            "trainer.num_particles > 1 is not available with model.architecture=conv "
            "(NumPyro drops batch-norm state with several particles); use "
            "trainer.num_particles=1 or model.architecture=mlp"
        )
    if family == "vae" and not isinstance(cfg.data, ImageDataConfig):
        raise ConfigError(
            f"model=vae needs an image data set; data={cfg.data.name} is tabular "
            "(use data=mnist or data=fashion_mnist)"
        )


def check_training(cfg: Config) -> None:
    """The optimiser, the trainer and the evaluation, and how they fit together."""
    check_optim(cfg.optim)
    check_trainer(cfg.trainer)
    for key in ("num_samples", "iw_samples"):
        if getattr(cfg.eval, key) < 1:
            raise ConfigError(f"eval.{key}={getattr(cfg.eval, key)} must be a positive integer")
    if cfg.optim.warmup_epochs >= cfg.trainer.epochs and cfg.optim.schedule.name.startswith(
        "warmup"
    ):
        raise ConfigError(
            f"optim.warmup_epochs={cfg.optim.warmup_epochs} must be below "
            f"trainer.epochs={cfg.trainer.epochs}"
        )
