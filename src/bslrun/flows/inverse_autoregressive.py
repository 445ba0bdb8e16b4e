"""Inverse autoregressive flow step (Kingma et al. 2016, "Improving Variational Inference
with Inverse Autoregressive Flow", arXiv:1606.04934) as a numpyro transform.

For x (..., D) -> y (..., D), with theta = made(x, context) (..., D, P) and theta_i a
function of the x_j before i in ``made.order`` (and of the context) only:
  __call__  (sampling; ONE parallel conditioner pass):    y_i = tau(x_i; theta_i)
  _inverse  (sequential, D passes; for tests and completeness):  x_i = tau^-1(y_i; theta_i)
  log|det dy/dx| = sum_i log tau'(x_i; theta_i)       (dy/dx is triangular in made.order)
The elementwise map tau is
  affine (bins = 0, P = 2): theta = (m, r), tau(x) = m + sigma(r) x  (Kingma et al. eq. 10,
      sigma from ``stable_log_scale``, so sigma = 1 at r = 0);
  a rational-quadratic spline (bins = K > 0, P = 3K - 1): tau = g(.; theta) on
      [-tail_bound, tail_bound], identity outside (Durkan et al. 2019); for the same
      conditioner this is ``MaskedSplineAutoregressive(...).inv``.
Both are the identity when theta = 0, so a conditioner with a zero output layer
(``MaskedMLP(..., zero_output=True)``) starts the flow at the identity map.

Why a class of its own rather than ``MaskedAffineAutoregressive(...).inv``: numpyro's
``_InverseTransform`` has no ``call_with_intermediates``, so a distribution built from it
recomputes the conditioner for the log-determinant; here ``call_with_intermediates``
returns the per-coordinate log tau' of the sampling pass, which
``TransformedDistribution.log_prob(value, intermediates)`` (and so NumPyro's ELBOs) reuse.
log q of a drawn sample then costs no conditioner pass beyond the draw's, in the
gradient too. The affine form also takes a ``context``, which the MAF layer does not.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform

from bslrun.flows.affine_autoregressive import params_equiv
from bslrun.flows.made import MaskedMLP, stable_log_scale
from bslrun.flows.spline import rational_quadratic_spline, split_spline_params


def outputs_per_coordinate(bins: int) -> int:
    """P, the conditioner outputs per coordinate: 2 (affine, bins = 0) or 3K - 1 (spline)."""
    return 2 if bins == 0 else 3 * bins - 1


def iaf_conditioner(
    dim: int, hidden: Sequence[int], step: int, bins: int = 0, activation: str = "relu"
) -> MaskedMLP:
    """The MaskedMLP of step ``step`` of a stack: identity order on even steps, reversed on
    odd ones (a coordinate last in one step is first in the next, so that it also gets
    conditioned on the others), output layer zero (the step starts as the identity)."""
    order = tuple(range(dim)) if step % 2 == 0 else tuple(range(dim - 1, -1, -1))
    return MaskedMLP(
        dim, tuple(hidden), outputs_per_coordinate(bins), order, activation, zero_output=True
    )


class InverseAutoregressive(Transform):
    """x (..., D) -> y (..., D), one IAF step (see the module doc); ``made.apply(params, x,
    context)`` gives theta (..., D, P). ``context`` (..., c) or None (e.g. encoder features)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(
        self, made: MaskedMLP, params, bins: int = 0, tail_bound: float = 5.0, context=None
    ):
        self.made = made
        self.params = params
        self.bins = bins
        self.tail_bound = float(tail_bound)
        self.context = context

    def _elementwise(self, theta, v, inverse: bool):
        """(tau(v) or tau^-1(v), log|d tau/dx| at the x side), each (..., D)."""
        if self.bins == 0:
            shift, log_scale = theta[..., 0], stable_log_scale(theta[..., 1])
            if inverse:
                return (v - shift) * jnp.exp(-log_scale), log_scale
            return shift + jnp.exp(log_scale) * v, log_scale
        raw = split_spline_params(theta, self.bins)
        out, log_det = rational_quadratic_spline(v, *raw, self.tail_bound, inverse)
        return out, -log_det if inverse else log_det

    def __call__(self, x):
        return self.call_with_intermediates(x)[0]

    def call_with_intermediates(self, x):
        """One conditioner pass: (y, log tau'(x_i; theta_i) (..., D))."""
        theta = self.made.apply(self.params, x, self.context)
        return self._elementwise(theta, x, inverse=False)

    def _inverse(self, y):
        """Sequential: after pass k the first k coordinates (in made.order) are exact, so
        the D-th pass uses the exact theta."""
        if self.context is not None:  # a batched context widens the loop carry's shape
            batch = jnp.broadcast_shapes(jnp.shape(y)[:-1], jnp.shape(self.context)[:-1])
            y = jnp.broadcast_to(y, (*batch, jnp.shape(y)[-1]))

        def step(_, x):
            theta = self.made.apply(self.params, x, self.context)
            return self._elementwise(theta, y, inverse=True)[0]

        return lax.fori_loop(0, jnp.shape(y)[-1], step, jnp.zeros_like(y))

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        if intermediates is None:
            intermediates = self.call_with_intermediates(x)[1]
        return jnp.sum(intermediates, axis=-1)

    def tree_flatten(self):
        static = {"made": self.made, "bins": self.bins, "tail_bound": self.tail_bound}
        return (self.params, self.context), (("params", "context"), static)

    def eq(self, other, static: bool = False):
        if not isinstance(other, InverseAutoregressive):
            return False
        if (self.made, self.bins, self.tail_bound) != (other.made, other.bins, other.tail_bound):
            return False
        return params_equiv((self.params, self.context), (other.params, other.context), static)
