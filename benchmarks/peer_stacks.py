"""The training stacks that ``benchmarks.peers`` races, built from a workload's pieces.

A ``Runner`` trains one stack epoch by epoch: ``epoch(state, index)`` returns the new
state and the epoch's mean training loss per datum as a host float, so every stack
syncs with the host once per epoch (as ``engine.fit`` does) and none pays for more.

- ``bslrun``: the program ``engine.fit`` runs (``engine._compiled_epoch``) on the
  family's ``engine.prepare`` set-up: one jitted ``lax.scan`` of NumPyro's
  ``SVI.update`` over a device-side permutation, with bslrun's finite check;
- ``numpyro_loop``: the usual NumPyro pattern, ``jax.jit(svi.update)`` called from a
  host loop over batches gathered from the device arrays with a host-side numpy
  permutation (the peers benchmark's baseline, 1.00);
- ``numpyro_scan``: the same ``svi.update`` in one jitted ``lax.scan`` over a
  device-side permutation, the least a NumPyro user writes to fuse an epoch;
- ``flax_optax_scan``: the objective written by hand, ``jax.value_and_grad`` and an
  optax update, in one jitted ``lax.scan`` (no NumPyro);
- ``flax_optax_step``: that step jitted alone and called from a host loop (the plain
  Flax training loop).

Hand-written objectives are ``loss(params, extra, key, x, y) -> (loss per datum,
extra)``: ``extra`` carries non-trained state such as batch-norm statistics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI

from bslrun import seeding
from bslrun.inference import engine


@dataclass
class Runner:
    """One stack's training state, its epoch function and what the race records."""

    name: str
    epoch: Callable  # (state, epoch index from 1) -> (state, mean loss per datum: float)
    state: Any
    compile_s: float
    num_params: int  # trained numbers: equal across stacks of one workload
    params: Callable  # state -> the trained parameters (for the finite check)
    done: int = 0
    losses: list = field(default_factory=list)  # each epoch's mean loss per datum
    seconds: list = field(default_factory=list)  # each timed segment's

    def train(self, epochs: int) -> None:
        for _ in range(epochs):
            self.done += 1
            self.state, loss = self.epoch(self.state, self.done)
            self.losses.append(loss)

    def finite(self) -> bool:
        leaves = jax.tree.leaves(self.params(self.state))
        return all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in leaves)


@dataclass
class Workload:
    """One model raced across stacks: what ``benchmarks.peers`` times and reports."""

    name: str
    title: str  # one line for the summary
    runners: list  # Runner, the first of each round rotating
    baseline: str  # the runner the ratios divide by
    examples_per_epoch: int  # the same for every runner (the last partial batch dropped)
    epochs: int  # epochs per timed segment, by default
    tolerance: float  # sanity: best epoch losses within this of their median
    config: dict
    # sanity: first-epoch losses within this of their median (relative to max(1, |median|))
    first_tolerance: float = 0.05


def count(tree) -> int:
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


def batches(key, n: int, batch_size: int, num_batches: int):
    """A fresh device-side permutation cut into (num_batches, batch_size) indices."""
    return jax.random.permutation(key, n)[: num_batches * batch_size].reshape(
        num_batches, batch_size
    )


def bslrun(family, train, optim_cfg, batch_size: int, key) -> Runner:
    """What ``engine.fit`` trains with: ``engine.prepare``, then its compiled epoch."""
    init_key, epochs_key = jax.random.split(key)
    # epochs=1 only sizes the learning-rate schedule; the workloads' is constant.
    setup = engine.prepare(family, train, optim_cfg, batch_size, 1, 1, init_key)
    tick = time.perf_counter()
    # engine.fit's own compiled program (private, so a renamed engine breaks this loudly
    # rather than letting the benchmark time something else).
    run_epoch = engine._compiled_epoch(family, setup, epochs_key, family.spec.dynamic_binarize)
    compile_s = time.perf_counter() - tick

    def epoch(state, index):
        state, loss, _ = run_epoch(
            state,
            jax.random.fold_in(epochs_key, index),
            setup.x,
            setup.y,
            engine.epoch_kwargs(family, index),
        )
        return state, float(jax.device_get(loss))  # the one host sync per epoch

    def params(state):
        return setup.svi.get_params(state)

    return Runner("bslrun", epoch, setup.state, compile_s, count(params(setup.state)), params)


