"""MADE: a masked autoencoder for distribution estimation (Germain et al. 2015).

x (..., D) -> (shift, log_scale), each (..., D), with output i a function of the
inputs that come before i in ``order`` only: d out_i / d x_j = 0 unless j precedes i.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MIN_SCALE = 1e-3
IDENTITY_OFFSET = float(np.log(np.expm1(1.0 - MIN_SCALE)))  # softplus^-1(1 - 1e-3)


def stable_log_scale(raw: jax.Array) -> jax.Array:
    """log sigma with sigma = softplus(raw + c) + 1e-3, c chosen so that raw = 0 gives 1.

    The floor keeps 1 / sigma (used by the data -> base direction) below 1e3, and
    softplus grows linearly rather than exponentially, so one large raw output
    cannot overflow the inverse or the log-determinant. The offset makes a
    conditioner with a zero output layer the identity map.
    """
    return jnp.log(nn.softplus(raw + IDENTITY_OFFSET) + MIN_SCALE)


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
    kernel_init: Callable | None = None  # default: LeCun normal

    @nn.compact
    def __call__(self, x, mask):
        init = self.kernel_init or nn.initializers.lecun_normal()
        kernel = self.param("kernel", init, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return x @ (kernel * jnp.asarray(mask, kernel.dtype)) + bias


class MaskedMLP(nn.Module):
    """x (..., dim) -> (..., dim, outputs): ``outputs`` numbers per coordinate, each a
    function of the coordinates before it in ``order`` only (and of ``context``, if any).

    ``context`` (..., c), e.g. an encoder's features for an amortised flow, enters the
    first hidden layer through an unmasked dense map: it may inform every output.
    ``zero_output`` starts the output layer at zero weights and biases, so a flow begins
    at a known map (see the transforms that use it).
    """

    dim: int
    hidden: Sequence[int] = (32, 32)
    outputs: int = 2
    order: Sequence[int] | None = None
    activation: str = "relu"
    zero_output: bool = False

    @nn.compact
    def __call__(self, x, context=None):
        hidden_masks, out_mask = masks(self.dim, self.hidden, self.order)
        act = getattr(nn, self.activation)
        h = x
        for layer, (width, mask) in enumerate(zip(self.hidden, hidden_masks, strict=True)):
            h = MaskedDense(width)(h, mask)
            if layer == 0 and context is not None:
                h = h + nn.Dense(width, use_bias=False, name="context")(context)
            h = act(h)
        # Output unit (i, k) sits in column i * outputs + k and inherits coordinate i's mask.
        init = nn.initializers.zeros_init() if self.zero_output else None
        out = MaskedDense(self.dim * self.outputs, kernel_init=init, name="out")(
            h, np.repeat(out_mask, self.outputs, axis=1)
        )
        return out.reshape(*out.shape[:-1], self.dim, self.outputs)


class MADE(nn.Module):
    """x (..., dim) -> (shift, log_scale), each (..., dim); the affine MAF conditioner.

    ``order`` (a permutation of 0..dim-1, default identity) gives the autoregressive
    order: output i depends on x_j only when j comes before i in ``order``.
    log_scale = log(softplus(raw) + 1e-3) (see ``stable_log_scale``).
    """

    dim: int
    hidden: Sequence[int] = (32, 32)
    order: Sequence[int] | None = None
    activation: str = "relu"
    zero_output: bool = False

    @nn.compact
    def __call__(self, x, context=None):
        out = MaskedMLP(
            self.dim, self.hidden, 2, self.order, self.activation, self.zero_output, name="net"
        )(x, context)
        return out[..., 0], stable_log_scale(out[..., 1])
