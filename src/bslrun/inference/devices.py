"""Where training runs: one device, or data-parallel over a mesh of several.

Data parallelism is expressed as shardings, not as a rewritten program: the
training data and the SVI state are replicated on every device, and each
step's batch is constrained to be split along its first axis over the mesh
axis ``data``. XLA's partitioner then runs the per-example work of each step
on the device holding those examples and inserts the all-reduce of the
gradient (the loss is a sum over the batch). One device and several compute
the same function; only the order of floating-point sums differs.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bslrun.errors import ConfigError

AXIS = "data"


class Placement:
    """The devices of one training run (``trainer.devices`` of ``jax.devices()``)."""

    def __init__(self, devices: int = 1):
        available = jax.devices()
        if devices > len(available):
            raise ConfigError(
                f"trainer.devices={devices} but JAX sees {len(available)} "
                f"{available[0].platform.upper()} device(s); lower trainer.devices (on CPU, "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} splits the host)"
            )
        self.devices = devices
        self.mesh = Mesh(np.array(available[:devices]), (AXIS,)) if devices > 1 else None

    def replicate(self, tree):
        """Put ``tree`` on every device of the run (or on the default device)."""
        if self.mesh is None:
            return jax.device_put(tree)
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def split_batch(self, tree):
        """Inside a traced step: split the leading (batch) axis of ``tree`` over the devices."""
        if self.mesh is None:
            return tree
        batch = NamedSharding(self.mesh, PartitionSpec(AXIS))
        return jax.tree.map(lambda leaf: jax.lax.with_sharding_constraint(leaf, batch), tree)

    def check_batch(self, batch_size: int) -> None:
        """A batch cut short by a small training set must still split evenly."""
        if batch_size % self.devices:
            raise ConfigError(
                f"the batch of {batch_size} examples (the whole training set) does not split "
                f"over trainer.devices={self.devices}; lower trainer.devices"
            )
