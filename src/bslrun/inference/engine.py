"""The SVI engine shared by every model family.

One epoch is one jit-compiled ``lax.scan`` of ``SVI.update`` over a
device-side random permutation of the training set cut into fixed-size
batches (the last partial batch is dropped; a fresh permutation each epoch
uses every example over time). The data is put on the device once, and the
host sees one scalar per epoch: the mean loss, needed for the progress bar
and the NaN guard.

The loss is the negative ELBO per training datum: the objective is scaled by
1/N, and each family scales its batch likelihood by N/B. This is the
lecture's "KL weight 1/N" and keeps learning rates independent of N.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import SVI
from tqdm.auto import tqdm

from bslrun.clock import Phase, ProgressLines, seconds_since_run_start
from bslrun.config import Monitor
from bslrun.errors import DivergenceError, RunInterrupted
from bslrun.inference import memory, optim
from bslrun.inference.devices import Placement
from bslrun.inference.svi import batch_plan, epoch_kwargs, make_svi, variables
from bslrun.models import with_scalers


@dataclass
class Fitted:
    """What a method's fit leaves for its evaluation and the run folder (``inference.methods``);
    a value a method does not have is None (a sampler has no epochs)."""

    params: dict | None  # constrained parameters at the best validation score (else the last)
    history: list  # one dict per epoch
    best_epoch: int | None
    epochs_run: int | None
    stopped_early: bool | None
    timing: dict = field(default_factory=dict)
    draws: dict | None = None  # a sampler's posterior draws by site: posterior_samples.npz
    draw_stats: dict | None = None  # the sampler's divergences, acceptance, tree sizes, ...


def all_finite(tree) -> jax.Array:
    """True when every leaf of ``tree`` is free of NaN and inf."""
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def epoch_fn(
    svi: SVI,
    batch_size: int,
    num_batches: int,
    dynamic_binarize: bool = False,
    placement: Placement | None = None,
):
    """state, key, x, y, kwargs -> (state, mean loss, finite): one pass over a fresh permutation.

    ``kwargs`` (a dict of scalars) goes to the model and guide of every step.
    With ``dynamic_binarize``, each batch of intensities in [0, 1] becomes a
    fresh Bernoulli draw (dynamically binarised MNIST). ``finite`` says whether
    the new parameters are all finite: a finite loss can precede an update that
    overflows. With a ``placement`` over several devices, each batch is split
    between them (data parallelism).
    """
    split_batch = placement.split_batch if placement else (lambda tree: tree)

    def epoch(state, key, x, y, kwargs=None):
        kwargs = kwargs or {}
        perm = jax.random.permutation(key, x.shape[0])
        batches = perm[: num_batches * batch_size].reshape(num_batches, batch_size)
        pixel_keys = jax.random.split(jax.random.fold_in(key, 1), num_batches)

        def step(state, inputs):
            idx, pixel_key = inputs
            xb, yb = split_batch((x[idx], y[idx]))
            if dynamic_binarize:
                xb = jax.random.bernoulli(pixel_key, xb).astype(xb.dtype)
            return svi.update(state, xb, yb, **kwargs)

        state, losses = jax.lax.scan(step, state, (batches, pixel_keys))
        finite = all_finite(svi.optim.get_params(state.optim_state))
        return state, jnp.mean(losses), finite

    return epoch


@dataclass
class Setup:
    """What training starts from: device data, the SVI object and its initial state."""

    svi: SVI
    x: jax.Array
    y: jax.Array
    batch_size: int
    num_batches: int
    state: object
    lr_at: object  # the learning-rate schedule, step -> lr
    placement: Placement


def prepare(
    family, train, optim_cfg, batch_size, epochs, num_particles, init_key, placement=None
) -> Setup:
    """Put the training split on the device(s), build SVI and draw its initial state."""
    placement = placement or Placement()
    x, y = placement.replicate((train.x, train.y))
    batch_size, num_batches = batch_plan(x.shape[0], batch_size)
    placement.check_batch(batch_size)
    optimiser, lr_at = optim.build(optim_cfg, num_batches, epochs)
    svi = make_svi(family, optimiser, num_particles)
    # Compiled, initialisation costs one small program instead of hundreds of eager ops.
    state = jax.jit(svi.init)(init_key, x[:batch_size], y[:batch_size], **epoch_kwargs(family, 1))
    state = jax.block_until_ready(placement.replicate(state))
    return Setup(svi, x, y, batch_size, num_batches, state, lr_at, placement)


def _is_better(value: float, best: float | None) -> bool:
    return math.isfinite(value) and (best is None or value < best)


class Validator:
    """A validation pass ``score(state, *args)``, compiled on first use (so training
    starts sooner); it returns floats (lists of floats for replicas trained together).

    A family may score validation epochs with a cheaper ``validate`` than its final
    ``evaluate`` (same signature); what it returns must include what is monitored.
    """

    def __init__(self, score, args: tuple):
        self.score, self.args = jax.jit(score), args
        self.compile_s = self.seconds = 0.0

    def __call__(self, state) -> dict:
        if not isinstance(self.score, jax.stages.Compiled):
            with Phase("compiling the validation pass", "compiled") as phase:
                self.score = self.score.lower(state, *self.args).compile()
            self.compile_s = phase.seconds
        tick = time.perf_counter()
        scores = jax.device_get(self.score(state, *self.args))
        self.seconds += time.perf_counter() - tick
        return {k: np.asarray(v).tolist() for k, v in scores.items()}


def run_validator(family, svi: SVI, split, key, num_samples: int, placement: Placement):
    """The Validator of one run: ``family.validate`` on ``split`` with the same draws
    (``key``) every time, so scores differ only by the parameters. The data's standardisers
    are arguments, so that runs of other seeds and splits share the compiled program."""

    def score(state, x, y, key, arrays):
        return with_scalers(family, arrays).validate(variables(svi, state), x, y, key, num_samples)

    data = placement.replicate((split.x, split.y, family.spec.scaler_arrays()))
    return Validator(score, (*data[:2], key, data[2]))


@dataclass
class Progress:
    """The training loop's bookkeeping; saved as JSON in checkpoints, restored on resume."""

    epoch: int = 0  # epochs completed
    history: list = field(default_factory=list)  # one dict per epoch
    best: float | None = None  # best monitored validation score
    best_epoch: int = 0
    bad_evals: int = 0  # validations since the best
    stopped_early: bool = False
    train_s: float = 0.0  # training time so far, over every resumption
    val_s: float = 0.0

    def finished(self, epochs: int) -> bool:
        return self.stopped_early or self.epoch >= epochs


