"""Normalising-flow bijections as numpyro transforms, one per file.

Conditioner parameters are held explicitly, so each transform is a pure function
of (params, x) and a pytree (params are leaves; modules and permutations static).
"""

from bslrun.flows.affine_autoregressive import MaskedAffineAutoregressive
from bslrun.flows.affine_coupling import AffineCoupling, coupling_net
from bslrun.flows.distribution import Flow
from bslrun.flows.inverse_autoregressive import InverseAutoregressive, iaf_conditioner
from bslrun.flows.made import MADE, MaskedMLP, stable_log_scale
from bslrun.flows.permutation import Permutation
from bslrun.flows.spline import (
    MaskedSplineAutoregressive,
    SplineCoupling,
    rational_quadratic_spline,
    spline_coupling_net,
)

__all__ = [
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
