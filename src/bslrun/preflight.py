"""Before Hydra starts: compose the command line's config, validate it, and refuse what
must not run, in one line each (ConfigError, exit 2; ResourceError, exit 5).

Every value of every sweep is composed and validated with Hydra's compose API before
JAX is imported: a typo costs a second, not a minute of compilation. Overrides and
config files choose values, never code. The output folder is checked (and, when the
config names it in full, locked) before Hydra writes anything there. This is the only
place where a DictConfig becomes a typed Config.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bslrun import sweeper
from bslrun.errors import ConfigError, ResourceError

PROG = "bslrun"


def find_config_dir() -> Path:
    """``$BSLRUN_CONFIG_DIR``, else the configs shipped in the wheel, else the checkout's."""
    here = Path(__file__).resolve()
    candidates = [here.parent / "configs", here.parents[2] / "configs"]
    if os.environ.get("BSLRUN_CONFIG_DIR"):
        candidates.insert(0, Path(os.environ["BSLRUN_CONFIG_DIR"]))
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise SystemExit(f"{PROG}: error: no configs/config.yaml found; reinstall bslrun")


CONFIG_DIR = find_config_dir()


JOB_FOLDER_BYTES = 120  # job folder names stay short enough to read and to nest


def job_folder(num, overrides) -> str:
    """A sweep job's folder name: its number, then the overrides that can change its
    results (``0_seed=1``, ``3_model.hidden=100,100,optim.lr=0.01``). The number keeps
    names unique; path separators and brackets are left out so the name is one folder."""
    from bslrun.config import changes_results

    shown = [item.lstrip("+~") for item in overrides if changes_results(item.split("=")[0])]
    text = re.sub(r"[\[\]()'\"{} ]", "", ",".join(shown))
    text = re.sub(r"[^A-Za-z0-9._=+,@:-]", "-", text)
    name = f"{num}_{text}" if text else str(num)
    return name[:JOB_FOLDER_BYTES]


def to_config(dcfg):
    """DictConfig -> validated Config dataclass (raises ConfigError)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from bslrun.loggers import check_installed
    from bslrun.registry import validate

    try:
        cfg = OmegaConf.to_object(dcfg)
    except OmegaConfBaseException as error:
        raise ConfigError(describe_error(error)) from None
    reject_unknown_keys(OmegaConf.to_container(dcfg, resolve=False), cfg)
    validate(cfg)
    check_installed(cfg.logger)  # a missing extra: one line before anything is written
    return cfg


def reject_unknown_keys(tree: dict, schema, prefix: str = "") -> None:
    """Keys added with ``+key=value`` that the schema does not know are errors too."""
    from dataclasses import fields, is_dataclass

    if not (is_dataclass(schema) and isinstance(tree, dict)):
        return
    known = {f.name: getattr(schema, f.name) for f in fields(schema)}
    for key, value in tree.items():
        if key not in known:
            raise ConfigError(f"unknown key {prefix}{key}; valid keys here: " + ", ".join(known))
        reject_unknown_keys(value, known[key], f"{prefix}{key}.")


def describe_error(error: BaseException) -> str:
    """One line naming the offending key, option or value, and what is allowed."""
    from dataclasses import fields, is_dataclass

    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(error, OverrideParseException):
        return (
            f"cannot parse the override {error.override!r}: "
            f"{str(error.message).strip().splitlines()[0]}; quote a value holding "
            "characters such as < > ( ) [ ] { } , : = or spaces: key='a<b' "
            "(in a shell, wrap the whole override in double quotes: \"key='a<b'\")"
        )
    if isinstance(error, MissingConfigException):
        missing = (error.missing_cfg_file or "").strip("/")
        group, _, option = missing.rpartition("/")
        if group and error.options is not None:
            return f"unknown option {group}={option}; choose one of: " + ", ".join(
                sorted(error.options)
            )
        return str(error).splitlines()[0]
    cause = error  # Hydra wraps OmegaConf's error, as __cause__ or as __context__
    while not isinstance(cause, OmegaConfBaseException) and (cause.__cause__ or cause.__context__):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        allowed = ""
        if cause.object_type is not None and is_dataclass(cause.object_type):
            allowed = "; valid keys here: " + ", ".join(f.name for f in fields(cause.object_type))
        return f"unknown key {cause.full_key}{allowed}"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        if "is not a ListConfig, list or tuple" in (cause.msg or ""):
            value = getattr(cause, "value", None)
            return (
                f"{cause.full_key}={value} is one value, but {cause.full_key} takes a list; "
                f"write {cause.full_key}=[{value}] (in a shell: '{cause.full_key}=[{value}]')"
            )
        message = cause.msg.splitlines()[0] if cause.msg else type(cause).__name__
        return f"{cause.full_key}: {message}"
    return str(error).strip().splitlines()[0]


def sweep_values(override) -> list[str]:
    """The values a sweep override stands for; an interval (optuna's search space,
    ``tag(log, interval(1e-4, 1e-1))``) by its two ends, as checks are ranges."""
    if override.is_interval_sweep():
        interval = override.value()
        return [str(interval.start), str(interval.end)]
    return list(override.sweep_string_iterator())


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """Override lists covering every value of every sweep, one sweep varied at a time."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    base, sweeps = [], []
    for i, override in enumerate(parsed):
        if override.is_sweep_override():
            values = sweep_values(override)
            key = override.get_key_element()
            base.append(f"{key}={values[0]}")
            sweeps.append((i, key, values))
        else:
            base.append(override.input_line)
    variants = [base]
    for i, key, values in sweeps:
        for value in values[1:]:
            variant = list(base)
            variant[i] = f"{key}={value}"
            variants.append(variant)
    return variants


