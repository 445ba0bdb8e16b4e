"""Affine coupling layer (RealNVP, Dinh et al. 2017) as a numpyro transform.

With a = x[..., :split] (kept) and b = x[..., split:] (transformed):
  forward  y_a = x_a,  y_b = mu(x_a) + sigma(x_a) * x_b
  inverse  x_a = y_a,  x_b = (y_b - mu(y_a)) / sigma(y_a)
  log|det dy/dx| = sum log sigma(x_a)
Both directions are one parallel pass of the conditioner, a Flax net mapping
(..., split) -> (..., 2 * (D - split)) split into (mu, raw scale); sigma =
softplus(raw + c) + 1e-3 as in ``made.stable_log_scale`` (sigma = 1 at raw = 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform

from bslrun.config import Activation
from bslrun.flows.affine_autoregressive import params_equiv
from bslrun.flows.layer import Layer
from bslrun.flows.made import stable_log_scale
from bslrun.nets import MLP


def coupling_net(
    dim: int,
    split: int,
    hidden: Sequence[int] = (32, 32),
    activation: str = "relu",
    zero_output: bool = False,
) -> nn.Module:
    """The conditioner: an MLP from the kept ``split`` coordinates to 2 * (dim - split);
    with ``zero_output`` the layer starts as the identity."""
    return MLP(tuple(hidden), 2 * (dim - split), activation, zero_output)


class AffineCoupling(Transform):
    """x (..., D) <-> y (..., D); ``net.apply(params, x_a)`` gives (mu, raw) stacked."""

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, net: nn.Module, params, split: int):
        self.net = net
        self.params = params
        self.split = split

    def _shift_log_scale(self, kept):
        shift, raw = jnp.split(self.net.apply(self.params, kept), 2, axis=-1)
        return shift, stable_log_scale(raw)

    def __call__(self, x):
        return self.call_with_intermediates(x)[0]

    def call_with_intermediates(self, x):
        kept, rest = x[..., : self.split], x[..., self.split :]
        shift, log_scale = self._shift_log_scale(kept)
        return jnp.concatenate([kept, shift + jnp.exp(log_scale) * rest], -1), log_scale

    def _inverse(self, y):
        kept, rest = y[..., : self.split], y[..., self.split :]
        shift, log_scale = self._shift_log_scale(kept)
        return jnp.concatenate([kept, (rest - shift) * jnp.exp(-log_scale)], -1)

    def inverse_and_log_det(self, y):
        """(x, log|det dy/dx|) from one conditioner pass."""
        kept, rest = y[..., : self.split], y[..., self.split :]
        shift, log_scale = self._shift_log_scale(kept)
        x = jnp.concatenate([kept, (rest - shift) * jnp.exp(-log_scale)], -1)
        return x, jnp.sum(log_scale, axis=-1)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        if intermediates is None:
            intermediates = self._shift_log_scale(x[..., : self.split])[1]
        return jnp.sum(intermediates, axis=-1)

    def tree_flatten(self):
        return (self.params,), (("params",), {"net": self.net, "split": self.split})

    def eq(self, other, static: bool = False):
        if not isinstance(other, AffineCoupling) or (self.net, self.split) != (
            other.net,
            other.split,
        ):
            return False
        return params_equiv(self.params, other.params, static)


REALNVP = Layer(
    name="realnvp",
    conditioner=lambda dim, cfg: coupling_net(
        dim, dim // 2, tuple(cfg.hidden), Activation(cfg.activation).value, zero_output=True
    ),
    bijection=lambda net, params, dim, cfg: AffineCoupling(net, params, dim // 2),
    coupling=True,
)
