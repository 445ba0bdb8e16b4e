"""Peak memory of training, estimated from shapes alone before anything compiles.

A model too large for the machine otherwise fails late and silently: the kernel's
out-of-memory killer ends the process with nothing said. ``check`` runs first in
``engine.fit``. It traces, abstractly (``jax.eval_shape`` and ``jax.make_jaxpr`` see
shapes and dtypes only; nothing is allocated or compiled), the SVI initialisation, one
SVI update (loss, gradients, optimiser) and a validation pass, and adds up, in bytes:

  data        training and validation arrays, put on the device once
  state       parameters and optimiser state (exact, from the traced SVI.init), held in
              ``state_copies`` copies: the initial state (kept by engine.Setup), the
              current one and, when validating with restore_best, the best one
  step        one training step: the peak of its program run unfused in program order,
              each value freed after its last use (``peak``): gradients, posterior draws
              of every particle, activations kept for the backward pass, the new state;
              plus the scan's carried state
  evaluation  the same peak for one validation pass (and, when asked, for the final
              evaluation of the test split)

total = data + state_copies * state + max(step, evaluation). Against XLA's own
``memory_analysis`` of the compiled programs (CPU) the step and evaluation peaks came
within a factor 2 either way (XLA fuses elementwise work, and reorders), from BNNs
with several particles to convolutional VAEs: enough to refuse, in one line and in a
fraction of a second, a run that cannot fit, which is its purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.extend.core import Var, jaxprs_in_params

from bslrun.errors import ConfigError
from bslrun.inference import optim
from bslrun.inference.svi import batch_plan, epoch_kwargs, make_svi, variables

GB = 1e9
LOOPS = ("scan", "while")  # their outputs (stacked results, carry) live while the body runs


@dataclass(frozen=True)
class Estimate:
    """Bytes of each part of training's peak memory (see the module docstring)."""

    parameters: int  # unconstrained parameters SVI optimises (one copy)
    optimiser: int  # the rest of the SVI state: optimiser moments, step counts, mutable state
    state_copies: int
    step: int  # peak of one training step beyond its inputs
    evaluation: int  # peak of a validation (or final evaluation) pass beyond its inputs
    data: int  # training, validation (and test) arrays on the device

    @property
    def state(self) -> int:
        return self.parameters + self.optimiser

    @property
    def resident(self) -> int:
        return self.data + self.state_copies * self.state

    @property
    def total(self) -> int:
        return self.resident + max(self.step, self.evaluation)


def nbytes(tree) -> int:
    """Bytes of every array (or ShapeDtypeStruct, or abstract value) leaf of ``tree``."""
    return sum(
        math.prod(leaf.shape) * _itemsize(leaf.dtype)
        for leaf in jax.tree.leaves(tree)
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype")
    )


def _itemsize(dtype) -> int:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.extended):  # typed PRNG keys inside programs
        return 8
    return jax.dtypes.canonicalize_dtype(dtype).itemsize


def _abstract(array, rows: int | None = None) -> jax.ShapeDtypeStruct:
    """The device-side shape of a host array (its first ``rows`` rows)."""
    shape = tuple(array.shape) if rows is None else (rows, *array.shape[1:])
    return jax.ShapeDtypeStruct(shape, jax.dtypes.canonicalize_dtype(array.dtype))


def _vars(atoms) -> set:
    return {v for v in atoms if isinstance(v, Var)}


def peak(jaxpr) -> int:
    """Most bytes a jaxpr holds beyond its inputs, run one equation at a time in program
    order with each value freed after its last use (outputs are kept to the end).

    A nested program (jit, custom derivative, remat, cond) adds its own peak while it
    runs; a loop's outputs are allocated before its body runs.
    """
    last = {v: i for i, eqn in enumerate(jaxpr.eqns) for v in _vars(eqn.invars)}
    last.update({v: len(jaxpr.eqns) for v in _vars(jaxpr.outvars)})
    inputs = set(jaxpr.invars) | set(jaxpr.constvars)
    live = top = 0
    for i, eqn in enumerate(jaxpr.eqns):
        out = nbytes([v.aval for v in eqn.outvars])
        inner = max((peak(sub) for sub in jaxprs_in_params(eqn.params)), default=0)
        top = max(top, live + (out + inner if eqn.primitive.name in LOOPS else max(out, inner)))
        live += out
        done = _vars([*eqn.invars, *eqn.outvars]) - inputs
        live -= nbytes([v.aval for v in done if last.get(v, i) <= i])
    return top


