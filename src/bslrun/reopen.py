"""Reopen a finished run: ``bslrun.load(run_dir)`` gives a ``Run`` that predicts, samples and
scores from its folder alone (no data set, data cache or ``configs/`` needed).

>>> import bslrun
>>> run = bslrun.load("experiments/bnn_wine_white/2026-12-01_02-05-45_056218")
>>> run.metrics["test"]["rmse"]
0.70...
>>> pred = run.predict(x_new, num_samples=200, seed=0)   # BNN, original units
>>> pred.mean, pred.std, pred.quantiles([0.05, 0.95])

Inputs are in the original units of the training data (a run standardises them as it did
its own); every problem with a folder or an input is one line (``BslrunError``: exit codes
in errors.py). The files read are described in docs/run-folder.md.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import jax
import numpy as np

from bslrun import artifacts, seeding
from bslrun import reopen_checks as checks
from bslrun.config import EvalConfig
from bslrun.errors import ConfigError, ResourceError
from bslrun.models import build as build_family
from bslrun.models import family_class, scaler_free
from bslrun.models.family import Encodes, Predicts, Samples, Scores, require
from bslrun.registry import FAMILIES
from bslrun.runs import read_history

INTERVAL = (0.025, 0.975)  # lower_95 and upper_95


# ------------------------------------------------------------------ predictions


@dataclass(frozen=True)
class RegressionPrediction:
    """Posterior predictive summaries per row, in the target's original units.

    ``std`` is the total predictive standard deviation; ``epistemic_std`` is the part from
    the spread of the weights, ``aleatoric_std`` the observation noise (law of total
    variance). ``lower_95`` and ``upper_95`` bound the central 95% predictive interval.
    """

    mean: np.ndarray
    std: np.ndarray
    epistemic_std: np.ndarray
    aleatoric_std: np.ndarray
    lower_95: np.ndarray
    upper_95: np.ndarray
    _quantiles: object = field(repr=False, compare=False)

    def quantiles(self, levels) -> np.ndarray:
        """Predictive quantiles (n, len(levels)) of the same posterior draws.

        >>> pred.quantiles([0.05, 0.5, 0.95])[:, 1]   # the predictive medians
        """
        levels = tuple(float(q) for q in np.atleast_1d(levels))
        if not all(0.0 < q < 1.0 for q in levels):
            raise ConfigError(f"quantile levels {list(levels)} must lie strictly between 0 and 1")
        return self._quantiles(levels)

    def columns(self) -> dict:
        """Named columns, as ``bslrun-predict`` writes them."""
        names = ("mean", "std", "lower_95", "upper_95", "epistemic_std", "aleatoric_std")
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class ClassificationPrediction:
    """Posterior predictive class probabilities per row (n, C), their entropy (total
    uncertainty), the mutual information between label and weights (its epistemic part)
    and the most probable class."""

    probs: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    prediction: np.ndarray
    class_names: tuple

    def columns(self) -> dict:
        out = {f"p_{name}": self.probs[:, k] for k, name in enumerate(self.class_names)}
        out.update(
            entropy=self.entropy,
            mutual_information=self.mutual_information,
            prediction=np.asarray(self.class_names)[self.prediction],
        )
        return out


# ------------------------------------------------------------------ the folder


def load(run_dir, *, allow_incomplete: bool = False) -> Run:
    """Reopen the run folder ``run_dir``.

    A run that did not complete (diverged, interrupted, failed) is refused unless
    ``allow_incomplete``: its parameters are then the last ones saved.

    >>> run = bslrun.load("experiments/maf_moons/2026-12-01_09-00-00_000000")
    >>> run.sample(1000, seed=0).shape
    (1000, 2)
    """
    return Run(Path(run_dir), allow_incomplete)


def read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: the run folder is incomplete; copy the whole folder"
        ) from None
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise ResourceError(
            f"cannot read the {what} {path} ({reason}); restore it from a copy of the run folder"
        ) from None


def check_format(folder: artifacts.RunFolder) -> dict:
    """run.json, after checking that this bslrun reads the folder's format."""
    root = folder.root
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; give a run folder (experiments/<name>/<time>)")
    if not folder.manifest.is_file():
        if folder.metrics.is_file() or folder.hydra_config.is_file():
            raise ConfigError(
                f"{root} was written by a bslrun older than run-folder format 1 (it has no "
                f"run.json) and cannot be reopened; train it again with this version "
                f"(its overrides are in {folder.hydra_overrides})"
            )
        raise ConfigError(
            f"{root} is not a run folder (no run.json); give experiments/<name>/<time>"
        )
    manifest = read_json(folder.manifest, "run description")
    written = manifest.get("format") if isinstance(manifest, dict) else None
    if written not in artifacts.READABLE_FORMATS:
        readable = ", ".join(map(str, artifacts.READABLE_FORMATS))
        by = manifest.get("bslrun_version", "?") if isinstance(manifest, dict) else "?"
        raise ConfigError(
            f"{root} has run-folder format {written} (written by bslrun {by}); this bslrun "
            f"reads formats {readable}: reopen it with bslrun {by}, or train it again"
        )
    return manifest


