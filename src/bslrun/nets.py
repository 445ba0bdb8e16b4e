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


# ------------------------------------------------------------ transposed convolutions
def subpixel_default() -> bool:
    """Whether ``ConvTranspose`` computes strided layers as sub-pixel convolutions here.

    On CPU, XLA's gradient of a strided transposed convolution (an input-dilated
    convolution) is slow: forward+backward of the decoder's 64->32 layer at 14x14,
    batch 32, took about 130 ms against 9 ms for the sub-pixel form on a 2-core CPU
    (benchmarks/conv_transpose.py). GPUs and TPUs run the plain op with their own
    convolution kernels and nothing shows the decomposition helps there, so it stays.
    """
    return jax.default_backend() == "cpu"


def _phase_taps(k: int, s: int) -> list[list[tuple[int, int]]]:
    """For each output phase r < s, the (kernel tap t, input offset d) pairs such that
    ``y[s*m + r] = sum K[t] x[m + d]`` along one axis.

    ``lax.conv_transpose(padding="SAME")`` is a correlation (kernel not flipped) of the
    input dilated by s and padded with ``pad_lo`` zeros before: ``y[o] = sum_t K[t]
    xd[o + t - pad_lo]`` where ``xd[s*i] = x[i]`` and zero elsewhere, so tap t reaches
    phase r iff ``r + t - pad_lo`` is a multiple of s. The output has s*n entries.
    """
    pad_len = k + s - 2  # lax.convolution._conv_transpose_padding, 'SAME'
    pad_lo = k - 1 if s > k - 1 else -(-pad_len // 2)
    return [
        [(t, (r + t - pad_lo) // s) for t in range(k) if (r + t - pad_lo) % s == 0]
        for r in range(s)
    ]


def _margins(taps) -> tuple[int, int]:
    """Zeros needed before and after the input for the offsets of ``taps``."""
    offsets = [d for phase in taps for _, d in phase]
    return max(0, -min(offsets)), max(0, max(offsets))


def subpixel_conv_transpose(x, kernel, strides, precision=None, preferred_element_type=None):
    """``lax.conv_transpose(x, kernel, strides, "SAME")`` (NHWC, HWIO, kernel not flipped),
    computed phase by phase: each of the sh*sw output phases is a stride-1 correlation of
    x with the kernel taps that reach it (one matrix product of shifted windows), and the
    phases are interleaved (depth-to-space) into the (n, sh*h, sw*w, out) output.
    """
    n, h, w, _ = x.shape
    (kh, kw), (sh, sw), out = kernel.shape[:2], strides, kernel.shape[-1]
    taps_h, taps_w = _phase_taps(kh, sh), _phase_taps(kw, sw)
    (lo_h, hi_h), (lo_w, hi_w) = _margins(taps_h), _margins(taps_w)
    xp = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))

    def phase(th, tw):  # (n, h, w, out)
        pairs = [(a, b) for a in th for b in tw]
        if not pairs:  # a stride larger than the kernel leaves this phase empty
            return jnp.zeros((n, h, w, out), preferred_element_type or jnp.result_type(x, kernel))
        windows = [
            xp[:, lo_h + i : lo_h + i + h, lo_w + j : lo_w + j + w] for (_, i), (_, j) in pairs
        ]
        weights = [kernel[a, b] for (a, _), (b, _) in pairs]
        return jnp.matmul(
            jnp.concatenate(windows, -1),
            jnp.concatenate(weights, 0),
            precision=precision,
            preferred_element_type=preferred_element_type,
        )

    y = jnp.stack([jnp.stack([phase(th, tw) for tw in taps_w], 3) for th in taps_h], 2)
    return y.reshape(n, h * sh, w * sw, out)  # (n, h, sh, w, sw, out) interleaved


class ConvTranspose(nn.ConvTranspose):
    """``flax.linen.ConvTranspose`` (same parameters, same function) that computes a
    strided 2D layer as a sub-pixel convolution (``subpixel_conv_transpose``) when
    ``subpixel`` is True, or when it is None and ``subpixel_default()`` says so.

    The sub-pixel form covers padding "SAME" without kernel dilation, mask or
    ``transpose_kernel``; ``subpixel=None`` runs anything else as the plain op, and
    ``subpixel=True`` refuses it. Stride 1 runs the plain op (nothing to gain).
    """

    subpixel: bool | None = None

    def _subpixel_unsupported(self, inputs) -> str | None:
        """Why this layer cannot run as a sub-pixel convolution (None when it can)."""
        two_d = not isinstance(self.kernel_size, int) and len(self.kernel_size) == 2
        if not two_d or inputs.ndim < 3:
            return f"2D kernels only (kernel_size={self.kernel_size}, input rank {inputs.ndim})"
        if self.padding != "SAME":
            return f"padding='SAME' only (padding={self.padding!r})"
        if self.kernel_dilation not in (None, 1, (1, 1), [1, 1]):
            return f"no kernel dilation (kernel_dilation={self.kernel_dilation})"
        if self.mask is not None or self.transpose_kernel:
            return "no mask and transpose_kernel=False only"
        return None

    def _use_subpixel(self, inputs) -> bool:
        strides = self.strides if self.strides is not None else 1
        strided = any(s != 1 for s in ((strides,) * 2 if isinstance(strides, int) else strides))
        if self.subpixel is False or not strided:
            return False
        why = self._subpixel_unsupported(inputs)
        if self.subpixel and why is not None:
            raise ValueError(f"ConvTranspose(subpixel=True) supports {why}")
        return why is None and (self.subpixel or subpixel_default())

    @nn.compact
    def __call__(self, inputs):
        if not self._use_subpixel(inputs):
            return super().__call__(inputs)
        strides = self.strides if self.strides is not None else 1
        strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
        batch_shape, image = inputs.shape[:-3], inputs.shape[-3:]
        in_features = image[-1]
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (*self.kernel_size, in_features, self.features),
            self.param_dtype,
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = subpixel_conv_transpose(
            x.reshape((-1, *image)), kernel, strides, self.precision, self.preferred_element_type
        )
        if bias is not None:
            y = y + bias
        return y.reshape((*batch_shape, *y.shape[1:]))


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
    """z (n, latent_dim) -> flattened logits (n, H*W*C): the encoder mirrored.

    ``subpixel`` is passed to the transposed convolutions (None: sub-pixel on CPU); it
    changes how they are computed, never the function or the parameters.
    """

    image_shape: tuple
    subpixel: bool | None = None

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
            # named as flax.linen.ConvTranspose auto-names its layers: same parameter paths
            x = ConvTranspose(
                features,
                (3, 3),
                strides=(stride, stride),
                padding="SAME",
                subpixel=self.subpixel,
                name=f"ConvTranspose_{i}",
            )(x)
            if i < len(strides) - 1:
                x = _norm_act(x, train)
        return x.reshape((x.shape[0], -1))
