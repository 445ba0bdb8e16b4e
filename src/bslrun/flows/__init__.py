"""Normalising-flow bijections as numpyro transforms, one per file.

Conditioner parameters are held explicitly, so each transform is a pure function
of (params, x) and a pytree (params are leaves; modules and permutations static).

``LAYERS`` maps each ``model.flow`` name to its ``Layer`` (conditioner and bijection),
collected from the module-level ``Layer`` values of this package's modules: a new kind of
layer is its module and its name in ``config.FlowKind``.
"""

import importlib
import pkgutil

from bslrun.flows.affine_autoregressive import MAF, MaskedAffineAutoregressive
from bslrun.flows.affine_coupling import REALNVP, AffineCoupling, coupling_net
from bslrun.flows.distribution import Flow
from bslrun.flows.inverse_autoregressive import InverseAutoregressive, iaf_conditioner
from bslrun.flows.layer import Layer
from bslrun.flows.made import MADE, MaskedMLP, stable_log_scale
from bslrun.flows.permutation import Permutation
from bslrun.flows.spline import (
    NSF,
    NSF_AR,
    MaskedSplineAutoregressive,
    SplineCoupling,
    rational_quadratic_spline,
    spline_coupling_net,
)


def _collect_layers() -> dict[str, Layer]:
    layers: dict[str, Layer] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Layer):
                if layers.setdefault(value.name, value) is not value:
                    raise RuntimeError(f"two flow layers are named {value.name!r}")
    return layers


LAYERS: dict[str, Layer] = _collect_layers()

__all__ = [
    "LAYERS",
    "Layer",
    "MADE",
    "MAF",
    "NSF",
    "NSF_AR",
    "REALNVP",
    "AffineCoupling",
    "Flow",
    "InverseAutoregressive",
    "MaskedAffineAutoregressive",
    "MaskedMLP",
    "MaskedSplineAutoregressive",
    "Permutation",
    "SplineCoupling",
    "coupling_net",
    "iaf_conditioner",
    "rational_quadratic_spline",
    "spline_coupling_net",
    "stable_log_scale",
]
