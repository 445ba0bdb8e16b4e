"""Objectives: NumPyro ELBOs, rescaled outside their log-sum-exp.

Scaling a model's sites (``handlers.scale``) multiplies log-densities before
an objective combines them. That is harmless for the ELBO, which is linear
in them, but not for the importance-weighted bound, which takes a log-mean-exp
over samples per datum: scaled log-weights would temper it into a different
objective. Per-datum normalisation therefore multiplies the loss itself.
"""

from __future__ import annotations

from typing import Callable


class ScaledLoss:
    """``inner``'s loss times ``factor(*args)``, with and without mutable state."""

    def __init__(self, inner, factor: Callable[..., float]):
        self.inner = inner
        self.factor = factor

    @property
    def can_infer_discrete(self) -> bool:
        return self.inner.can_infer_discrete

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        value = self.inner.loss(rng_key, param_map, model, guide, *args, **kwargs)
        return value * self.factor(*args)

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        out = self.inner.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)
        return {"loss": out["loss"] * self.factor(*args), "mutable_state": out["mutable_state"]}
