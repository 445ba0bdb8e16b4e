"""The vectorised launcher's work (``hydra/launcher=vectorised``; the Hydra plugin class
is ``hydra_plugins.bslrun_launcher``): a sweep's jobs are composed, grouped by
``replicas.groups``, each group of several trained as one program, and then every job
runs in its own folder as with Hydra's basic launcher, its run handed what its group
trained (``run.run``'s ``trained``) instead of training.

Also the joblib launcher's sweep outliving a worker killed outright
(``outlive_lost_workers``, for ``hydra_plugins.bslrun_launcher.joblib_launcher``).
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

from bslrun import replicas
from bslrun.errors import BslrunError
from bslrun.lifecycle import StopSignals
from bslrun.preflight import to_config

log = logging.getLogger("bslrun")


def _compose(launcher, overrides, idx: int):
    """The job's full config (with ``hydra``) and its bslrun Config, or None when the
    config is invalid (the job then reports that itself, in its folder)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    sweep_config = launcher.hydra_context.config_loader.load_sweep_config(
        launcher.config, list(overrides)
    )
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = idx
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    task_config = sweep_config.copy()
    with open_dict(task_config):
        del task_config["hydra"]
    try:
        return sweep_config, to_config(task_config)
    except BslrunError:
        return sweep_config, None


def _train_group(cfgs: list) -> list:
    """Each job's ``methods.Trained`` from training the group together; None for each
    when that fails (its jobs then train alone: nothing is lost)."""
    try:
        with StopSignals() as stop:
            trained = replicas.train_together(cfgs, stop.pending)
            if trained is not None:
                return trained
    except Exception as error:  # each job will meet (and report) its own problem
        message = f"{type(error).__name__}: {error}"
        print(f"bslrun: training {len(cfgs)} jobs together failed ({message}); "
              "they train one by one", file=sys.stderr)  # fmt: skip
        log.debug("group training failed", exc_info=True)
    return [None] * len(cfgs)


def launch(launcher, job_overrides, initial_job_idx: int) -> list:
    """Hydra's ``Launcher.launch``: one JobReturn per job, in the jobs' order."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log, run_job, setup_globals

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    jobs = [
        _compose(launcher, overrides, initial_job_idx + i)
        for i, overrides in enumerate(job_overrides)
    ]
    valid = [i for i, (_, cfg) in enumerate(jobs) if cfg is not None]
    found = replicas.groups([jobs[i][1] for i in valid])
    together = [[valid[i] for i in members] for members in found if len(members) > 1]
    alone = len(jobs) - sum(len(g) for g in together)
    log.info(
        "launching %d jobs: %s trained together, %d alone",
        len(jobs), " + ".join(str(len(g)) for g in together) or "none", alone,
    )  # fmt: skip
    order = sorted([*together, *[[i] for i in range(len(jobs)) if not _in(i, together)]])
    returns = {}
    for members in order:
        trained = [None]
        if len(members) > 1:
            trained = _train_group([jobs[i][1] for i in members])
        for i, handed in zip(members, trained, strict=True):
            sweep_config = jobs[i][0]
            HydraConfig.instance().set_config(sweep_config)
            # The job's training is handed to its run, and to no other job's.
            task = launcher.task_function
            returns[i] = run_job(
                hydra_context=launcher.hydra_context,
                task_function=task if handed is None else functools.partial(task, trained=handed),
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return [returns[i] for i in range(len(jobs))]


def _in(i: int, together: list) -> bool:
    return any(i in members for members in together)


# ------------------------------------------------------------------ hydra/launcher=joblib

LOST = (
    "lost: a worker process of the sweep was killed outright (SIGKILL, e.g. the kernel's "
    "out-of-memory killer) while this job {how}, and joblib stopped every worker; run the "
    "sweep again with hydra.sweep.dir=<its folder> to train it (or fewer jobs at once: "
    "hydra.launcher.n_jobs)"
)


def outlive_lost_workers(launcher, launch, job_overrides, initial_job_idx: int) -> list:
    """The joblib launcher's ``launch``, outliving a worker killed outright: joblib then
    loses every job of the batch (TerminatedWorkerError). Each job that had not completed
    is marked failed in its folder, saying so; the sweep goes on to its summary, and a
    job that completed keeps its result."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    try:
        return launch(job_overrides, initial_job_idx)
    except TerminatedWorkerError as error:
        log.debug("a worker process was killed: %s", error)
    return [
        _after_loss(launcher, overrides, initial_job_idx + i)
        for i, overrides in enumerate(job_overrides)
    ]


def _after_loss(launcher, overrides, idx: int):
    """The JobReturn of a job whose worker pool was lost: its result if it completed, else
    None (a failed job, as ``cli.task`` returns), its folder marked failed."""
    from hydra.core.utils import JobReturn, JobStatus

    sweep_config, _ = _compose(launcher, overrides, idx)
    folder = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
    return JobReturn(
        overrides=list(overrides), cfg=sweep_config, hydra_cfg=sweep_config,
        working_dir=str(folder), task_name=sweep_config.hydra.job.name,
        status=JobStatus.COMPLETED, _return_value=_outcome(folder),
    )  # fmt: skip


def _outcome(folder: Path) -> float | None:
    """What a lost job's folder says: its objective if it completed; otherwise it is
    marked failed (it ran, or never started) unless it is still held by a live run."""
    import json

    from bslrun import artifacts
    from bslrun.lifecycle import RunLock, now
    from bslrun.sweeper import objective

    files = artifacts.RunFolder(folder)
    try:
        status = json.loads(files.status.read_text())
    except (OSError, ValueError):
        status = {}
    if status.get("status") == "completed" and files.metrics.is_file():
        return objective(json.loads(files.metrics.read_text()))
    try:
        lock = RunLock(folder).acquire()
    except BslrunError:
        return None  # a live process holds it: it records its own end
    how = "ran" if status else "waited to start"
    artifacts.write_status(folder, "failed", started=status.get("started") or now(),
                           ended=now(), exit_code=None, error=LOST.format(how=how))  # fmt: skip
    lock.release()
    return None
