"""Strided transposed convolutions: flax's plain op against the sub-pixel form.

``nets.ConvTranspose`` computes ``flax.linen.ConvTranspose``'s function; with
``subpixel=True`` a strided layer runs as one matrix product per output phase and
an interleave (``nets.subpixel_conv_transpose``), which XLA runs much faster than
the gradient of an input-dilated convolution on CPU. In one process:

- layers: forward + backward (gradients with respect to the input, kernel and bias)
  of each transposed convolution of the lecture's conv VAE decoder for 28x28x1
  images, at batch 32, jitted, plain and sub-pixel (stride-1 layers run the plain
  op either way: timed once, for scale);
- step: one training step (``svi.update``: the ELBO's gradient through encoder and
  decoder, and Adam) of the conv VAE at batch 32, with the decoder's plain and
  sub-pixel layers; images per second.

Each repetition times both variants back to back, alternating which goes first, and
runs each enough times to last about ``REP_SECONDS``; medians over repetitions are
reported, with the ratio plain time / sub-pixel time (above 1: sub-pixel faster).
The sanity check: both variants' outputs and gradients agree to float32 rounding.
"""

from __future__ import annotations

import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import Options, environment, random_image_spec
from bslrun import nets
from bslrun.config import Architecture, OptimConfig, Schedule, VaeConfig, as_dict
from bslrun.data.splits import Split
from bslrun.inference import engine
from bslrun.models.vae import VaeFamily

NAME = "conv_transpose"
BATCH = 32
IMAGE = (28, 28, 1)
REPS = 7
REP_SECONDS = 0.3  # each variant runs about this long per repetition
STEP_IMAGES = 256  # the training split the step draws its batches from
TOLERANCE = 1e-4  # max |sub-pixel - plain| relative to max |plain|, outputs and gradients
VARIANTS = {"plain": False, "subpixel": True}


def decoder_layers(image=IMAGE) -> list[dict]:
    """The conv decoder's transposed convolutions: input side, features in/out, stride."""
    strides = [stride for _, stride in reversed(nets.CONV_LAYERS)]
    outputs = [f for f, _ in reversed(nets.CONV_LAYERS[:-1])] + [image[-1]]
    side = image[0] // int(np.prod(strides))
    features, layers = nets.CONV_LAYERS[-1][0], []
    for i, (stride, out) in enumerate(zip(strides, outputs, strict=True)):
        layers.append(
            {
                "name": f"ConvTranspose_{i}",
                "side": side,
                "in": features,
                "out": out,
                "stride": stride,
            }
        )
        side, features = side * stride, out
    return layers


def time_variants(fns: dict, args: dict, reps: int) -> dict:
    """Seconds per call of each ``fns[name](*args[name])``: every repetition times each
    variant for about REP_SECONDS, the order rotating between repetitions."""
    calls = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args[name]))  # compile and warm up
        tick = time.perf_counter()
        jax.block_until_ready(fn(*args[name]))
        calls[name] = max(1, round(REP_SECONDS / max(time.perf_counter() - tick, 1e-6)))
    names, seconds = list(fns), {name: [] for name in fns}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            tick = time.perf_counter()
            for _ in range(calls[name]):
                out = fns[name](*args[name])
            jax.block_until_ready(out)
            seconds[name].append((time.perf_counter() - tick) / calls[name])
    return {
        name: {"median_s": statistics.median(s), "reps_s": s, "calls_per_rep": calls[name]}
        for name, s in seconds.items()
    }


def max_gap(a, b) -> float:
    """Largest |a - b| over the leaves, relative to the largest |b|."""
    gaps = [
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    scale = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))
    return max(gaps) / max(scale, 1e-30)


def layer(spec: dict, reps: int, seed: int) -> dict:
    kx, kp, kg = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (BATCH, spec["side"], spec["side"], spec["in"]))
    kwargs = dict(features=spec["out"], kernel_size=(3, 3), strides=(spec["stride"],) * 2)
    variables = nn.ConvTranspose(**kwargs).init(kp, x)
    out_side = spec["side"] * spec["stride"]
    cotangent = jax.random.normal(kg, (BATCH, out_side, out_side, spec["out"]))
    variants = VARIANTS if spec["stride"] > 1 else {"plain": False}
    fns = {}
    for name, subpixel in variants.items():
        module = nets.ConvTranspose(**kwargs, subpixel=subpixel)
        loss = lambda v, x, m=module: jnp.sum(m.apply(v, x) * cotangent)  # noqa: E731
        fns[name] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    timed = time_variants(fns, {name: (variables, x) for name in fns}, reps)
    result = {**spec, "batch": BATCH, "variants": timed}
    if "subpixel" in fns:
        result["ratio"] = timed["plain"]["median_s"] / timed["subpixel"]["median_s"]
        result["ratio_paired_reps"] = [
            p / s
            for p, s in zip(timed["plain"]["reps_s"], timed["subpixel"]["reps_s"], strict=True)
        ]
        result["relative_gap"] = max_gap(fns["subpixel"](variables, x), fns["plain"](variables, x))
    return result


