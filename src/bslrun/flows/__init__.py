"""Normalising-flow bijections as numpyro transforms, one per file.

Conditioner parameters are held explicitly, so each transform is a pure function
of (params, x) and a pytree (params are leaves; modules and permutations static).
"""

from bslrun.flows.affine_autoregressive import MaskedAffineAutoregressive
from bslrun.flows.affine_coupling import AffineCoupling, coupling_net
from bslrun.flows.made import MADE, stable_log_scale
from bslrun.flows.permutation import Permutation

__all__ = [
    "MADE",
    "AffineCoupling",
    "MaskedAffineAutoregressive",
    "Permutation",
    "coupling_net",
    "stable_log_scale",
]
