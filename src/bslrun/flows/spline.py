"""Rational-quadratic spline bijections (Durkan et al. 2019, "Neural Spline Flows",
arXiv:1906.04032) as numpyro transforms.

The elementwise map g on [-B, B] has K bins with knots (x_k, y_k), k = 0..K,
x_0 = y_0 = -B, x_K = y_K = B, and positive derivatives d_k at the knots with
d_0 = d_K = 1; outside [-B, B] it is the identity, so value and slope are continuous
at +-B. In bin k, with w = x_{k+1} - x_k, h = y_{k+1} - y_k, s = h / w,
xi = (x - x_k) / w in [0, 1] and t = xi (1 - xi) (the paper's eqs. 4 and 5):
    g(x)  = y_k + h (s xi^2 + d_k t) / (s + (d_{k+1} + d_k - 2 s) t)
    g'(x) = s^2 (d_{k+1} xi^2 + 2 s t + d_k (1 - xi)^2) / (s + (d_{k+1} + d_k - 2 s) t)^2
The inverse solves a xi^2 + b xi + c = 0 for y in bin k (the paper's appendix A):
    a = h (s - d_k) + (y - y_k) (d_{k+1} + d_k - 2 s)
    b = h d_k - (y - y_k) (d_{k+1} + d_k - 2 s)
    c = -s (y - y_k)
    xi = 2 c / (-b - sqrt(b^2 - 4 a c))   (no cancellation, unlike (-b + sqrt) / 2a)
Unconstrained parameters: bin widths and heights are min + (1 - K min) softmax(raw),
interior derivatives are 1e-3 + softplus(raw + c) with c chosen so that raw = 0 gives
exactly 1; an all-zero raw vector is then the identity map.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform

from bslrun.config import Activation
from bslrun.flows.affine_autoregressive import params_equiv
from bslrun.flows.layer import Layer
from bslrun.flows.made import MaskedMLP
from bslrun.nets import MLP

# Floors keep every bin at least 1e-3 * 2B wide and tall, and every slope >= 1e-3, so
# 1 / s and log g' stay within float32's comfortable range.
MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
DERIVATIVE_OFFSET = float(np.log(np.expm1(1.0 - MIN_DERIVATIVE)))  # softplus^-1(1 - 1e-3)


def _knots(raw: jax.Array, bound: float, min_bin: float) -> jax.Array:
    """raw (..., K) -> knot positions (..., K + 1) from -bound to bound."""
    bins = raw.shape[-1]
    sizes = min_bin + (1.0 - bins * min_bin) * jax.nn.softmax(raw, axis=-1)
    # The ends are pinned rather than summed: a float32 cumsum can miss 1 by ~1e-7,
    # which would leave a gap (or a jump) where the spline meets the tails.
    inner = -bound + 2.0 * bound * jnp.cumsum(sizes[..., :-1], axis=-1)
    edge = jnp.full((*raw.shape[:-1], 1), bound, raw.dtype)
    return jnp.concatenate([-edge, inner, edge], axis=-1)


def _derivatives(raw: jax.Array) -> jax.Array:
    """raw (..., K - 1) -> knot derivatives (..., K + 1), the two boundary ones 1."""
    inner = MIN_DERIVATIVE + jax.nn.softplus(raw + DERIVATIVE_OFFSET)
    one = jnp.ones((*raw.shape[:-1], 1), raw.dtype)
    return jnp.concatenate([one, inner, one], axis=-1)


def _bin_of(v: jax.Array, knots: jax.Array):
    """Index k (...) with knots_k <= v, counted over the interior knots, and a gather
    ``take(a, shift)`` of a_{k + shift}; v is already clamped to [-B, B]."""
    k = jnp.sum(v[..., None] >= knots[..., 1:-1], axis=-1)

    def take(a, shift=0):
        return jnp.take_along_axis(a, (k + shift)[..., None], axis=-1)[..., 0]

    return take


def _segment(xi, h, s, d0, d1):
    """(y - y_k, log g') inside one bin at relative position xi (eqs. 4 and 5)."""
    t = xi * (1.0 - xi)
    # denom = s (1 - 2t) + (d0 + d1) t with t <= 1/4: positive, so no division by zero.
    denom = s + (d0 + d1 - 2.0 * s) * t
    rise = h * (s * xi**2 + d0 * t) / denom
    numer = d1 * xi**2 + 2.0 * s * t + d0 * (1.0 - xi) ** 2
    return rise, 2.0 * jnp.log(s) + jnp.log(numer) - 2.0 * jnp.log(denom)


def _forward_inside(x, kx, ky, kd):
    take = _bin_of(x, kx)
    x0, w, y0, h = take(kx), take(kx, 1) - take(kx), take(ky), take(ky, 1) - take(ky)
    # x_k <= x <= x_{k+1} and rounding is monotone, so xi lies in [0, 1] unclipped (a
    # clip would halve the gradient at the knots, where it ties).
    xi = (x - x0) / w
    rise, log_det = _segment(xi, h, h / w, take(kd), take(kd, 1))
    return y0 + rise, log_det


def _inverse_inside(y, kx, ky, kd):
    take = _bin_of(y, ky)
    x0, w, y0, h = take(kx), take(kx, 1) - take(kx), take(ky), take(ky, 1) - take(ky)
    s, d0, d1 = h / w, take(kd), take(kd, 1)
    dy, curve = y - y0, d0 + d1 - 2.0 * s
    a = h * (s - d0) + dy * curve
    b = h * d0 - dy * curve
    c = -s * dy
    # b^2 - 4ac > 0 in exact arithmetic (it equals (h d_k)^2 and (h d_{k+1})^2 at the
    # bin ends); the floor only absorbs rounding.
    root = jnp.sqrt(jnp.maximum(b**2 - 4.0 * a * c, 0.0))
    # -b - root < 0 whenever c < 0, and b = h d_k > 0 where c = 0: never 0 / 0.
    xi = 2.0 * c / (-b - root)
    return x0 + xi * w, -_segment(xi, h, s, d0, d1)[1]


def rational_quadratic_spline(
    x, raw_widths, raw_heights, raw_derivatives, tail_bound, inverse: bool = False
):
    """Elementwise RQ spline g (module doc) and log|dg/dx|, or g^-1 and log|dg^-1/dy|.

    Shapes: x (...), raw_widths and raw_heights (..., K), raw_derivatives (..., K - 1)
    (broadcast against each other); returns (y, log_abs_det), each (...).
    """
    x = jnp.asarray(x)
    bins = raw_widths.shape[-1]
    shape = jnp.broadcast_shapes(
        x.shape, raw_widths.shape[:-1], raw_heights.shape[:-1], raw_derivatives.shape[:-1]
    )
    x = jnp.broadcast_to(x, shape)
    kx = _knots(jnp.broadcast_to(raw_widths, (*shape, bins)), tail_bound, MIN_BIN_WIDTH)
    ky = _knots(jnp.broadcast_to(raw_heights, (*shape, bins)), tail_bound, MIN_BIN_HEIGHT)
    kd = _derivatives(jnp.broadcast_to(raw_derivatives, (*shape, bins - 1)))
    inside = (x >= -tail_bound) & (x <= tail_bound)
    # Outside, the spline branch sees 0 instead, so where it is not taken it is still
    # finite and its zero-weighted gradient cannot be NaN. (where, not clip: clip's
    # gradient is 1/2 at a tie, which would halve dy/dx at x = +-B.)
    safe = jnp.where(inside, x, jnp.zeros_like(x))
    branch = _inverse_inside if inverse else _forward_inside
    y, log_det = branch(safe, kx, ky, kd)
    return jnp.where(inside, y, x), jnp.where(inside, log_det, 0.0)


def split_spline_params(theta: jax.Array, bins: int):
    """theta (..., 3K - 1) -> raw widths (..., K), heights (..., K), derivatives (..., K - 1)."""
    return theta[..., :bins], theta[..., bins : 2 * bins], theta[..., 2 * bins :]


def spline_coupling_net(
    dim: int,
    split: int,
    hidden: Sequence[int] = (32, 32),
    bins: int = 8,
    activation: str = "relu",
    zero_output: bool = False,
) -> nn.Module:
    """The conditioner: an MLP from the kept ``split`` coordinates to (dim - split)(3K - 1);
    with ``zero_output`` the layer starts as the identity."""
    return MLP(tuple(hidden), (dim - split) * (3 * bins - 1), activation, zero_output)


class SplineCoupling(Transform):
    """Spline coupling layer (Durkan et al. 2019, sec. 3.1; RealNVP's split).

    With a = x[..., :split] (kept) and b = x[..., split:] (transformed):
      forward  y_a = x_a,  y_b = g(x_b; theta(x_a))
      inverse  x_a = y_a,  x_b = g^-1(y_b; theta(y_a))
      log|det dy/dx| = sum_j log g'(x_b,j)
    ``net.apply(params, x_a)`` gives (..., (D - split)(3K - 1)); both directions are one
    parallel pass.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, net: nn.Module, params, split: int, bins: int, tail_bound: float):
        self.net = net
        self.params = params
        self.split = split
        self.bins = bins
        self.tail_bound = float(tail_bound)

    def _spline(self, kept, rest, inverse: bool):
        theta = self.net.apply(self.params, kept)
        theta = theta.reshape(*theta.shape[:-1], rest.shape[-1], 3 * self.bins - 1)
        raw = split_spline_params(theta, self.bins)
        return rational_quadratic_spline(rest, *raw, self.tail_bound, inverse)

    def __call__(self, x):
        return self.call_with_intermediates(x)[0]

    def call_with_intermediates(self, x):
        """Returns (y, per-coordinate log g' (..., D - split))."""
        kept, rest = x[..., : self.split], x[..., self.split :]
        out, log_det = self._spline(kept, rest, inverse=False)
        return jnp.concatenate([kept, out], -1), log_det

    def _inverse(self, y):
        kept, rest = y[..., : self.split], y[..., self.split :]
        return jnp.concatenate([kept, self._spline(kept, rest, inverse=True)[0]], -1)

    def inverse_and_log_det(self, y):
        """(x, log|det dy/dx|) from one conditioner pass."""
        kept, rest = y[..., : self.split], y[..., self.split :]
        out, log_det_inverse = self._spline(kept, rest, inverse=True)
        return jnp.concatenate([kept, out], -1), -jnp.sum(log_det_inverse, axis=-1)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        if intermediates is None:
            intermediates = self._spline(x[..., : self.split], x[..., self.split :], False)[1]
        return jnp.sum(intermediates, axis=-1)

    def tree_flatten(self):
        static = {"net": self.net, "split": self.split, "bins": self.bins}
        return (self.params,), (("params",), {**static, "tail_bound": self.tail_bound})

    def eq(self, other, static: bool = False):
        if not isinstance(other, SplineCoupling):
            return False
        mine = (self.net, self.split, self.bins, self.tail_bound)
        if mine != (other.net, other.split, other.bins, other.tail_bound):
            return False
        return params_equiv(self.params, other.params, static)


class MaskedSplineAutoregressive(Transform):
    """Autoregressive spline layer (Durkan et al. 2019, sec. 3.2), in the MAF direction
    of ``MaskedAffineAutoregressive``, with theta_i = MaskedMLP(x_<i, context)_i:
      __call__  (base z -> data x; sequential, D passes):  x_i = g^-1(z_i; theta_i)
      _inverse  (data x -> base z; one parallel pass):      z_i = g(x_i; theta_i)
      log_abs_det_jacobian(z, x) = log|det dx/dz| = -sum_i log g'(x_i; theta_i)
    which needs only x, so log_prob is one conditioner pass (XLA CSE merges the two).
    ``.inv`` is the inverse-autoregressive form (Kingma et al. 2016): sampling is the
    parallel ``_inverse`` and its log-det is again computed from its input alone.
    ``made`` is a ``MaskedMLP(dim, hidden, outputs=3 * bins - 1, ...)``; ``context``
    (..., c) or None is forwarded to it (e.g. an encoder's features).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, made: MaskedMLP, params, bins: int, tail_bound: float, context=None):
        self.made = made
        self.params = params
        self.bins = bins
        self.tail_bound = float(tail_bound)
        self.context = context

    def _spline(self, x, v, inverse: bool):
        theta = self.made.apply(self.params, x, self.context)
        raw = split_spline_params(theta, self.bins)
        return rational_quadratic_spline(v, *raw, self.tail_bound, inverse)

    def __call__(self, z):
        return self.call_with_intermediates(z)[0]

    def call_with_intermediates(self, z):
        """Sequential: after pass k the first k coordinates (in MADE order) are exact, so
        the D-th pass uses exact theta. Returns (x, log|dx_i/dz_i| (..., D))."""
        if self.context is not None:  # a batched context widens the loop carry's shape
            batch = jnp.broadcast_shapes(jnp.shape(z)[:-1], jnp.shape(self.context)[:-1])
            z = jnp.broadcast_to(z, (*batch, jnp.shape(z)[-1]))

        def step(_, carry):
            return self._spline(carry[0], z, inverse=True)

        zeros = jnp.zeros_like(z)
        return lax.fori_loop(0, jnp.shape(z)[-1], step, (zeros, zeros))

    def _inverse(self, x):
        return self._spline(x, x, inverse=False)[0]

    def inverse_and_log_det(self, x):
        """(z, log|det dx/dz|) from one conditioner pass."""
        z, log_slope = self._spline(x, x, inverse=False)
        return z, -jnp.sum(log_slope, axis=-1)

    def log_abs_det_jacobian(self, z, x, intermediates=None):
        if intermediates is None:
            intermediates = -self._spline(x, x, inverse=False)[1]
        return jnp.sum(intermediates, axis=-1)

    def tree_flatten(self):
        static = {"made": self.made, "bins": self.bins, "tail_bound": self.tail_bound}
        return (self.params, self.context), (("params", "context"), static)

    def eq(self, other, static: bool = False):
        if not isinstance(other, MaskedSplineAutoregressive):
            return False
        if (self.made, self.bins, self.tail_bound) != (other.made, other.bins, other.tail_bound):
            return False
        return params_equiv((self.params, self.context), (other.params, other.context), static)


NSF = Layer(
    name="nsf",
    conditioner=lambda dim, cfg: spline_coupling_net(
        dim,
        dim // 2,
        tuple(cfg.hidden),
        cfg.bins,
        Activation(cfg.activation).value,
        zero_output=True,
    ),
    bijection=lambda net, params, dim, cfg: SplineCoupling(
        net, params, dim // 2, cfg.bins, cfg.tail_bound
    ),
    coupling=True,
)

NSF_AR = Layer(
    name="nsf_ar",
    conditioner=lambda dim, cfg: MaskedMLP(
        dim,
        tuple(cfg.hidden),
        3 * cfg.bins - 1,
        activation=Activation(cfg.activation).value,
        zero_output=True,
    ),
    bijection=lambda net, params, dim, cfg: MaskedSplineAutoregressive(
        net, params, cfg.bins, cfg.tail_bound
    ),
)
