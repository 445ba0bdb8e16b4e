"""Deterministic Flax networks; Bayesian models put priors on their parameters."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {
    "relu": nn.relu,
    "tanh": nn.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "elu": nn.elu,
    "softplus": nn.softplus,
    "leaky_relu": nn.leaky_relu,
}


class MLP(nn.Module):
    """x (..., d) -> (..., out_dim) through Dense layers of widths ``hidden``."""

    hidden: Sequence[int]
    out_dim: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
        return nn.Dense(self.out_dim)(x)


class FlatView:
    """A parameter pytree seen as one flat vector w (and back), from shapes alone.

    Built from ``jax.eval_shape`` output, so constructing it compiles nothing.
    """

    def __init__(self, shapes):
        leaves, self.treedef = jax.tree.flatten(shapes)
        self.shapes = [tuple(leaf.shape) for leaf in leaves]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.size = sum(self.sizes)

    def ravel(self, tree) -> jax.Array:
        return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])

    def unravel(self, w):
        parts, start = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            parts.append(jnp.reshape(w[..., start : start + size], w.shape[:-1] + shape))
            start += size
        return jax.tree.unflatten(self.treedef, parts)
