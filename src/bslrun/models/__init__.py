"""Model families: a registry from ``model.family`` to a class, and the protocol.

Every family is trained by the same engine (``bslrun.inference.engine``): it
supplies a NumPyro model and guide whose ELBO is scaled per datum by the
engine, and knows how to evaluate and describe its posterior.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

# name -> "module:class"; kept as strings so config validation needs no JAX.
FAMILIES = {
    "bnn": "bslrun.models.bnn:BnnFamily",
    "vae": "bslrun.models.vae:VaeFamily",
    "flow": "bslrun.models.flow:FlowFamily",
}


class Family(Protocol):
    n_train: int  # training-set size N: the likelihood of a batch of B is scaled by N / B

    def model(self, x, y=None) -> None:
        """NumPyro model p(y, latents | x) for one minibatch."""

    def guide(self, x, y=None) -> None:
        """NumPyro guide q(latents) for the same minibatch."""

    def evaluate(self, params: dict, x, y, key, num_samples: int) -> dict[str, Any]:
        """Scalar metrics of the posterior predictive on (x, y); jit-compatible."""

    # Optional: ``validate`` (same signature) scores validation epochs more cheaply than
    # ``evaluate``; the engine falls back to ``evaluate`` (see engine.Validator).

    def eval_samples(self, eval_cfg) -> int:
        """How many posterior draws ``evaluate`` uses on the test set (from the eval config)."""

    def artifacts(self, params: dict, x, y, key, num_samples: int) -> dict[str, Any]:
        """Arrays worth saving (predictions, intervals); jit-compatible."""

    def plot(self, arrays: dict, plots_dir) -> list:
        """Write the family's figures from ``artifacts`` output; returns the paths."""


def build(cfg, spec, n_train: int, key=None) -> Family:
    """Instantiate the family named by ``cfg.family`` for data described by ``spec``;
    ``key`` draws its fixed structural choices (e.g. a flow's random permutations)."""
    module, cls = FAMILIES[cfg.family].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, spec, n_train, key=key)
