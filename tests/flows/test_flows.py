"""Flow bijections (bslrun.flows): inverses by round trip, log-determinants against
jax.jacobian, MADE's autoregressive masks, and a small flow's density and sampler."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from bslrun.flows import (
    MADE,
    AffineCoupling,
    MaskedAffineAutoregressive,
    Permutation,
    coupling_net,
)

DIMS = (2, 3, 5)
KINDS = ("maf", "coupling", "permutation")
HIDDEN = (16, 16)


def scale_params(params, factor):
    return jax.tree.map(lambda leaf: factor * leaf, params)


def make(kind, dim, key, factor=1.0):
    """A transform of ``kind`` on R^dim with random params from module.init."""
    init_key, perm_key = jax.random.split(key)
    if kind == "maf":
        order = tuple(int(i) for i in jax.random.permutation(perm_key, dim))
        made = MADE(dim, HIDDEN, order)
        params = made.init(init_key, jnp.zeros(dim))
        return MaskedAffineAutoregressive(made, scale_params(params, factor))
    if kind == "coupling":
        split = dim // 2
        net = coupling_net(dim, split, HIDDEN)
        params = net.init(init_key, jnp.zeros(split))
        return AffineCoupling(net, scale_params(params, factor), split)
    return Permutation.random(perm_key, dim)


def points(key, dim, n=6):
    return 1.5 * jax.random.normal(key, (n, dim))


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trips(kind, dim):
    t = make(kind, dim, jax.random.PRNGKey(dim))
    x = points(jax.random.PRNGKey(10 + dim), dim, n=32)
    np.testing.assert_allclose(t.inv(t(x)), x, atol=1e-5)
    np.testing.assert_allclose(t(t.inv(x)), x, atol=1e-5)
    # The intermediates path agrees with the plain one.
    y, inter = t.call_with_intermediates(x)
    np.testing.assert_allclose(y, t(x), atol=1e-6)
    if inter is not None:
        np.testing.assert_allclose(
            t.log_abs_det_jacobian(x, y, inter), t.log_abs_det_jacobian(x, y), atol=1e-5
        )


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("kind", KINDS)
def test_log_det_matches_jacobian(kind, dim):
    t = make(kind, dim, jax.random.PRNGKey(100 + dim))
    x = points(jax.random.PRNGKey(200 + dim), dim)
    for f in (t, t.inv):  # both directions
        y = f(x)
        expected = jax.vmap(lambda p, f=f: jnp.linalg.slogdet(jax.jacobian(f)(p))[1])(x)
        np.testing.assert_allclose(f.log_abs_det_jacobian(x, y), expected, atol=1e-4)


@pytest.mark.parametrize("dim", DIMS)
def test_made_is_autoregressive(dim):
    order = tuple(int(i) for i in jax.random.permutation(jax.random.PRNGKey(dim), dim))
    made = MADE(dim, (2 * dim, 3 * dim), order)
    key_init, key_x = jax.random.split(jax.random.PRNGKey(300 + dim))
    params = made.init(key_init, jnp.zeros(dim))
    rows = np.asarray(order)
    for x in points(key_x, dim, n=3):
        for head in jax.jacobian(lambda p: made.apply(params, p))(x):
            in_order = np.asarray(head)[np.ix_(rows, rows)]  # rows/cols in MADE order
            assert np.all(np.triu(in_order) == 0.0)
            # Not trivially zero: some dependence on earlier inputs exists.
            assert np.abs(np.tril(in_order, -1)).sum() > 0


def count_matmuls(fn, *args):
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return sum(line.count(" dot(") for line in hlo.splitlines())


def test_maf_log_prob_is_one_made_pass():
    dim = 3
    t = make("maf", dim, jax.random.PRNGKey(1))
    flow = dist.TransformedDistribution(dist.Normal(jnp.zeros(dim), 1.0).to_event(1), [t])
    x = points(jax.random.PRNGKey(2), dim)
    one_pass = count_matmuls(lambda p: t.made.apply(t.params, p), x)
    assert one_pass == len(HIDDEN) + 1  # hidden layers + one output layer (shift, scale)
    assert count_matmuls(flow.log_prob, x) == one_pass


GRID_HALF, GRID_N = 9.0, 361


@pytest.fixture(scope="module")
def flow2d():
    """MAF layer, permutation, coupling over N(0, I_2), with modest random params."""
    keys = jax.random.split(jax.random.PRNGKey(42), 3)
    transforms = [
        make("maf", 2, keys[0], factor=1.5),
        Permutation.reverse(2),
        make("coupling", 2, keys[1], factor=1.5),
    ]
    base = dist.Normal(jnp.zeros(2), 1.0).to_event(1)
    return dist.TransformedDistribution(base, transforms)


def grid_density(flow):
    ticks = np.linspace(-GRID_HALF, GRID_HALF, GRID_N)
    xx, yy = np.meshgrid(ticks, ticks, indexing="ij")
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
    density = np.exp(np.asarray(jax.jit(flow.log_prob)(pts), np.float64))
    return ticks, density.reshape(GRID_N, GRID_N)


def test_flow_density_integrates_to_one(flow2d):
    ticks, density = grid_density(flow2d)
    cell = (ticks[1] - ticks[0]) ** 2
    assert abs(density.sum() * cell - 1.0) < 0.01
    # The flow is not the identity: the density differs from the base's.
    base = np.exp(-0.5 * (ticks[:, None] ** 2 + ticks[None, :] ** 2)) / (2 * np.pi)
    assert np.abs(density - base).sum() * cell > 0.1


def histogram_total_variation(flow, key, draws: int = 100_000) -> float:
    """Total variation between a 30 x 30 histogram of samples and the density's mass per
    bin (from the fine grid: 12 x 12 grid cells per bin)."""
    samples = np.asarray(flow.sample(key, (draws,)), np.float64)
    assert np.isfinite(samples).all()
    edges = np.linspace(-GRID_HALF, GRID_HALF, 31)
    counts, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=[edges, edges])
    ticks, density = grid_density(flow)
    fine = density[:-1, :-1] * (ticks[1] - ticks[0]) ** 2
    per_bin = fine.reshape(30, 12, 30, 12).sum(axis=(1, 3))
    return 0.5 * float(np.abs(counts / draws - per_bin).sum())


def test_flow_samples_match_density(flow2d):
    assert histogram_total_variation(flow2d, jax.random.PRNGKey(7)) < 0.05


def test_every_flow_kind_has_one_layer():
    """config.FlowKind (what model.flow accepts) and the collected layers name the same set."""
    from bslrun.config import FlowKind
    from bslrun.flows import LAYERS

    assert set(LAYERS) == {kind.value for kind in FlowKind}
    assert all(layer.name == name for name, layer in LAYERS.items())
