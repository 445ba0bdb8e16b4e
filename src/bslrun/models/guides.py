"""Variational families over one flat latent vector: Gaussians and Gaussian-based flows.

``declare`` registers the variational parameters with ``numpyro.param`` (so
SVI optimises them); ``distribution`` turns constrained parameters into the
posterior q(w). Guides and evaluation share ``distribution``, so what is
trained is exactly what is sampled from later, and evaluation draws through
``sample_and_log_prob``, the path NumPyro's ELBOs take.

Families (D = dimension of w):
- map:        q = Delta(loc)                          (MAP estimate under the prior)
- mean_field: q = N(loc, diag(scale^2))               (Blundell et al. 2015)
- lowrank:    q = N(loc, F F^T + diag(d)), F: (D, r)  (Rezende et al. 2014, sec. 4)
- full_rank:  q = N(loc, L L^T), L = diag(scale) (I + strictly-lower(U))
              (the lecture's MultivariateNormalTriL)
- iaf:        w = loc + scale * T(eps), eps ~ N(0, I), T = K inverse autoregressive
              affine steps (Kingma et al. 2016), each a MADE over all D coordinates
- iaf_spline: the same with rational-quadratic spline steps (Durkan et al. 2019)

The flows' MADE outputs start at zero, so T starts as the identity and q as the
mean-field N(loc, init_scale^2). Sampling is one parallel MADE pass per step, and
log q of a draw reuses that pass (``InverseAutoregressive`` intermediates), so no
D-pass sequential inverse is ever run.

The full-rank factor is kept as row scales times a unit-diagonal triangle, as
NumPyro's AutoMultivariateNormal does: Adam moves every entry by about the
learning rate, and with a raw triangle that would make the off-diagonal
entries dwarf a small initial diagonal within a few steps, leaving L L^T
numerically singular.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import AffineTransform

from bslrun.flows.inverse_autoregressive import InverseAutoregressive, iaf_conditioner

FULL_RANK_MAX_DIM = 4096  # D^2 parameters beyond this stop being sensible on a CPU
# A flow step's MADE has ~D * hidden * (1 + outputs) weights and its masks are constants
# of the compiled program: beyond this many coordinates, use a Gaussian family.
FLOW_MAX_DIM = 20000
# Elementwise map of each flow family: 0 bins is affine, K > 0 a K-bin spline on
# [-SPLINE_TAIL_BOUND, SPLINE_TAIL_BOUND] (eps ~ N(0, 1) lies there but for ~6e-7).
FLOW_BINS = {"iaf": 0, "iaf_spline": 8}
SPLINE_TAIL_BOUND = 5.0


@dataclass(frozen=True)
class FlowShape:
    """T of the flow families: ``steps`` IAF steps whose MADEs have ``hidden`` widths."""

    steps: int = 2
    hidden: tuple[int, ...] = (256,)

    def conditioners(self, kind: str, dim: int) -> list:
        return [iaf_conditioner(dim, self.hidden, k, FLOW_BINS[kind]) for k in range(self.steps)]


CONSTRAINTS = {
    "loc": constraints.real_vector,
    "scale": constraints.softplus_positive,
    "cov_factor": constraints.real,
    "cov_diag": constraints.softplus_positive,
    "unit_tril": constraints.real,  # only the strictly lower triangle is used
}


def declare(
    kind: str,
    site: str,
    loc_init,
    dim: int,
    init_scale: float,
    rank: int,
    flow: FlowShape | None = None,
) -> dict:
    """numpyro.param for each variational parameter of ``kind``, named ``<site>_<name>``.

    ``loc_init(key)`` gives the initial mean (the network's own initialisation).
    Random initial values are lazy callables, so they are drawn from the key
    that SVI.init passes in and cost nothing in later steps.
    """
    initial = {"loc": loc_init}
    if kind == "mean_field":
        initial["scale"] = jnp.full((dim,), init_scale)
    elif kind == "lowrank":
        # A small random factor breaks the symmetry between its columns.
        initial["cov_factor"] = lambda key: (
            init_scale * jax.random.normal(key, (dim, rank)) / jnp.sqrt(rank)
        )
        initial["cov_diag"] = jnp.full((dim,), init_scale**2)
    elif kind == "full_rank":
        initial["scale"] = jnp.full((dim,), init_scale)
        initial["unit_tril"] = jnp.zeros((dim, dim))
    elif kind in FLOW_BINS:
        initial["scale"] = jnp.full((dim,), init_scale)
        for step, made in enumerate(_needs(flow, kind).conditioners(kind, dim)):
            initial[f"flow_{step}"] = lambda key, made=made: made.init(key, jnp.zeros(dim))
    elif kind != "map":
        raise ValueError(f"unknown posterior family {kind!r}")
    return {
        # Flow conditioners are unconstrained pytrees (Flax variables).
        name: numpyro.param(
            f"{site}_{name}", value, constraint=CONSTRAINTS.get(name, constraints.real)
        )
        for name, value in initial.items()
    }


def distribution(kind: str, params: dict, flow: FlowShape | None = None) -> dist.Distribution:
    """q(w) from constrained parameters (keys without the site prefix)."""
    loc = params["loc"]
    if kind == "map":  # every axis an event axis: a point (D,), or an ensemble's (M, D)
        return dist.Delta(loc, event_dim=jnp.ndim(loc))
    if kind == "mean_field":
        return dist.Normal(loc, params["scale"]).to_event(1)
    if kind == "lowrank":
        return dist.LowRankMultivariateNormal(loc, params["cov_factor"], params["cov_diag"])
    if kind == "full_rank":
        return dist.MultivariateNormal(loc, scale_tril=scale_tril(params))
    if kind in FLOW_BINS:
        return flow_distribution(kind, params, _needs(flow, kind))
    raise ValueError(f"unknown posterior family {kind!r}")


def _needs(flow: FlowShape | None, kind: str) -> FlowShape:
    if flow is None:
        raise ValueError(f"posterior family {kind!r} needs its FlowShape (steps, hidden)")
    return flow


def flow_distribution(kind: str, params: dict, flow: FlowShape) -> dist.Distribution:
    """q(w): w = loc + scale * T(eps), eps ~ N(0, I_D), T = step_K o ... o step_1.

    log q(w) = log N(eps; 0, I) - sum_k log|det d step_k| - sum_j log scale_j
    (change of variables; Rezende and Mohamed 2015, eq. 5).
    """
    loc = params["loc"]
    steps = [
        InverseAutoregressive(made, params[f"flow_{k}"], FLOW_BINS[kind], SPLINE_TAIL_BOUND)
        for k, made in enumerate(flow.conditioners(kind, loc.shape[-1]))
    ]
    base = dist.Normal(jnp.zeros_like(loc), 1.0).to_event(1)
    affine = AffineTransform(loc, params["scale"])
    return dist.TransformedDistribution(base, [*steps, affine])


def sample_and_log_prob(q: dist.Distribution, key, sample_shape=()):
    """Draws w ~ q (sample_shape + event shape) and log q(w) (sample_shape).

    log q comes from the sampling pass's intermediates where q keeps any (the flows:
    their inverse would be D sequential MADE passes), as NumPyro's ELBOs score a
    guide's sample sites.
    """
    w, intermediates = q.sample_with_intermediates(key, sample_shape)
    return w, q.log_prob(w, intermediates) if intermediates else q.log_prob(w)


def scale_tril(params: dict):
    """L = diag(scale) (I + strictly-lower(unit_tril)) of the full-rank family."""
    unit = jnp.tril(params["unit_tril"], -1) + jnp.eye(params["unit_tril"].shape[-1])
    return params["scale"][:, None] * unit


def site_params(site: str, params: dict) -> dict:
    """The variational parameters of ``site`` from SVI's parameter dict, prefix removed."""
    prefix = f"{site}_"
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def make_guide(
    kind: str,
    site: str,
    loc_init,
    dim: int,
    init_scale: float,
    rank: int,
    flow: FlowShape | None = None,
):
    """A guide drawing ``site`` from the family ``kind``; it ignores the data."""

    def guide(*args, **kwargs):
        params = declare(kind, site, loc_init, dim, init_scale, rank, flow)
        numpyro.sample(site, distribution(kind, params, flow))

    return guide
