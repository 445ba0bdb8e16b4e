"""Deterministic Flax networks; Bayesian models put priors on their parameters."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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
    its layer at the identity map). Given a ``dropout_key``, each input and hidden unit
    is dropped with probability ``dropout`` and the kept ones are scaled by 1 / (1 - p),
    as in Gal's MC dropout networks (dropout before every Dense layer; Gal &
    Ghahramani 2016, appendix); without a key the network is deterministic.
    """

    hidden: Sequence[int]
    out_dim: int
    activation: str = "relu"
    zero_output: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, dropout_key=None):
        act = ACTIVATIONS[self.activation]
        for layer, width in enumerate(self.hidden):
            x = act(nn.Dense(width)(self._drop(x, dropout_key, layer)))
        init = nn.initializers.zeros_init() if self.zero_output else nn.initializers.lecun_normal()
        x = self._drop(x, dropout_key, len(self.hidden))
        return nn.Dense(self.out_dim, kernel_init=init)(x)

    def _drop(self, x, key, layer: int):
        """Inverted dropout of ``x``'s units (the identity without a key): E[output] = x."""
        if key is None or self.dropout == 0.0:
            return x
        keep = dropout_mask(key, layer, x.shape, self.dropout)
        return jnp.where(keep, x / (1.0 - self.dropout), 0.0)


def dropout_mask(key, layer: int, shape: tuple, rate: float) -> jax.Array:
    """Which units the Dense layer ``layer`` (0 first) keeps: True with probability
    1 - ``rate``, drawn from ``fold_in(key, layer)``. Training draws one per row
    (``shape`` (n, width), ``MLP``); an MC-dropout predictive draw one per network
    (``shape`` (width,): the same mask for every input, ``BnnFamily.sample``)."""
    return jax.random.bernoulli(jax.random.fold_in(key, layer), 1.0 - rate, shape)


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
        if w.shape[-1] != self.size:  # slicing would silently drop or miss weights
            raise ValueError(f"a weight vector of {w.shape[-1]} values for {self.size} weights")
        parts, start = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            parts.append(jnp.reshape(w[..., start : start + size], w.shape[:-1] + shape))
            start += size
        return jax.tree.unflatten(self.treedef, parts)


def tree_mismatch(tree, like) -> str:
    """How the pytree ``tree`` (e.g. read from a file) differs from ``like`` (arrays or
    ``jax.eval_shape`` output): the first missing or extra entry, or the first array whose
    shape or dtype differs; "" when none does. Both are compared as flax state dicts
    (nested dicts by name), as flax's msgpack stores them."""
    from flax import serialization

    got, want = (_leaves(serialization.to_state_dict(t)) for t in (tree, like))
    missing, extra = [k for k in want if k not in got], [k for k in got if k not in want]
    if missing or extra:
        parts = [
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("lacks", missing), ("has the extra", extra))
            if keys
        ]
        return f"it {' and '.join(parts)}"
    for key, (shape, dtype) in want.items():
        if got[key] != (shape, dtype):
            return f"{key} is {got[key][1]} {got[key][0]}, the model needs {dtype} {shape}"
    return ""