def not_a_sweep(overrides: list[str], compose) -> str:
    """The error for a sweep without -m, naming it; a comma list for a key whose value is a
    list (in ``compose`` of the other overrides) may have meant one value
    (``model.hidden=[50,50]``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    composed = compose([o.input_line for o in parsed if not o.is_sweep_override()])
    lists = [
        f"{o.get_key_element()}=[{','.join(sweep_values(o))}]"
        for o in parsed
        if o.is_choice_sweep() and OmegaConf.is_list(OmegaConf.select(composed, o.key_or_group))
    ]
    hint = f", or write {' '.join(lists)} for one list value" if lists else ""
    return f"{' '.join(swept)} sweeps over several values; add -m to run a sweep{hint}"


def declared_sweeps(params, overrides: list[str]) -> list[str]:
    """The sweeps a config declares in ``hydra.sweeper.params`` (``sweep=seeds``), as overrides.

    As in Hydra's basic sweeper, a key also given on the command line keeps its value there.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = {o.get_key_element() for o in OverridesParser.create().parse_overrides(overrides)}
    return [f"{key}={value}" for key, value in (params or {}).items() if key not in given]


def check_resume(cfg, multirun: bool) -> str:
    """The run folder ``trainer.resume`` names, once it is known to hold checkpoints of ``cfg``."""
    from bslrun.config import as_dict
    from bslrun.inference import checkpoint

    if multirun:
        raise ConfigError(
            "trainer.resume continues one run; to resume a sweep, start it again with "
            "hydra.sweep.dir=<its folder>: each job resumes from its own checkpoints"
        )
    folder = Path(cfg.trainer.resume)
    if not folder.is_dir():
        raise ConfigError(
            f"trainer.resume={folder}: no such folder; give the run folder to continue"
        )
    if not checkpoint.check_config(folder, as_dict(cfg)):
        raise ConfigError(
            f"trainer.resume={folder}: it holds no checkpoint ({checkpoint.folder(folder)} is "
            "missing); only runs trained with trainer.checkpoint_every > 0 can be resumed"
        )
    return str(folder)


@dataclass
class Plan:
    """What the command line asks for, known before Hydra starts."""

    multirun: bool
    output_dir: Path | None = None  # hydra.run.dir (one run) or hydra.sweep.dir, resolved
    fixed: bool = False  # named in full by the config (no ${now:...}): runs may collide there
    resume: str | None = None  # the run folder trainer.resume continues
    prints_only: bool = False  # --cfg: Hydra prints the config and runs nothing


