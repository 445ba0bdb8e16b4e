"""Deterministic Flax networks; Bayesian models put priors on their parameters."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {
    "relu": nn.relu,
    "tanh": nn.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "elu": nn.elu,
    "softplus": nn.softplus,
    "leaky_relu": nn.leaky_relu,
}


class MLP(nn.Module):
    """x (..., d) -> (..., out_dim) through Dense layers of widths ``hidden``.

    ``zero_output`` starts the output layer at zero (a flow conditioner then starts
    its layer at the identity map).
    """

    hidden: Sequence[int]
    out_dim: int
    activation: str = "relu"
    zero_output: bool = False

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
        init = nn.initializers.zeros_init() if self.zero_output else nn.initializers.lecun_normal()
        return nn.Dense(self.out_dim, kernel_init=init)(x)


class FlatView:
    """A parameter pytree seen as one flat vector w (and back), from shapes alone.

    Built from ``jax.eval_shape`` output, so constructing it compiles nothing.
    """

    def __init__(self, shapes):
        leaves, self.treedef = jax.tree.flatten(shapes)
        self.shapes = [tuple(leaf.shape) for leaf in leaves]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.size = sum(self.sizes)

    def ravel(self, tree) -> jax.Array:
        return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])

    def unravel(self, w):
        parts, start = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            parts.append(jnp.reshape(w[..., start : start + size], w.shape[:-1] + shape))
            start += size
        return jax.tree.unflatten(self.treedef, parts)


def _positive(raw):
    """softplus with a floor: scales of Gaussian encoders and likelihoods."""
    return nn.softplus(raw) + 1e-6


class MLPEncoder(nn.Module):
    """x (n, d) -> (loc, scale), each (n, latent_dim): q(z | x) = N(loc, diag(scale^2))."""

    hidden: Sequence[int]
    latent_dim: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, train: bool = True):
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
        return nn.Dense(self.latent_dim)(x), _positive(nn.Dense(self.latent_dim)(x))


class MLPDecoder(nn.Module):
    """z (n, latent_dim) -> (n, out_dim) logits or means."""

    hidden: Sequence[int]
    out_dim: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, z, train: bool = True):
        return MLP(self.hidden, self.out_dim, self.activation)(z)


# The lecture's convolutional VAE (Keras defaults: batch-norm momentum 0.99 and
# epsilon 1e-3, LeakyReLU slope 0.3): (filters, stride) per layer.
CONV_LAYERS = ((32, 1), (64, 2), (64, 2), (64, 1))


def _norm_act(x, train: bool):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3)(x)
    return nn.leaky_relu(x, negative_slope=0.3)


class ConvEncoder(nn.Module):
    """Flattened images (n, H*W*C) -> (loc, scale) through 3x3 convolutions."""

    image_shape: tuple
    latent_dim: int

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.reshape((-1, *self.image_shape))
        for features, stride in CONV_LAYERS:
            x = nn.Conv(features, (3, 3), strides=(stride, stride), padding="SAME")(x)
            x = _norm_act(x, train)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.latent_dim)(x), _positive(nn.Dense(self.latent_dim)(x))


class ConvDecoder(nn.Module):
    """z (n, latent_dim) -> flattened logits (n, H*W*C): the encoder mirrored."""

    image_shape: tuple

    @nn.compact
    def __call__(self, z, train: bool = True):
        height, width, channels = self.image_shape
        shrink = int(np.prod([stride for _, stride in CONV_LAYERS]))
        h, w, features = height // shrink, width // shrink, CONV_LAYERS[-1][0]
        x = nn.Dense(h * w * features)(z).reshape((-1, h, w, features))
        # Transposed convolutions with the encoder's strides in reverse order; each
        # outputs the features of the encoder layer before it, the last the channels.
        strides = [stride for _, stride in reversed(CONV_LAYERS)]
        outputs = [f for f, _ in reversed(CONV_LAYERS[:-1])] + [channels]
        for i, (stride, features) in enumerate(zip(strides, outputs, strict=True)):
            x = nn.ConvTranspose(features, (3, 3), strides=(stride, stride), padding="SAME")(x)
            if i < len(strides) - 1:
                x = _norm_act(x, train)
        return x.reshape((x.shape[0], -1))
