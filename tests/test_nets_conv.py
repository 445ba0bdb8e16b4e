"""nets.ConvTranspose computes flax.linen.ConvTranspose's function with its parameters,
whichever way it runs (sub-pixel phases or the plain op), forward and gradient."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bslrun import nets

BATCH = 4


def close(actual, expected, scale=None):
    """Equal to float32 rounding: the two sum the same products in different orders, so
    entries may differ by a few ulps of the largest term (``scale``: of ``expected``)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert np.all(np.isfinite(expected))
    scale = max(1.0, float(np.max(np.abs(expected)))) if scale is None else scale
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-6 * scale)


def close_trees(actual, expected):
    """``close`` leaf by leaf, at the scale of the whole tree: a gradient that is zero up to
    rounding (a bias before batch norm) carries the rounding of the terms that cancelled."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    scale = max(1.0, *(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(expected)))
    for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        close(got, want, scale)


def random_variables(module, x, seed):
    """Variables of ``module`` for input ``x`` (shapes only: nothing runs), every leaf
    drawn at random (biases too) so that a wrong tap or a dropped bias cannot hide
    behind an initialiser's zeros; running variances are positive."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(seed), x)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    drawn = [
        jax.random.normal(key, leaf.shape, leaf.dtype)
        for key, (_, leaf) in zip(keys, leaves, strict=True)
    ]
    drawn = [
        jnp.exp(v) if path[-1].key == "var" else v
        for (path, _), v in zip(leaves, drawn, strict=True)
    ]
    return jax.tree.unflatten(treedef, drawn)


def forward_and_grads(module, variables, x, cotangent, **kwargs):
    """module.apply(variables, x, **kwargs): the output, the updated state ({} when not
    mutable) and the gradient of sum(output * cotangent) with respect to the variables and
    x, in one compiled function."""

    def apply(v, x):  # (output, updated state or {})
        out = module.apply(v, x, **kwargs)
        return out if isinstance(out, tuple) else (out, {})

    def f(v, x):
        out, pull, state = jax.vjp(apply, v, x, has_aux=True)
        return out, state, pull(cotangent)

    return jax.jit(f)(variables, x)


def assert_same_function(kwargs, shape, seed=0):
    """Forward pass and gradients (inputs and parameters) of nets.ConvTranspose(subpixel=True)
    against flax.linen.ConvTranspose, with the same random parameters."""
    plain = nn.ConvTranspose(**kwargs)
    fast = nets.ConvTranspose(**kwargs, subpixel=True)
    kx, kg = jax.random.split(jax.random.PRNGKey(seed + 2))
    x = jax.random.normal(kx, shape)
    variables = random_variables(plain, x, seed)
    fast_shapes = jax.eval_shape(fast.init, jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, fast_shapes) == jax.tree.map(jnp.shape, variables)
    out_shape = jax.eval_shape(plain.apply, variables, x).shape
    cotangent = jax.random.normal(kg, out_shape)
    got = forward_and_grads(fast, variables, x, cotangent)
    want = forward_and_grads(plain, variables, x, cotangent)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        close(a, b)


@pytest.mark.parametrize(
    "side, features_in, features_out, stride",
    [
        (7, 64, 64, 2),  # the decoder's layers: 7x7 -> 14x14
        (14, 64, 32, 2),  # 14x14 -> 28x28
        (7, 64, 64, 1),  # stride 1: nets.correlate with conv-transpose padding
        (28, 32, 1, 1),
        (5, 6, 3, 2),  # odd and even sides
        (6, 3, 5, 2),
    ],
)
def test_decoder_layer_shapes_match_flax(side, features_in, features_out, stride):
    kwargs = dict(features=features_out, kernel_size=(3, 3), strides=(stride, stride))
    assert_same_function(kwargs, (BATCH, side, side, features_in))


@pytest.mark.parametrize(
    "kernel_size, strides, shape",
    [
        ((4, 4), (2, 2), (2, 5, 6, 3)),  # even kernel, rectangular image
        ((5, 5), (3, 3), (2, 4, 5, 2)),
        ((3, 3), (3, 3), (2, 4, 4, 2)),
        ((2, 3), (2, 1), (2, 5, 4, 2)),  # one axis strided only
        ((1, 1), (2, 2), (2, 3, 3, 2)),  # stride beyond the kernel: empty phases
        ((3, 3), (2, 2), (3, 2, 5, 5, 2)),  # two batch dimensions
        ((3, 3), (2, 2), (5, 5, 2)),  # no batch dimension
    ],
)
def test_other_same_padding_configurations_match_flax(kernel_size, strides, shape):
    kwargs = dict(features=3, kernel_size=kernel_size, strides=strides, use_bias=True)
    assert_same_function(kwargs, shape, seed=1)