def divergence(epoch: int, loss: float, history: list, last: dict, timing: dict):
    what = f"loss {loss}" if not math.isfinite(loss) else "parameters overflowed"
    error = DivergenceError(
        f"training diverged at epoch {epoch} ({what}); history and the last finite "
        "parameters were written; lower optim.lr or set optim.clip_norm (e.g. 10)"
    )
    error.result = Fitted(last, history, max(epoch - 1, 0), epoch, False, timing)
    return error


def progress_bar(trainer_cfg, desc: str, done: int) -> ProgressLines:
    """The bar on a terminal; elsewhere a line every ``trainer.progress_every_s`` seconds."""
    bar = tqdm(
        total=trainer_cfg.epochs,
        initial=done,
        desc=desc,
        unit="epoch",
        dynamic_ncols=True,
        disable=None if trainer_cfg.progress else True,
    )
    every_s = trainer_cfg.progress_every_s if trainer_cfg.progress else 0.0
    return ProgressLines(bar, desc, trainer_cfg.epochs, done, every_s)


def _track_best(progress: Progress, value: float, state, best_state, patience: int):
    """Early-stopping bookkeeping after validating ``progress.epoch``; returns the best state.

    Training stops after ``patience`` validations without improvement (0: never).
    """
    if _is_better(value, progress.best):
        progress.best, progress.best_epoch, progress.bad_evals = value, progress.epoch, 0
        return state
    progress.bad_evals += 1
    progress.stopped_early = bool(patience and progress.bad_evals >= patience)
    return best_state


