"""The ``bslrun`` command: Hydra composes the config, bslrun validates and runs it.

Before Hydra starts (and before JAX is imported), ``preflight`` composes and
validates the config of every job, refuses code in overrides and foreign config
files, and checks (or locks) the output folder. Each run then holds its folder's
lock, records ``status.json``, stops at an epoch boundary on a stop signal, and
maps every error to one line and its exit code (errors.py).

Sweeps run through Hydra's plugins: a launcher (``hydra/launcher=joblib`` on
this machine, ``hydra/launcher=slurm`` on a cluster) and a sweeper (the basic
grid, or ``hydra/sweeper=optuna``). The task function returns the validation
metric an optuna study minimises; a failed job is logged to its run.log and
returns None (a failed trial) so that the other jobs go on, and the process
that launched the sweep lists the failed jobs and exits with 1.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from bslrun import clock
from bslrun.errors import BslrunError, ResourceError, RunInterrupted, os_error_in
from bslrun.preflight import (
    CONFIG_DIR,
    PROG,
    check_output_folder,
    job_folder,
    prevalidate,
    to_config,
)
from bslrun.sweeper import objective

# config.yaml names sweep job folders with it. Registered on import, because a launcher's
# worker processes (joblib, SLURM) import this module to unpickle the task, then resolve
# the job's folder.
OmegaConf.register_new_resolver("bslrun_job_folder", job_folder, replace=True)

__all__ = ["CONFIG_DIR", "main", "objective", "prevalidate", "task", "to_config"]


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
        f"       {PROG} -m sweep=optuna_bnn                        an optuna search (docs/sweeps.md)",
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
        "BSLRUN_OUTPUT_DIR to change the root). The manual: docs/ (make docs).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------- main

FAILED_JOBS: list[str] = []
SWEEPS: list[tuple[Path, int, int]] = []  # (sweep folder, jobs, failed jobs) of each sweep
LOG_PREFIX = re.compile(r"^\[[^]]*\]\[[A-Z]+\] ")  # "[time][ERROR] " of a run.log line


def log_to_file_only(level: int, message: str, exc_info: bool = False) -> None:
    """Record ``message`` (and the exception being handled) in run.log, not on the console."""
    record = logging.LogRecord(
        PROG, level, __file__, 0, message, None, sys.exc_info() if exc_info else None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


PRE_LOCK = None  # the lock main() took on a run folder named in full, before Hydra started

# errno values that mean the machine refused, not that bslrun is wrong.
RESOURCE_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
    errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO,
}  # fmt: skip


def as_bslrun_error(error: BaseException) -> BslrunError | None:
    """The error a person should see for ``error``; None when it is a bug."""
    if isinstance(error, BslrunError):
        return error
    if isinstance(error, KeyboardInterrupt):
        import signal

        return RunInterrupted("stopped by SIGINT", signal.SIGINT)
    cause = os_error_in(error)
    if cause is not None and cause.errno in RESOURCE_ERRNOS:
        where = f" writing {cause.filename}" if cause.filename else ""
        return ResourceError(
            f"{cause.strerror}{where}; free space or fix the permissions there, or choose "
            "another output folder (hydra.run.dir=... or BSLRUN_OUTPUT_DIR)"
        )
    if "No space left on device" in str(error)[:4000]:  # also as TensorStore words it
        return ResourceError(
            "No space left on device; free space there, or choose another output folder "
            "(hydra.run.dir=... or BSLRUN_OUTPUT_DIR)"
        )
    if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)[:2000]:
        return ResourceError(
            "out of memory; use a smaller model (model.hidden), a smaller trainer.batch_size "
            "or fewer eval.num_samples"
        )
    return None


def end_status(run_dir: Path, started: str, state: str, code: int, error: str | None) -> None:
    """status.json at the end of a run; a disk too full for it loses only this file."""
    from bslrun import artifacts
    from bslrun.lifecycle import now

    try:
        artifacts.write_status(
            run_dir, state, started=started, ended=now(), exit_code=code, error=error
        )
    except OSError as problem:
        log_to_file_only(logging.ERROR, f"could not write status.json: {problem}")


def leave(code: int) -> None:
    """Exit now that the error line is out and every file is written: libraries' worker
    threads (orbax, TensorStore) left mid-task must not print their tracebacks after it."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def task(dcfg, trained=None) -> float | None:
    """Hydra's task function: one run in Hydra's output folder; returns ``objective``.
    ``trained``: what the vectorised launcher trained for this job with its group.

    The run holds its folder's lock, records ``status.json`` at its start and end, and
    stops at an epoch boundary on SIGINT, SIGTERM or a cluster's warning signal. In a
    sweep, a failed run returns None so that the other jobs go on; alone, it exits with
    its error's code (errors.py). A bug keeps its traceback, in run.log too.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bslrun import artifacts
    from bslrun.lifecycle import RunLock, StopSignals, now

    clock.begin_run()
    log = logging.getLogger(PROG)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    started = now()
    same = PRE_LOCK is not None and PRE_LOCK.run_dir.resolve() == run_dir.resolve()
    lock = PRE_LOCK if same else RunLock(run_dir)
    try:
        lock.acquire()
        artifacts.write_status(run_dir, "running", started=started)
    except (BslrunError, OSError) as error:
        failure = as_bslrun_error(error) or error
        print(f"{PROG}: error: {failure}", file=sys.stderr)
        if not sweep:
            sys.exit(getattr(failure, "exit_code", 5))
        return None
    stop = StopSignals()
    try:
        with stop:
            cfg = to_config(dcfg)
            from bslrun.run import format_table, run

            sweep_dir = Path(hydra_cfg.sweep.dir) if sweep else None
            metrics = run(cfg, run_dir, stop, sweep_dir, trained=trained)
        end_status(run_dir, started, "completed", 0, None)
        artifacts.point_latest(run_dir)  # ``latest`` is the newest run that completed
        log.info("%s: wrote %s\n%s", cfg.name, run_dir, format_table(metrics, run_dir))
        return objective(metrics)
    except BaseException as raised:
        error = as_bslrun_error(raised)
        if error is None:
            if not isinstance(raised, Exception):
                raise  # SystemExit and the like
            what = f"unexpected {type(raised).__name__}: {raised}"
            log_to_file_only(logging.ERROR, what, exc_info=True)
            end_status(run_dir, started, "failed", 1, f"{what} (a bug: traceback in run.log)")
            if not sweep:
                raise  # Hydra prints the traceback; exit status 1
            print(f"{PROG}: error: {run_dir}: {what} (traceback in run.log)", file=sys.stderr)
            return None
        log_to_file_only(logging.ERROR, str(error))
        end_status(run_dir, started, error.status, error.exit_code, str(error))
        say_error(error, run_dir, hydra_cfg.job.num if sweep else None)
        if isinstance(error, RunInterrupted):
            stop.hand_on(error.signum)  # e.g. submitit requeues the job
        if not sweep or isinstance(error, RunInterrupted):
            leave(error.exit_code)  # an interrupted sweep stops, whichever job it was in
    finally:
        if not same:
            lock.release()
    return None


def say_error(error: BslrunError, run_dir: Path, job: int | None) -> None:
    """The error's one line on stderr; a sweep's job (number ``job``) that failed as the
    job before it did stays quiet: the sweep's summary names them all."""
    if job is None or not previous_job_failed_alike(run_dir, job, str(error)):
        print(f"{PROG}: error: {error}", file=sys.stderr)


