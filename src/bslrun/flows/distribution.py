"""A flow as a NumPyro distribution whose density costs one conditioner pass per layer.

NumPyro's ``TransformedDistribution.log_prob`` inverts each layer (``t.inv(y)``) and
then asks for its log-determinant (``t.log_abs_det_jacobian(x, y)``): two calls of
the layer's network. Under jit XLA merges the two forward passes, but the gradient
still runs back through both. ``Flow`` asks each layer for both at once
(``inverse_and_log_det``), so training pays for one pass forward and one backward:

  log q(x) = log N(u; 0, I) - sum_k log |det dT_k / d(input of T_k)|,  u = T^-1(x).
"""

from __future__ import annotations

from numpyro.distributions import TransformedDistribution


class Flow(TransformedDistribution):
    """``TransformedDistribution`` whose layers all have ``inverse_and_log_det``."""

    def __init__(self, base_distribution, transforms, validate_args=None):
        missing = [type(t).__name__ for t in transforms if not hasattr(t, "inverse_and_log_det")]
        if missing:
            raise TypeError(f"flow layers without inverse_and_log_det: {', '.join(missing)}")
        super().__init__(base_distribution, transforms, validate_args=validate_args)

    def log_prob(self, value, intermediates=None):
        if intermediates is not None:  # a draw's own intermediates: NumPyro's path is exact
            return super().log_prob(value, intermediates)
        log_det = 0.0
        for transform in reversed(self.transforms):
            value, layer_log_det = transform.inverse_and_log_det(value)
            log_det = log_det + layer_log_det
        return self.base_dist.log_prob(value) - log_det
