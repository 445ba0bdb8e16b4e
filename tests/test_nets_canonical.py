"""nets.Conv computes flax.linen.Conv's function with its parameters, whichever way it
runs (nets.correlate, gradients as canonical convolutions, or the plain op), forward and
gradient; the conv encoder keeps its parameter paths and values; stride-1 transposed
convolutions run through nets.correlate with flax's function; and inside lax.scan no
convolution of a training step is left in a layout XLA's CPU library does not take.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_nets_conv import close, close_trees, forward_and_grads, random_variables

from bslrun import nets

BATCH = 4
IMAGE = (28, 28, 1)


def assert_same_conv(kwargs, shape, seed=0):
    """Forward pass and gradients (inputs and parameters) of nets.Conv(canonical_grads=True)
    against flax.linen.Conv, with the same random parameters."""
    plain = nn.Conv(**kwargs)
    fast = nets.Conv(**kwargs, canonical_grads=True)
    kx, kg = jax.random.split(jax.random.PRNGKey(seed + 2))
    x = jax.random.normal(kx, shape)
    variables = random_variables(plain, x, seed)
    fast_shapes = jax.eval_shape(fast.init, jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, fast_shapes) == jax.tree.map(jnp.shape, variables)
    out_shape = jax.eval_shape(plain.apply, variables, x).shape
    assert jax.eval_shape(fast.apply, variables, x).shape == out_shape
    cotangent = jax.random.normal(kg, out_shape)
    got = forward_and_grads(fast, variables, x, cotangent)
    want = forward_and_grads(plain, variables, x, cotangent)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        close(a, b)


@pytest.mark.parametrize(
    "side, features_in, features_out, stride",
    [
        (28, 1, 32, 1),  # the encoder's layers
        (28, 32, 64, 2),
        (14, 64, 64, 2),
        (7, 64, 64, 1),
        (5, 6, 3, 2),  # odd and even sides
        (6, 3, 5, 2),
    ],
)
def test_encoder_layer_shapes_match_flax(side, features_in, features_out, stride):
    kwargs = dict(features=features_out, kernel_size=(3, 3), strides=(stride, stride))
    assert_same_conv(kwargs, (BATCH, side, side, features_in))


@pytest.mark.parametrize(
    "kernel_size, strides, shape",
    [
        ((4, 4), (2, 2), (2, 5, 6, 3)),  # even kernel, rectangular image
        ((5, 5), (3, 3), (2, 4, 5, 2)),
        ((3, 3), (3, 3), (2, 4, 4, 2)),
        ((2, 3), (2, 1), (2, 5, 4, 2)),  # one axis strided only
        ((1, 1), (2, 2), (2, 3, 3, 2)),  # stride beyond the kernel
        ((1, 1), (3, 3), (2, 5, 5, 2)),  # ... where SAME pads nothing
        ((3, 3), (2, 2), (3, 2, 5, 5, 2)),  # two batch dimensions
        ((3, 3), (2, 2), (5, 5, 2)),  # no batch dimension
        ((3, 3), 2, (2, 5, 5, 2)),  # an int stride
        ((3, 3), None, (2, 5, 5, 2)),  # flax's None: stride 1
    ],
)
def test_other_same_padding_configurations_match_flax(kernel_size, strides, shape):
    kwargs = dict(features=3, kernel_size=kernel_size, strides=strides, use_bias=True)
    assert_same_conv(kwargs, shape, seed=1)


def test_without_bias_matches_flax():
    kwargs = dict(features=3, kernel_size=(3, 3), strides=(2, 2), use_bias=False)
    assert_same_conv(kwargs, (2, 4, 4, 2))


def test_unsupported_configurations_are_refused_or_run_plain():
    x = jnp.ones((1, 6, 6, 2))
    for kwargs, why in [
        (dict(padding="VALID"), "padding='SAME'"),
        (dict(kernel_dilation=(2, 2)), "kernel dilation"),
        (dict(feature_group_count=2), "one feature group"),
        (dict(kernel_size=(3,), strides=(2,)), "2D kernels"),
    ]:
        layer = dict(features=4, kernel_size=(3, 3), strides=(2, 2)) | kwargs
        inputs = x[0] if len(layer["kernel_size"]) == 1 else x
        with pytest.raises(ValueError, match=why):
            nets.Conv(**layer, canonical_grads=True).init(jax.random.PRNGKey(0), inputs)
        # left to choose, the layer runs the plain op: flax's function
        variables = nn.Conv(**layer).init(jax.random.PRNGKey(0), inputs)
        close(
            nets.Conv(**layer).apply(variables, inputs),
            nn.Conv(**layer).apply(variables, inputs),
        )


CANONICAL = "dim_labels=b01f_01io->b01f"


def convolutions(compiled_text: str) -> list[str]:
    return [line for line in compiled_text.splitlines() if " convolution(" in line]


def scanned_grad_hlo(module, variables, x, cotangent) -> str:
    """The compiled program of a lax.scan of gradient steps over batches (as the
    engine's epoch), in which the convolutions run inside the loop body."""
    xs = jnp.stack([x, 2 * x, 3 * x])

    def loss(v, xb):  # nonlinear in the output, so that the forward pass is needed
        return jnp.sum(jnp.sin(module.apply(v, xb)) * cotangent)

    def step(carry, xb):  # gradients for the parameters and the input (a hidden layer's)
        v, total = carry
        gv, gx = jax.grad(loss, (0, 1))(v, xb)
        return (jax.tree.map(lambda a, b: a - 1e-3 * b, v, gv), total + jnp.sum(gx)), None

    scan = jax.jit(lambda v, xs: jax.lax.scan(step, (v, 0.0), xs)[0])
    return scan.lower(variables, xs).compile().as_text()


@pytest.mark.parametrize("kernel_size", [(3, 3), (4, 4), (2, 3), (5, 5), (1, 1)])
def test_stride_one_transposed_convolution_matches_flax(kernel_size):
    kwargs = dict(features=3, kernel_size=kernel_size, strides=(1, 1))
    plain = nn.ConvTranspose(**kwargs)
    fast = nets.ConvTranspose(**kwargs, subpixel=True)
    x = jax.random.normal(jax.random.PRNGKey(7), (2, 6, 5, 4))
    variables = random_variables(plain, x, 8)
    cotangent = jax.random.normal(jax.random.PRNGKey(9), plain.apply(variables, x).shape)
    close_trees(
        forward_and_grads(fast, variables, x, cotangent),
        forward_and_grads(plain, variables, x, cotangent),
    )


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nets.Conv(64, (3, 3), strides=(2, 2), canonical_grads=True), (BATCH, 14, 14, 32)),
        (nets.Conv(8, (3, 3), strides=(1, 1), canonical_grads=True), (BATCH, 9, 9, 4)),
        (nets.ConvTranspose(8, (3, 3), strides=(1, 1), subpixel=True), (BATCH, 7, 7, 16)),
    ],
)
def test_training_steps_in_a_scan_leave_only_canonical_convolutions(layer, shape):
    """What correlate is for: inside a loop body, XLA's CPU library (not a naive loop nest)
    can run every convolution of the forward pass and both gradients."""
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    variables = layer.init(jax.random.PRNGKey(1), x)
    cotangent = jax.random.normal(jax.random.PRNGKey(2), layer.apply(variables, x).shape)
    convs = convolutions(scanned_grad_hlo(layer, variables, x, cotangent))
    assert len(convs) == 3  # forward, input gradient, kernel gradient
    assert all(CANONICAL in line for line in convs), convs