def estimate(
    family, data, optim_cfg, trainer_cfg, val_samples: int, test_samples: int | None = None
) -> Estimate:
    """Peak bytes of ``engine.fit(family, data, optim_cfg, trainer_cfg, ...)``, from shapes;
    with ``test_samples``, of the final evaluation of the test split (run.py) as well."""
    train = data.train
    batch_size, num_batches = batch_plan(train.x.shape[0], trainer_cfg.batch_size)
    optimiser, _ = optim.build(optim_cfg, num_batches, trainer_cfg.epochs)
    svi = make_svi(family, optimiser, trainer_cfg.num_particles)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    x, y = _abstract(train.x, batch_size), _abstract(train.y, batch_size)
    kwargs = epoch_kwargs(family, 1)

    state = jax.eval_shape(lambda k, x, y: svi.init(k, x, y, **kwargs), key, x, y)
    params = svi.optim.get_params(state.optim_state)
    update = jax.make_jaxpr(lambda s, x, y: svi.update(s, x, y, **kwargs))(state, x, y)

    resident, passes = [train.x, train.y], []
    if data.val is not None:  # engine.Validator's pass
        resident += [data.val.x, data.val.y]
        passes.append((family.validate, data.val, val_samples))
    if test_samples is not None:  # run.py's test metrics and saved predictions
        resident += [data.test.x, data.test.y]
        passes += [(fn, data.test, test_samples) for fn in (family.evaluate, family.artifacts)]
    constrained = jax.eval_shape(lambda s: variables(svi, s), state)
    copies = 3 if data.val is not None and trainer_cfg.restore_best else 2
    return Estimate(
        parameters=nbytes(params),
        optimiser=nbytes(state) - nbytes(params),
        state_copies=copies,
        step=peak(update.jaxpr) + nbytes(state),
        evaluation=max((_pass_peak(p, constrained, key) for p in passes), default=0),
        data=nbytes([_abstract(a) for a in resident]),
    )


def _pass_peak(evaluation, params, key) -> int:
    """Peak of ``fn(params, x, y, key, num_samples)`` on a split (a family's evaluate,
    validate or artifacts), given as (fn, split, num_samples)."""
    fn, split, num_samples = evaluation
    program = jax.make_jaxpr(lambda p, x, y, k: fn(p, x, y, k, num_samples))(
        params, _abstract(split.x), _abstract(split.y), key
    )
    return peak(program.jaxpr)


def available(trainer_cfg) -> tuple[int | None, str]:
    """(bytes training may use, where that figure comes from); None when nobody can tell."""
    if trainer_cfg.max_memory_gb is not None:
        return int(trainer_cfg.max_memory_gb * GB), "trainer.max_memory_gb"
    device = jax.devices()[0]
    if device.platform == "cpu":
        return _mem_available(), "available RAM"
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        return None, ""
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"{device.platform.upper()} memory"


def _mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None off Linux)."""
    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gb(size: float) -> str:
    """Bytes in the largest decimal unit that keeps a leading digit: 231 kB, 6.7 MB, 93.6 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} bytes"


def per_device(need: Estimate, devices: int, platform: str) -> int:
    """Bytes one memory pool must hold: CPU "devices" share the host's RAM, each holding the
    data and the state; accelerators hold one copy each, with the batch split between them."""
    if devices == 1:
        return need.total
    if platform == "cpu":
        return devices * need.resident + max(need.step, need.evaluation)
    return need.resident + max(need.step // devices, need.evaluation)


# Estimates by ``shapes_key``: they depend on shapes and settings, never on values.
_estimates: dict = {}


def shapes_key(family, data, optim_cfg, trainer_cfg, val_samples, test_samples) -> str:
    """What an ``estimate`` depends on: the family and its settings, the splits' shapes,
    the optimiser and the trainer's batching."""
    splits = [None if s is None else (_abstract(s.x), _abstract(s.y))
              for s in (data.train, data.val, data.test)]  # fmt: skip
    spec = data.spec
    return repr((
        type(family).__qualname__, family.cfg, family.n_train, splits, spec.task,
        spec.num_classes, spec.image_shape, optim_cfg, trainer_cfg.batch_size,
        trainer_cfg.epochs, trainer_cfg.num_particles, trainer_cfg.restore_best,
        val_samples, test_samples,
    ))  # fmt: skip


def check(
    family,
    data,
    optim_cfg,
    trainer_cfg,
    val_samples: int,
    test_samples: int | None = None,
    replicas: int = 1,
) -> Estimate:
    """Raise ConfigError, before anything compiles, when training (and, with
    ``test_samples``, the final evaluation) would not fit in memory; ``replicas`` trained
    together (vectorised.py) hold every part once each."""
    key = shapes_key(family, data, optim_cfg, trainer_cfg, val_samples, test_samples)
    if key not in _estimates:  # the later jobs of a sweep in one process trace nothing here
        _estimates[key] = estimate(family, data, optim_cfg, trainer_cfg, val_samples,
                                   test_samples)  # fmt: skip
    need = _estimates[key]
    limit, source = available(trainer_cfg)
    total = replicas * per_device(need, trainer_cfg.devices, jax.devices()[0].platform)
    if limit is not None and total > limit:
        raise ConfigError(_refusal(need, total, replicas, f"{source} is {_gb(max(limit, 0))}",
                                   trainer_cfg.max_memory_gb is not None))  # fmt: skip
    return need


def _refusal(need: Estimate, total: int, replicas: int, limit: str, explicit: bool) -> str:
    what = "training" if replicas == 1 else f"training {replicas} replicas together"
    each = "" if replicas == 1 else " each"
    bypass = "raise trainer.max_memory_gb" if explicit else (
        "set trainer.max_memory_gb=<GB> if more is free")  # fmt: skip
    fewer = "" if replicas == 1 else "fewer replicas (trainer.replicas or the sweep's jobs), "
    return (
        f"{what} needs about {_gb(total)} of memory (parameters and optimiser state "
        f"{_gb(need.state_copies * need.state)}, one training step {_gb(need.step)}, "
        f"evaluation {_gb(need.evaluation)}, data {_gb(need.data)}{each}) but {limit}; "
        f"use {fewer}a smaller model.hidden or trainer.batch_size, or {bypass}"
    )
