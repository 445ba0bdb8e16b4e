"""One root key from ``cfg.seed``; every random draw comes from a named stream.

Streams are derived with ``fold_in`` so that adding a stream never changes
the numbers drawn from the others.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

# JAX is imported on first use: the data modules, which the registry imports to check a
# config, use only ``numpy_rng``, and checking a config should not wait for JAX.
if TYPE_CHECKING:
    import jax


class Streams(NamedTuple):
    data: jax.Array  # splits, subsets, shuffles done on the host
    init: jax.Array  # network and variational parameter initialisation
    train: jax.Array  # minibatch order and Monte Carlo draws of the ELBO
    eval: jax.Array  # posterior predictive draws, and the arrays saved in the run folder
    structure: jax.Array  # fixed choices of a model's structure (a flow's random permutations)


# Each stream's fold_in index. 4 was a stream never drawn from; it stays retired, so that
# "structure" keeps the numbers (a flow's permutations) it has always given.
INDEX = {"data": 0, "init": 1, "train": 2, "eval": 3, "structure": 5}


@functools.cache
def _derive():
    import jax

    @jax.jit
    def derive(seed):
        root = jax.random.PRNGKey(seed)
        return tuple(jax.random.fold_in(root, INDEX[name]) for name in Streams._fields)

    return derive


def streams(seed: int) -> Streams:
    return Streams(*_derive()(seed))


class EvalKeys(NamedTuple):
    """The final evaluation's keys: test metrics, validation metrics, saved arrays."""

    test: jax.Array
    val: jax.Array
    artifacts: jax.Array


def eval_keys(seed: int) -> EvalKeys:
    """The keys a run with ``seed`` evaluated with (a reopened run reproduces its numbers)."""
    import jax

    return EvalKeys(*jax.random.split(streams(seed).eval, 3))


def split_keys(key: jax.Array, num: int) -> jax.Array:
    """``jax.random.split`` for the modules that otherwise need no JAX (the data loaders)."""
    import jax

    return jax.random.split(key, num)


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A numpy generator seeded by a JAX key's bits, for host-side shuffles.

    Host-side data handling then compiles nothing, which keeps start-up short.
    """
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).tolist())
