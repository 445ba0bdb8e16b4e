"""How a run finds its posterior. Every method answers the same two calls, so that one
pipeline (``run.run``) serves them all:

- ``fit(job) -> Fitted``: train, sample, or take what a group trained (``engine.Fitted``);
- ``evaluate(job, fitted) -> Evaluated``: the final scores and the run folder's arrays.

A new inference method is a class with these two calls (here, or in a module of its own),
a line of ``METHODS`` and its settings in the config's schema (``InferenceConfig``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import jax

from bslrun import clock, seeding
from bslrun.config import Config, InferenceMethod
from bslrun.errors import BslrunError
from bslrun.inference import engine
from bslrun.inference.engine import Fitted
from bslrun.models import with_scalers

log = logging.getLogger("bslrun")


@dataclass(frozen=True)
class Job:
    """What a method works from: the run's config, data, family and keys, and the run's
    hooks (a stop signal asked at epoch boundaries, the loggers' epoch rows)."""

    cfg: Config
    data: object  # bslrun.data.splits.Dataset
    family: object  # bslrun.models.family.Family
    keys: seeding.Streams
    stop_requested: Callable[[], int | None] = lambda: None
    on_epoch: Callable[[dict], None] = lambda row: None
    checkpoints: object = None  # checkpoint.Checkpoints of a resumable method, else None


@dataclass(frozen=True)
class Evaluated:
    """A fitted posterior's final evaluation: test and validation scores (floats), the
    arrays file (``predictions.npz`` or ``samples.npz``), what it took, and what a method
    adds to metrics.json (``mcmc``) and to the run folder (``arrays``: more .npz files by
    ``RunFolder`` attribute, e.g. ``reference``)."""

    test: dict
    val: dict
    predictions: dict
    timing: dict  # eval_compile_s (None when compiled with others), eval_s
    mcmc: dict | None = None
    arrays: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Trained:
    """A job's training done together with its group (``replicas.train_together``):
    its outcome (a Fitted, or the error that ended its training) and, when it trained,
    its final evaluation, done with the group's."""

    outcome: Fitted | BslrunError
    evaluated: Evaluated | None = None


class Svi:
    """``model.posterior`` trained alone by stochastic variational inference
    (``engine.fit``): checkpointed, and resumable from its last checkpoint."""

    resumable = True
    done = "training finished"
    # What a run stopped between fit and evaluation has, and lacks.
    fitted_files = "history.csv and the parameters are written"

    def fit(self, job: Job) -> Fitted:
        cfg, family = job.cfg, job.family
        return engine.fit(
            family, job.data, cfg.optim, cfg.trainer, job.keys.init, job.keys.train,
            family.val_samples(cfg.eval),
            desc=cfg.name, checkpoints=job.checkpoints, stop_requested=job.stop_requested,
            eval_samples=family.eval_samples(cfg.eval), on_epoch=job.on_epoch,
        )  # fmt: skip

    def evaluate(self, job: Job, fitted: Fitted) -> Evaluated:
        return evaluate_svi(job.cfg, job.family, job.data, fitted.params)


@dataclass(frozen=True)
class Member(Svi):
    """A job of a group trained as one program (the vectorised launcher,
    ``trainer.replicas``): its training and evaluation are handed to it."""

    trained: Trained
    resumable = False  # replicas trained together keep no checkpoint

    def fit(self, job: Job) -> Fitted:
        outcome = self.trained.outcome
        if isinstance(outcome, BslrunError):
            raise outcome
        log.info("trained together with the other jobs of its group (%s replicas)",
                 outcome.timing["replicas"])  # fmt: skip
        for row in outcome.history:  # the loggers see the history it would have had
            job.on_epoch(row)
        return outcome

    def evaluate(self, job: Job, fitted: Fitted) -> Evaluated:
        return self.trained.evaluated


class Nuts:
    """``inference=nuts``: the BNN's posterior sampled by NUTS (inference/nuts.py) on the
    full training set, no training. Sampling is one program: a stop signal ends the run
    once the chains are done."""

    resumable = False
    done = "sampling finished"
    fitted_files = "posterior_samples.npz is written"

    def fit(self, job: Job) -> Fitted:
        from bslrun.inference import nuts

        settings, train = job.cfg.inference, job.data.train
        what = f"{settings.num_chains} chains of {settings.num_warmup} + {settings.num_samples}"
        with clock.Phase(f"sampling {what} (NUTS) on {len(train)} rows", "sampled"):
            chains = nuts.sample(job.family, train, settings, job.keys.train)
        return Fitted(
            params=None, history=[], best_epoch=None, epochs_run=None, stopped_early=None,
            timing={"sample_s": chains.stats["wall_s"]},
            draws=chains.samples, draw_stats=chains.stats,
        )  # fmt: skip

    def evaluate(self, job: Job, fitted: Fitted) -> Evaluated:
        from bslrun.inference import nuts

        chains = nuts.Chains(fitted.draws, fitted.draw_stats)
        with clock.Phase("evaluating the test split", "evaluated") as phase:
            result = nuts.evaluate(job.family, chains, job.data)
        timing = {"eval_compile_s": None, "eval_s": phase.seconds}
        return Evaluated(result.test, result.val, result.predictions, timing, result.mcmc,
                         {"reference": result.reference})  # fmt: skip


# inference.method -> its method: the registry of inference methods.
METHODS = {InferenceMethod.svi: Svi, InferenceMethod.nuts: Nuts}


def method_for(cfg: Config, trained: Trained | None = None):
    """The method of ``cfg``'s run: what a group trained for it (``trained``), else the
    one ``inference.method`` names."""
    if trained is not None:
        return Member(trained)
    return METHODS[InferenceMethod(cfg.inference.method)]()


def evaluate_svi(cfg: Config, family, data, params) -> Evaluated:
    """The final evaluation of one trained run. The test and validation scores and the
    saved arrays are one program, which takes the keys and the data's standardisers as
    arguments: a job of a sweep over seeds or splits loads the program its first job
    compiled."""
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
    args = (data.spec.scaler_arrays(), params, test, val, keys, inputs)
    splits = "the test and validation splits" if data.val is not None else "the test split"
    with clock.Phase("compiling the final evaluation", "compiled") as compiling:
        program = jax.jit(final).lower(*args).compile()
    with clock.Phase(f"evaluating {splits} ({num_samples} draws)", "evaluated") as phase:
        test, val, predictions = jax.device_get(program(*args))
    test, val = ({k: float(v) for k, v in scores.items()} for scores in (test, val))
    timing = {"eval_compile_s": compiling.seconds, "eval_s": phase.seconds}
    return Evaluated(test, val, predictions, timing)
