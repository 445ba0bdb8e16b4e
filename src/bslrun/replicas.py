"""Jobs trained together: which jobs of a sweep can share one compiled program, and the
hand-over of each one's training to its own run (``run.train``).

Jobs can train together when their configs differ only in settings that keep every
array's shape and enter the program as numbers (``VECTORISED``): the seed (unless the
family draws its structure from it, e.g. a flow's random permutations), the split of a
benchmark folder, and the numeric settings of ``inference.vectorised``. Everything else
of each job (its data, evaluation, figures, folder and status) is the job's own, done as
a run alone does it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import jax.numpy as jnp

from bslrun import clock, compilation, seeding
from bslrun.config import as_dict, changes_results, flatten
from bslrun.data import load as load_data
from bslrun.inference.engine import FitResult
from bslrun.inference.vectorised import OPTIM_SETTINGS, Replica, fit_replicas, stacked
from bslrun.models import build as build_family
from bslrun.models import family_class

log = logging.getLogger("bslrun")


def vectorised_keys(cfg) -> set[str]:
    """The dotted config keys in which ``cfg``'s job may differ from those it trains with."""
    family = family_class(cfg.model.family)
    keys = {"data.split", *(f"optim.{k}" for k in OPTIM_SETTINGS)}
    keys |= {f"model.{k}" for k in family.traced_settings}
    if not family.random_structure(cfg.model):
        keys.add("seed")
    return keys


def group_key(cfg) -> str | None:
    """Jobs with equal keys can train together; None: this job trains alone (several
    devices, or a resumed run)."""
    if cfg.trainer.devices != 1 or cfg.trainer.resume:
        return None
    free = vectorised_keys(cfg)
    kept = {k: v for k, v in flatten(as_dict(cfg)).items() if k not in free and changes_results(k)}
    return json.dumps(kept, sort_keys=True, default=str)


def groups(cfgs: list) -> list[list[int]]:
    """Indices of ``cfgs`` that can train together, in order of their first job; a job
    that cannot train with another is a group of one."""
    found: dict = {}
    for i, cfg in enumerate(cfgs):
        key = group_key(cfg)
        found.setdefault(i if key is None else key, []).append(i)
    return sorted(found.values(), key=lambda members: members[0])


def _fingerprint(cfg) -> str:
    return json.dumps(as_dict(cfg), sort_keys=True, default=str)


@dataclass
class Trained:
    """A job's training done together with others, and its final evaluation (test and
    validation metrics and saved arrays, as ``run.evaluate_and_write`` computes them);
    ``outcome`` is a FitResult, or the error that ended its training."""

    outcome: object
    test: dict | None = None
    val: dict | None = None
    predictions: dict | None = None
    eval_s: float = 0.0


# Trained jobs waiting for their run: config fingerprint -> Trained.
_trained: dict[str, Trained] = {}


def train_together(cfgs: list, stop_requested=lambda: None) -> bool:
    """Train the jobs ``cfgs`` (one group of ``groups``) as one program, evaluate them as
    another, and hand each job's outcome to its run. False when their data turn out to
    differ in shape (the jobs then train alone)."""
    compilation.enable(cfgs[0].trainer.compilation_cache, cfgs[0].trainer.compilation_cache_gb)
    replicas, datas = [], []
    for cfg in cfgs:
        keys = seeding.streams(cfg.seed)
        data = load_data(cfg.data, keys.data)
        replicas.append(Replica(data, keys.init, keys.train, cfg.model, cfg.optim))
        datas.append(data)
    if len({_shapes(data) for data in datas}) > 1:
        log.info("the jobs' data differ in shape: they train one by one")
        return False
    first = cfgs[0]
    structure_key = seeding.streams(first.seed).structure
    desc = f"{first.name} x{len(cfgs)}"
    group = fit_replicas(replicas, first.trainer, first.eval, structure_key, desc,
                         stop_requested)  # fmt: skip
    trained = [Trained(outcome) for outcome in group.outcomes]
    if any(isinstance(outcome, FitResult) for outcome in group.outcomes):
        _evaluate(group, cfgs, datas, trained)
    for cfg, handed in zip(cfgs, trained, strict=True):
        _trained[_fingerprint(cfg)] = handed
    return True


