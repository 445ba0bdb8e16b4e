"""MADE: a masked autoencoder for distribution estimation (Germain et al. 2015).

x (..., D) -> (shift, log_scale), each (..., D), with output i a function of the
inputs that come before i in ``order`` only: d out_i / d x_j = 0 unless j precedes i.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MIN_SCALE = 1e-3


def stable_log_scale(raw: jax.Array) -> jax.Array:
    """log sigma with sigma = softplus(raw) + 1e-3.

    The floor keeps 1 / sigma (used by the data -> base direction) below 1e3, and
    softplus grows linearly rather than exponentially, so one large raw output
    cannot overflow the inverse or the log-determinant.
    """
    return jnp.log(nn.softplus(raw) + MIN_SCALE)


def degrees(dim: int, hidden: Sequence[int], order: Sequence[int] | None = None):
    """Germain et al.'s degrees: inputs 1..D (by position in ``order``), hidden units
    cyclically 1..D-1 (deterministic, so no key is needed), one array per layer."""
    order = np.arange(dim) if order is None else np.asarray(order)
    if sorted(order.tolist()) != list(range(dim)):
        raise ValueError(f"order must be a permutation of 0..{dim - 1}, got {order.tolist()}")
    d_in = np.empty(dim, np.int32)
    d_in[order] = np.arange(1, dim + 1)
    span = max(dim - 1, 1)
    return [d_in] + [np.arange(width) % span + 1 for width in hidden]


def masks(dim: int, hidden: Sequence[int], order: Sequence[int] | None = None):
    """(in, out) 0/1 masks: hidden unit k sees m_prev <= m_k, output i sees m_prev < m_in[i]."""
    degs = degrees(dim, hidden, order)
    hidden_masks = [
        (prev[:, None] <= nxt[None, :]).astype(np.float32)
        for prev, nxt in zip(degs[:-1], degs[1:], strict=True)
    ]
    out_mask = (degs[-1][:, None] < degs[0][None, :]).astype(np.float32)
    return hidden_masks, out_mask


class MaskedDense(nn.Module):
    """x (..., n_in) -> (..., features) = x @ (kernel * mask) + bias."""

    features: int

    @nn.compact
    def __call__(self, x, mask):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return x @ (kernel * jnp.asarray(mask, kernel.dtype)) + bias


class MADE(nn.Module):
    """x (..., dim) -> (shift, log_scale), each (..., dim); ReLU hidden layers.

    ``order`` (a permutation of 0..dim-1, default identity) gives the autoregressive
    order: output i depends on x_j only when j comes before i in ``order``.
    log_scale = log(softplus(raw) + 1e-3) (see ``stable_log_scale``).
    """

    dim: int
    hidden: Sequence[int] = (32, 32)
    order: Sequence[int] | None = None

    @nn.compact
    def __call__(self, x):
        hidden_masks, out_mask = masks(self.dim, self.hidden, self.order)
        h = x
        for width, mask in zip(self.hidden, hidden_masks, strict=True):
            h = nn.relu(MaskedDense(width)(h, mask))
        shift = MaskedDense(self.dim, name="shift")(h, out_mask)
        raw = MaskedDense(self.dim, name="raw_scale")(h, out_mask)
        return shift, stable_log_scale(raw)