def test_correlate_gradient_against_finite_differences():
    """The hand-written gradients against the function itself (central differences in
    float64), independently of lax's own transpose rules."""
    with jax.enable_x64():
        x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 3), jnp.float64)
        k = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 3, 4), jnp.float64)
        u = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 3, 4), jnp.float64)
        strides, padding = (2, 2), ((1, 1), (0, 1))

        def f(x, k):
            return jnp.sum(jnp.sin(nets.correlate(x, k, strides, padding)) * u)

        gx, gk = jax.grad(f, (0, 1))(x, k)
        for arg, grad in ((0, gx), (1, gk)):
            direction = jax.random.normal(jax.random.PRNGKey(3 + arg), grad.shape, jnp.float64)
            eps = 1e-6
            args = [x, k]
            plus, minus = list(args), list(args)
            plus[arg] = args[arg] + eps * direction
            minus[arg] = args[arg] - eps * direction
            numeric = (f(*plus) - f(*minus)) / (2 * eps)
            np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(numeric), rtol=1e-7)


class PlainConvEncoder(nn.Module):
    """ConvEncoder as it was written with flax.linen.Conv (auto-named layers)."""

    image_shape: tuple
    latent_dim: int

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.reshape((-1, *self.image_shape))
        for features, stride in nets.CONV_LAYERS:
            x = nn.Conv(features, (3, 3), strides=(stride, stride), padding="SAME")(x)
            x = nets._norm_act(x, train)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.latent_dim)(x), nets._positive(nn.Dense(self.latent_dim)(x))


