"""Gaussian variational families over one flat latent vector.

``declare`` registers the variational parameters with ``numpyro.param`` (so
SVI optimises them); ``distribution`` turns constrained parameters into the
posterior q(w). Guides and evaluation share ``distribution``, so what is
trained is exactly what is sampled from later.

Families (D = dimension of w):
- map:        q = Delta(loc)                          (MAP estimate under the prior)
- mean_field: q = N(loc, diag(scale^2))               (Blundell et al. 2015)
- lowrank:    q = N(loc, F F^T + diag(d)), F: (D, r)  (Rezende et al. 2014, sec. 4)
- full_rank:  q = N(loc, L L^T), L = diag(scale) (I + strictly-lower(U))
              (the lecture's MultivariateNormalTriL)

The full-rank factor is kept as row scales times a unit-diagonal triangle, as
NumPyro's AutoMultivariateNormal does: Adam moves every entry by about the
learning rate, and with a raw triangle that would make the off-diagonal
entries dwarf a small initial diagonal within a few steps, leaving L L^T
numerically singular.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

FULL_RANK_MAX_DIM = 4096  # D^2 parameters beyond this stop being sensible on a CPU


CONSTRAINTS = {
    "loc": constraints.real_vector,
    "scale": constraints.softplus_positive,
    "cov_factor": constraints.real,
    "cov_diag": constraints.softplus_positive,
    "unit_tril": constraints.real,  # only the strictly lower triangle is used
}


def declare(kind: str, site: str, loc_init, dim: int, init_scale: float, rank: int) -> dict:
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
    elif kind != "map":
        raise ValueError(f"unknown posterior family {kind!r}")
    return {
        name: numpyro.param(f"{site}_{name}", value, constraint=CONSTRAINTS[name])
        for name, value in initial.items()
    }


def distribution(kind: str, params: dict) -> dist.Distribution:
    """q(w) from constrained parameters (keys without the site prefix)."""
    loc = params["loc"]
    if kind == "map":
        return dist.Delta(loc, event_dim=1)
    if kind == "mean_field":
        return dist.Normal(loc, params["scale"]).to_event(1)
    if kind == "lowrank":
        return dist.LowRankMultivariateNormal(loc, params["cov_factor"], params["cov_diag"])
    if kind == "full_rank":
        return dist.MultivariateNormal(loc, scale_tril=scale_tril(params))
    raise ValueError(f"unknown posterior family {kind!r}")


def scale_tril(params: dict):
    """L = diag(scale) (I + strictly-lower(unit_tril)) of the full-rank family."""
    unit = jnp.tril(params["unit_tril"], -1) + jnp.eye(params["unit_tril"].shape[-1])
    return params["scale"][:, None] * unit


def site_params(site: str, params: dict) -> dict:
    """The variational parameters of ``site`` from SVI's parameter dict, prefix removed."""
    prefix = f"{site}_"
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def make_guide(kind: str, site: str, loc_init, dim: int, init_scale: float, rank: int):
    """A guide drawing ``site`` from the family ``kind``; it ignores the data."""

    def guide(*args, **kwargs):
        params = declare(kind, site, loc_init, dim, init_scale, rank)
        numpyro.sample(site, distribution(kind, params))

    return guide
