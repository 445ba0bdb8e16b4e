"""This machine's float32 matrix-multiply rate: the yardstick for "fraction of peak".

``measure`` times a jitted ``jnp.dot`` of two square float32 matrices at a few
sizes: each repetition runs enough back-to-back products to last about
``REP_SECONDS`` and waits for the last one (``block_until_ready``); a product
of n x n matrices counts 2 n^3 floating-point operations. The best repetition
of the best size is the peak (the best sustained rate XLA's own GEMM reaches
on this device); medians are reported beside it. Other benchmarks call
``measure`` in their own process so that both share the machine's state; run
alone it writes benchmarks/results/matmul_peak.json.
"""

from __future__ import annotations

import math
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks.common import Options, environment

NAME = "matmul_peak"
SIZES = (1024, 2048, 3072, 4096)
REPS = 5  # timed repetitions per size
REP_SECONDS = 0.25  # each repetition runs about this long


def rate(fn, args, flops: float, reps: int = REPS, rep_seconds: float = REP_SECONDS) -> dict:
    """FLOP/s of ``fn(*args)`` (``flops`` per call): best and median of ``reps`` repetitions."""
    jax.block_until_ready(fn(*args))  # compile and warm up
    tick = time.perf_counter()
    jax.block_until_ready(fn(*args))
    once = max(time.perf_counter() - tick, 1e-6)
    calls = max(1, math.ceil(rep_seconds / once))
    rates = []
    for _ in range(reps):
        tick = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        rates.append(calls * flops / (time.perf_counter() - tick))
    return {
        "best_flops": max(rates),
        "median_flops": statistics.median(rates),
        "calls_per_rep": calls,
        "reps_flops": rates,
    }


def measure(sizes=SIZES, reps: int = REPS, seed: int = 0) -> dict:
    """Best sustained float32 matmul FLOP/s over ``sizes`` (square n x n @ n x n)."""
    dot = jax.jit(jnp.dot)
    per_size = {}
    for n in sizes:
        ka, kb = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), n))
        a = jax.random.normal(ka, (n, n), jnp.float32)
        b = jax.random.normal(kb, (n, n), jnp.float32)
        per_size[str(n)] = rate(dot, (a, b), 2.0 * n**3, reps)
        del a, b
    best = max(per_size, key=lambda n: per_size[n]["best_flops"])
    return {
        "what": "jax.jit(jnp.dot) of square float32 matrices, 2 n^3 FLOP per product",
        "peak_flops": per_size[best]["best_flops"],
        "peak_size": int(best),
        "sizes": per_size,
        "reps_per_size": reps,
        "rep_seconds": REP_SECONDS,
    }


def run(opts: Options) -> dict:
    result = measure(reps=opts.reps or REPS, seed=opts.seed)
    return {
        "description": "float32 matmul peak of this device (jitted jnp.dot, square matrices)",
        "environment": environment(),
        **result,
    }


def summarise(result: dict) -> str:
    sizes = ", ".join(f"{n}: {s['best_flops'] / 1e9:,.0f}" for n, s in result["sizes"].items())
    return (
        f"{NAME}: {result['peak_flops'] / 1e9:,.0f} GFLOP/s float32 (n={result['peak_size']});"
        f" best per size GFLOP/s {sizes}; {result['environment']['device']}"
    )