@pytest.fixture(scope="module")
def encoders():
    x = jax.random.uniform(jax.random.PRNGKey(3), (BATCH, int(np.prod(IMAGE))))
    plain = PlainConvEncoder(IMAGE, 2)
    return x, plain, jax.jit(plain.init)(jax.random.PRNGKey(4), x)


@pytest.mark.parametrize("canonical_grads", [None, True, False])
def test_conv_encoder_variables_are_unchanged(encoders, canonical_grads):
    x, _, variables = encoders
    new = jax.jit(nets.ConvEncoder(IMAGE, 2, canonical_grads=canonical_grads).init)(
        jax.random.PRNGKey(4), x
    )
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)]
    assert "['params']['Conv_3']['kernel']" in paths
    assert "['batch_stats']['BatchNorm_3']['mean']" in paths
    assert jax.tree.structure(new) == jax.tree.structure(variables)
    # the same initial values too: parameters are drawn by path
    jax.tree.map(np.testing.assert_array_equal, new, variables)


@pytest.mark.parametrize("train", [True, False])
def test_conv_encoder_computes_the_plain_encoder(encoders, train):
    x, plain, _ = encoders
    variables = random_variables(plain, x, 5)  # random batch-norm statistics too
    new = nets.ConvEncoder(IMAGE, 2, canonical_grads=True)
    cotangent = jax.random.normal(jax.random.PRNGKey(6), (BATCH, 4))

    def run(module):  # (loc, scale) concatenated, updated statistics ({} in evaluation)
        def apply(v, x):
            if train:
                (loc, scale), state = module.apply(v, x, train=True, mutable=["batch_stats"])
            else:
                (loc, scale), state = module.apply(v, x, train=False), {}
            return jnp.concatenate([loc, scale], -1), state

        out, pull, state = jax.vjp(apply, variables, x, has_aux=True)
        return out, state, pull(cotangent)

    close_trees(jax.jit(lambda: run(new))(), jax.jit(lambda: run(plain))())


def test_vectorised_particles_match_flax():
    """Under vmap (NumPyro's vectorised particles) the gradients are still flax's."""
    kwargs = dict(features=5, kernel_size=(3, 3), strides=(2, 2))
    plain, fast = nn.Conv(**kwargs), nets.Conv(**kwargs, canonical_grads=True)
    xs = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 7, 7, 4))  # (particles, B, H, W, C)
    variables = random_variables(plain, xs[0], 1)

    def total(module, v, xs):
        return jnp.sum(jnp.sin(jax.vmap(lambda x: module.apply(v, x))(xs)))

    close_trees(
        jax.jit(jax.grad(partial(total, fast), (0, 1)))(variables, xs),
        jax.jit(jax.grad(partial(total, plain), (0, 1)))(variables, xs),
    )