def _leaves(tree) -> dict:
    """{"a/b": (shape, dtype)} of a nested dict's array leaves."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(getattr(k, "key", k)) for k in path): _kind(leaf) for path, leaf in flat}


def _kind(leaf) -> tuple:
    leaf = leaf if hasattr(leaf, "dtype") and hasattr(leaf, "shape") else np.asarray(leaf)
    return tuple(leaf.shape), np.dtype(leaf.dtype)


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


# -------------------------------------------------------------- convolutions on CPU
def _cpu_form(forced: bool | None, why_not, layer: str) -> bool:
    """Whether a layer takes its CPU form: ``forced`` False never, True always (refusing,
    in one line, what the form cannot do), None by default where it can
    (``subpixel_default``). ``why_not()`` says why it cannot (None when it can)."""
    if forced is False:
        return False
    why = why_not()
    if forced and why is not None:
        raise ValueError(f"{layer} supports {why}")
    return why is None and (forced or subpixel_default())


def subpixel_default() -> bool:
    """Whether ``Conv`` and ``ConvTranspose`` route around XLA's slow CPU convolutions
    here: gradients as canonical convolutions (``correlate``), strided transposed
    convolutions as sub-pixel convolutions (``subpixel_conv_transpose``).

    XLA's CPU convolution library takes one layout (NHWC input, HWIO kernel, NHWC
    output); anything else runs as a naive loop nest. Autodiff's gradients are never in
    it: the kernel gradient swaps batch and features, the input gradient has an HWOI
    kernel. XLA rewrites them (its ConvCanonicalization pass) in the entry computation
    only, not in a loop body, and the engine's epoch is one ``lax.scan``: there the
    lecture encoder's 32->64 stride-2 layer (28x28, batch 32) took ~210 ms per forward
    and backward against ~6 ms outside the loop, and the conv VAE's epoch ran 8-11x
    slower than with canonical gradients (2-core CPU, issue 14). Outside a loop the
    strided transposed convolution's gradient is slow too (130 ms against 9 ms for the
    sub-pixel form, benchmarks/conv_transpose.py). GPUs and TPUs run the plain ops with
    their own kernels and nothing shows these forms help there, so they stay.
    """
    return jax.default_backend() == "cpu"


_NHWC = ("NHWC", "HWIO", "NHWC")


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def correlate(x, kernel, strides, padding, precision=None):
    """``y[b, m, n, o] = sum_{i,j,c} xp[b, s_h m + i, s_w n + j, c] K[i, j, c, o]``: x (B, H,
    W, C) zero-padded by ``padding`` ((lo, hi) per axis) into xp, kernel K (kh, kw, C, O).

    ``lax.conv_general_dilated`` (NHWC, HWIO), whose gradients are written as convolutions
    in that same layout (see ``subpixel_default``); reverse mode only (no jvp).
    """
    return lax.conv_general_dilated(
        x, kernel, strides, padding, precision=precision, dimension_numbers=_NHWC
    )


def _correlate_fwd(x, kernel, strides, padding, precision):
    return correlate(x, kernel, strides, padding, precision), (x, kernel)


def _correlate_bwd(strides, padding, precision, residuals, g):
    """Per axis: kernel size k, padding lo, input length n, stride s, output length o."""
    x, kernel = residuals
    axes = list(zip(kernel.shape[:2], padding, x.shape[1:3], strides, g.shape[1:3], strict=True))
    conv = partial(
        lax.conv_general_dilated, window_strides=(1, 1), precision=precision,
        dimension_numbers=_NHWC,
    )  # fmt: skip
    # dK[i, j, c, o] = sum_{b,m,n} xp[b, s m + i, s n + j, c] g[b, m, n, o]: x with c as
    # the batch and b as the feature, correlated with g dilated by the strides; x's far
    # side padded (or cropped) to the windows' reach k + s (o - 1).
    dk = conv(
        jnp.transpose(x, (3, 1, 2, 0)),
        jnp.transpose(g, (1, 2, 0, 3)),
        padding=[(lo, k + s * (o - 1) - n - lo) for k, (lo, _), n, s, o in axes],
        rhs_dilation=strides,
    )  # (C, kh, kw, O)
    # dx[b, u, v, c] = sum g[b, m, n, o] K[i, j, c, o] over s m + i = u + lo: g dilated by
    # the strides, correlated with the flipped kernel (O in, C out), cropped to x.
    dx = conv(
        g,
        jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)),
        padding=[(k - 1 - lo, lo + n - s * (o - 1) - 1) for k, (lo, _), n, s, o in axes],
        lhs_dilation=strides,
    )
    return dx, jnp.transpose(dk, (1, 2, 0, 3))


correlate.defvjp(_correlate_fwd, _correlate_bwd)


def _unsupported(layer, inputs) -> str | None:
    """Why a 2D layer cannot run as ``correlate`` or sub-pixel phases, for what Conv and
    ConvTranspose share (None when nothing stops it)."""
    two_d = not isinstance(layer.kernel_size, int) and len(layer.kernel_size) == 2
    if not two_d or inputs.ndim < 3:
        return f"2D kernels only (kernel_size={layer.kernel_size}, input rank {inputs.ndim})"
    if layer.padding != "SAME":
        return f"padding='SAME' only (padding={layer.padding!r})"
    if layer.kernel_dilation not in (None, 1, (1, 1), [1, 1]):
        return f"no kernel dilation (kernel_dilation={layer.kernel_dilation})"
    if layer.mask is not None:
        return "no mask only"
    return None


def _pair(strides) -> tuple[int, int]:
    strides = strides if strides is not None else 1
    return (strides,) * 2 if isinstance(strides, int) else tuple(strides)


class Conv(nn.Conv):
    """``flax.linen.Conv`` (same parameters, same function) computed by ``correlate``
    (gradients as canonical convolutions) when ``canonical_grads`` is True, or when it
    is None and ``subpixel_default()`` says so.

    That covers 2D kernels, padding "SAME", no input or kernel dilation, one feature
    group, shared weights, no mask and flax's own convolution; ``canonical_grads=None``
    runs anything else as the plain op, and ``canonical_grads=True`` refuses it.
    """

    canonical_grads: bool | None = None

    def _why_not(self, inputs) -> str | None:
        why = _unsupported(self, inputs)
        if why is None and self.input_dilation not in (None, 1, (1, 1), [1, 1]):
            why = f"no input dilation (input_dilation={self.input_dilation})"
        if why is None and (self.feature_group_count != 1 or not self.shared_weights):
            why = "one feature group and shared weights only"
        if why is None and (self.conv_general_dilated or self.conv_general_dilated_cls):
            why = "lax.conv_general_dilated only (no replacement)"
        return why

    def _use_correlate(self, inputs) -> bool:
        return _cpu_form(self.canonical_grads, lambda: self._why_not(inputs),
                         "Conv(canonical_grads=True)")  # fmt: skip

    @nn.compact
    def __call__(self, inputs):
        if not self._use_correlate(inputs):
            return super().__call__(inputs)
        batch_shape, image = inputs.shape[:-3], inputs.shape[-3:]
        kernel = self.param(
            "kernel", self.kernel_init, (*self.kernel_size, image[-1], self.features),
            self.param_dtype,
        )  # fmt: skip
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        strides = _pair(self.strides)
        padding = tuple(lax.padtype_to_pads(image[:2], self.kernel_size, strides, "SAME"))
        y = correlate(x.reshape((-1, *image)), kernel, strides, padding, self.precision)
        if bias is not None:
            y = y + bias
        return y.reshape((*batch_shape, *y.shape[1:]))


# ------------------------------------------------------------ transposed convolutions
def _transpose_padding(k: int, s: int) -> tuple[int, int]:
    """Zeros (before, after) of ``lax.conv_transpose(padding="SAME")`` along one axis
    (``lax.convolution._conv_transpose_padding``): the input dilated by s is padded so
    that the output has s*n entries."""
    pad_len = k + s - 2
    pad_lo = k - 1 if s > k - 1 else -(-pad_len // 2)
    return pad_lo, pad_len - pad_lo


def _phase_taps(k: int, s: int) -> list[list[tuple[int, int]]]:
    """For each output phase r < s, the (kernel tap t, input offset d) pairs such that
    ``y[s*m + r] = sum K[t] x[m + d]`` along one axis.

    ``lax.conv_transpose(padding="SAME")`` is a correlation (kernel not flipped) of the
    input dilated by s and padded with ``pad_lo`` zeros before: ``y[o] = sum_t K[t]
    xd[o + t - pad_lo]`` where ``xd[s*i] = x[i]`` and zero elsewhere, so tap t reaches
    phase r iff ``r + t - pad_lo`` is a multiple of s. The output has s*n entries.
    """
    pad_lo = _transpose_padding(k, s)[0]
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
    strided 2D layer as a sub-pixel convolution (``subpixel_conv_transpose``), and a
    stride-1 layer, a correlation with the same kernel, by ``correlate`` (gradients as
    canonical convolutions), when ``subpixel`` is True, or when it is None and
    ``subpixel_default()`` says so.

    The sub-pixel form covers padding "SAME" without kernel dilation, mask or
    ``transpose_kernel``; ``subpixel=None`` runs anything else as the plain op, and
    ``subpixel=True`` refuses it.
    """

    subpixel: bool | None = None

    def _subpixel_unsupported(self, inputs) -> str | None:
        """Why this layer cannot run as a sub-pixel convolution (None when it can)."""
        why = _unsupported(self, inputs)
        if why is None and self.transpose_kernel:
            why = "transpose_kernel=False only"
        return why

    def _use_subpixel(self, inputs) -> bool:
        return _cpu_form(self.subpixel, lambda: self._subpixel_unsupported(inputs),
                         "ConvTranspose(subpixel=True)")  # fmt: skip

    @nn.compact
    def __call__(self, inputs):
        if not self._use_subpixel(inputs):
            return super().__call__(inputs)
        strides = _pair(self.strides)
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
        x = x.reshape((-1, *image))
        if strides == (1, 1):
            padding = tuple(_transpose_padding(k, 1) for k in self.kernel_size)
            y = correlate(x, kernel, strides, padding, self.precision)
        else:
            y = subpixel_conv_transpose(
                x, kernel, strides, self.precision, self.preferred_element_type
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
    """Flattened images (n, H*W*C) -> (loc, scale) through 3x3 convolutions.

    ``canonical_grads`` is passed to the convolutions (None: on CPU); it changes how
    their gradients are computed, never the function or the parameters.
    """

    image_shape: tuple
    latent_dim: int
    canonical_grads: bool | None = None

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.reshape((-1, *self.image_shape))
        for i, (features, stride) in enumerate(CONV_LAYERS):
            # named as flax.linen.Conv auto-names its layers: same parameter paths
            x = Conv(
                features,
                (3, 3),
                strides=(stride, stride),
                padding="SAME",
                canonical_grads=self.canonical_grads,
                name=f"Conv_{i}",
            )(x)
            x = _norm_act(x, train)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.latent_dim)(x), _positive(nn.Dense(self.latent_dim)(x))


class ConvDecoder(nn.Module):
    """z (n, latent_dim) -> flattened logits (n, H*W*C): the encoder mirrored.

    ``subpixel`` is passed to the transposed convolutions (None: on CPU); it changes how
    they are computed, never the function or the parameters.
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
