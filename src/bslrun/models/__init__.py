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


def with_scalers(family, arrays: tuple):
    """``family`` for its data with the standardisers ``arrays`` (``DataSpec.scaler_arrays``),
    in a program that takes them as arguments."""
    return family.for_spec(family.spec.with_scalers(arrays))


def scaler_free(family, method: str):
    """``family.<method>`` as a function of ``(scaler arrays, *args)``: compiled, it holds
    none of the data's numbers, so runs whose standardisers differ (other seeds and
    splits) load it from the compilation cache instead of compiling it again."""

    def program(arrays, *args, **kwargs):
        return getattr(with_scalers(family, arrays), method)(*args, **kwargs)

    return program
