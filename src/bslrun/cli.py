"""The ``bslrun`` command: Hydra composes the config, bslrun validates and runs it.

Before Hydra starts (and before JAX is imported), the overrides are composed
once with Hydra's compose API and validated, every value of every sweep
included: a typo costs a second and one line on stderr (exit 2), not a
minute of compilation and a traceback. This is the only place where a
DictConfig exists; below it everything is a typed dataclass.

Sweeps run through Hydra's plugins: a launcher (``hydra/launcher=joblib`` on
this machine, ``hydra/launcher=slurm`` on a cluster) and a sweeper (the basic
grid, or ``hydra/sweeper=optuna``). The task function returns the validation
metric an optuna study minimises; a failed job is logged to its run.log and
returns None (a failed trial) so that the other jobs go on, and the process
that launched the sweep lists the failed jobs and exits with 1.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

import bslrun  # first import: starts the clock
from bslrun.errors import BslrunError, ConfigError

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


# ----------------------------------------------------------------- config in


def to_config(dcfg):
    """DictConfig -> validated Config dataclass (raises ConfigError)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from bslrun.config import validate

    try:
        cfg = OmegaConf.to_object(dcfg)
    except OmegaConfBaseException as error:
        raise ConfigError(describe_error(error)) from None
    reject_unknown_keys(OmegaConf.to_container(dcfg, resolve=False), cfg)
    return validate(cfg)


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

    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(error, MissingConfigException):
        missing = (error.missing_cfg_file or "").strip("/")
        group, _, option = missing.rpartition("/")
        if group and error.options is not None:
            return f"unknown option {group}={option}; choose one of: " + ", ".join(
                sorted(error.options)
            )
        return str(error).splitlines()[0]
    cause = error
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        allowed = ""
        if cause.object_type is not None and is_dataclass(cause.object_type):
            allowed = "; valid keys here: " + ", ".join(f.name for f in fields(cause.object_type))
        return f"unknown key {cause.full_key}{allowed}"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
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


def prevalidate(argv: list[str]) -> str | None:
    """Compose and validate the config the command line asks for (ConfigError if bad).

    Hydra's own overrides (``hydra/launcher=joblib``, ``hydra.sweeper.n_trials=5``) are
    composed too, so that a typo there is one line as well, and so that the sweeper's
    ``hydra.sweeper.params`` are the ones the sweep will use. Returns the run folder
    to resume (``trainer.resume``), checked against its checkpoint, or None.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bslrun.config import register
    from bslrun.report import is_hydra_override

    register()
    args, _ = get_args_parser().parse_known_args(argv)
    hydra_overrides = [o for o in args.overrides if is_hydra_override(o)]
    overrides = [o for o in args.overrides if not is_hydra_override(o)]
    resumed: list[str] = []
    try:
        variants = sweep_variants(overrides)
        if len(variants) > 1 and not args.multirun:
            raise ConfigError("these overrides sweep over several values; add -m to run a sweep")
        config_name = args.config_name or "config"
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=PROG):
            for variant in variants:
                hydra_cfg = compose(
                    config_name, variant + hydra_overrides, return_hydra_config=True
                ).hydra
                declared = declared_sweeps(hydra_cfg.sweeper.params, variant)
                if declared and not args.multirun:
                    choice = hydra_cfg.runtime.choices.get("sweep")
                    what = f"sweep={choice}" if choice else "hydra.sweeper.params"
                    raise ConfigError(f"{what} runs several jobs: add -m")
                configs = [
                    to_config(compose(config_name, overrides=job))
                    for job in sweep_variants(declared + variant)
                ]
                resumed += [check_resume(c, args.multirun) for c in configs if c.trainer.resume]
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(describe_error(error)) from None
    return resumed[0] if resumed else None


# --------------------------------------------------------------------- help


def describe_option(path: Path) -> str:
    """The first comment line of a YAML file (its one-line description)."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""


def option_name(group: Path, path: Path) -> str:
    """A group option as it is written on the command line (``a/b`` for nested files)."""
    return path.relative_to(group).with_suffix("").as_posix()


