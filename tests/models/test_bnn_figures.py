"""The arrays behind the BNN figures against closed forms: mutual information, the law of
total variance on the 1D predictive curve, the weight histograms and the image views."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_spec
from scipy import stats

from bslrun.config import BnnConfig, Likelihood, Posterior
from bslrun.data.splits import Standardiser
from bslrun.models import bnn_figures
from bslrun.models.bnn import BnnFamily, classification_summary

KEY = jax.random.PRNGKey(0)


def entropy(p):
    p = np.asarray(p, np.float64)
    return -np.sum(p * np.log(p), axis=-1)


def test_mutual_information_is_entropy_of_the_mean_minus_mean_entropy():
    # Two draws disagreeing: p_1 = (0.9, 0.1), p_2 = (0.1, 0.9); the mean is (1/2, 1/2).
    probs = np.array([[[0.9, 0.1]], [[0.1, 0.9]]])
    out = classification_summary(jnp.log(jnp.asarray(probs, jnp.float32)))
    h_mean = np.log(2.0)
    mean_h = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))  # both draws have this entropy
    assert float(out["entropy"][0]) == pytest.approx(h_mean, rel=1e-5)
    assert float(out["mutual_information"][0]) == pytest.approx(h_mean - mean_h, rel=1e-4)
    # Draws that agree carry no information about w: I = 0 however uncertain each is.
    same = classification_summary(jnp.log(jnp.full((5, 1, 3), 1.0 / 3.0)))
    assert float(same["mutual_information"][0]) == pytest.approx(0.0, abs=1e-6)
    # In general 0 <= I <= H (Jensen: H is concave).
    logits = jax.random.normal(KEY, (7, 50, 4)) * 3.0
    out = classification_summary(logits)
    mi, h = np.asarray(out["mutual_information"]), np.asarray(out["entropy"])
    assert np.all(mi >= 0) and np.all(mi <= h + 1e-6)


def linear_family(scale=0.4, noise=0.3, y_scaler=None, posterior=Posterior.mean_field):
    """Bayesian linear regression f(x) = a x + b, q(a, b) = N(loc, diag(scale^2)), fixed noise."""
    spec = make_spec(1, 20)
    if y_scaler is not None:
        spec = dataclasses.replace(spec, y_scaler=y_scaler)
    cfg = BnnConfig(hidden=[], likelihood=Likelihood.regression, noise_scale=noise,
                    posterior=posterior, prior_scale=2.0)  # fmt: skip
    fam = BnnFamily(cfg, spec, n_train=20)
    params = {"w_loc": jnp.array([0.5, -1.0]), "w_scale": jnp.full(2, scale)}
    return fam, params


def test_the_curve_splits_the_predictive_variance_by_the_law_of_total_variance():
    """f(x) = a x + b with a, b ~ N(., s^2) independent: Var_w E[y | x, w] = s^2 (x^2 + 1)
    (epistemic), E_w Var[y | x, w] = sigma^2 (aleatoric); total = their sum. In original
    units (y = 2 z + 1) every std doubles."""
    s, sigma = 0.4, 0.3
    fam, params = linear_family(s, sigma, Standardiser(np.float32(1.0), np.float32(2.0)))
    x = jnp.linspace(-1.0, 1.0, 16)[:, None]
    y = jnp.zeros(16)
    draws = 4000  # the sample std of S draws is within ~1/sqrt(2S) = 1.1% of the truth
    out = jax.jit(fam.artifacts, static_argnums=4)(params, x, y, KEY, draws)
    grid = np.asarray(out["curve_x"])
    assert grid[0] < -1.0 - 0.9 and grid[-1] > 1.0 + 0.9  # wider than the data
    epistemic = 2.0 * s * np.sqrt(grid**2 + 1.0)
    np.testing.assert_allclose(out["curve_epistemic_std"], epistemic, rtol=0.05)
    np.testing.assert_allclose(out["curve_aleatoric_std"], 2.0 * sigma, rtol=1e-5)
    total = np.asarray(out["curve_std"])
    np.testing.assert_allclose(
        total**2, out["curve_epistemic_std"] ** 2 + out["curve_aleatoric_std"] ** 2, rtol=1e-5
    )
    # The predictive is Normal here (a linear map of Gaussian weights, plus Gaussian noise):
    # its 95% and 50% bands are mean +- z sd.
    mean = 1.0 + 2.0 * np.asarray(fam.forward(params["w_loc"], grid[:, None]))[:, 0]
    sd = np.sqrt(epistemic**2 + (2.0 * sigma) ** 2)
    for level, name in ((0.95, "95"), (0.5, "50")):
        z = stats.norm.ppf(0.5 + level / 2)
        np.testing.assert_allclose(out[f"curve_upper_{name}"], mean + z * sd, atol=0.04 * sd.max())
        np.testing.assert_allclose(out[f"curve_lower_{name}"], mean - z * sd, atol=0.04 * sd.max())
    draws_shape = np.asarray(out["curve_draws"]).shape
    assert draws_shape == (bnn_figures.CURVE_DRAWS, bnn_figures.CURVE_POINTS)
    # PIT values are probabilities; the coverage curve is one number per nominal level.
    assert np.all((out["pit"] >= 0) & (out["pit"] <= 1))
    assert out["coverage_observed"].shape == (len(bnn_figures.COVERAGE_LEVELS),)


def test_weight_histograms_against_the_posterior_and_the_prior():
    fam, params = linear_family(scale=0.4)
    out = bnn_figures.weight_histograms(fam, params, KEY)
    edges = np.asarray(out["weight_edges"])
    widths = np.diff(edges)
    assert np.sum(out["weight_mean_density"] * widths) == pytest.approx(1.0, rel=1e-5)
    centres = 0.5 * (edges[1:] + edges[:-1])
    np.testing.assert_allclose(out["weight_prior_density"], stats.norm.pdf(centres, 0, 2.0), 1e-5)
    # Both posterior stds are 0.4: every weight in the bin holding log10(0.4).
    counts, log_edges = np.asarray(out["weight_log_std_counts"]), out["weight_log_std_edges"]
    assert counts.sum() == 2
    assert counts[np.searchsorted(log_edges, np.log10(0.4)) - 1] == 2
    # MAP has no posterior spread to show.
    fam, params = linear_family(posterior=Posterior.map)
    assert "weight_log_std_counts" not in bnn_figures.weight_histograms(
        fam, {"w_loc": params["w_loc"]}, KEY
    )


def test_image_classifier_views_pick_the_most_uncertain_images_and_score_the_ood_ones(tmp_path):
    spec = make_spec(16, 30, task="classification", num_classes=3, image_shape=(4, 4, 1))
    cfg = BnnConfig(hidden=[4], likelihood=Likelihood.classification, init_scale=0.5)
    fam = BnnFamily(cfg, spec, n_train=30)
    loc = jax.random.normal(KEY, (fam.num_weights,))
    params = {"w_loc": loc, "w_scale": jnp.full(fam.num_weights, 0.5)}
    x = jax.random.uniform(jax.random.PRNGKey(1), (30, 16))
    y = jnp.arange(30) % 3
    ood = jax.random.uniform(jax.random.PRNGKey(2), (12, 16))
    out = jax.jit(fam.artifacts, static_argnums=4)(params, x, y, KEY, 16, ood, np.int32(0))
    k = min(bnn_figures.UNCERTAIN_IMAGES, 30)
    top = np.sort(np.asarray(out["entropy"]))[::-1][:k]
    np.testing.assert_allclose(np.sort(out["uncertain_entropy"])[::-1], top)
    assert out["ood_entropy"].shape == (12,)
    assert np.all(out["ood_entropy"] <= np.log(3) + 1e-5)
    assert float(out["ece"]) >= 0 and int(np.sum(out["calibration_counts"])) == 30
    paths = fam.plot(jax.device_get(out), tmp_path)
    names = {p.name for p in paths}
    assert {"uncertain_images.png", "ood_entropy.png", "reliability.png", "weights.png"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)