def record_epoch(progress: Progress, epoch: int, loss: float, lr) -> dict:
    """Append epoch ``epoch``'s history row (training loss, learning rate); returns it."""
    row = {"epoch": epoch, "train_loss": loss, "lr": float(lr)}
    progress.history.append(row)
    return row


def validation_due(epoch: int, trainer_cfg) -> bool:
    return epoch % trainer_cfg.eval_every == 0 or epoch == trainer_cfg.epochs


def record_validation(progress, row, scores, watched, state, best_state, patience):
    """Add validation ``scores`` to ``row`` and track the best ``watched`` score; returns
    (the best state, the progress bar's entry)."""
    row.update({f"val_{k}": v for k, v in scores.items()})
    value = scores[watched]
    best_state = _track_best(progress, value, state, best_state, patience)
    return best_state, {f"val_{watched}": f"{value:.4f}"}


def _compiled_epoch(family, setup: Setup, epochs_key, dynamic_binarize: bool):
    """The epoch program, compiled once for the shapes of ``setup`` before training starts."""
    program = epoch_fn(
        setup.svi, setup.batch_size, setup.num_batches, dynamic_binarize, setup.placement
    )
    first = epoch_kwargs(family, 1)
    return jax.jit(program).lower(setup.state, epochs_key, setup.x, setup.y, first).compile()


def _resume(checkpoints, state):
    """(state, best state, Progress) from the last checkpoint, else from ``state``."""
    restored = checkpoints.latest({"state": state, "best": state}) if checkpoints else None
    if restored is None:
        return state, state, Progress()
    arrays, progress = restored
    return arrays["state"], arrays["best"], Progress(**progress)


