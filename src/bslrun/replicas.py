"""Jobs trained together: which jobs of a sweep can share one compiled program, and their
training and evaluation as one, each job's result then handed to its own run
(``run.run``'s ``trained``).

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

import jax.numpy as jnp

from bslrun import clock, compilation, seeding
from bslrun.config import InferenceMethod, as_dict, changes_results, flatten
from bslrun.data import load as load_data
from bslrun.inference.engine import Fitted
from bslrun.inference.methods import Evaluated, Trained
from bslrun.inference.vectorised import OPTIM_SETTINGS, Replica, fit_replicas, stacked
from bslrun.models import build as build_family
from bslrun.models import family_class

log = logging.getLogger("bslrun")


def vectorised_keys(cfg) -> set[str]:
    """The dotted config keys in which ``cfg``'s job may differ from those it trains with."""
    family = family_class(cfg.model.family)
    keys = {"data.split", *(f"optim.{k}" for k in OPTIM_SETTINGS)}
    keys |= {f"model.{k}" for k in family.info.traced_settings}
    if not family.random_structure(cfg.model):
        keys.add("seed")
    return keys


def group_key(cfg) -> str | None:
    """Jobs with equal keys can train together; None: this job trains alone (several
    devices, a resumed run, replicas of its own, or a method other than SVI)."""
    t = cfg.trainer
    svi = InferenceMethod(cfg.inference.method) is InferenceMethod.svi
    if t.devices != 1 or t.resume or t.replicas != 1 or not svi:
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


def train_together(cfgs: list, stop_requested=lambda: None) -> list[Trained] | None:
    """Train the jobs ``cfgs`` (one group of ``groups``) as one program and evaluate them
    as another; returns each job's ``Trained``, in order, for its run (``run.run``'s
    ``trained``). None when their data turn out to differ in shape (the jobs then train
    alone)."""
    compilation.enable(cfgs[0].trainer.compilation_cache, cfgs[0].trainer.compilation_cache_gb)
    replicas, datas = [], []
    for cfg in cfgs:
        keys = seeding.streams(cfg.seed)
        data = load_data(cfg.data, keys.data)
        replicas.append(Replica(data, keys.init, keys.train, cfg.model, cfg.optim))
        datas.append(data)
    if len({_shapes(data) for data in datas}) > 1:
        log.info("the jobs' data differ in shape: they train one by one")
        return None
    first = cfgs[0]
    structure_key = seeding.streams(first.seed).structure
    desc = f"{first.name} x{len(cfgs)}"
    group = fit_replicas(replicas, first.trainer, first.eval, structure_key, desc,
                         stop_requested)  # fmt: skip
    if not any(isinstance(outcome, Fitted) for outcome in group.outcomes):
        return [Trained(outcome) for outcome in group.outcomes]
    evaluated = _evaluate(group, cfgs, datas)
    return [Trained(o, e) for o, e in zip(group.outcomes, evaluated, strict=True)]


def _evaluate(group, cfgs: list, datas: list) -> list[Evaluated]:
    """The final evaluation of every trained replica, as one compiled program each for
    the test metrics, the validation metrics and the saved arrays."""
    family, eval_cfg = group.program.family, cfgs[0].eval
    structure_key = group.program.structure_key
    num_samples = family.eval_samples(eval_cfg)
    splits = "the test and validation splits" if datas[0].val else "the test split"
    params = stacked([_params(outcome) for outcome in group.outcomes])
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
    # Compiled with the group's evaluation: its compile time is in eval_s.
    timing = {"eval_compile_s": None, "eval_s": phase.seconds}
    return [
        Evaluated(
            test={k: float(v[r]) for k, v in test.items()},
            val={k: float(v[r]) for k, v in val.items()},
            predictions={k: v[r] for k, v in predictions.items()},
            timing=timing,
        )
        for r in range(len(cfgs))
    ]


def _params(outcome) -> dict:
    return outcome.params if isinstance(outcome, Fitted) else outcome.result.params


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
