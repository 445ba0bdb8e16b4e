"""Masked autoregressive flow layer (Papamakarios et al. 2017) as a numpyro transform.

Direction, as ``TransformedDistribution(base, [MaskedAffineAutoregressive(...)])`` uses it:
  __call__  (base z -> data x, sampling; sequential, D MADE passes):
      x_i = mu_i(x_<i) + sigma_i(x_<i) * z_i
  _inverse  (data x -> base z, density; one parallel MADE pass):
      z_i = (x_i - mu_i(x_<i)) / sigma_i(x_<i)
  log_abs_det_jacobian(z, x) = log|det dx/dz| = sum_i log sigma_i(x_<i)
which needs only x, so log_prob costs one MADE pass per layer: under jit XLA's common
subexpression elimination merges the identical MADE(x) in ``_inverse`` and
``log_abs_det_jacobian`` (tests/flows/test_flows.py counts the compiled matmuls).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform
from numpyro.distributions.util import array_equiv

from bslrun.config import Activation
from bslrun.flows.layer import Layer
from bslrun.flows.made import MADE


def params_equiv(a, b, static: bool):
    """Leafwise array_equiv of two parameter pytrees (False if structures differ)."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    if tree_a != tree_b:
        return False
    result = True
    for x, y in zip(leaves_a, leaves_b, strict=True):
        result = result & array_equiv(x, y, static=static)
    return result


class MaskedAffineAutoregressive(Transform):
    """z (..., D) <-> x (..., D) through a MADE with explicit ``params`` (see module doc)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, made: MADE, params):
        self.made = made
        self.params = params

    def _conditioner(self, x):
        return self.made.apply(self.params, x)

    def __call__(self, z):
        return self.call_with_intermediates(z)[0]

    def call_with_intermediates(self, z):
        """Sequential: after pass k the first k coordinates (in MADE order) are exact;
        the D-th pass sees all of x_<i, so its log_scale is the exact one."""

        def step(_, carry):
            x, _ = carry
            shift, log_scale = self._conditioner(x)
            return shift + jnp.exp(log_scale) * z, log_scale

        zeros = jnp.zeros_like(z)
        x, log_scale = lax.fori_loop(0, jnp.shape(z)[-1], step, (zeros, zeros))
        return x, log_scale

    def _inverse(self, x):
        shift, log_scale = self._conditioner(x)
        return (x - shift) * jnp.exp(-log_scale)

    def inverse_and_log_det(self, x):
        """(z, log|det dx/dz|) from one MADE pass: what a density needs, and why this
        direction is fast (the gradient, too, runs through one pass)."""
        shift, log_scale = self._conditioner(x)
        return (x - shift) * jnp.exp(-log_scale), jnp.sum(log_scale, axis=-1)

    def log_abs_det_jacobian(self, z, x, intermediates=None):
        log_scale = self._conditioner(x)[1] if intermediates is None else intermediates
        return jnp.sum(log_scale, axis=-1)

    def tree_flatten(self):
        return (self.params,), (("params",), {"made": self.made})

    def eq(self, other, static: bool = False):
        if not isinstance(other, MaskedAffineAutoregressive) or self.made != other.made:
            return False
        return params_equiv(self.params, other.params, static)


MAF = Layer(
    name="maf",
    conditioner=lambda dim, cfg: MADE(
        dim, tuple(cfg.hidden), activation=Activation(cfg.activation).value, zero_output=True
    ),
    bijection=lambda net, params, dim, cfg: MaskedAffineAutoregressive(net, params),
)
