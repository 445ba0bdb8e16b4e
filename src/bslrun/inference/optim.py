"""Optimisers as optax chains: clip -> update rule with a learning-rate schedule."""

from __future__ import annotations

import optax

from bslrun.config import OptimName, Schedule


def schedule(cfg, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """Learning rate per step; warm-up is linear from 0 over ``warmup_epochs``."""
    total = steps_per_epoch * epochs
    warmup = steps_per_epoch * cfg.warmup_epochs
    final = cfg.lr * cfg.final_lr_fraction
    kind = Schedule(cfg.schedule).value
    if kind == "constant":
        return optax.constant_schedule(cfg.lr)
    if kind == "cosine":
        return optax.cosine_decay_schedule(cfg.lr, total, alpha=cfg.final_lr_fraction)
    if kind == "warmup_constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)],
            [warmup],
        )
    if kind == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, total, end_value=final)
    raise ValueError(f"unknown schedule {kind!r}")


def build(
    cfg, steps_per_epoch: int, epochs: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation for ``cfg`` and its schedule (for logging)."""
    lr = schedule(cfg, steps_per_epoch, epochs)
    name = OptimName(cfg.name).value
    if name == "adam":
        rule = optax.adam(lr)
    elif name == "adamw":
        rule = optax.adamw(lr, weight_decay=cfg.weight_decay)
    elif name == "sgd":
        rule = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    elif name == "rmsprop":
        # Keras' defaults (rho 0.9, eps 1e-7), which the lecture notebooks used.
        rule = optax.rmsprop(lr, decay=0.9, eps=1e-7)
    else:
        raise ValueError(f"unknown optimiser {name!r}")
    if cfg.clip_norm is not None:
        rule = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), rule)
    return rule, lr
