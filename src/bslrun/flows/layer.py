"""What ``model=flow`` needs to know of a kind of layer: each bijection module defines one
``Layer`` at module level, and ``bslrun.flows.LAYERS`` collects them by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Layer:
    # Its ``model.flow`` value (a member of ``config.FlowKind``).
    name: str
    # (dim, flow config) -> the conditioner network (a Flax module) whose output layer
    # starts at zero, so the layer starts as the identity.
    conditioner: Callable
    # (conditioner, its parameters, dim, flow config) -> the bijection (a numpyro Transform).
    bijection: Callable
    # Splits the coordinates in two (needs dim >= 2; the conditioner reads dim // 2 of them).
    coupling: bool = False

    def input_width(self, dim: int) -> int:
        return dim // 2 if self.coupling else dim