# Keys that make Hydra or logging import and call code: never from the command line.
CODE_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_", "()", "class"}
CODE_SECTIONS = ("hydra.callbacks", "hydra/callbacks", "hydra.job_logging", "hydra.hydra_logging")
# What bslrun's own configs and the installed Hydra plugins instantiate.
OWN_TARGETS = (
    "bslrun.cli.SweepFailures",
    "hydra_plugins.bslrun_launcher.vectorised_launcher.VectorisedLauncher",
    "hydra_plugins.bslrun_launcher.joblib_launcher.BslrunJoblibLauncher",
    "hydra_plugins.bslrun_launcher.optuna_sweeper.BslrunOptunaSweeper",
)
OWN_HANDLERS = ("bslrun.artifacts.RunLogHandler",)  # run.log's, in config.yaml
PLUGIN_TARGETS = (
    "hydra._internal.core_plugins.",
    "hydra_plugins.hydra_joblib_launcher.",
    "hydra_plugins.hydra_submitit_launcher.",
    "hydra_plugins.hydra_optuna_sweeper.",
    "optuna.samplers.",
    "optuna.pruners.",
)


def refuse_code_overrides(parsed) -> None:
    """Overrides choose values, never code: no ``_target_`` and no Hydra callbacks."""
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        parts = set(re.split(r"[./@]", key))
        if parts & CODE_KEYS or key.startswith(CODE_SECTIONS):
            raise ConfigError(
                f"{key} cannot be set from the command line: it names code to run "
                "(bslrun only runs its own); choose a launcher or sweeper with "
                "hydra/launcher=... or hydra/sweeper=..."
            )


def _targets(tree, path: str = ""):
    """(dotted key, value) of every ``_target_``, logging ``()`` factory and handler class."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            if key in ("_target_", "()") or (key == "class" and "logging" in path):
                yield where, value
            yield from _targets(value, where)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _targets(value, f"{path}[{i}]")


def refuse_foreign_code(composed) -> None:
    """Only bslrun's own callback, Hydra's plugins and logging classes are instantiated:
    a config file from elsewhere (``--config-dir``, ``hydra.searchpath``) names no code."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(composed, resolve=False)
    hydra_tree = tree.pop("hydra", {}) or {}
    for key, _ in _targets(tree):
        raise ConfigError(f"{key}: run configs name no code; remove it")
    callbacks = hydra_tree.get("callbacks") or {}
    for key, target in _targets(hydra_tree, "hydra"):
        target = str(target)
        allowed = (
            target in OWN_TARGETS
            if key.startswith("hydra.callbacks")
            else target.startswith(PLUGIN_TARGETS + OWN_TARGETS)
            or (key.startswith(("hydra.job_logging", "hydra.hydra_logging"))
                and target.startswith(("logging.", *OWN_HANDLERS)))
        )  # fmt: skip
        if not allowed:
            raise ConfigError(
                f"{key}={target}: bslrun instantiates only its own callbacks, Hydra's "
                "launchers and sweepers and logging handlers; remove it from your config"
            )
    if set(callbacks) - {"sweep_failures"}:
        raise ConfigError(
            "hydra.callbacks: only bslrun's own callbacks may run; remove "
            + ", ".join(sorted(set(callbacks) - {"sweep_failures"}))
        )


def output_folder(hydra_cfg, multirun: bool) -> tuple[Path | None, bool]:
    """(the run or sweep folder the config names, whether it is named in full)."""
    from omegaconf import OmegaConf

    node = hydra_cfg.sweep if multirun else hydra_cfg.run
    raw = str(OmegaConf.to_container(node, resolve=False).get("dir", ""))
    try:
        return Path(str(node.dir)), "${now:" not in raw
    except Exception:  # an interpolation only Hydra's runtime can resolve
        return None, False


