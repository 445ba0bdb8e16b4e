"""Replicas trained together: jobs that differ only in values which keep every array's
shape (the seed, a benchmark split, the learning rate, a prior scale) run as one compiled
program with a leading replica axis.

Each replica computes what ``engine.fit`` computes for its job alone: the same keys, the
same batches, the same Monte Carlo draws, its own history, early stopping and best
parameters. ``jax.vmap`` batches the epoch and the validation pass over the replicas'
states, keys, data and numeric settings; batched matrix products may sum in another
order, so numbers agree with a separate run to float tolerance, not bit for bit.

What differs between replicas enters the program as arrays: the settings of
``OPTIM_SETTINGS`` and the family's ``traced_settings`` (the family and its optimiser
are built inside the traced function from them), and the data's standardisers (a
regression BNN validates in the original units of its own split). Replicas keep no
checkpoints: a stopped group is trained again from the start.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from bslrun.clock import Phase, seconds_since_run_start
from bslrun.config import Monitor
from bslrun.errors import RunInterrupted
from bslrun.inference import engine, memory, optim
from bslrun.inference.svi import batch_plan, epoch_kwargs, make_svi, variables
from bslrun.models import build as build_family

# Optimiser settings that reach the update only as numbers, never through a Python
# branch: replicas may differ in them. A family names its own in ``traced_settings``.
OPTIM_SETTINGS = ("lr", "weight_decay")


@dataclasses.dataclass
class Replica:
    """One job of a group: its data (shaped as the others'), keys and settings."""

    data: object  # bslrun.data.splits.Dataset
    init_key: jax.Array  # seeding.Streams.init
    key: jax.Array  # seeding.Streams.train: batches, ELBO draws, validation draws
    model_cfg: object
    optim_cfg: object


def settings(replica: Replica, family_settings: tuple) -> dict:
    """The replica's numeric settings."""
    values = {f"optim.{k}": getattr(replica.optim_cfg, k) for k in OPTIM_SETTINGS}
    values.update({f"model.{k}": getattr(replica.model_cfg, k) for k in family_settings})
    return values


def differing(replicas: list, family_settings: tuple) -> list[dict]:
    """Per replica, the numeric settings in which the replicas differ, as the float32
    arrays the program takes. A setting they share stays a constant of the program, as
    in a run alone: an array would change its floating-point operations (a run of 270
    epochs then ends 1e-2 away instead of at the same numbers)."""
    values = [settings(r, family_settings) for r in replicas]
    varied = [k for k in values[0] if len({v[k] for v in values}) > 1]
    return [{k: jnp.float32(v[k]) for k in varied} for v in values]


def stacked(trees: list):
    """One tree whose leaves carry a leading replica axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def replica_of(tree, r: int):
    return jax.tree.map(lambda leaf: leaf[r], tree)


class Program:
    """Builds a replica's family and SVI inside the traced program from its settings."""

    def __init__(self, template: Replica, trainer_cfg, structure_key, num_batches: int):
        self.template = template
        self.trainer_cfg = trainer_cfg
        self.structure_key = structure_key
        self.num_batches = num_batches
        self.n_train = len(template.data.train)
        self.family = build_family(template.model_cfg, template.data.spec, self.n_train,
                                   structure_key)  # fmt: skip
        self.family_settings = tuple(self.family.info.traced_settings)
        self.constrain_fn = None  # set by ``Group`` from the template SVI's ``init``

    def parts(self, values: dict, scaler_arrays: tuple):
        """(family, SVI) of one replica: ``values`` and ``scaler_arrays`` may be traced."""

        def chosen(prefix):
            return {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}

        model_cfg = dataclasses.replace(self.template.model_cfg, **chosen("model."))
        optim_cfg = dataclasses.replace(self.template.optim_cfg, **chosen("optim."))
        spec = self.template.data.spec.with_scalers(scaler_arrays)
        family = build_family(model_cfg, spec, self.n_train, self.structure_key)
        optimiser, _ = optim.build(optim_cfg, self.num_batches, self.trainer_cfg.epochs)
        svi = make_svi(family, optimiser, self.trainer_cfg.num_particles)
        # SVI learns its parameters' constraints in ``init``; they are the same in every
        # replica, so an SVI built for an epoch takes the template's.
        svi.constrain_fn = self.constrain_fn
        return family, svi


def _select(mask, new, old):
    """Per replica, ``new`` where ``mask`` else ``old``."""

    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


class Group:
    """The replicas' stacked data, states and compiled programs, and each replica's
    bookkeeping (``engine.Progress``) and outcome (None while it trains)."""

    def __init__(self, replicas: list, trainer_cfg, eval_cfg, structure_key):
        self.trainer_cfg = trainer_cfg
        self.timing, tick = {}, time.perf_counter()
        template = replicas[0]
        self.batch_size, self.num_batches = batch_plan(
            len(template.data.train), trainer_cfg.batch_size
        )
        self.program = Program(template, trainer_cfg, structure_key, self.num_batches)
        family = self.program.family  # the check of a run alone, for every replica at once
        memory.check(family, template.data, template.optim_cfg, trainer_cfg,
                     family.val_samples(eval_cfg), family.eval_samples(eval_cfg),
                     replicas=len(replicas))  # fmt: skip
        family_settings = self.program.family_settings
        own = differing(replicas, family_settings)
        self.values = stacked(own)
        self.scalers = stacked([r.data.spec.scaler_arrays() for r in replicas])
        self.x = jnp.stack([r.data.train.x for r in replicas])
        self.y = jnp.stack([r.data.train.y for r in replicas])
        keys = jnp.stack([jax.random.split(r.key) for r in replicas])  # (epochs, validation)
        self.epochs_keys = keys[:, 0]
        self.first = epoch_kwargs(self.program.family, 1)
        # A template SVI, traced once, learns the parameters' constraints (the same in
        # every replica) and maps any replica's parameters to constrained ones.
        _, self.svi = self.program.parts(own[0], template.data.spec.scaler_arrays())
        jax.eval_shape(self.svi.init, template.init_key, self.x[0, : self.batch_size],
                       self.y[0, : self.batch_size], **self.first)  # fmt: skip
        self.program.constrain_fn = self.svi.constrain_fn
        init_keys = jnp.stack([r.init_key for r in replicas])
        self.state = jax.jit(jax.vmap(self._init))(
            init_keys, self.x, self.y, self.values, self.scalers
        )
        self.best_state = self.state
        self.timing["init_s"] = time.perf_counter() - tick
        self.fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
        with Phase(f"compiling the training epoch of {len(replicas)} replicas",
                   "compiled") as phase:  # fmt: skip
            self.run_epoch = (
                jax.jit(jax.vmap(self._epoch, in_axes=(0, 0, 0, 0, 0, 0, None)))
                .lower(
                    self.state,
                    self.fold(self.epochs_keys, 1),
                    self.x,
                    self.y,
                    self.values,
                    self.scalers,
                    self.first,
                )  # fmt: skip
                .compile()
            )
        self.timing.update(compile_s=phase.seconds, startup_s=seconds_since_run_start(),
                           replicas=len(replicas), resumed_from_epoch=0)  # fmt: skip
        val_samples = self.program.family.val_samples(eval_cfg)
        self.validate = self._validator(replicas, keys[:, 1], val_samples)
        self.select = jax.jit(_select)
        self.lr_at = [
            optim.build(r.optim_cfg, self.num_batches, trainer_cfg.epochs)[1] for r in replicas
        ]
        self.monitor = Monitor(trainer_cfg.monitor).value
        self.progress = [engine.Progress() for _ in replicas]
        self.outcomes: list = [None] * len(replicas)

    # ---------------------------------------------------- the traced programs

    def _init(self, key, x, y, values, scaler_arrays):
        _, svi = self.program.parts(values, scaler_arrays)
        return svi.init(key, x[: self.batch_size], y[: self.batch_size], **self.first)

    def _epoch(self, state, key, x, y, values, scaler_arrays, kwargs):
        _, svi = self.program.parts(values, scaler_arrays)
        binarize = self.program.template.data.spec.dynamic_binarize
        run = engine.epoch_fn(svi, self.batch_size, self.num_batches, binarize)
        return run(state, key, x, y, kwargs)

    def _validator(self, replicas, val_keys, num_samples: int):
        if replicas[0].data.val is None:
            return None
        x = jnp.stack([r.data.val.x for r in replicas])
        y = jnp.stack([r.data.val.y for r in replicas])

        def score(state, x, y, key, values, scaler_arrays):
            family, _ = self.program.parts(values, scaler_arrays)
            return family.validate(variables(self.svi, state), x, y, key, num_samples)

        return engine.Validator(jax.vmap(score), (x, y, val_keys, self.values, self.scalers))

    # ------------------------------------------------------ the host's loop

    def active(self) -> list[int]:
        return [r for r, outcome in enumerate(self.outcomes) if outcome is None]

    def train(self, epoch: int) -> dict:
        """One epoch of every replica; returns the history rows of those still training."""
        active = self.active()
        tick = time.perf_counter()
        new_state, losses, finite = self.run_epoch(
            self.state, self.fold(self.epochs_keys, epoch), self.x, self.y, self.values,
            self.scalers, epoch_kwargs(self.program.family, epoch),
        )  # fmt: skip
        losses, finite = jax.device_get((losses, finite))  # the one host sync per epoch
        seconds = time.perf_counter() - tick
        rows = {}
        for r in active:
            progress, loss = self.progress[r], float(losses[r])
            progress.train_s += seconds
            lr = self.lr_at[r](epoch * self.num_batches - 1)
            row = engine.record_epoch(progress, epoch, loss, lr)
            if math.isfinite(loss) and finite[r]:
                progress.epoch, rows[r] = epoch, row
            else:  # the last finite parameters are those before this epoch
                last = variables(self.svi, replica_of(self.state, r))
                self.outcomes[r] = engine.divergence(epoch, loss, progress.history, last,
                                                     dict(self.timing))  # fmt: skip
        self.state = new_state
        return rows

    def validate_due(self, epoch: int, rows: dict) -> None:
        if not (self.validate and rows and engine.validation_due(epoch, self.trainer_cfg)):
            return
        scores = self.validate(self.state)
        improved = np.zeros(len(self.outcomes), bool)
        for r, row in rows.items():
            self.progress[r].val_s = self.validate.seconds
            mine = {k: v[r] for k, v in scores.items()}
            # True and False stand for this epoch's state and the best so far.
            improved[r], _ = engine.record_validation(
                self.progress[r], row, mine, self.program.family.monitored(self.monitor, mine),
                True, False, self.trainer_cfg.patience,
            )  # fmt: skip
        self.best_state = self.select(improved, self.state, self.best_state)

    def result(self, r: int) -> engine.Fitted:
        timing = dict(self.timing)
        timing["compile_s"] += self.validate.compile_s if self.validate else 0.0
        return engine.fit_result(
            lambda state: variables(self.svi, state), replica_of(self.state, r),
            replica_of(self.best_state, r), self.progress[r], self.validate is not None,
            self.trainer_cfg, self.num_batches * self.batch_size, timing,
        )  # fmt: skip

    def apply(self, fn, params, *args):
        """``fn(family, params, *args)`` for every replica as one compiled program, each
        replica's family built from its own settings and standardisers; on the host."""

        def one(params, values, scaler_arrays, *args):
            family, _ = self.program.parts(values, scaler_arrays)
            return fn(family, params, *args)

        return jax.device_get(jax.jit(jax.vmap(one))(params, self.values, self.scalers, *args))

    def finish(self, rows: dict, signum=None) -> None:
        """Give each replica that has finished (or all, when a signal stops them) its
        outcome."""
        for r in rows:
            if self.progress[r].finished(self.trainer_cfg.epochs):
                self.outcomes[r] = self.result(r)
            elif signum:
                self.outcomes[r] = _interruption(signum, self.progress[r].epoch, self.result(r))


def fit_replicas(replicas: list, trainer_cfg, eval_cfg, structure_key, desc: str,
                 stop_requested=lambda: None) -> Group:  # fmt: skip
    """Train ``replicas`` (a list of Replica with equally shaped data) together.

    The group's ``outcomes`` hold, per replica, its ``engine.Fitted``, or the error a
    separate run would have raised (a DivergenceError or RunInterrupted carrying
    ``.result``). A replica that stops early or diverges is finished; the others go on.
    """
    group = Group(replicas, trainer_cfg, eval_cfg, structure_key)
    bar = None
    for epoch in range(1, trainer_cfg.epochs + 1):
        if not group.active():
            break
        rows = group.train(epoch)
        group.validate_due(epoch, rows)
        signum = stop_requested()
        group.finish(rows, signum)
        if bar is None:
            bar = engine.progress_bar(trainer_cfg, desc, epoch - 1)
        bar.set_postfix({"training": len(group.active())}, refresh=False)
        bar.update()
        if signum:
            break
    if bar is not None:
        bar.close()
    return group


def _interruption(signum: int, epoch: int, result) -> RunInterrupted:
    error = RunInterrupted(
        f"stopped by {signal.Signals(signum).name} after epoch {epoch}, with the replicas "
        "it trained with (they keep no checkpoint); run the job again to train it",
        signum,
    )
    error.result, error.epoch = result, epoch
    return error
