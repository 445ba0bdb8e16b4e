"""One run, in short named steps: seed -> data -> family -> fit -> evaluate -> write."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import jax

from bslrun import artifacts, clock, compilation, loggers, plots, replicas, seeding
from bslrun.config import Config, InferenceMethod, as_dict
from bslrun.data import load as load_data
from bslrun.errors import BslrunError, ConfigError, DivergenceError, RunInterrupted
from bslrun.inference import checkpoint, methods, reference
from bslrun.inference.engine import Fitted
from bslrun.lifecycle import resume_hint
from bslrun.models import build as build_family
from bslrun.version import __version__

log = logging.getLogger("bslrun")

PACKAGES = ("bslrun", "jax", "jaxlib", "numpyro", "flax", "optax", "hydra-core", "numpy")


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_state() -> dict | None:
    """{"commit", "dirty"} of the checkout bslrun runs from; None when installed from a wheel
    (or git is missing)."""
    checkout = Path(__file__).resolve().parents[2]  # src/bslrun/run.py -> the checkout
    if not (checkout / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        changes = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changes)}


def provenance() -> dict:
    """run.json: what made the run folder, and where (docs/run-folder.md)."""
    devices = jax.devices()
    return {
        "format": artifacts.FORMAT,
        "bslrun_version": __version__,
        "command": shlex.join(["bslrun", *sys.argv[1:]]),
        "git": git_state(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in devices],
        "versions": versions(),
    }


def draw(what: str, plot, *args) -> None:
    """Draw figures; figures that cannot be drawn are skipped with a warning, never a lost
    run. (A full disk is not the figure's fault: OSError goes on to the caller.)"""
    try:
        plot(*args)
    except (OSError, RunInterrupted):  # a stop signal ends the run, as anywhere else
        raise
    except Exception as error:  # a figure is a view of results that are already written
        log.warning("skipped %s: %s: %s", what, type(error).__name__, error)


def write_fitted(run_dir: Path, fitted: Fitted, family) -> None:
    """What a fit leaves in the run folder: history, learning curves and parameters
    (everything a diverged run still has), or a sampler's posterior draws."""
    folder = artifacts.RunFolder(run_dir)
    if fitted.draws is not None:
        artifacts.write_npz(folder.posterior_samples, fitted.draws)
    if fitted.params is None:
        return
    artifacts.write_history(folder.history, fitted.history)
    artifacts.save_params(folder.params, fitted.params)
    if fitted.history:
        train_label, val_label = family.curve_labels()
        draw(
            "the learning curves",
            plots.learning_curves,
            fitted.history,
            folder.plots / "learning_curves.png",
            train_label,
            f"val_{family.info.val_loss}",
            val_label,
            fitted.best_epoch,
            fitted.stopped_early,
        )


def checkpoints_for(cfg: Config, run_dir: Path, stop=None) -> checkpoint.Checkpoints:
    """The run's checkpoints, after checking any already in ``run_dir``.

    A folder holding checkpoints is resumed: the one named by ``trainer.resume``, or a
    run folder that a requeued cluster job starts again in. With
    ``trainer.checkpoint_every=0`` nothing is saved but the one checkpoint of a run
    stopped by a signal.
    """
    config = as_dict(cfg)
    resuming = checkpoint.check_config(run_dir, config)
    if cfg.trainer.resume and not resuming:
        raise ConfigError(
            f"trainer.resume={cfg.trainer.resume}: no checkpoint there "
            f"({checkpoint.folder(run_dir)} is missing); give a run folder that was "
            "trained with trainer.checkpoint_every > 0"
        )
    if resuming:
        log.info("resuming from the last checkpoint in %s", checkpoint.folder(run_dir))
    hold = stop.holding if stop else None  # a save is never cut half-way by a signal
    return checkpoint.Checkpoints(run_dir, cfg.trainer.checkpoint_every, config, hold)


def run(cfg: Config, run_dir: Path, stop=None, sweep_dir: Path | None = None, *,
        trained: methods.Trained | None = None) -> dict:  # fmt: skip
    """Fit and evaluate ``cfg``'s posterior; write the experiment folder; return metrics.

    Every run takes this path: prepare, ``method.fit``, ``method.evaluate``, write
    (``inference/methods.py`` has the methods). ``trained``: what training together with
    other jobs gave this job (``replicas.train_together``). ``stop``
    (``lifecycle.StopSignals``) is asked at every epoch boundary whether a signal asked
    the run to stop; once training is over, a stop signal stops at once. ``sweep_dir``:
    the sweep folder of a sweep job, which groups its runs in the loggers.
    """
    run_dir = Path(run_dir)
    # timing.import_s: Python, Hydra, JAX and bslrun loaded and the config composed (in a
    # later job of a sweep run in one process, the config alone).
    import_s = clock.seconds_since_run_start()
    compilation.enable(cfg.trainer.compilation_cache, cfg.trainer.compilation_cache_gb)
    if cfg.trainer.replicas > 1 and trained is None:
        return run_replicas(cfg, run_dir, stop, sweep_dir)
    method = methods.method_for(cfg, trained)
    folder = artifacts.RunFolder(run_dir)
    checkpoints = checkpoints_for(cfg, run_dir, stop) if method.resumable else None
    data, family, keys, ref = prepare(cfg, folder)
    group = None if sweep_dir is None else str(sweep_dir)
    with loggers.opened(cfg, run_dir, group, stop.pending if stop else None) as tracked:
        job = methods.Job(cfg, data, family, keys, stop.pending if stop else (lambda: None),
                          tracked.epoch, checkpoints)  # fmt: skip
        fitted = fit(method, job, run_dir, stop)
        fitted.timing.update(import_s=import_s, log_s=tracked.seconds)
        with naming_what_is_missing(run_dir, f"{method.fitted_files}, {NOT_WRITTEN}"):
            if stop:
                stop.now_or_never(method.done)
            evaluated = method.evaluate(job, fitted)
        metrics = write(cfg, folder, family, data, fitted, evaluated)
        if ref is not None:
            metrics = compare_with_reference(cfg, folder, family, data, fitted.params, ref, metrics)
        tracked.finish(metrics, sorted(folder.plots.glob("*.png")))
    return metrics


NOT_WRITTEN = "metrics.json and the figures not"


def prepare(cfg: Config, folder: artifacts.RunFolder) -> tuple:
    """(data, family, keys, NUTS reference or None): the run folder's config, provenance
    and data description written, the data loaded and the family built."""
    artifacts.write_json(folder.config, as_dict(cfg))
    artifacts.write_json(folder.manifest, provenance())
    keys = seeding.streams(cfg.seed)
    data = load_data(cfg.data, keys.data)
    artifacts.write_json(folder.data_spec, {**data.spec.to_json(), "n_train": len(data.train)})
    log.info(
        "data %s: %d train, %d validation, %d test rows",
        data.spec.name,
        len(data.train),
        len(data.val) if data.val is not None else 0,
        len(data.test),
    )
    family = build_family(cfg.model, data.spec, len(data.train), keys.structure)
    log.info("model %s", as_dict(cfg.model))
    # eval.reference is checked before training: a wrong folder costs a second.
    return data, family, keys, read_reference(cfg, family, data)


def read_reference(cfg: Config, family, data) -> dict | None:
    """The NUTS run's reference.npz that ``eval.reference`` names, checked to predict the
    same test points (DataError else); None without eval.reference."""
    if not cfg.eval.reference:
        return None
    targets = reference.targets(data.spec, data.test.y)
    return reference.read(cfg.eval.reference, targets, data.spec.task)


def compare_with_reference(cfg, folder, family, data, params, ref: dict, metrics: dict) -> dict:
    """metrics.json with a ``reference`` section: this run's distances from the NUTS
    predictive (inference/reference.py), from the draws its predictions.npz used."""
    key = seeding.eval_keys(cfg.seed).artifacts
    num_samples = family.eval_samples(cfg.eval)
    with clock.Phase("comparing with the NUTS reference", "compared"):
        found = reference.compare(family, params, data.test.x, ref, key, num_samples)
    metrics = {**metrics, "reference": {**found, "folder": cfg.eval.reference}}
    artifacts.write_json(folder.metrics, metrics)
    return metrics


def replica_configs(cfg: Config) -> list[Config]:
    """``trainer.replicas=R``: the configs of R runs with seeds seed, ..., seed + R - 1."""
    trainer = dataclasses.replace(cfg.trainer, replicas=1)
    return [
        dataclasses.replace(cfg, seed=cfg.seed + r, trainer=trainer)
        for r in range(cfg.trainer.replicas)
    ]


def run_replicas(cfg: Config, run_dir: Path, stop=None, sweep_dir: Path | None = None) -> dict:
    """``trainer.replicas=R``: R runs trained together (``replicas``), each written as a
    run folder of its own, ``run_dir/replica_<r>``, with its own status; ``replicas.json``
    says which and summarises them. Returns the mean of each metric (the objective of a
    sweep over such runs), with their standard errors under ``stderr`` (the console
    table shows both). A replica that fails does not cost the others."""
    from bslrun.lifecycle import now

    cfgs = replica_configs(cfg)
    folder = artifacts.RunFolder(run_dir)
    artifacts.write_json(folder.config, as_dict(cfg))
    artifacts.write_json(folder.manifest, provenance())
    trained = [None] * len(cfgs)
    for members in replicas.groups(cfgs):  # a flow drawing its structure from the seed
        if len(members) > 1:  # cannot share a program: its replicas train one by one
            pending = stop.pending if stop else (lambda: None)
            outcomes = replicas.train_together([cfgs[i] for i in members], pending)
            for i, outcome in zip(members, outcomes or [None] * len(members), strict=True):
                trained[i] = outcome
    done, states, errors = {}, {}, []
    for r, replica_cfg in enumerate(cfgs):
        replica_dir = folder.replica(r)
        artifacts.copy_hydra_files(run_dir, replica_dir, seed=replica_cfg.seed)
        started = now()
        artifacts.write_status(replica_dir, "running", started=started)
        try:
            done[replica_dir.name] = run(replica_cfg, replica_dir, stop, sweep_dir,
                                         trained=trained[r])  # fmt: skip
        except BslrunError as error:
            states[replica_dir.name] = error.status
            artifacts.write_status(replica_dir, error.status, started=started, ended=now(),
                                   exit_code=error.exit_code, error=str(error))  # fmt: skip
            log.error("replica %d: %s", r, error)
            if isinstance(error, RunInterrupted):
                raise
            errors.append(error)
            continue
        states[replica_dir.name] = "completed"
        artifacts.write_status(replica_dir, "completed", started=started, ended=now(),
                               exit_code=0)  # fmt: skip
    summary = replicas.summarise(done)
    artifacts.write_json(folder.replicas, {"replicas": states, **summary})
    if errors and not done:
        first = errors[0]
        raise type(first)(f"none of the {len(cfgs)} replicas completed; replica 0: {first}")
    return {**summary["mean"], "stderr": summary["stderr"]}


def fit(method, job: methods.Job, run_dir: Path, stop) -> Fitted:
    """``method.fit``; what it fitted is written (a stopped or diverged run's too)."""
    try:
        fitted = method.fit(job)
    except DivergenceError as error:
        if error.result is not None:  # the history and the last finite parameters
            write_fitted(run_dir, error.result, job.family)
        raise
    except RunInterrupted as error:
        if error.result is not None:  # not when it stopped before or during a save
            write_fitted(run_dir, error.result, job.family)
        if not method.resumable:
            raise
        raise RunInterrupted(f"{error}; {resume_hint(run_dir)}", error.signum) from None
    finally:
        if job.checkpoints is not None:
            job.checkpoints.close()
    tick = time.perf_counter()
    write_fitted(run_dir, fitted, job.family)  # before a pending signal stops the run
    fitted.timing["write_s"] = time.perf_counter() - tick
    return fitted


@contextlib.contextmanager
def naming_what_is_missing(run_dir: Path, missing: str):
    """A stop signal inside ends the run saying what it lacks, and how to finish it."""
    try:
        yield
    except RunInterrupted as error:
        raise RunInterrupted(f"{error}; {missing}; {resume_hint(run_dir)}", error.signum) from None


# metrics.json's shape, the same for every method: a value a method does not have is
# null (docs/run-folder.md). Timing keys in the order they happen.
TIMING_KEYS = (
    "import_s", "init_s", "compile_s", "startup_s", "resumed_from_epoch", "train_s", "val_s",
    "train_examples_per_sec", "sample_s", "eval_compile_s", "eval_s", "log_s", "write_s",
    "replicas",
)  # fmt: skip


def metrics_record(cfg: Config, family, data, fitted: Fitted, evaluated: methods.Evaluated) -> dict:
    """metrics.json: the one builder, for every method."""
    history, val = fitted.history, evaluated.val
    monitored = family.monitored(cfg.trainer.monitor.value, val) if val and history else None
    timing = {**fitted.timing, **evaluated.timing}
    return {
        "name": cfg.name,
        "seed": cfg.seed,
        "test": evaluated.test,
        "val": val or {"nll": None},
        "train": {
            "final_loss": history[-1]["train_loss"] if history else None,
            "n": len(data.train),
            "epochs_run": fitted.epochs_run,
            "best_epoch": fitted.best_epoch,
            "stopped_early": fitted.stopped_early,
            # what early stopping and a sweeper's objective watch (None: no validation split)
            "monitored": f"val.{monitored}" if monitored else None,
            "posterior": posterior_name(cfg),
        },
        "mcmc": evaluated.mcmc,
        "reference": None,  # eval.reference: compare_with_reference fills it
        "data": {"val_n": len(data.val) if data.val is not None else 0, "test_n": len(data.test)},
        "timing": {key: timing.get(key) for key in TIMING_KEYS},
        "config": as_dict(cfg),
        "versions": versions(),
    }


def posterior_name(cfg: Config) -> str | None:
    """What the run's posterior is: ``nuts``, or the model's ``posterior`` (a BNN's
    variational family; None for a family without one)."""
    if InferenceMethod(cfg.inference.method) is InferenceMethod.nuts:
        return "nuts"
    return as_dict(cfg.model).get("posterior")


def write(cfg, folder: artifacts.RunFolder, family, data, fitted: Fitted,
          evaluated: methods.Evaluated) -> dict:  # fmt: skip
    """metrics.json, the arrays files and the family's figures."""
    metrics = metrics_record(cfg, family, data, fitted, evaluated)
    tick = time.perf_counter()
    # Numbers first: a figure that fails must never cost the metrics.
    artifacts.write_json(folder.metrics, metrics)
    artifacts.write_npz(folder.arrays(family.info.saves), evaluated.predictions)
    for name, arrays in evaluated.arrays.items():
        artifacts.write_npz(getattr(folder, name), arrays)
    # Figures may quote the test scores ("test.kl_to_true"): given, never computed again.
    shown = {**evaluated.predictions, **{f"test.{k}": v for k, v in evaluated.test.items()}}
    draw_figures(f"the {cfg.model.family} figures", family, shown, folder)
    # What writing took (the training files, these, the figures), once it is known.
    timing = metrics["timing"]
    timing["write_s"] = (timing["write_s"] or 0.0) + time.perf_counter() - tick
    artifacts.write_json(folder.metrics, metrics)
    return metrics


def draw_figures(what: str, family, shown: dict, folder: artifacts.RunFolder) -> None:
    """The family's figures, drawn once the numbers are written. A stop signal while they
    are drawn ends the run as interrupted, naming what it lacks: never a run that says
    completed with figures missing."""
    try:
        with clock.Phase("drawing the figures", "drawn"):
            draw(what, family.plot, shown, folder.plots)
    except RunInterrupted as error:
        drawn = ", ".join(sorted(p.name for p in folder.plots.glob("*.png"))) or "none"
        missing = (
            "metrics.json and the arrays are written, but not all the figures "
            f"({folder.plots} holds only: {drawn})"
        )
        with naming_what_is_missing(folder.root, missing):
            raise error from None


# The console table leads with the metrics that judge a task, in this order; a run shows
# those it has (regression: rmse, nll, coverage; classification: accuracy, nll, ece; a
# VAE: nll, bits/dim; a flow: nll, KL to the true density). metrics.json has the rest.
HEADLINE = (
    "rmse", "accuracy", "nll", "neg_elbo", "bits_per_dim", "kl_to_true", "coverage_95", "ece",
)  # fmt: skip
TRAINING = ("epochs_run", "best_epoch", "stopped_early")
TIMING = (
    "startup_s", "compile_s", "train_s", "sample_s", "eval_compile_s", "eval_s", "write_s",
    "train_examples_per_sec",
)  # fmt: skip
# inference=nuts: how well the chains mixed (metrics.json's "mcmc" has the rest)
MCMC = ("predictive_rhat_max", "predictive_ess_min", "divergences")
# eval.reference: the distance from the NUTS predictive (regression; classification)
REFERENCE = ("w2", "agreement")


def _value(metrics: dict, section: str, key: str) -> str:
    """A headline metric; the mean of replicas (``run_replicas``) with its standard error."""
    shown = f"{metrics[section][key]:.4f}"
    error = ((metrics.get("stderr") or {}).get(section) or {}).get(key)
    return shown if error is None else f"{shown} ± {error:.4f}"


def format_table(metrics: dict, run_dir: Path | None = None) -> str:
    """The final metrics as an aligned two-column table: the task's headline metrics on
    the test and validation splits, then how training went, then timing."""
    rows = [
        (f"{section}.{key}", _value(metrics, section, key))
        for section in ("test", "val")
        for key in HEADLINE
        if (metrics.get(section) or {}).get(key) is not None
    ]
    ref = metrics.get("reference") or {}
    rows += [
        (f"reference.{key}", f"{ref[key]:.4f}") for key in REFERENCE if ref.get(key) is not None
    ]
    mcmc = metrics.get("mcmc") or {}
    rows += [(f"mcmc.{key}", f"{mcmc[key]:.4g}") for key in MCMC if mcmc.get(key) is not None]
    train = metrics.get("train") or {}
    rows += [(f"train.{key}", str(train[key])) for key in TRAINING if train.get(key) is not None]
    timing = metrics.get("timing") or {}
    rows += [
        (f"timing.{key}", f"{timing[key]:.2f}") for key in TIMING if timing.get(key) is not None
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    if run_dir is not None:
        folder = artifacts.RunFolder(run_dir)
        replicated = folder.replicas.is_file() and not folder.metrics.is_file()
        lines.append(f"  every metric: {folder.replicas if replicated else folder.metrics}")
    return "\n".join(lines)
