"""Normalising-flow bijections as numpyro transforms, one per file.

Conditioner parameters are held explicitly, so each transform is a pure function
of (params, x) and a pytree (params are leaves; modules and permutations static).

``LAYERS`` maps each ``model.flow`` name to its ``Layer`` (conditioner and bijection),
defined in the bijection's own module: a new kind of layer is its module and a line here
(and its name in ``config.FlowKind``).
"""

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

LAYERS: dict[str, Layer] = {"maf": MAF, "realnvp": REALNVP, "nsf": NSF, "nsf_ar": NSF_AR}

__all__ = [
    "LAYERS",
    "Layer",
    "MADE",
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