def previous_job_failed_alike(run_dir: Path, num: int, error: str) -> bool:
    """Whether the sweep's job ``num - 1`` ended with the same error line: a sweep whose
    every job fails alike (a missing data folder) says it once, and once more at its end."""
    from bslrun import artifacts

    if num < 1 or not run_dir.parent.is_dir():
        return False
    for sibling in run_dir.parent.iterdir():
        if sibling.name == str(num - 1) or sibling.name.startswith(f"{num - 1}_"):
            status = artifacts.read_status(sibling) or {}
            return status.get("error") == error
    return False


def sweep_jobs(sweep_dir: Path) -> list:
    """The job folders of ``sweep_dir``, read as ``bslrun-report`` reads them."""
    from bslrun.runs import find_run_dirs, load_run

    return [load_run(path) for path in find_run_dirs([sweep_dir])] if sweep_dir.is_dir() else []


def failed_jobs(runs: list) -> list[str]:
    """One line per distinct error of the jobs that did not complete: ``"<job folder>:
    <error>"``, or ``"<n> jobs (<first>, ..., <last>): <error>"`` for jobs that failed
    alike, so that twenty jobs stopped by one missing folder say it once."""
    from bslrun.runs import relative

    alike: dict[str, list[str]] = {}
    for run in runs:
        if run.status != "completed":
            alike.setdefault(LOG_PREFIX.sub("", run.message), []).append(
                relative(run.path, Path.cwd())
            )
    lines = []
    for error, folders in alike.items():
        if len(folders) == 1:
            lines.append(f"{folders[0]}: {error}")
        else:
            shown = ", ".join(folders) if len(folders) <= 3 else f"{folders[0]}, ..., {folders[-1]}"
            lines.append(f"{len(folders)} jobs ({shown}): {error}")
    return lines