def check_completed(folder: artifacts.RunFolder, allow_incomplete: bool) -> dict | None:
    status = artifacts.read_status(folder.root)
    state = status["status"] if status else "unknown"
    if state != "completed" and not allow_incomplete:
        why = f": {status['error']}" if status and status.get("error") else ""
        raise ConfigError(
            f"{folder.root} did not complete (status {state}{why}); its parameters are not "
            "final: finish it (bslrun trainer.resume=<folder>) or pass allow_incomplete=True "
            "(bslrun-predict --allow-incomplete) to use the last saved ones"
        )
    return status


def eval_config(config: dict, root: Path) -> EvalConfig:
    try:
        return EvalConfig(**(config.get("eval") or {}))
    except TypeError:
        why = "has an eval section that is not eval's settings"
        raise checks.folder_damaged(root / "config.json", why) from None


def model_config(config: dict, root: Path):
    """The typed model section of config.json (enums checked against this bslrun)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    section = config.get("model") or {}
    family = section.get("family") if isinstance(section, dict) else None
    entry = FAMILIES.get(family) if isinstance(family, str) else None
    if entry is None:
        raise ConfigError(f"{root}/config.json names no model family this bslrun knows")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(entry.schema), section))
    except OmegaConfBaseException as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(
            f"{root}/config.json does not fit this bslrun's model settings ({reason}); "
            "reopen it with the bslrun version in its run.json"
        ) from None


def as_key(seed):
    """A PRNG key from an integer seed, or the key itself (``reopen_checks.seed_key``)."""
    return checks.seed_key(seed)


class Run:
    """A finished run, reopened from its folder. See ``load``.

    Attributes: ``path``; ``config``, ``metrics``, ``status``, ``provenance`` (plain
    dicts); ``history`` ({column: array}); ``spec`` (the data spec: feature names,
    scalers); ``eval_keys`` (the keys of the run's own test evaluation: ``seed=
    run.eval_keys.artifacts`` reproduces its saved arrays).
    """

    def __init__(self, path: Path, allow_incomplete: bool = False):
        folder = artifacts.RunFolder(path)
        self.path = folder.root
        self.provenance = check_format(folder)
        self.status = check_completed(folder, allow_incomplete)
        self.config = read_json(folder.config, "config")
        if not isinstance(self.config, dict):
            raise checks.folder_damaged(folder.config, "is not the run's config object")
        data = read_json(folder.data_spec, "data spec")
        checks.check_spec_json(data, folder.data_spec, self.config)
        self.spec = checks.spec_of(data, folder.data_spec)
        self.n_train = data["n_train"]
        checks.check_seed(self.config.get("seed"), self.path)
        self._eval = eval_config(self.config, self.path)
        self.metrics = read_json(folder.metrics, "metrics") if folder.metrics.is_file() else None
        self.history = read_history(folder.history)
        self.family = self._build(folder)
        self.params = read_params(folder.params)
        checks.check_params(self.params, self.family, folder.params)

    def _build(self, folder: artifacts.RunFolder):
        model = model_config(self.config, self.path)
        checks.check_model(model, self.path)
        if (self.config.get("inference") or {}).get("method") == "nuts":
            raise ConfigError(
                f"{self.path} is a NUTS run (inference=nuts): reopening it is not supported; "
                f"its posterior draws are in {folder.posterior_samples.name} and its test "
                f"predictions in {folder.arrays(family_class(model.family).info.saves).name}"
            )
        random = family_class(model.family).random_structure(model)
        structure = seeding.streams(self.config["seed"]).structure if random else None
        return checks.built(
            lambda: build_family(model, self.spec, self.n_train, structure), self.path
        )

    def __repr__(self) -> str:
        return f"bslrun.load({str(self.path)!r})  # {self.family.info.name} on {self.spec.name}"

    @property
    def name(self) -> str:
        return self.config["name"]

    @cached_property
    def eval_keys(self) -> seeding.EvalKeys:
        return seeding.eval_keys(self.config["seed"])

    # ------------------------------------------------------------- programs

    @cached_property
    def _predict(self):
        # As the run computed its saved predictions: the standardisers are arguments.
        program = jax.jit(scaler_free(self.family, "predict"), static_argnums=(4, 5))
        arrays = self.spec.scaler_arrays()
        return lambda *args: program(arrays, *args)

    @cached_property
    def _log_prob(self):
        return jax.jit(self.family.log_prob, static_argnums=3)

    @cached_property
    def _sample(self):
        return jax.jit(self.family.sample, static_argnums=2)

    @cached_property
    def _encode(self):
        return jax.jit(self.family.encode)

    @cached_property
    def _decode(self):
        return jax.jit(self.family.decode)

    # ------------------------------------------------------------- the API

    def inputs(self, x) -> np.ndarray:
        """``x`` (n, d) in original units -> the model's coordinates, checked."""
        return self.spec.x_scaler.forward(checks.check_inputs(x, self.spec))

    def predict(self, x, num_samples: int | None = None, seed=0):
        """Posterior predictive of a BNN for inputs x (n, d), or a mapping from feature
        name to column, in original units; ``num_samples`` posterior draws (default: the
        run's eval.num_samples) from ``seed`` (an int or a PRNG key).

        >>> pred = run.predict(x_new, num_samples=200, seed=0)
        >>> pred.mean, pred.std, pred.lower_95           # regression
        >>> pred.probs, pred.entropy, pred.mutual_information   # classification
        """
        require(self.family, Predicts, "predictions")
        xs = self.inputs(x)
        default = self.family.eval_samples(self._eval)
        num_samples, key = self._draws(num_samples, default), as_key(seed)
        if num_samples > default:  # the run's own number fitted when it ran
            program = functools.partial(
                scaler_free(self.family, "predict"), num_samples=num_samples, levels=INTERVAL
            )
            args = (self.spec.scaler_arrays(), self.params, xs, key)
            checks.check_memory(program, args, "posterior draws", num_samples)
        out = jax.device_get(self._predict(self.params, xs, key, num_samples, INTERVAL))
        if self.spec.task == "classification":
            names = self.spec.class_names or tuple(str(k) for k in range(self.spec.num_classes))
            return ClassificationPrediction(
                out["probs"], out["entropy"], out["mutual_information"], out["prediction"], names
            )
        lower, upper = np.moveaxis(out.pop("quantiles"), -1, 0)

        def quantiles(levels):
            got = self._predict(self.params, xs, key, num_samples, levels)["quantiles"]
            return np.asarray(got)

        return RegressionPrediction(**out, lower_95=lower, upper_95=upper, _quantiles=quantiles)

    def log_prob(self, x, num_samples: int | None = None, seed=0) -> np.ndarray:
        """log p(x) per row (n,) in nats, original units: exact for a flow; for a VAE the
        importance-weighted bound with ``num_samples`` draws (default eval.iw_samples)."""
        require(self.family, Scores, "density (log_prob)")
        xs = self.inputs(x)
        checks.check_binary(xs, self.family, self.config)
        num_samples, key = self._draws(num_samples, self._eval.iw_samples), as_key(seed)
        if self.family.info.exact_log_prob:
            num_samples = 1  # nothing is latent
        if num_samples > self._eval.iw_samples:  # the run's own number fitted when it ran
            program = functools.partial(self.family.log_prob, num_samples=num_samples)
            args = (self.params, xs, key)
            checks.check_memory(program, args, "importance samples", num_samples)
        return np.asarray(self._log_prob(self.params, xs, key, num_samples))

    def sample(self, num: int, seed=0) -> np.ndarray:
        """``num`` draws: points (flow, original units), images (VAE, E[x | z] with
        z ~ N(0, I)) or weight vectors w ~ q (BNN)."""
        require(self.family, Samples, "sampler")
        num, key = self._draws(num, None), as_key(seed)
        program = functools.partial(self.family.sample, num=num)
        checks.check_memory(program, (self.params, key), self.family.info.samples_are, num)
        return np.asarray(self._sample(self.params, key, num))

    def encode(self, x) -> tuple[np.ndarray, np.ndarray]:
        """VAE: (loc, scale) of q(z | x) for images x (n, D)."""
        require(self.family, Encodes, "encoder")
        loc, scale = self._encode(self.params, self.inputs(x))
        return np.asarray(loc), np.asarray(scale)

    def decode(self, z) -> np.ndarray:
        """VAE: images E[x | z] (n, D) for codes z (n, L)."""
        require(self.family, Encodes, "decoder")
        z = np.asarray(z, dtype=np.float32)
        return np.asarray(self._decode(self.params, np.atleast_2d(z)))

    @staticmethod
    def _draws(num, default: int | None) -> int:
        """``num`` checked to be a positive integer; ``default`` where it is None."""
        num = default if num is None else num
        if not isinstance(num, (int, np.integer)) or num < 1:
            raise ConfigError(f"the number of draws must be a positive integer, not {num!r}")
        return int(num)


def read_params(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the run saved no parameters; train it again")
    try:
        return artifacts.load_params(path)
    except Exception as error:  # msgpack raises its own exception types on damage
        raise ResourceError(
            f"cannot read the parameters {path} ({type(error).__name__}); restore the file "
            "from a copy of the run folder"
        ) from None
