"""Model families (registered in ``bslrun.registry.FAMILIES``); the protocol they all
follow is ``bslrun.models.family.Family``.

Every family is trained by the same engine (``bslrun.inference.engine``): it
supplies a NumPyro model and guide whose ELBO is scaled per datum by the
engine, and knows how to evaluate, describe and reopen its posterior.
"""

from __future__ import annotations

from bslrun import registry


def family_class(name: str):
    """The ``Family`` subclass registered as ``name`` (``bslrun.registry.FAMILIES``)."""
    return registry.load(registry.FAMILIES[name].family)


def build(cfg, spec, n_train: int, key=None):
    """Instantiate the family (a ``Family``) named by ``cfg.family`` for data described by
    ``spec``; ``key`` draws its fixed structural choices (e.g. a flow's random
    permutations)."""
    return family_class(cfg.family)(cfg, spec, n_train, key=key)