def test_without_bias_matches_flax():
    kwargs = dict(features=3, kernel_size=(3, 3), strides=(2, 2), use_bias=False)
    assert_same_function(kwargs, (2, 4, 4, 2))


def test_unsupported_configurations_are_refused_or_run_plain():
    x = jnp.ones((1, 4, 4, 2))
    for kwargs, why in [
        (dict(padding="VALID"), "padding='SAME'"),
        (dict(kernel_dilation=(2, 2)), "kernel dilation"),
        (dict(transpose_kernel=True), "transpose_kernel=False"),
    ]:
        layer = dict(features=3, kernel_size=(3, 3), strides=(2, 2), **kwargs)
        with pytest.raises(ValueError, match=why):
            nets.ConvTranspose(**layer, subpixel=True).init(jax.random.PRNGKey(0), x)
        # left to choose, the layer runs the plain op: flax's function
        variables = nn.ConvTranspose(**layer).init(jax.random.PRNGKey(0), x)
        close(
            nets.ConvTranspose(**layer).apply(variables, x),
            nn.ConvTranspose(**layer).apply(variables, x),
        )


def test_backend_decides_by_default():
    assert nets.subpixel_default() == (jax.default_backend() == "cpu")


class PlainConvDecoder(nn.Module):
    """ConvDecoder as it was written with flax.linen.ConvTranspose (auto-named layers)."""

    image_shape: tuple

    @nn.compact
    def __call__(self, z, train: bool = True):
        height, width, channels = self.image_shape
        shrink = int(np.prod([stride for _, stride in nets.CONV_LAYERS]))
        h, w, features = height // shrink, width // shrink, nets.CONV_LAYERS[-1][0]
        x = nn.Dense(h * w * features)(z).reshape((-1, h, w, features))
        strides = [stride for _, stride in reversed(nets.CONV_LAYERS)]
        outputs = [f for f, _ in reversed(nets.CONV_LAYERS[:-1])] + [channels]
        for i, (stride, features) in enumerate(zip(strides, outputs, strict=True)):
            x = nn.ConvTranspose(features, (3, 3), strides=(stride, stride), padding="SAME")(x)
            if i < len(strides) - 1:
                x = nets._norm_act(x, train)
        return x.reshape((x.shape[0], -1))


IMAGE = (28, 28, 1)


@pytest.fixture(scope="module")
def decoders():
    z = jax.random.normal(jax.random.PRNGKey(3), (BATCH, 2))
    plain = PlainConvDecoder(IMAGE)
    return z, plain, jax.jit(plain.init)(jax.random.PRNGKey(4), z)


@pytest.mark.parametrize("subpixel", [None, True, False])
def test_conv_decoder_variables_are_unchanged(decoders, subpixel):
    z, _, variables = decoders
    new = jax.jit(nets.ConvDecoder(IMAGE, subpixel=subpixel).init)(jax.random.PRNGKey(4), z)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)]
    assert "['params']['ConvTranspose_3']['kernel']" in paths
    assert jax.tree.structure(new) == jax.tree.structure(variables)
    assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, variables)
    # the same initial values too: parameters are drawn by path
    jax.tree.map(np.testing.assert_array_equal, new, variables)


@pytest.mark.parametrize("train", [True, False])
def test_conv_decoder_computes_the_plain_decoder(decoders, train):
    z, plain, _ = decoders
    variables = random_variables(plain, z, 5)  # random batch-norm statistics too
    new = nets.ConvDecoder(IMAGE, subpixel=True)
    kwargs = dict(train=True, mutable=["batch_stats"]) if train else dict(train=False)
    cotangent = jax.random.normal(jax.random.PRNGKey(6), (BATCH, int(np.prod(IMAGE))))
    # outputs, updated batch statistics (in training), gradients (all variables and z)
    close_trees(
        forward_and_grads(new, variables, z, cotangent, **kwargs),
        forward_and_grads(plain, variables, z, cotangent, **kwargs),
    )