class SweepFailures(Callback):
    """Hydra callback (``hydra.callbacks`` in config.yaml): when a sweep ends, record its
    failed jobs in the process that launched it. Jobs may have run in other processes
    (joblib) or on other machines (SLURM), so their folders tell."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = sweep_jobs(sweep_dir)
        failed = sum(run.status != "completed" for run in runs)
        SWEEPS.append((sweep_dir, len(runs), failed))
        FAILED_JOBS.extend(failed_jobs(runs))


def sweep_summary(sweep_dir: Path, jobs: int, failed: int) -> str:
    """The line a sweep ends with: its jobs, and the command that tabulates them."""
    from bslrun.runs import relative

    shown = relative(sweep_dir, Path.cwd())
    return (
        f"{PROG}: sweep finished: {jobs} job(s), {jobs - failed} completed, {failed} failed; "
        f"summarise them with: bslrun-report {shown}"
    )


COMPLETION_FLAGS = {"--shell-completion", "-sc"}


def complete_enum_values() -> None:
    """Shell completion offers every value of an enum key by its plain name (``mean_field``).

    Hydra's completion offers a key's current value only, and an enum's in OmegaConf's
    spelling, ``Posterior.mean_field``: accepted, but not what anyone types or the docs
    show. Hydra has no hook for this, so its matcher is wrapped.
    """
    from enum import Enum

    from hydra.plugins.completion_plugin import CompletionPlugin

    hydra_matches = CompletionPlugin._get_matches

    def matches(config, word: str) -> list:
        key, equals, typed = word.partition("=")
        if equals and OmegaConf.is_config(config):
            value = OmegaConf.select(config, key, default=None)
            if isinstance(value, Enum):
                return [f"{key}={m.value}" for m in type(value) if m.value.startswith(typed)]
        return hydra_matches(config, word)

    CompletionPlugin._get_matches = staticmethod(matches)


def main() -> None:
    """The ``bslrun`` command. A run's own signal handlers stop it at an epoch boundary
    (lifecycle.StopSignals); Ctrl-C outside them (while Hydra and the config load, or
    between the jobs of a sweep run here) ends in one line and 130 too, not a traceback."""
    try:
        command()
    except KeyboardInterrupt:
        print(
            f"{PROG}: error: stopped by SIGINT outside training (while starting, or between "
            "the jobs of a sweep); run folders already written are kept",
            file=sys.stderr,
        )
        leave(130)


def command() -> None:
    global PRE_LOCK
    # A log line that cannot be written (a full disk) is lost quietly, not printed as a
    # traceback: the error it belongs to still reaches the terminal in one line.
    logging.raiseExceptions = False
    argv = sys.argv[1:]
    if "--help" in argv or "-h" in argv:
        print(help_text())
        return
    if "--version" in argv:  # bslrun's, not Hydra's
        from bslrun.version import __version__

        print(f"{PROG} {__version__}")
        return
    if COMPLETION_FLAGS & set(argv):
        complete_enum_values()
    if not {"--hydra-help", "--info", *COMPLETION_FLAGS} & set(argv):
        argv = resumed_argv(argv)
        sys.argv[1:] = argv  # Hydra reads the command line itself
        try:
            plan = prevalidate(argv)
            PRE_LOCK = check_output_folder(plan)
        except BslrunError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
        if plan.resume and not any(o.startswith("hydra.run.dir=") for o in argv):
            sys.argv.append(f"hydra.run.dir='{plan.resume}'")  # continue in the resumed folder

    import hydra

    from bslrun.registry import register

    register()
    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(task)()
    except OSError as raised:  # Hydra writing its own files (.hydra/, multirun.yaml)
        error = as_bslrun_error(raised)
        if error is None:
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    end_sweeps()


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resumed_argv(argv: list[str]) -> list[str]:
    """``trainer.resume=<folder>`` alone continues that run as it was started: the folder's
    own overrides (``.hydra/overrides.yaml``) come first, those given here replace them key
    by key, and the result is checked against the checkpoint's config as before."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from bslrun import artifacts

    given = [a for a in argv if "=" in a and override_key(a) == "trainer.resume"]
    if not given:
        return argv
    try:  # the folder as Hydra reads it: quoted where it holds "=" or "," (a sweep job's)
        folder = Path(str(OverridesParser.create().parse_override(given[-1]).value()))
        saved = yaml.safe_load(artifacts.RunFolder(folder).hydra_overrides.read_text()) or []
    except (HydraException, OSError, yaml.YAMLError):
        return argv  # preflight names what is wrong with the override or the folder
    keys = {override_key(a) for a in argv if "=" in a}
    kept = [o for o in saved if isinstance(o, str) and override_key(o) not in keys]
    return kept + argv


def end_sweeps() -> None:
    """After a sweep: its summary line, then its failed jobs (exit status 1 if any)."""
    for sweep in SWEEPS:
        print(sweep_summary(*sweep))
    if FAILED_JOBS:
        failed = sum(count for _, _, count in SWEEPS)
        print(f"{PROG}: {failed} job(s) failed:", file=sys.stderr)
        for line in FAILED_JOBS:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
