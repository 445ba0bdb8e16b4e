"""``Flow``: one conditioner pass per layer for the density, value and gradient alike."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import test_flows
import test_spline

from bslrun.flows import Flow, Permutation

MAKERS = {
    "maf": lambda dim, key: test_flows.make("maf", dim, key),
    "affine coupling": lambda dim, key: test_flows.make("coupling", dim, key),
    "permutation": lambda dim, key: test_flows.make("permutation", dim, key),
    "spline coupling": lambda dim, key: test_spline.make("coupling", dim, key),
    "spline autoregressive": lambda dim, key: test_spline.make("mas", dim, key),
    "spline autoregressive with context": lambda dim, key: test_spline.make("iaf", dim, key),
}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_transforms_are_pytrees_under_jit(kind):
    t = MAKERS[kind](3, jax.random.PRNGKey(0))
    x = 1.5 * jax.random.normal(jax.random.PRNGKey(1), (6, 3))
    leaves, treedef = jax.tree.flatten(t)
    assert jax.tree.unflatten(treedef, leaves) == t
    if leaves:  # parameters are leaves: changed parameters make another transform
        assert jax.tree.unflatten(treedef, [2.0 * leaf for leaf in leaves]) != t
    np.testing.assert_allclose(jax.jit(lambda t, x: t.inv(t(x)))(t, x), x, atol=1e-4)


# The layers a Flow stacks (the context one is used inverted, as a posterior's IAF step).
LAYERS = sorted(k for k in MAKERS if not k.endswith("with context"))


@pytest.mark.parametrize("kind", LAYERS)
def test_inverse_and_log_det_agree_with_the_transform(kind):
    t = MAKERS[kind](3, jax.random.PRNGKey(0))
    y = 1.5 * jax.random.normal(jax.random.PRNGKey(1), (16, 3))
    x, log_det = jax.jit(lambda t, y: t.inverse_and_log_det(y))(t, y)
    np.testing.assert_allclose(x, t.inv(y), atol=1e-5)
    np.testing.assert_allclose(log_det, t.log_abs_det_jacobian(x, y), atol=1e-4)


def stack(dim: int):
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    return [
        MAKERS["maf"](dim, keys[0]),
        Permutation.reverse(dim),
        MAKERS["spline coupling"](dim, keys[1]),
        MAKERS["spline autoregressive"](dim, keys[2]),
    ]


def count_dots(fn, *args) -> int:
    """Matrix products in the program XLA compiles for the CPU (GPUs call cuBLAS instead)."""
    args = jax.device_put(args, jax.devices("cpu")[0])
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return sum(line.count(" dot(") for line in hlo.splitlines())


def test_flow_density_equals_numpyro_and_its_gradient_runs_each_network_once():
    dim = 3
    base = dist.Normal(jnp.zeros(dim), 1.0).to_event(1)
    transforms = stack(dim)
    x = jax.random.normal(jax.random.PRNGKey(3), (32, dim))
    ours, numpyros = Flow(base, transforms), dist.TransformedDistribution(base, transforms)
    np.testing.assert_allclose(ours.log_prob(x), numpyros.log_prob(x), rtol=1e-5, atol=1e-5)

    def loss(distribution_type, transforms, x):
        return jnp.sum(distribution_type(base, transforms).log_prob(x))

    grads = [
        jax.grad(lambda t, x, d=d: loss(d, t, x)) for d in (Flow, dist.TransformedDistribution)
    ]
    ours_dots, numpyro_dots = (count_dots(g, transforms, x) for g in grads)
    # Three networks of three layers each: one pass forward (3 dots) and one backward
    # (at most 2 per layer: input and weight gradients) per network.
    assert ours_dots <= 3 * (3 + 6) < numpyro_dots


def test_flow_refuses_layers_without_a_joint_inverse():
    base = dist.Normal(jnp.zeros(2), 1.0).to_event(1)
    with pytest.raises(TypeError, match="ExpTransform"):
        Flow(base, [dist.transforms.ExpTransform()])


def test_spline_flow_samples_match_its_density():
    """Sampling runs the layers' other direction (sequential, root-finding splines)."""
    flow = Flow(dist.Normal(jnp.zeros(2), 1.0).to_event(1), stack(2))
    assert test_flows.histogram_total_variation(flow, jax.random.PRNGKey(7)) < 0.05