def fit(
    family,
    data,
    optim_cfg,
    trainer_cfg,
    init_key,
    key,
    val_samples: int,
    desc: str = "train",
    checkpoints=None,
    stop_requested=lambda: None,
    eval_samples: int | None = None,
    on_epoch=lambda row: None,
) -> Fitted:
    """Train ``family`` on ``data.train`` by SVI; validate on ``data.val`` if present.

    ``init_key`` draws the initial parameters; ``key`` the batches and the
    Monte Carlo samples of training and validation: epoch e's draws come from
    ``fold_in(key, e)``, so a resumed run draws what an uninterrupted one would.
    With ``checkpoints`` (see checkpoint.py), training continues from the last
    checkpoint there and saves a new one every ``checkpoints.every`` epochs.
    Raises DivergenceError (with ``.result`` holding the history and the last
    finite parameters) when the loss or the parameters become NaN or infinite.
    ``stop_requested()`` (a signal number or None) is asked at every epoch boundary:
    when it answers, a checkpoint is saved and RunInterrupted (with ``.result``) raised.
    ``on_epoch(row)`` receives each epoch's history row (the experiment loggers).
    """
    # Before anything compiles: training, and the final evaluation with ``eval_samples``.
    memory.check(family, data, optim_cfg, trainer_cfg, val_samples, eval_samples)
    epochs_key, val_key = jax.random.split(key)
    placement = Placement(trainer_cfg.devices)
    timing, tick = {}, time.perf_counter()
    setup = prepare(
        family, data.train, optim_cfg, trainer_cfg.batch_size, trainer_cfg.epochs,
        trainer_cfg.num_particles, init_key, placement,
    )  # fmt: skip
    svi, x, y, num_batches = setup.svi, setup.x, setup.y, setup.num_batches
    timing["init_s"] = time.perf_counter() - tick
    with Phase("compiling the training epoch", "compiled") as phase:
        run_epoch = _compiled_epoch(family, setup, epochs_key, data.spec.dynamic_binarize)
    timing["compile_s"] = phase.seconds
    timing["startup_s"] = seconds_since_run_start()
    validate = (
        run_validator(family, svi, data.val, val_key, val_samples, placement) if data.val else None
    )
    state, best_state, progress = _resume(checkpoints, setup.state)
    timing["resumed_from_epoch"] = progress.epoch
    val_s_before = progress.val_s

    monitor = Monitor(trainer_cfg.monitor).value
    epochs = trainer_cfg.epochs
    bar = None  # shown with the first finished epoch, not as 0/N through its compilation
    while not progress.finished(epochs):
        epoch = progress.epoch + 1
        tick = time.perf_counter()
        new_state, loss, finite = run_epoch(
            state, jax.random.fold_in(epochs_key, epoch), x, y, epoch_kwargs(family, epoch)
        )
        loss, finite = jax.device_get((loss, finite))  # the one host sync per epoch
        loss = float(loss)
        progress.train_s += time.perf_counter() - tick
        row = record_epoch(progress, epoch, loss, setup.lr_at(epoch * num_batches - 1))
        if not (math.isfinite(loss) and finite):
            raise divergence(epoch, loss, progress.history, variables(svi, state), timing)
        state, progress.epoch = new_state, epoch
        postfix = {"loss": f"{loss:.4f}"}
        if validate and validation_due(epoch, trainer_cfg):
            scores = validate(state)
            progress.val_s = val_s_before + validate.seconds
            best_state, shown = record_validation(
                progress, row, scores, family.monitored(monitor, scores), state, best_state,
                trainer_cfg.patience,
            )  # fmt: skip
            postfix.update(shown)
        signum = stop_requested()
        if checkpoints and (checkpoints.due(epoch) or signum or progress.finished(epochs)):
            checkpoints.save(epoch, {"state": state, "best": best_state}, asdict(progress))
        if bar is None:
            bar = progress_bar(trainer_cfg, desc, epoch - 1)
        bar.set_postfix(postfix, refresh=False)
        bar.update()
        on_epoch(row)
        if signum and not progress.finished(epochs):
            bar.close()
            raise _interruption(signum, epoch, svi, state, best_state, progress, validate,
                                trainer_cfg, setup, timing)  # fmt: skip
    if bar is not None:
        bar.close()
    return _result(svi, state, best_state, progress, validate, trainer_cfg, setup, timing)


def _interruption(signum, epoch, *result_args) -> RunInterrupted:
    """RunInterrupted carrying what training has so far (history, best parameters)."""
    import signal

    error = RunInterrupted(
        f"stopped by {signal.Signals(signum).name} after epoch {epoch}; checkpoint saved", signum
    )
    error.result = _result(*result_args)
    error.epoch = epoch
    return error


def _result(svi, state, best_state, progress, validate, trainer_cfg, setup, timing) -> Fitted:
    if validate:
        timing["compile_s"] += validate.compile_s
    per_epoch = setup.num_batches * setup.batch_size
    params = functools.partial(variables, svi)
    return fit_result(params, state, best_state, progress, validate is not None, trainer_cfg,
                      per_epoch, timing)  # fmt: skip


def fit_result(params, state, best_state, progress, validated, trainer_cfg, per_epoch, timing):
    """The Fitted of a finished (or stopped) training: ``params(state)`` of the best
    validation epoch, or of the last without validation or ``trainer.restore_best``."""
    best_epoch = progress.best_epoch
    if not validated or not trainer_cfg.restore_best:
        best_state, best_epoch = state, len(progress.history)
    timing["train_s"] = progress.train_s
    timing["val_s"] = progress.val_s
    seen = len(progress.history) * per_epoch
    timing["train_examples_per_sec"] = seen / progress.train_s if progress.train_s > 0 else math.nan
    return Fitted(
        params=params(best_state),
        history=progress.history,
        best_epoch=best_epoch,
        epochs_run=len(progress.history),
        stopped_early=progress.stopped_early,
        timing=timing,
    )
