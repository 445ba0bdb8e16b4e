"""What a sweeper minimises (``objective``), and an optuna sweeper's settings
(``hydra/sweeper=optuna``, ``sweep=optuna_bnn``), checked before the first trial: optuna
would otherwise refuse them with a traceback, after the sweep has started (a reversed
interval, an unknown direction) or run no trial at all and fail looking for the best one
(``n_trials`` below 1)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from bslrun.errors import ConfigError

log = logging.getLogger("bslrun")

DIRECTIONS = ("minimize", "maximize")


def objective(metrics: dict) -> float | None:
    """The value a sweeper minimises: the validation score that early stopping watched
    (``train.monitored`` in metrics.json: ``val.nll`` by default, the VAE's ``val.neg_elbo``).

    Without a validation split, the final training loss (the negative ELBO per training
    datum) stands in, so that a study still compares like with like; the test split is
    never used for selection. None (a failed optuna trial) if the value is not finite.
    """
    monitored = (metrics.get("train") or {}).get("monitored") or "val."
    value = (metrics.get("val") or {}).get(monitored.removeprefix("val."))
    if value is None:
        value = (metrics.get("train") or {}).get("final_loss")
    return float(value) if value is not None and math.isfinite(value) else None


def is_optuna(sweeper) -> bool:
    return "optuna" in str(sweeper.get("_target_", ""))


def check(sweeper, overrides: list[str]) -> None:
    """ConfigError for optuna settings that cannot run a study; ``overrides``: the
    command line's, whose intervals join those of ``hydra.sweeper.params``."""
    if not is_optuna(sweeper):
        return
    for key in ("n_trials", "n_jobs"):
        value = sweeper.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"hydra.sweeper.{key}={value}: a study needs a whole number of at least 1; "
                f"set hydra.sweeper.{key}=<N>"
            )
    direction = sweeper.get("direction")
    several = isinstance(direction, Sequence) and not isinstance(direction, str)
    directions = list(direction) if several else [direction]
    for chosen in directions:
        chosen = getattr(chosen, "name", chosen)  # optuna's own default is its enum
        if str(chosen) not in DIRECTIONS:
            raise ConfigError(
                f"hydra.sweeper.direction={chosen}: choose minimize (the validation metric "
                "bslrun returns) or maximize"
            )
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    for override in _parsed(params + overrides):
        if override.is_interval_sweep():
            _check_interval(override)


def _parsed(overrides: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _check_interval(override) -> None:
    """An interval's ends in order; a log interval's above zero."""
    interval, key = override.value(), override.get_key_element()
    if interval.start > interval.end:
        raise ConfigError(
            f"{key}=interval({interval.start}, {interval.end}) is reversed; write the lower "
            f"end first: interval({interval.end}, {interval.start})"
        )
    if "log" in interval.tags and interval.start <= 0:
        raise ConfigError(
            f"{key}=tag(log, interval({interval.start}, {interval.end})): a log interval "
            "starts above 0; raise its lower end or drop the log tag"
        )


def without_best_trial(sweep, arguments: list[str]) -> None:
    """optuna's ``sweep``, for a study in which no trial completed: it has no best trial,
    which optuna refuses (a ValueError, after every trial has run). The sweep then ends as
    any other, listing its failed jobs (exit 1), without optimization_results.yaml."""
    try:
        sweep(arguments)
    except ValueError as error:
        if "No trials are completed yet" not in str(error):  # optuna 2's study.best_trial
            raise
        log.error("no trial of the study completed, so it has no best parameters")
