"""Registries: every data set and model family by its config name, with the facts that
checking a config needs (schema, task, checks) and where its code lives.

Each entry lives beside its code, and the registries collect them:

- a data set is a ``DataSet`` in the ``DATASETS`` of a module of ``bslrun.data`` (whose
  modules import no JAX, so checking a config does not wait for it), plus its
  ``configs/data/<name>.yaml``;
- a model family is a ``config.ModelConfig`` subclass (its schema, ``check`` and
  ``implementation``, a "module:class" imported on use), its module, and its
  ``configs/model/<name>.yaml``.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from bslrun.config import (
    DATA_CHECKS,
    Config,
    DataConfig,
    FileDataConfig,
    FileTask,
    ImageDataConfig,
    InferenceConfig,
    InferenceMethod,
    ModelConfig,
    OptimConfig,
    ToyDataConfig,
    TrainerConfig,
    check_counts,
    check_inference,
    check_loggers,
    check_name,
    check_optim,
    check_seed,
    check_trainer,
)
from bslrun.errors import ConfigError

# Where data sets are found; imported by name, as the loaders are imported on use.
DATA_PACKAGE = "bslrun.data"


@dataclass(frozen=True)
class DataSet:
    loader: Callable  # loader(cfg, key) -> bslrun.data.splits.Dataset
    schema: type  # the dataclass of its config group
    task: str | None  # "regression" or "classification"; None: the config or the file tells


@dataclass(frozen=True)
class ModelFamily:
    family: str  # "module:class", a bslrun.models.family.Family
    schema: type  # a config.ModelConfig subclass: the group's fields and checks


@functools.cache
def datasets() -> dict[str, DataSet]:
    """Every data set by name, from the ``DATASETS`` of each module of ``bslrun.data``."""
    package = importlib.import_module(DATA_PACKAGE)
    found: dict[str, DataSet] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{DATA_PACKAGE}.{info.name}")
        for name, entry in getattr(module, "DATASETS", {}).items():
            if found.setdefault(name, entry) is not entry:
                raise RuntimeError(f"two data sets are named {name!r}")
    return found


FAMILIES = {
    schema.family: ModelFamily(schema.implementation, schema)
    for schema in ModelConfig.__subclasses__()
}


# The names that YAML files extend (``defaults: - /schema/data/images@_here_``).
DATA_SCHEMA_NAMES = {DataConfig: "data", ImageDataConfig: "images", ToyDataConfig: "toy",
                     FileDataConfig: "file"}  # fmt: skip


def register() -> None:
    """Store the schemas in Hydra's ConfigStore so that YAML files can extend them."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for schema in {entry.schema for entry in datasets().values()}:
        store.store(group="schema/data", name=DATA_SCHEMA_NAMES[schema], node=schema)
    for name, entry in FAMILIES.items():
        store.store(group="schema/model", name=name, node=entry.schema)
    store.store(group="schema/optim", name="optim", node=OptimConfig)
    store.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    store.store(group="schema/inference", name="inference", node=InferenceConfig)
    use_own_plugins(store)


# bslrun's wrappers of Hydra's joblib launcher and optuna sweeper (src/hydra_plugins).
JOBLIB = "hydra_plugins.bslrun_launcher.joblib_launcher.BslrunJoblibLauncher"
OPTUNA = "hydra_plugins.bslrun_launcher.optuna_sweeper.BslrunOptunaSweeper"