def prevalidate(argv: list[str]) -> Plan:
    """Compose and validate the config the command line asks for (ConfigError if bad).

    Hydra's own overrides (``hydra/launcher=joblib``, ``hydra.sweeper.n_trials=5``) are
    composed too, so that a typo there is one line as well, and so that the sweeper's
    ``hydra.sweeper.params`` are the ones the sweep will use. Returns the Plan: the output
    folder, and the run folder to resume (``trainer.resume``), checked against its
    checkpoint.
    """
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bslrun.output_folder import check_output_setting
    from bslrun.registry import register
    from bslrun.runs import is_hydra_override

    check_output_setting(os.environ.get("BSLRUN_OUTPUT_DIR"))
    register()
    args, _ = get_args_parser().parse_known_args(argv)
    plan = Plan(multirun=bool(args.multirun), prints_only=bool(args.cfg))
    hydra_overrides = [o for o in args.overrides if is_hydra_override(o)]
    overrides = [o for o in args.overrides if not is_hydra_override(o)]
    if args.config_dir:
        hydra_overrides.append(f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]")
    resumed: list[str] = []
    try:
        refuse_code_overrides(OverridesParser.create().parse_overrides(args.overrides))
        variants = sweep_variants(overrides)
        config_name = args.config_name or "config"
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=PROG):
            if len(variants) > 1 and not args.multirun:
                raise ConfigError(not_a_sweep(overrides, lambda kept: compose(config_name, kept)))
            for variant in variants:
                composed = compose(config_name, variant + hydra_overrides, return_hydra_config=True)
                refuse_foreign_code(composed)
                hydra_cfg = composed.hydra
                if args.multirun:
                    sweeper.check(hydra_cfg.sweeper, overrides)
                if plan.output_dir is None:
                    plan.output_dir, plan.fixed = output_folder(hydra_cfg, plan.multirun)
                declared = declared_sweeps(hydra_cfg.sweeper.params, variant)
                if declared and not args.multirun:
                    choice = hydra_cfg.runtime.choices.get("sweep")
                    what = f"sweep={choice}" if choice else "hydra.sweeper.params"
                    keys = ", ".join(d.split("=", 1)[0] for d in declared)
                    raise ConfigError(
                        f"{what} runs several jobs: add -m (or give {keys} one value for one run)"
                    )
                # Each job as Hydra composes it: with the search path of --config-dir.
                configs = [
                    to_config(compose(config_name, overrides=job + hydra_overrides))
                    for job in sweep_variants(declared + variant)
                ]
                resumed += [check_resume(c, args.multirun) for c in configs if c.trainer.resume]
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(describe_error(error)) from None
    except yaml.YAMLError as error:
        raise ConfigError(describe_yaml_error(error)) from None
    if resumed:
        plan.resume, plan.output_dir, plan.fixed = resumed[0], Path(resumed[0]), True
    return plan


def describe_yaml_error(error) -> str:
    """A config file that is not plain YAML: where, and what to do."""
    mark = getattr(error, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}" if mark else "a config file"
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    hint = (
        "configs hold plain values; remove the python tag"
        if "python/" in str(error)
        else "fix the YAML there"
    )
    return f"{where}: {problem}; {hint}"


def check_output_folder(plan: Plan):
    """Make sure the run can write its folder before Hydra writes anything there.

    A folder named in full (``hydra.run.dir=...``, a resumed run) is locked now, so that
    a second run started into it refuses before it writes a byte; returns that lock. A
    folder given again that holds a link where a file will be written, or a name that is
    not UTF-8, is refused too.
    """
    from bslrun.lifecycle import RunLock
    from bslrun.output_folder import check_utf8, refuse_links_in_sweep

    folder = plan.output_dir
    if folder is None or plan.prints_only:
        return None
    check_utf8(folder)
    try:
        if plan.fixed and not plan.multirun:
            return RunLock(folder).acquire()  # refuses links among the run's files
        if plan.multirun:
            refuse_links_in_sweep(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".bslrun-probe-", dir=folder.parent))
    except OSError as error:
        raise ResourceError(
            f"cannot write the output folder {folder}: {error.strerror or error}; choose "
            "another one with hydra.run.dir=... (hydra.sweep.dir=... for -m) or "
            "BSLRUN_OUTPUT_DIR"
        ) from None
    return None