def numpyro_pair(svi: SVI, x, y, batch_size: int, per_datum: float, key) -> list[Runner]:
    """``numpyro_loop`` and ``numpyro_scan`` of one SVI object, from one initial state.

    ``per_datum`` turns the SVI loss (an ELBO summed over what the model's plate
    covers) into the loss per datum that bslrun reports.
    """
    init_key, loop_key, scan_key = jax.random.split(key, 3)
    n = x.shape[0]
    num_batches = n // batch_size
    state0 = jax.block_until_ready(jax.jit(svi.init)(init_key, x[:batch_size], y[:batch_size]))
    params = svi.get_params
    size = count(params(state0))
    rng = seeding.numpy_rng(loop_key)
    update = jax.jit(svi.update)
    tick = time.perf_counter()
    jax.block_until_ready(update(state0, x[:batch_size], y[:batch_size]))
    loop_compile = time.perf_counter() - tick

    def loop_epoch(state, index):
        perm, losses = rng.permutation(n), []
        for b in range(num_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            state, loss = update(state, x[idx], y[idx])
            losses.append(loss)
        return state, float(jnp.mean(jnp.stack(losses))) * per_datum

    def scan(state, key, x, y):
        def step(state, idx):
            return svi.update(state, x[idx], y[idx])

        state, losses = jax.lax.scan(step, state, batches(key, n, batch_size, num_batches))
        return state, jnp.mean(losses)

    tick = time.perf_counter()
    compiled = jax.jit(scan).lower(state0, scan_key, x, y).compile()
    scan_compile = time.perf_counter() - tick

    def scan_epoch(state, index):
        state, loss = compiled(state, jax.random.fold_in(scan_key, index), x, y)
        return state, float(loss) * per_datum

    return [
        Runner("numpyro_loop", loop_epoch, state0, loop_compile, size, params),
        Runner("numpyro_scan", scan_epoch, state0, scan_compile, size, params),
    ]


def optax_step(loss: Callable, tx: optax.GradientTransformation) -> Callable:
    """(params, extra, opt_state), (key, x, y) -> (new carry, loss): one Adam step."""

    def step(carry, batch):
        params, extra, opt_state = carry
        (value, extra), grads = jax.value_and_grad(loss, has_aux=True)(params, extra, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), extra, opt_state), value

    return step


def flax_optax_scan(loss, params0, extra0, lr: float, x, y, batch_size: int, key) -> Runner:
    """The hand-written objective, its gradient and optax's Adam in one ``lax.scan``."""
    tx = optax.adam(lr)
    step = optax_step(loss, tx)
    n = x.shape[0]
    num_batches = n // batch_size

    def scan(carry, key, x, y):
        idx = batches(key, n, batch_size, num_batches)
        keys = jax.random.split(jax.random.fold_in(key, 1), num_batches)

        def body(carry, inputs):
            k, i = inputs
            return step(carry, (k, x[i], y[i]))

        carry, losses = jax.lax.scan(body, carry, (keys, idx))
        return carry, jnp.mean(losses)

    state0 = (params0, extra0, tx.init(params0))
    tick = time.perf_counter()
    compiled = jax.jit(scan).lower(state0, key, x, y).compile()
    compile_s = time.perf_counter() - tick

    def epoch(state, index):
        state, loss = compiled(state, jax.random.fold_in(key, index), x, y)
        return state, float(loss)

    return Runner("flax_optax_scan", epoch, state0, compile_s, count(params0), lambda s: s[0])


def flax_optax_step(loss, params0, extra0, lr: float, x, y, batch_size: int, key) -> Runner:
    """The plain Flax loop: a jitted step per batch, host-side permutation, one sync."""
    tx = optax.adam(lr)
    step = optax_step(loss, tx)
    n = x.shape[0]
    num_batches = n // batch_size
    rng = seeding.numpy_rng(key)

    @jax.jit
    def update(carry, step_index, xb, yb):
        # the step's key is derived inside the program: no extra dispatch per step
        return step(carry, (jax.random.fold_in(key, step_index), xb, yb))

    state0 = (params0, extra0, tx.init(params0))
    tick = time.perf_counter()
    jax.block_until_ready(update(state0, 0, x[:batch_size], y[:batch_size]))
    compile_s = time.perf_counter() - tick

    def epoch(state, index):
        perm, losses = rng.permutation(n), []
        for b in range(num_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            state, loss = update(state, index * num_batches + b, x[idx], y[idx])
            losses.append(loss)
        return state, float(jnp.mean(jnp.stack(losses)))

    return Runner("flax_optax_step", epoch, state0, compile_s, count(params0), lambda s: s[0])