def help_text() -> str:
    lines = [
        f"{PROG}: Bayesian deep learning experiments from one command.",
        "",
        f"usage: {PROG} [group=option ...] [key=value ...]         one run",
        f"       {PROG} -m key=a,b,c ...                           a sweep (one run per value)",
        f"       {PROG} -m hydra/launcher=joblib key=a,b ...       its jobs in parallel here",
        f"       {PROG} -m hydra/launcher=slurm key=a,b ...        ... or on a SLURM cluster",
        f"       {PROG} -m sweep=optuna_bnn                        an optuna search (README)",
        f"       {PROG} --cfg job [overrides]                      print the composed config",
        f"       {PROG} --hydra-help                               Hydra's own flags",
        "",
        "examples:",
        f"  {PROG}                                     BNN on white wine (the default)",
        f"  {PROG} experiment=lecture_bnn_wine         a named preset",
        f"  {PROG} model=flow data=moons              a normalising flow on a 2D toy density",
        f"  {PROG} model=bnn data=wine_red model.posterior=lowrank optim=adamw optim.lr=3e-3 seed=3",
        "",
        "config groups (group=option):",
    ]
    for group in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra"):
        lines.append(f"  {group.name}:")
        options = {option_name(group, o): o for o in sorted(group.rglob("*.yaml"))}
        width = max((len(name) for name in options), default=0)
        for name, option in options.items():
            lines.append(f"    {name.ljust(width)}  {describe_option(option)}")
    lines += [
        "",
        f"Every key can be overridden (key=value); '{PROG} --cfg job' lists them with their",
        "current values. Runs are written to experiments/<name>/<timestamp>/ (set",
        "BSLRUN_OUTPUT_DIR to change the root). See README.md for the full reference.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------- main

FAILED_JOBS: list[str] = []
LOG_PREFIX = re.compile(r"^\[[^]]*\]\[[A-Z]+\] ")  # "[time][ERROR] " of a run.log line


def log_to_file_only(level: int, message: str, exc_info: bool = False) -> None:
    """Record ``message`` (and the exception being handled) in run.log, not on the console."""
    record = logging.LogRecord(
        PROG, level, __file__, 0, message, None, sys.exc_info() if exc_info else None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def objective(metrics: dict, monitor: str) -> float | None:
    """The value a sweeper minimises: ``val.<trainer.monitor>`` (the validation NLL by default).

    Without a validation split, the final training loss (the negative ELBO per training
    datum) stands in, so that a study still compares like with like; the test split is
    never used for selection. None (a failed optuna trial) if the value is not finite.
    """
    value = (metrics.get("val") or {}).get(monitor)
    if value is None:
        value = (metrics.get("train") or {}).get("final_loss")
    return float(value) if value is not None and math.isfinite(value) else None


def task(dcfg) -> float | None:
    """Hydra's task function: one run in Hydra's output folder; returns ``objective``.

    In a sweep, a failed run (a BslrunError, or any other exception, whose traceback goes
    to run.log) returns None so that the other jobs go on; alone, it exits non-zero.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    bslrun.begin_run()
    log = logging.getLogger(PROG)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        cfg = to_config(dcfg)
        from bslrun.run import format_table, run

        metrics = run(cfg, run_dir)
        log.info("%s: wrote %s\n%s", cfg.name, run_dir, format_table(metrics))
        return objective(metrics, cfg.trainer.monitor.value)
    except BslrunError as error:
        log_to_file_only(logging.ERROR, str(error))
        print(f"{PROG}: error: {error}", file=sys.stderr)
        if not sweep:
            sys.exit(error.exit_code)
    except Exception as error:
        what = f"unexpected {type(error).__name__}: {error}"
        log_to_file_only(logging.ERROR, what, exc_info=True)
        if not sweep:
            raise  # Hydra prints the traceback; exit status 1
        print(f"{PROG}: error: {run_dir}: {what} (traceback in run.log)", file=sys.stderr)
    return None


def failed_jobs(sweep_dir: Path) -> list[str]:
    """``"<job folder>: <its last error>"`` for each job folder under ``sweep_dir`` that has
    no metrics.json, read as ``bslrun-report`` reads it."""
    from bslrun import report

    if not sweep_dir.is_dir():
        return []
    runs = [report.load_run(path) for path in report.find_run_dirs([sweep_dir])]
    return [
        f"{report.relative(run.path, Path.cwd())}: {LOG_PREFIX.sub('', run.message)}"
        for run in runs
        if run.status != "completed"
    ]


class SweepFailures(Callback):
    """Hydra callback (``hydra.callbacks`` in config.yaml): when a sweep ends, record its
    failed jobs in the process that launched it. Jobs may have run in other processes
    (joblib) or on other machines (SLURM), so their folders tell."""

    def on_multirun_end(self, config, **kwargs) -> None:
        FAILED_JOBS.extend(failed_jobs(Path(config.hydra.sweep.dir)))


def main() -> None:
    argv = sys.argv[1:]
    if "--help" in argv or "-h" in argv:
        print(help_text())
        return
    if not {"--hydra-help", "--info", "--shell-completion", "-sc"} & set(argv):
        try:
            resume = prevalidate(argv)
        except ConfigError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
        if resume and not any(o.startswith("hydra.run.dir=") for o in argv):
            sys.argv.append(f"hydra.run.dir='{resume}'")  # continue in the resumed folder

    import hydra

    from bslrun.config import register

    register()
    hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(task)()
    if FAILED_JOBS:
        print(f"{PROG}: {len(FAILED_JOBS)} job(s) failed:", file=sys.stderr)
        for line in FAILED_JOBS:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
