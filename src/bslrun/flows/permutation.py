"""A fixed permutation of the event coordinates: y = x[..., perm]; log|det| = 0."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform


class Permutation(Transform):
    """y = x[..., perm], x = y[..., argsort(perm)]. ``perm`` is static (a tuple)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, perm: Sequence[int]):
        perm = tuple(int(i) for i in perm)
        if sorted(perm) != list(range(len(perm))):
            raise ValueError(f"perm must be a permutation of 0..{len(perm) - 1}, got {perm}")
        self.perm = perm

    @classmethod
    def reverse(cls, dim: int) -> Permutation:
        return cls(range(dim - 1, -1, -1))

    @classmethod
    def random(cls, key: jax.Array, dim: int) -> Permutation:
        return cls(np.asarray(jax.random.permutation(key, dim)))

    def __call__(self, x):
        return x[..., np.asarray(self.perm)]

    def _inverse(self, y):
        return y[..., np.argsort(self.perm)]

    def inverse_and_log_det(self, y):
        x = self._inverse(y)
        return x, jnp.zeros(jnp.shape(y)[:-1], jnp.result_type(y))

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        return jnp.zeros(jnp.shape(x)[:-1], jnp.result_type(x))

    def tree_flatten(self):
        return (), ((), {"perm": self.perm})

    def eq(self, other, static: bool = False):
        return isinstance(other, Permutation) and self.perm == other.perm