def use_own_plugins(store) -> None:
    """``hydra/launcher=joblib`` and ``hydra/sweeper=optuna`` are bslrun's wrappers of the
    plugins, with their settings (a killed worker, a study with no completed trial end
    with the sweep's summary: bslrun.launcher, bslrun.sweeper). Hydra stores each
    plugin's config when it first scans the plugins (once a process, running their
    modules again): after that scan, these entries replace the plugins' own."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf

    @dataclass
    class Joblib(JobLibLauncherConf):
        _target_: str = JOBLIB

    @dataclass
    class Optuna(OptunaSweeperConf):
        _target_: str = OPTUNA

    Plugins.instance()
    store.store(group="hydra/launcher", name="joblib", node=Joblib, provider="bslrun")
    store.store(group="hydra/sweeper", name="optuna", node=Optuna, provider="bslrun")


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
    return datasets()[d.name].task


def resolve_defaults(cfg: Config) -> None:
    """Fill the null "natural choice" values that depend on the model-data pairing."""
    cfg.model.fill_defaults(data_task(cfg.data))
    if isinstance(cfg.data, ImageDataConfig) and cfg.data.binarize is None:
        cfg.data.binarize = cfg.model.natural_binarize


def validate(cfg: Config) -> Config:
    """Check ranges and cross-field rules; raise ConfigError naming the key."""
    if type(cfg.data) not in DATA_CHECKS:
        raise ConfigError("data is not set; choose one with data=<name>")
    if cfg.data.name not in datasets():
        names = ", ".join(sorted(datasets()))
        raise ConfigError(f"data.name={cfg.data.name!r} is unknown; choose one of {names}")
    family = getattr(cfg.model, "family", None)
    if family not in FAMILIES:
        raise ConfigError(
            f"model.family={family!r} is unknown; choose one of {', '.join(sorted(FAMILIES))}"
        )
    if type(cfg.model) is not FAMILIES[family].schema:
        raise ConfigError(
            f"model.family={family} does not match the model group's settings; choose the "
            f"family with model={family} and leave model.family as it is"
        )
    check_seed(cfg.seed)
    if cfg.trainer.replicas > 1:
        check_seed(cfg.seed + cfg.trainer.replicas - 1)  # the last replica's seed
    check_name(cfg.name)
    check_loggers(cfg.logger)
    resolve_defaults(cfg)
    DATA_CHECKS[type(cfg.data)](cfg.data)
    cfg.model.check()
    cfg.model.check_fits(cfg, data_task(cfg.data))
    check_training(cfg)
    check_sampling(cfg)
    return cfg


def check_training(cfg: Config) -> None:
    """The optimiser, the trainer and the evaluation, and how they fit together."""
    check_optim(cfg.optim)
    check_trainer(cfg.trainer)
    check_counts("eval", cfg.eval, ("num_samples", "iw_samples"))
    if cfg.optim.warmup_epochs >= cfg.trainer.epochs and cfg.optim.schedule.name.startswith(
        "warmup"
    ):
        raise ConfigError(
            f"optim.warmup_epochs={cfg.optim.warmup_epochs} must be below "
            f"trainer.epochs={cfg.trainer.epochs}"
        )


def check_sampling(cfg: Config) -> None:
    """``inference=nuts`` and ``eval.reference``: what they apply to (docs/nuts.md)."""
    check_inference(cfg.inference)
    family = cfg.model.family
    if InferenceMethod(cfg.inference.method) is InferenceMethod.nuts:
        if family != "bnn":
            raise ConfigError(
                f"inference=nuts samples the weights of model=bnn; model={family} is trained "
                "by variational inference: use inference=svi (the default) or model=bnn"
            )
        t = cfg.trainer
        for refused, setting in ((t.replicas > 1, f"trainer.replicas={t.replicas}"),
                                 (t.devices > 1, f"trainer.devices={t.devices}"),
                                 (bool(t.resume), "trainer.resume")):  # fmt: skip
            if refused:
                raise ConfigError(
                    f"{setting} does not apply to inference=nuts, which runs its chains "
                    f"together on one device (inference.num_chains); drop {setting}"
                )
        if cfg.eval.reference:
            raise ConfigError(
                "eval.reference compares a variational run with a NUTS run, and this run is "
                "the NUTS run: drop eval.reference (or use inference=svi)"
            )
    elif cfg.eval.reference and family != "bnn":
        raise ConfigError(
            f"eval.reference compares a BNN's predictive with a NUTS run; model={family} has "
            "no predictive over targets: drop eval.reference or use model=bnn"
        )
