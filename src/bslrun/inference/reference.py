"""How far a BNN's test predictive is from a NUTS reference: ``eval.reference=<folder>``.

A run with ``inference=nuts`` writes ``reference.npz`` (``reference_arrays``): the test
targets ``y`` and, for regression, per test point the predictive quantiles at the levels
u_k = (k - 1/2) / K, k = 1..K (K = ``NUM_LEVELS``), its mean and its std, in original
units; for classification, the predictive class probabilities. A variational run given
``eval.reference`` computes its own predictive at the same points and levels and reports,
as means over the n test points (``regression_distances``, ``classification_distances``):

- ``w2``: the 1-D Wasserstein-2 distance between the two predictives P (reference) and Q,
  W2(P, Q)^2 = int_0^1 (F_P^-1(u) - F_Q^-1(u))^2 du (Villani 2009, remark 2.19), by the
  midpoint rule on the K levels: sqrt(mean_k (q_k - q_ref_k)^2). It leaves out the tails
  beyond u_1 and u_K, so for two Normals it gives (m - m')^2 + c_K (s - s')^2 under the
  root, c_K = mean_k Phi^-1(u_k)^2 = 0.987 for K = 100, where the exact W2^2 has c = 1.
- ``kl_gauss``: KL(N(m_ref, s_ref^2) || N(m, s^2)) between the moment-matched Normals,
  log(s / s_ref) + (s_ref^2 + (m_ref - m)^2) / (2 s^2) - 1/2. The reference comes first:
  this direction grows without bound as the approximation's s shrinks below s_ref (an
  overconfident predictive, the usual failure of variational BNNs) and is the expected
  log-density loss of Q's Normal on draws from the reference's.
- classification (Izmailov et al. 2021, "What are Bayesian neural network posteriors
  really like?", sec. 4): ``agreement``, the fraction of points whose arg-max classes
  match, and ``total_variation``, mean_i 1/2 sum_c |p_ic - p_ref_ic|.

The distances are pure numpy; ``read`` checks a reference folder before anything trains.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from bslrun.artifacts import RunFolder
from bslrun.errors import DataError

NUM_LEVELS = 100  # K quantile levels of reference.npz


def levels(num: int = NUM_LEVELS) -> tuple[float, ...]:
    """The midpoints u_k = (k - 1/2) / K, k = 1..K, of K equal slices of (0, 1)."""
    return tuple((k - 0.5) / num for k in range(1, num + 1))


# ------------------------------------------------------------------ distances


def wasserstein2(quantiles, reference_quantiles):
    """Per-point W2 from quantiles at the levels ``levels()`` (..., K): shape (...)."""
    diff = np.asarray(quantiles, np.float64) - np.asarray(reference_quantiles, np.float64)
    return np.sqrt(np.mean(diff**2, axis=-1))


def gaussian_kl(mean_ref, std_ref, mean, std):
    """KL(N(mean_ref, std_ref^2) || N(mean, std^2)), elementwise."""
    mean_ref, std_ref, mean, std = (
        np.asarray(a, np.float64) for a in (mean_ref, std_ref, mean, std)
    )
    return np.log(std / std_ref) + (std_ref**2 + (mean_ref - mean) ** 2) / (2 * std**2) - 0.5


def agreement(probs, reference_probs) -> float:
    """Fraction of rows of (n, C) probabilities whose arg-max classes match."""
    return float(np.mean(np.argmax(probs, axis=-1) == np.argmax(reference_probs, axis=-1)))


def total_variation(probs, reference_probs) -> float:
    """Mean over rows of 1/2 sum_c |p_c - p_ref_c| for (n, C) probabilities."""
    gap = np.abs(np.asarray(probs, np.float64) - np.asarray(reference_probs, np.float64))
    return float(np.mean(0.5 * np.sum(gap, axis=-1)))


def regression_distances(own: dict, ref: dict) -> dict:
    """Mean W2 and Gaussian KL over test points; ``own`` and ``ref`` hold ``quantiles``
    (n, K) at the same levels, ``mean`` and ``std`` (n,)."""
    return {
        "w2": float(np.mean(wasserstein2(own["quantiles"], ref["quantiles"]))),
        "kl_gauss": float(np.mean(gaussian_kl(ref["mean"], ref["std"], own["mean"], own["std"]))),
    }


def classification_distances(own: dict, ref: dict) -> dict:
    return {
        "agreement": agreement(own["probs"], ref["probs"]),
        "total_variation": total_variation(own["probs"], ref["probs"]),
    }


# ------------------------------------------------------------------ the file


def targets(spec, y) -> np.ndarray:
    """The test targets as reference.npz holds them: original units, or class labels."""
    if spec.task == "classification":
        return np.asarray(y)
    return np.asarray(spec.y_scaler.inverse(y))


def reference_arrays(task: str, summary: dict, y) -> dict:
    """What a NUTS run writes to reference.npz from its predictive ``summary`` at
    ``levels()`` (``quantiles`` (n, K), ``mean``, ``std``; or ``probs`` (n, C))."""
    if task == "classification":
        return {"y": y, "probs": summary["probs"]}
    keep = ("quantiles", "mean", "std")
    return {"y": y, "levels": np.asarray(levels()), **{k: summary[k] for k in keep}}


def read(folder: str, y, task: str) -> dict:
    """reference.npz of the NUTS run in ``folder``, once it is known to predict the same
    test points ``y`` (as ``targets`` gives them) of a ``task`` data set; DataError else."""
    where = f"eval.reference={folder}"
    files = RunFolder(Path(folder))
    if not files.root.is_dir():
        raise DataError(f"{where}: no such folder; give the run folder of an inference=nuts run")
    try:
        method = json.loads(files.config.read_text()).get("inference", {}).get("method", "svi")
    except (OSError, ValueError, AttributeError):
        method = None
    if method != "nuts":
        raise DataError(
            f"{where} is not a NUTS run (its config.json has inference.method={method}); "
            "give the folder of a run made with inference=nuts on the same data"
        )
    try:
        with np.load(files.reference) as stored:
            arrays = {k: stored[k] for k in stored.files}
    except FileNotFoundError:
        raise DataError(
            f"{where} has no reference.npz (that NUTS run did not finish); run it again"
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{where}: reference.npz cannot be read ({error}); run it again") from None
    wanted = "probs" if task == "classification" else "quantiles"
    if wanted not in arrays:
        raise DataError(f"{where} holds no {wanted}: it is not a {task} run; use one that is")
    if not same_points(arrays["y"], np.asarray(y)):
        raise DataError(
            f"{where} was sampled on other test points (different data or data.split); "
            "give a NUTS run of the same data, data.split and seed"
        )
    return arrays


def same_points(stored, y) -> bool:
    """The same targets in the same order (to float32 rounding for regression)."""
    if stored.shape != y.shape:
        return False
    if np.issubdtype(y.dtype, np.integer):
        return bool(np.array_equal(stored, y))
    tolerance = 1e-5 * max(float(np.std(y)), 1e-12)
    return bool(np.allclose(stored, y, rtol=1e-5, atol=tolerance))


def compare(family, params, x, ref: dict, key, num_samples: int) -> dict:
    """metrics.json's ``reference`` section: ``family.predict`` on the test inputs ``x``
    at the reference's levels, and its distances from the reference ``ref``."""
    import jax

    if "probs" in ref:
        own = jax.device_get(jax.jit(family.predict, static_argnums=3)(params, x, key, num_samples))
        return classification_distances(own, ref)
    at = tuple(float(u) for u in ref["levels"])
    predict = jax.jit(family.predict, static_argnums=(3, 4))
    own = jax.device_get(predict(params, x, key, num_samples, at))
    return regression_distances(own, ref)
