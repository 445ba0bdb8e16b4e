"""SVI pieces shared by the engine and the memory estimate: the loss, the parameters,
the per-epoch arguments and the batch plan."""

from __future__ import annotations

import jax.numpy as jnp
from numpyro.infer import SVI
from numpyro.optim import optax_to_numpyro

from bslrun.models.objectives import ScaledLoss


def make_svi(family, optimiser, num_particles: int) -> SVI:
    """SVI whose loss is the negative ELBO per training datum.

    The family chooses its objective (``family.objective(num_particles)``: Trace_ELBO
    by default, or e.g. an importance-weighted bound). The 1/N is applied to the loss,
    outside any log-sum-exp of the objective.
    """
    loss = family.objective(num_particles)
    per_datum = 1.0 / family.n_train
    return SVI(
        family.model,
        family.guide,
        optax_to_numpyro(optimiser),
        ScaledLoss(loss, lambda *args: per_datum),
    )


def variables(svi: SVI, state) -> dict:
    """Constrained parameters plus mutable state (batch-norm statistics), by site name."""
    return {**svi.get_params(state), **(state.mutable_state or {})}


def variable_shapes(family) -> dict:
    """Shapes and dtypes of what training saves for ``family`` (``variables`` of its initial
    state), traced abstractly from one row of its inputs: nothing is allocated or compiled.
    The optimiser and the number of particles do not change them."""
    import jax
    import optax

    spec = family.spec
    x = jax.ShapeDtypeStruct((1, spec.input_dim), jnp.float32)
    y = jax.ShapeDtypeStruct((1,), jnp.int32 if spec.task == "classification" else jnp.float32)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    svi = make_svi(family, optax.identity(), 1)
    kwargs = epoch_kwargs(family, 1)
    return jax.eval_shape(lambda k, x, y: variables(svi, svi.init(k, x, y, **kwargs)), key, x, y)


def epoch_kwargs(family, epoch: int) -> dict:
    """Per-epoch model arguments (e.g. a KL warm-up weight) as float32 scalars."""
    return {k: jnp.float32(v) for k, v in family.epoch_kwargs(epoch).items()}


def batch_plan(n: int, batch_size: int) -> tuple[int, int]:
    """(batch size, batches per epoch) with fixed shapes; a batch never exceeds n."""
    batch_size = min(batch_size, n)
    return batch_size, n // batch_size
