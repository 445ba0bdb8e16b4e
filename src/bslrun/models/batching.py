"""Evaluation over many rows in fixed-size chunks, so memory stays bounded."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Rows per chunk where a BNN predicts for every row with all its posterior draws at once:
# bounds memory for any number of rows.
PREDICT_ROWS = 1024


def chunked_map(fn, x, key, chunk: int) -> dict:
    """fn(x_chunk, key_chunk) -> dict of per-row arrays, over x in chunks of ``chunk`` rows.

    Rows are padded to a whole number of chunks (padding rows are dropped from
    the result); ``lax.map`` keeps one chunk's intermediates alive at a time.
    """
    n = x.shape[0]
    num_chunks = -(-n // chunk)
    padded = jnp.pad(x, ((0, num_chunks * chunk - n), (0, 0)))
    keys = jax.random.split(key, num_chunks)
    out = jax.lax.map(lambda args: fn(*args), (padded.reshape(num_chunks, chunk, -1), keys))
    return jax.tree.map(lambda a: a.reshape(num_chunks * chunk, *a.shape[2:])[:n], out)
