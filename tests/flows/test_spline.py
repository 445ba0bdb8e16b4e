"""Rational-quadratic splines (bslrun.flows.spline): the scalar map against a direct
float64 evaluation of Durkan et al.'s eqs. 4-5, its inverse by round trip, the
transforms' log-determinants against jax.jacobian, autoregressive structure, one
conditioner pass per log_prob, and a small flow's density."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from bslrun.flows import Permutation
from bslrun.flows.made import MaskedMLP
from bslrun.flows.spline import (
    MaskedSplineAutoregressive,
    SplineCoupling,
    rational_quadratic_spline,
    spline_coupling_net,
)

BINS, BOUND, HIDDEN, CONTEXT = 5, 3.0, (16, 16), 4
DIMS = (2, 3, 5)
KINDS = ("mas", "coupling", "iaf")


def raw_params(key, scale=1.0):
    """Random unconstrained (widths, heights, derivatives) of one scalar spline."""
    kw, kh, kd = jax.random.split(key, 3)
    normal = jax.random.normal
    return tuple(scale * normal(k, (n,)) for k, n in ((kw, BINS), (kh, BINS), (kd, BINS - 1)))


def reference_knots(raw):
    """(x_k, y_k, d_k), k = 0..K, in float64 from the documented parametrisation."""
    w, h, d = (np.asarray(r, np.float64) for r in raw)

    def positions(r):
        p = np.exp(r - r.max())
        sizes = 1e-3 + (1 - BINS * 1e-3) * p / p.sum()
        return np.concatenate([[-BOUND], -BOUND + 2 * BOUND * np.cumsum(sizes)])

    inner = 1e-3 + np.log1p(np.exp(d + np.log(np.expm1(1 - 1e-3))))  # softplus
    return positions(w), positions(h), np.concatenate([[1.0], inner, [1.0]])


def reference_spline(x, raw):
    """Durkan et al. (2019) eq. 4 (value) and eq. 5 (slope), identity outside [-B, B]."""
    xk, yk, dk = reference_knots(raw)
    x = np.asarray(x, np.float64)
    k = np.clip(np.searchsorted(xk, x, side="right") - 1, 0, BINS - 1)
    s = (yk[k + 1] - yk[k]) / (xk[k + 1] - xk[k])
    xi = (x - xk[k]) / (xk[k + 1] - xk[k])
    denom = s + (dk[k + 1] + dk[k] - 2 * s) * xi * (1 - xi)
    y = yk[k] + (yk[k + 1] - yk[k]) * (s * xi**2 + dk[k] * xi * (1 - xi)) / denom
    slope = s**2 * (dk[k + 1] * xi**2 + 2 * s * xi * (1 - xi) + dk[k] * (1 - xi) ** 2)
    inside = np.abs(x) <= BOUND
    return np.where(inside, y, x), np.where(inside, slope / denom**2, 1.0)


spline = jax.jit(rational_quadratic_spline, static_argnames=("tail_bound", "inverse"))


def forward(x, raw):
    return spline(x, *raw, tail_bound=BOUND)


def inverse(y, raw):
    return spline(y, *raw, tail_bound=BOUND, inverse=True)


def probe_points(raw, knots_of="x"):
    """Random points inside and in both tails, +-B, and the knots themselves."""
    xk, yk, _ = reference_knots(raw)
    knots = xk if knots_of == "x" else yk
    spread = np.linspace(-BOUND - 1.5, BOUND + 1.5, 41)
    return jnp.asarray(np.concatenate([spread, knots, [-BOUND, BOUND]]), jnp.float32)


def test_spline_matches_direct_formula():
    for seed in range(3):
        raw = raw_params(jax.random.PRNGKey(seed), scale=1.5)
        x = probe_points(raw)
        y, log_det = forward(x, raw)
        want_y, want_slope = reference_spline(x, raw)
        np.testing.assert_allclose(y, want_y, atol=2e-5)
        # float32 knots sit ~3e-7 from the float64 ones; next to a minimum-height bin g'
        # changes by ~1e3 per unit x, so the slope agrees to ~1e-3 there, 1e-6 elsewhere.
        np.testing.assert_allclose(np.exp(log_det), want_slope, rtol=1e-3)


def test_spline_monotone_continuous_and_identity_in_tails():
    raw = raw_params(jax.random.PRNGKey(3), scale=1.5)
    xk, yk, dk = reference_knots(raw)
    grid = jnp.linspace(-BOUND - 1.0, BOUND + 1.0, 4001)
    y, _ = forward(grid, raw)
    assert np.all(np.diff(np.asarray(y)) > 0)
    # Values and slopes at the knots (interior and +-B) are the knots' y_k and d_k ...
    y_at, log_det_at = forward(jnp.asarray(xk, jnp.float32), raw)
    np.testing.assert_allclose(y_at, yk, atol=2e-5)
    np.testing.assert_allclose(np.exp(log_det_at), dk, rtol=2e-4)
    # ... and both neighbouring segments approach them: no jump at any knot.
    eps = 1e-4
    for side in (-1.0, 1.0):
        y_near, _ = forward(jnp.asarray(xk + side * eps, jnp.float32), raw)
        np.testing.assert_allclose(y_near, yk + side * eps * dk, atol=2e-5)
    tails = jnp.asarray([-50.0, -BOUND - 1e-3, BOUND + 1e-3, 7.0])
    for fn in (forward, inverse):
        out, log_det = fn(tails, raw)
        np.testing.assert_array_equal(out, tails)
        np.testing.assert_array_equal(log_det, 0.0)


def test_zero_params_are_the_identity():
    zero = (jnp.zeros(BINS), jnp.zeros(BINS), jnp.zeros(BINS - 1))
    x = jnp.linspace(-BOUND - 1.0, BOUND + 1.0, 101)
    for fn in (forward, inverse):
        out, log_det = fn(x, zero)
        np.testing.assert_allclose(out, x, atol=1e-6)
        np.testing.assert_allclose(log_det, 0.0, atol=1e-6)
    # So a conditioner whose output layer starts at zero starts the flow at the identity.
    made = MaskedMLP(2, HIDDEN, 3 * BINS - 1, zero_output=True)
    t = MaskedSplineAutoregressive(made, made.init(jax.random.PRNGKey(0), x[:2]), BINS, BOUND)
    pairs = x[:100].reshape(50, 2)
    np.testing.assert_allclose(jax.jit(t._inverse)(pairs), pairs, atol=1e-6)


def test_log_det_is_log_derivative():
    raw = raw_params(jax.random.PRNGKey(4), scale=1.5)
    for fn, knots_of in ((forward, "x"), (inverse, "y")):
        pts = probe_points(raw, knots_of)
        slope = jax.vmap(jax.grad(lambda p, fn=fn: fn(p, raw)[0]))(pts)
        np.testing.assert_allclose(np.log(slope), fn(pts, raw)[1], atol=1e-4)


def test_spline_round_trips():
    for seed in range(3):
        # Scale 1: with larger raw values a bin can reach slope ~70 beside a unit slope
        # at +-B, where one float32 ulp of x moves log g' by ~1e-3 (conditioning, not error).
        raw = raw_params(jax.random.PRNGKey(10 + seed), scale=1.0)
        x = probe_points(raw, "x")
        back, log_det_back = inverse(forward(x, raw)[0], raw)
        np.testing.assert_allclose(back, x, atol=1e-4)
        np.testing.assert_allclose(log_det_back, -forward(x, raw)[1], atol=1e-4)
        y = probe_points(raw, "y")
        np.testing.assert_allclose(forward(inverse(y, raw)[0], raw)[0], y, atol=1e-4)


def test_gradients_are_finite_everywhere():
    raw = raw_params(jax.random.PRNGKey(5), scale=4.0)  # sharp bins stress the algebra
    for direction, knots_of in ((False, "x"), (True, "y")):

        def total(v, raw, direction=direction):
            out, log_det = rational_quadratic_spline(v, *raw, BOUND, direction)
            return jnp.sum(out + log_det)

        pts = probe_points(raw, knots_of)
        grads = jax.jit(jax.grad(total, argnums=(0, 1)))(pts, raw)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def scale_params(params, factor):
    return jax.tree.map(lambda leaf: factor * leaf, params)


def make(kind, dim, key, factor=1.0):
    """A transform of ``kind`` on R^dim with random params; "iaf" is a MaskedSpline-
    Autoregressive with a context, inverted (the amortised posterior's use)."""
    init_key, perm_key, ctx_key = jax.random.split(key, 3)
    if kind == "coupling":
        split = dim // 2
        net = spline_coupling_net(dim, split, HIDDEN, BINS)
        params = net.init(init_key, jnp.zeros(split))
        return SplineCoupling(net, scale_params(params, factor), split, BINS, BOUND)
    order = tuple(int(i) for i in jax.random.permutation(perm_key, dim))
    made = MaskedMLP(dim, HIDDEN, 3 * BINS - 1, order)
    context = jax.random.normal(ctx_key, (CONTEXT,)) if kind == "iaf" else None
    params = made.init(init_key, jnp.zeros(dim), context)
    t = MaskedSplineAutoregressive(made, scale_params(params, factor), BINS, BOUND, context)
    return t.inv if kind == "iaf" else t


def points(key, dim, n=6):
    return 2.0 * jax.random.normal(key, (n, dim))  # ~13% of coordinates in the tails


@jax.jit
def transform_checks(t, x):
    """Round trips and, per direction, log-dets (plain and from intermediates) and
    slogdet of the jacobian; one compiled function per case keeps the test fast."""
    out = {"inv_of_fwd": t.inv(t(x)), "fwd_of_inv": t(t.inv(x))}
    for name, f in (("fwd", t), ("inv", t.inv)):
        y, inter = f.call_with_intermediates(x)  # what TransformedDistribution stores
        # Forward mode: through the sequential fori_loop it compiles faster than reverse.
        jacobian = jax.vmap(lambda p, f=f: jnp.linalg.slogdet(jax.jacfwd(f)(p))[1])(x)
        out[name] = {
            "log_det": f.log_abs_det_jacobian(x, y),
            "log_det_inter": f.log_abs_det_jacobian(x, y, inter),
            "jacobian": jacobian,
        }
    return out


# Every kind in dims 2, 3, 5; "iaf" is "mas" inverted plus a context, so dim 3 suffices.
CASES = [(kind, dim) for kind in ("mas", "coupling") for dim in DIMS] + [("iaf", 3)]


@pytest.mark.parametrize(("kind", "dim"), CASES)
def test_transform_log_det_and_round_trips(kind, dim):
    t = make(kind, dim, jax.random.PRNGKey(dim))
    x = points(jax.random.PRNGKey(10 + dim), dim)
    out = transform_checks(t, x)
    np.testing.assert_allclose(out["inv_of_fwd"], x, atol=1e-4)
    np.testing.assert_allclose(out["fwd_of_inv"], x, atol=1e-4)
    for direction in ("fwd", "inv"):
        got = out[direction]
        # rtol: in a steep narrow bin log g' moves ~1e3 per unit x, so the float32 x
        # that the sequential pass returns carries ~1e-4 into the x-only log-det.
        np.testing.assert_allclose(got["log_det"], got["jacobian"], rtol=1e-4, atol=1e-4)
        # The intermediates TransformedDistribution stores give the same log-det.
        np.testing.assert_allclose(got["log_det_inter"], got["jacobian"], rtol=1e-4, atol=1e-4)


def test_inverse_pass_is_autoregressive():
    dim = 5
    t = make("mas", dim, jax.random.PRNGKey(7), factor=1.5)
    rows = np.asarray(t.made.order)
    jacobians = jax.jit(jax.vmap(jax.jacfwd(t._inverse)))(points(jax.random.PRNGKey(8), dim, 3))
    for jacobian in np.asarray(jacobians):
        in_order = jacobian[np.ix_(rows, rows)]
        assert np.all(np.triu(in_order, 1) == 0.0)  # z_i ignores x_j after i in order
        assert np.all(np.diag(in_order) > 0.0)  # and is increasing in x_i
        assert np.abs(np.tril(in_order, -1)).sum() > 0


def count_matmuls(fn, *args):
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return sum(line.count(" dot(") for line in hlo.splitlines())


def test_log_prob_and_iaf_sampling_are_one_conditioner_pass():
    dim, n = 3, 6
    made = make("iaf", dim, jax.random.PRNGKey(1)).inv.made
    params = made.init(jax.random.PRNGKey(2), jnp.zeros(dim), jnp.zeros(CONTEXT))
    context = jax.random.normal(jax.random.PRNGKey(3), (n, CONTEXT))  # one row per datum
    t = MaskedSplineAutoregressive(made, params, BINS, BOUND, context)
    base = dist.Normal(jnp.zeros(dim), 1.0).to_event(1)
    x = points(jax.random.PRNGKey(4), dim, n)
    # The transform is an argument, not a closure: XLA would constant-fold the context.
    one_pass = count_matmuls(lambda t, p: t.made.apply(t.params, p, t.context), t, x)
    assert one_pass == len(HIDDEN) + 2  # hidden layers, output layer, context layer

    def log_prob(t, p):  # density (MAF direction): data -> base and its log-det
        return dist.TransformedDistribution(base, [t]).log_prob(p)

    def draw_and_score(t, key):  # posterior (IAF direction): a draw and its log_prob
        posterior = dist.TransformedDistribution(base, [t.inv])
        draw, inter = posterior.sample_with_intermediates(key, (n,))
        return posterior.log_prob(draw, inter)

    assert count_matmuls(log_prob, t, x) == one_pass
    assert count_matmuls(draw_and_score, t, jax.random.PRNGKey(5)) == one_pass


GRID_HALF, GRID_N = 9.0, 361


@pytest.fixture(scope="module")
def flow2d():
    """Spline MAF layer, permutation, spline coupling over N(0, I_2), modest params."""
    keys = jax.random.split(jax.random.PRNGKey(42), 2)
    transforms = [
        make("mas", 2, keys[0]),
        Permutation.reverse(2),
        make("coupling", 2, keys[1]),
    ]
    return dist.TransformedDistribution(dist.Normal(jnp.zeros(2), 1.0).to_event(1), transforms)


def test_flow_density_integrates_to_one(flow2d):
    ticks = np.linspace(-GRID_HALF, GRID_HALF, GRID_N)
    xx, yy = np.meshgrid(ticks, ticks, indexing="ij")
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
    density = np.exp(np.asarray(jax.jit(flow2d.log_prob)(pts), np.float64))
    cell = (ticks[1] - ticks[0]) ** 2
    assert abs(density.sum() * cell - 1.0) < 0.01
    # The flow is not the identity: the density differs from the base's.
    base = np.exp(-0.5 * (xx**2 + yy**2)) / (2 * np.pi)
    assert np.abs(density - base.ravel()).sum() * cell > 0.1


def test_flow_sample_intermediates_give_log_prob(flow2d):
    @jax.jit
    def draw_and_score(key):
        draws, inter = flow2d.sample_with_intermediates(key, (64,))
        return draws, flow2d.log_prob(draws, inter), flow2d.log_prob(draws)

    draws, with_inter, without = draw_and_score(jax.random.PRNGKey(9))
    assert np.isfinite(np.asarray(draws)).all()
    np.testing.assert_allclose(with_inter, without, rtol=1e-4, atol=1e-4)
