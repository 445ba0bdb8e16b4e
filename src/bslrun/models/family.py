"""The model-family protocol: every member that the engine, evaluation, plotting and
reopening (``bslrun.load``) use, in one base class.

A family implements ``model``, ``guide``, ``evaluate``, ``eval_samples``, ``artifacts``
and ``plot``; it may replace the defaults below (the objective, per-epoch arguments,
validation). Its static facts are a ``FamilyInfo``. Reopening asks for small protocols
(``Predicts``, ``Samples``, ``Scores``, ``Encodes``) that a family implements where it
can; ``require`` refuses the others in one line that says what the family offers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from bslrun.errors import ConfigError

VAL_SAMPLES = 32  # posterior draws per validation pass during training (default)


@dataclass(frozen=True)
class FamilyInfo:
    """A family's static facts, the same for every run of it: what it is called, what its
    run folder holds, what early stopping watches and what reopening offers."""

    name: str  # model.family
    saves: str = "predictions"  # which arrays file the run folder holds (RunFolder.arrays)
    # What reopening offers, for the one-line refusals (``require``).
    offers: str = "nothing to reopen"
    # What a sample is, and whether it is a draw of the data (points, images) or of the model.
    samples_are: str = "draws"
    samples_data: bool = True
    # log_prob is exact (nothing latent to average over) or an importance-weighted bound.
    exact_log_prob: bool = True
    # Numeric model settings that reach the model only as numbers (never through a
    # Python branch or a shape): replicas trained together may differ in them.
    traced_settings: tuple = ()
    # The validation score that early stopping watches for ``trainer.monitor=nll``, and for
    # a monitor the family does not score: its estimate of the NLL, named for the estimator
    # (the VAE's one-draw bound is ``neg_elbo``, not ``nll``).
    val_loss: str = "nll"


class Family:
    info: ClassVar[FamilyInfo] = FamilyInfo("family")

    @classmethod
    def random_structure(cls, cfg) -> bool:
        """Whether building the family for ``cfg`` draws from its ``key`` (e.g. a flow's
        random permutations); reopening skips deriving the key when it does not."""
        return False

    def __init__(self, cfg, spec, n_train: int):
        self.cfg = cfg
        self.spec = spec
        self.n_train = n_train  # N: the likelihood of a batch of B is scaled by N / B

    def for_spec(self, spec) -> Family:
        """This family, its structure and networks unchanged, for another spec of the same
        shapes: one whose standardisers a program takes as arguments (``models.with_scalers``).
        A member derived from the spec is therefore a property, never set in ``__init__``."""
        twin = copy.copy(self)
        twin.spec = spec
        return twin

    # ----------------------------------------------------------- training

    def model(self, x, y=None, **epoch_kwargs) -> None:
        """NumPyro model p(y, latents | x) for one minibatch."""
        raise NotImplementedError

    def guide(self, x, y=None, **epoch_kwargs) -> None:
        """NumPyro guide q(latents) for the same minibatch."""
        raise NotImplementedError

    def objective(self, num_particles: int):
        """The ELBO estimator that SVI minimises (the engine scales it by 1 / N)."""
        from numpyro.infer import Trace_ELBO

        return Trace_ELBO(num_particles=num_particles)

    def epoch_kwargs(self, epoch: int) -> dict:
        """Per-epoch keyword arguments of ``model`` and ``guide`` (e.g. a KL weight)."""
        return {}

    # ---------------------------------------------------------- evaluation

    def evaluate(self, params: dict, x, y, key, num_samples: int) -> dict[str, Any]:
        """Scalar metrics of the posterior predictive on (x, y); jit-compatible."""
        raise NotImplementedError

    def validate(self, params: dict, x, y, key, num_samples: int) -> dict[str, Any]:
        """What a validation epoch scores (must include ``val_loss``)."""
        return self.evaluate(params, x, y, key, num_samples)

    def final_validate(self, params: dict, x, y, key, num_samples: int) -> dict[str, Any]:
        """The validation metrics of metrics.json (``final_val_samples`` draws)."""
        return self.evaluate(params, x, y, key, num_samples)

    def curve_labels(self) -> tuple[str, str]:
        """The learning curves' axis labels, (training loss, ``val_loss``), each naming its
        estimator and units. A regression BNN trains on standardised targets but is
        validated in the data's units."""
        if self.spec.task == "regression":
            return (
                "-ELBO / N (nats per datum, standardised y)",
                "validation NLL (nats per datum, original y)",
            )
        return "-ELBO / N (nats per datum)", "validation NLL (nats per datum)"

    def monitored(self, monitor: str, scores: dict) -> str:
        """The key of the validation ``scores`` that ``trainer.monitor`` selects."""
        return monitor if monitor in scores else self.info.val_loss

    def eval_samples(self, eval_cfg) -> int:
        """Draws that ``evaluate`` (test metrics) and ``artifacts`` use."""
        raise NotImplementedError

    def val_samples(self, eval_cfg) -> int:
        """Draws per validation pass during training."""
        return VAL_SAMPLES

    def final_val_samples(self, eval_cfg) -> int:
        """Draws for the validation metrics of metrics.json."""
        return self.eval_samples(eval_cfg)

    def artifacts(self, params: dict, x, y, key, num_samples: int) -> dict[str, Any]:
        """Arrays worth saving (predictions, samples); jit-compatible."""
        raise NotImplementedError

    def artifact_inputs(self, data_cfg, data, key) -> dict[str, Any]:
        """Further arrays that ``artifacts`` takes by keyword, read by the data layer
        (e.g. a BNN's out-of-distribution images); none by default."""
        return {}

    def plot(self, arrays: dict, plots_dir: Path) -> list:
        """Write the family's figures from ``artifacts`` output (and the test scores as
        ``test.<name>``, when a run draws them); returns the paths."""
        raise NotImplementedError


# ----------------------------------------------------------------- reopening
# What a reopened run can do, one small protocol each; a family implements those it offers.


@runtime_checkable
class Predicts(Protocol):
    def predict(self, params: dict, x, key, num_samples: int, levels=()) -> dict:
        """Per-row posterior predictive summaries for standardised inputs x (n, d)."""


@runtime_checkable
class Samples(Protocol):
    def sample(self, params: dict, key, num: int):
        """``num`` draws from the trained model, in original units."""


@runtime_checkable
class Scores(Protocol):
    def log_prob(self, params: dict, x, key, num_samples: int):
        """log p(x) per row (n,) in original units."""


@runtime_checkable
class Encodes(Protocol):
    def encode(self, params: dict, x):
        """Latent codes of x."""

    def decode(self, params: dict, z):
        """Data for latent codes z."""


def require(family: Family, capability: type, what: str) -> None:
    """ConfigError, in one line saying what the family offers instead, unless ``family``
    has ``capability`` (``what``: the thing asked for, e.g. "predictions")."""
    if not isinstance(family, capability):
        info = family.info
        raise ConfigError(f"a {info.name} run has no {what}; it offers {info.offers}")
