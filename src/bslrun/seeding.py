"""One root key from ``cfg.seed``; every random draw comes from a named stream.

Streams are derived with ``fold_in`` so that adding a stream never changes
the numbers drawn from the others.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np


class Streams(NamedTuple):
    data: jax.Array  # splits, subsets, shuffles done on the host
    init: jax.Array  # network and variational parameter initialisation
    train: jax.Array  # minibatch order and Monte Carlo draws of the ELBO
    eval: jax.Array  # posterior predictive draws
    sample: jax.Array  # samples written to the experiment folder
    structure: jax.Array  # fixed choices of a model's structure (a flow's random permutations)


@jax.jit
def _derive(seed):
    root = jax.random.PRNGKey(seed)
    return tuple(jax.random.fold_in(root, i) for i in range(len(Streams._fields)))


def streams(seed: int) -> Streams:
    return Streams(*_derive(seed))


class EvalKeys(NamedTuple):
    """The final evaluation's keys: test metrics, validation metrics, saved arrays."""

    test: jax.Array
    val: jax.Array
    artifacts: jax.Array


def eval_keys(seed: int) -> EvalKeys:
    """The keys a run with ``seed`` evaluated with (a reopened run reproduces its numbers)."""
    return EvalKeys(*jax.random.split(streams(seed).eval, 3))


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A numpy generator seeded by a JAX key's bits, for host-side shuffles.

    Host-side data handling then compiles nothing, which keeps start-up short.
    """
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).tolist())