def step(reps: int, seed: int) -> dict:
    """One svi.update of the conv VAE at batch 32 with each decoder variant."""
    rng = np.random.default_rng(seed)
    x = (rng.random((STEP_IMAGES, int(np.prod(IMAGE)))) < 0.13).astype(np.float32)
    train = Split(x, np.zeros(STEP_IMAGES, np.int32))
    cfg = VaeConfig(architecture=Architecture.conv, latent_dim=2)
    optim_cfg = OptimConfig(lr=1e-3, schedule=Schedule.constant)
    fns, args, states = {}, {}, {}
    for name, subpixel in VARIANTS.items():
        family = VaeFamily(cfg, random_image_spec(STEP_IMAGES, IMAGE), STEP_IMAGES)
        family.decoder = nets.ConvDecoder(IMAGE, subpixel=subpixel)
        s = engine.prepare(family, train, optim_cfg, BATCH, 1, 1, jax.random.PRNGKey(seed))
        kwargs = engine.epoch_kwargs(family, 1)
        fns[name] = jax.jit(lambda state, x, y, svi=s.svi, kw=kwargs: svi.update(state, x, y, **kw))
        args[name] = (s.state, s.x[:BATCH], s.y[:BATCH])
        states[name] = fns[name](*args[name])
    timed = time_variants(fns, args, reps)
    for stats in timed.values():
        stats["images_per_sec"] = BATCH / stats["median_s"]
    plain, fast = timed["plain"], timed["subpixel"]
    return {
        "model": as_dict(cfg),
        "batch": BATCH,
        "variants": timed,
        "ratio": plain["median_s"] / fast["median_s"],
        "ratio_paired_reps": [p / s for p, s in zip(plain["reps_s"], fast["reps_s"], strict=True)],
        # the first step from the same state: same loss and same updated parameters
        "relative_gap": max_gap(states["subpixel"], states["plain"]),
    }


def run(opts: Options) -> dict:
    reps = opts.reps or REPS
    layers = [layer(spec, reps, opts.seed) for spec in decoder_layers()]
    whole = step(reps, opts.seed)
    gaps = [entry["relative_gap"] for entry in layers if "relative_gap" in entry]
    gaps.append(whole["relative_gap"])
    return {
        "description": (
            "forward+backward of the conv VAE decoder's transposed convolutions and one"
            " conv VAE training step, batch 32: flax's plain op against the sub-pixel form"
        ),
        "config": {"batch": BATCH, "image": list(IMAGE), "reps": reps, "rep_seconds": REP_SECONDS},
        "environment": environment(),
        "layers": layers,
        "step": whole,
        "sanity": {
            "max_relative_gap": max(gaps),
            "tolerance": TOLERANCE,
            "passed": max(gaps) <= TOLERANCE,
        },
    }


def summarise(result: dict) -> str:
    lines = [
        f"{NAME}: batch {result['config']['batch']}, {result['config']['reps']} reps,"
        f" {result['environment']['device']}"
    ]
    for entry in result["layers"]:
        shape = f"{entry['side']}x{entry['side']} {entry['in']}->{entry['out']} s{entry['stride']}"
        times = "  ".join(
            f"{name} {v['median_s'] * 1e3:7.2f} ms" for name, v in entry["variants"].items()
        )
        ratio = f"  ratio {entry['ratio']:.1f}x" if "ratio" in entry else ""
        lines.append(f"  {entry['name']} {shape:<20} fwd+bwd {times}{ratio}")
    step = result["step"]
    rates = "  ".join(f"{name} {v['images_per_sec']:,.0f}" for name, v in step["variants"].items())
    lines.append(f"  training step images/s: {rates}  ratio {step['ratio']:.2f}x")
    sanity = result["sanity"]
    lines.append(
        f"  sanity {'passed' if sanity['passed'] else 'FAILED'}: max relative gap"
        f" {sanity['max_relative_gap']:.1e} (tolerance {sanity['tolerance']:.0e})"
    )
    return "\n".join(lines)
