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
from bslrun.inference import checkpoint, engine, reference
from bslrun.lifecycle import resume_hint
from bslrun.models import build as build_family
from bslrun.models import with_scalers
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


def write_training(run_dir: Path, result: engine.FitResult, family) -> None:
    """History, learning curves and parameters: everything a diverged run still has."""
    folder = artifacts.RunFolder(run_dir)
    artifacts.write_history(folder.history, result.history)
    artifacts.save_params(folder.params, result.params)
    if result.history:
        train_label, val_label = family.curve_labels()
        draw(
            "the learning curves",
            plots.learning_curves,
            result.history,
            folder.plots / "learning_curves.png",
            train_label,
            f"val_{family.val_loss}",
            val_label,
            result.best_epoch,
            result.stopped_early,
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


def run(cfg: Config, run_dir: Path, stop=None, sweep_dir: Path | None = None) -> dict:
    """Train and evaluate ``cfg``; write the experiment folder; return metrics.

    ``stop`` (``lifecycle.StopSignals``) is asked at every epoch boundary whether a signal
    asked the run to stop; once training is over, a stop signal stops at once.
    ``sweep_dir``: the sweep folder of a sweep job, which groups its runs in the loggers.
    """
    run_dir = Path(run_dir)
    # timing.import_s: Python, Hydra, JAX and bslrun loaded and the config composed (in a
    # later job of a sweep run in one process, the config alone).
    import_s = clock.seconds_since_run_start()
    compilation.enable(cfg.trainer.compilation_cache, cfg.trainer.compilation_cache_gb)
    if InferenceMethod(cfg.inference.method) is InferenceMethod.nuts:
        return run_nuts(cfg, run_dir, stop, sweep_dir)
    if cfg.trainer.replicas > 1:
        return run_replicas(cfg, run_dir, stop, sweep_dir)
    folder = artifacts.RunFolder(run_dir)
    handed = replicas.take(cfg)
    checkpoints = None if handed is not None else checkpoints_for(cfg, run_dir, stop)
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
    ref = read_reference(cfg, family, data)
    group = None if sweep_dir is None else str(sweep_dir)
    with loggers.opened(cfg, run_dir, group, stop.pending if stop else None) as tracked:
        result = train(cfg, run_dir, family, data, keys, checkpoints, stop, tracked.epoch, handed)
        result.timing.update(import_s=import_s, log_s=tracked.seconds)
        metrics = evaluate_and_write(cfg, folder, family, data, result, handed)
        if ref is not None:
            metrics = compare_with_reference(cfg, folder, family, data, result.params, ref, metrics)
        tracked.finish(metrics, sorted(folder.plots.glob("*.png")))
    return metrics


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


def run_nuts(cfg: Config, run_dir: Path, stop=None, sweep_dir: Path | None = None) -> dict:
    """``inference=nuts``: sample the BNN's posterior by NUTS instead of training it
    (inference/nuts.py), and write what a run writes (docs/nuts.md): metrics.json with an
    ``mcmc`` section, predictions.npz and figures, posterior_samples.npz, reference.npz.
    A stop signal ends the run once the chains are done (sampling is one program)."""
    from bslrun.inference import nuts

    folder = artifacts.RunFolder(run_dir)
    artifacts.write_json(folder.config, as_dict(cfg))
    artifacts.write_json(folder.manifest, provenance())
    keys = seeding.streams(cfg.seed)
    data = load_data(cfg.data, keys.data)
    artifacts.write_json(folder.data_spec, {**data.spec.to_json(), "n_train": len(data.train)})
    family = build_family(cfg.model, data.spec, len(data.train), keys.structure)
    settings = cfg.inference
    group = None if sweep_dir is None else str(sweep_dir)
    with loggers.opened(cfg, run_dir, group, stop.pending if stop else None) as tracked:
        what = f"{settings.num_chains} chains of {settings.num_warmup} + {settings.num_samples}"
        with clock.Phase(f"sampling {what} (NUTS) on {len(data.train)} rows", "sampled"):
            chains = nuts.sample(family, data.train, settings, keys.train)
        with naming_what_is_missing(run_dir, "metrics.json and the figures are not written"):
            if stop:
                stop.now_or_never("sampling finished")
            with clock.Phase("evaluating the test split", "evaluated") as phase:
                result = nuts.evaluate(family, chains, data)
        metrics = {
            "name": cfg.name,
            "seed": cfg.seed,
            "test": result.test,
            "val": result.val or {"nll": None},
            "train": {"n": len(data.train), "posterior": "nuts"},
            "mcmc": result.mcmc,
            "data": {
                "val_n": len(data.val) if data.val is not None else 0,
                "test_n": len(data.test),
            },
            "timing": {"sample_s": chains.stats["wall_s"], "eval_s": phase.seconds},
            "config": as_dict(cfg),
            "versions": versions(),
        }
        artifacts.write_json(folder.metrics, metrics)
        artifacts.write_npz(folder.arrays(family.saves), result.predictions)
        artifacts.write_npz(folder.posterior_samples, chains.samples)
        artifacts.write_npz(folder.reference, result.reference)
        shown = {**result.predictions, **{f"test.{k}": v for k, v in result.test.items()}}
        draw_figures("the bnn figures", family, shown, folder)
        tracked.finish(metrics, sorted(folder.plots.glob("*.png")))
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
    for members in replicas.groups(cfgs):  # a flow drawing its structure from the seed
        if len(members) > 1:  # cannot share a program: its replicas train one by one
            replicas.train_together([cfgs[i] for i in members],
                                    stop.pending if stop else (lambda: None))  # fmt: skip
    done, states, errors = {}, {}, []
    for r, replica_cfg in enumerate(cfgs):
        replica_dir = folder.replica(r)
        artifacts.copy_hydra_files(run_dir, replica_dir, seed=replica_cfg.seed)
        started = now()
        artifacts.write_status(replica_dir, "running", started=started)
        try:
            done[replica_dir.name] = run(replica_cfg, replica_dir, stop, sweep_dir)
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


def train(cfg, run_dir: Path, family, data, keys, checkpoints, stop, on_epoch, handed=None):
    """``engine.fit`` with the run's settings, or what training together with other jobs
    ``handed`` it (``replicas.take``); what a stopped or diverged run has is written."""
    try:
        if handed is None:
            result = engine.fit(
                family, data, cfg.optim, cfg.trainer, keys.init, keys.train,
                family.val_samples(cfg.eval),
                desc=cfg.name, checkpoints=checkpoints,
                stop_requested=stop.pending if stop else (lambda: None),
                eval_samples=family.eval_samples(cfg.eval),
                on_epoch=on_epoch,
            )  # fmt: skip
        else:
            result = handed.outcome
            if isinstance(result, BslrunError):
                raise result
            log.info("trained together with the other jobs of its group (%s replicas)",
                     result.timing["replicas"])  # fmt: skip
            for row in result.history:  # the loggers see the history it would have had
                on_epoch(row)
    except DivergenceError as error:
        write_training(run_dir, error.result, family)
        raise
    except RunInterrupted as error:
        if hasattr(error, "result"):  # not when it stopped before or during a save
            write_training(run_dir, error.result, family)
        if handed is not None:  # replicas trained together keep no checkpoint
            raise
        raise RunInterrupted(f"{error}; {resume_hint(run_dir)}", error.signum) from None
    finally:
        if checkpoints is not None:
            checkpoints.close()
    tick = time.perf_counter()
    write_training(run_dir, result, family)  # before a pending signal stops the run
    result.timing["write_s"] = time.perf_counter() - tick
    if stop:
        with naming_what_is_missing(run_dir, NOT_EVALUATED):
            stop.now_or_never("training finished")
    return result


NOT_EVALUATED = "history.csv and the parameters are written, metrics.json and the figures not"


@contextlib.contextmanager
def naming_what_is_missing(run_dir: Path, missing: str):
    """A stop signal inside ends the run saying what it lacks, and how to finish it."""
    try:
        yield
    except RunInterrupted as error:
        raise RunInterrupted(f"{error}; {missing}; {resume_hint(run_dir)}", error.signum) from None


def evaluate_and_write(cfg, folder: artifacts.RunFolder, family, data, result,
                       handed: replicas.Trained | None = None) -> dict:  # fmt: skip
    """The final evaluation on the test (and validation) split: metrics.json, the arrays
    file and the family's figures. A job trained together with others was evaluated
    with them (``handed``)."""
    if handed is not None:
        test, val, predictions, eval_s = handed.test, handed.val, handed.predictions, handed.eval_s
        timing = dict(result.timing, eval_s=eval_s)  # the group's program: its compile_s
    else:
        with naming_what_is_missing(folder.root, NOT_EVALUATED):
            evaluated = evaluate_alone(cfg, family, data, result)
        test, val, predictions, eval_compile_s, eval_s = evaluated
        timing = dict(result.timing, eval_compile_s=eval_compile_s, eval_s=eval_s)
    metrics = {
        "name": cfg.name,
        "seed": cfg.seed,
        "test": test,
        "val": val or {"nll": None},
        "train": {
            "final_loss": result.history[-1]["train_loss"],
            "n": len(data.train),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            # what early stopping and a sweeper's objective watch (None: no validation split)
            "monitored": f"val.{family.monitored(cfg.trainer.monitor.value, val)}" if val else None,
        },
        "data": {"val_n": len(data.val) if data.val is not None else 0, "test_n": len(data.test)},
        "timing": timing,
        "config": as_dict(cfg),
        "versions": versions(),
    }
    tick = time.perf_counter()
    # Numbers first: a figure that fails must never cost the metrics.
    artifacts.write_json(folder.metrics, metrics)
    artifacts.write_npz(folder.arrays(family.saves), predictions)
    # Figures may quote the test scores ("test.kl_to_true"): given, never computed again.
    shown = {**predictions, **{f"test.{k}": v for k, v in test.items()}}
    draw_figures(f"the {cfg.model.family} figures", family, shown, folder)
    # What writing took (the training files, these, the figures), once it is known.
    timing["write_s"] = timing.get("write_s", 0.0) + time.perf_counter() - tick
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


def evaluate_alone(cfg, family, data, result) -> tuple:
    """(test metrics, validation metrics, saved arrays, seconds compiling, seconds
    evaluating) of one run. The test and validation scores and the saved arrays are one
    program, which takes the keys and the data's standardisers as arguments: a job of a
    sweep over seeds or splits loads the program its first job compiled."""
    keys = seeding.eval_keys(cfg.seed)
    num_samples = family.eval_samples(cfg.eval)
    val_samples = family.final_val_samples(cfg.eval)
    inputs = family.artifact_inputs(cfg.data, data, keys.artifacts)

    def final(arrays, params, test, val, keys, inputs):
        scored = with_scalers(family, arrays)
        return (
            scored.evaluate(params, *test, keys.test, num_samples),
            scored.final_validate(params, *val, keys.val, val_samples) if val else {},
            scored.artifacts(params, *test, keys.artifacts, num_samples, **inputs),
        )

    test, val = ((s.x, s.y) if s is not None else None for s in (data.test, data.val))
    args = (data.spec.scaler_arrays(), result.params, test, val, keys, inputs)
    splits = "the test and validation splits" if data.val is not None else "the test split"
    with clock.Phase("compiling the final evaluation", "compiled") as compiling:
        program = jax.jit(final).lower(*args).compile()
    with clock.Phase(f"evaluating {splits} ({num_samples} draws)", "evaluated") as phase:
        test, val, predictions = jax.device_get(program(*args))
    test, val = ({k: float(v) for k, v in scores.items()} for scores in (test, val))
    return test, val, predictions, compiling.seconds, phase.seconds


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
    rows += [(f"train.{key}", str(train[key])) for key in TRAINING if key in train]
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