def _evaluate(group, cfgs: list, datas: list, trained: list) -> None:
    """The final evaluation of every trained replica, as one compiled program each for
    the test metrics, the validation metrics and the saved arrays."""
    family, eval_cfg = group.program.family, cfgs[0].eval
    structure_key = group.program.structure_key
    num_samples = family.eval_samples(eval_cfg)
    splits = "the test and validation splits" if datas[0].val else "the test split"
    params = stacked([_params(t.outcome) for t in trained])
    keys = [seeding.eval_keys(cfg.seed) for cfg in cfgs]
    test_keys, val_keys, artifact_keys = (jnp.stack(k) for k in zip(*keys, strict=True))

    def arrays(split: str):
        parts = [getattr(data, split) for data in datas]
        return jnp.stack([s.x for s in parts]), jnp.stack([s.y for s in parts])

    with clock.Phase(f"evaluating {splits} of {len(cfgs)} replicas ({num_samples} draws)",
                     "evaluated") as phase:  # fmt: skip
        test = group.apply(lambda f, p, x, y, k: f.evaluate(p, x, y, k, num_samples),
                           params, *arrays("test"), test_keys)  # fmt: skip
        val = {}
        if datas[0].val is not None:
            val_samples = family.final_val_samples(eval_cfg)
            val = group.apply(lambda f, p, x, y, k: f.final_validate(p, x, y, k, val_samples),
                              params, *arrays("val"), val_keys)  # fmt: skip
        inputs = stacked([
            build_family(cfg.model, data.spec, len(data.train), structure_key)
            .artifact_inputs(cfg.data, data, key)
            for cfg, data, key in zip(cfgs, datas, artifact_keys, strict=True)
        ])  # fmt: skip
        predictions = group.apply(
            lambda f, p, x, y, k, inputs: f.artifacts(p, x, y, k, num_samples, **inputs),
            params, *arrays("test"), artifact_keys, inputs,
        )  # fmt: skip
    for r, handed in enumerate(trained):
        handed.test = {k: float(v[r]) for k, v in test.items()}
        handed.val = {k: float(v[r]) for k, v in val.items()}
        handed.predictions = {k: v[r] for k, v in predictions.items()}
        handed.eval_s = phase.seconds


def _params(outcome) -> dict:
    return outcome.params if isinstance(outcome, FitResult) else outcome.result.params


def _shapes(data) -> tuple:
    splits = (data.train, data.val, data.test)
    return tuple(None if s is None else (s.x.shape, s.y.shape) for s in splits)


def summarise(done: dict[str, dict]) -> dict:
    """replicas.json's summary of the completed replicas (their metrics.json by folder
    name): the mean and standard error of each test and validation metric, each
    replica's training facts, and under ``mean.train`` the facts as ranges (``spread``)."""
    import numpy as np

    runs = list(done.values())
    mean, stderr = {}, {}
    for section in ("test", "val"):
        names = {k for m in runs for k, v in (m.get(section) or {}).items() if v is not None}
        values = {k: np.array([m[section][k] for m in runs if m[section].get(k) is not None])
                  for k in sorted(names)}  # fmt: skip
        mean[section] = {k: float(v.mean()) for k, v in values.items()}
        stderr[section] = {k: float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
                           for k, v in values.items()}  # fmt: skip
    trains = [m.get("train") or {} for m in runs]
    first = runs[0] if runs else {}
    mean.update(name=first.get("name"), seed=first.get("seed"),
                train={k: spread([t.get(k) for t in trains]) for k in _keys(trains)},
                timing=first.get("timing", {}))  # fmt: skip
    per_replica = {name: {"seed": m.get("seed"), **(m.get("train") or {})}
                   for name, m in done.items()}  # fmt: skip
    return {"completed": len(runs), "mean": mean, "stderr": stderr, "train": per_replica}


def _keys(dicts: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for d in dicts for k in d))


def spread(values: list):
    """One training fact over the replicas: itself when they agree; else a count of the
    true ones ("3 of 5") for a flag, the mean final loss, or the range ("77-89")."""
    if all(v == values[0] for v in values):
        return values[0]
    if all(isinstance(v, bool) for v in values):
        return f"{sum(values)} of {len(values)}"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        if all(isinstance(v, int) for v in values):
            return f"{min(values)}-{max(values)}"
        return sum(values) / len(values)
    return values


def take(cfg) -> Trained | None:
    """What ``cfg``'s job got from training together with others, or None when it did
    not (its outcome may be the error that ended its training)."""
    return _trained.pop(_fingerprint(cfg), None)
