"""bslrun.metrics against numpy/scipy references on random inputs.

JAX computes in float32 here, so comparisons use float32-level tolerances.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special, stats

from bslrun import metrics

S, N = 7, 300


@pytest.fixture
def mixture(rng):
    """S Normal draws for N points: mu (S, N), sigma (S, N), and targets y (N,)."""
    mu = rng.normal(size=(S, N)) + rng.normal(size=N) * 2.0
    sigma = rng.uniform(0.2, 1.5, size=(S, N))
    # Targets from the mixture itself, plus a few outliers.
    comp = rng.integers(0, S, size=N)
    y = mu[comp, np.arange(N)] + sigma[comp, np.arange(N)] * rng.normal(size=N)
    y[:5] += 8.0
    return mu.astype(np.float32), sigma.astype(np.float32), y.astype(np.float32)


def ref_cdf(t, mu_i, sigma_i):
    return float(np.mean(stats.norm.cdf(t, loc=mu_i, scale=sigma_i)))


def ref_quantile(q, mu_i, sigma_i):
    """F_i^-1(q) by brentq on the float64 mixture CDF."""
    lo = float(np.min(mu_i - 12 * sigma_i))
    hi = float(np.max(mu_i + 12 * sigma_i))
    return optimize.brentq(lambda t: ref_cdf(t, mu_i, sigma_i) - q, lo, hi, xtol=1e-12)


def ref_coverage(y, mu, sigma, level):
    """Fraction of y_i inside the central interval, with the interval's ends from brentq."""
    inside = []
    for i in range(len(y)):
        mu_i, sigma_i = mu[:, i].astype(np.float64), sigma[:, i].astype(np.float64)
        lower = ref_quantile((1 - level) / 2, mu_i, sigma_i)
        upper = ref_quantile((1 + level) / 2, mu_i, sigma_i)
        inside.append(lower <= y[i] <= upper)
    return float(np.mean(inside))


# ----------------------------------------------------------------------------- regression


def test_rmse(rng):
    pred, y = rng.normal(size=50), rng.normal(size=50)
    expected = np.sqrt(np.mean((pred - y) ** 2))
    np.testing.assert_allclose(float(metrics.rmse(pred, y)), expected, rtol=1e-5)
    assert float(metrics.rmse(y, y)) == 0.0


def test_log_mean_exp(rng):
    a = rng.normal(size=(S, 4)) * 50  # large values: needs the stable form
    expected = special.logsumexp(a, axis=0) - np.log(S)
    np.testing.assert_allclose(np.asarray(metrics.log_mean_exp(a, axis=0)), expected, rtol=1e-5)


def test_mixture_nll_matches_scipy(mixture):
    mu, sigma, y = mixture
    mu64, sigma64, y64 = (a.astype(np.float64) for a in (mu, sigma, y))
    log_p = special.logsumexp(stats.norm.logpdf(y64[None, :], mu64, sigma64), axis=0) - np.log(S)
    np.testing.assert_allclose(
        np.asarray(metrics.mixture_log_density(y, mu, sigma)), log_p, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(float(metrics.mixture_nll(y, mu, sigma)), -np.mean(log_p), rtol=1e-5)


def test_mixture_nll_of_identical_draws_is_gaussian_nll(rng):
    m, s = rng.normal(size=N), rng.uniform(0.3, 2.0, size=N)
    y = rng.normal(size=N)
    mu, sigma = np.tile(m, (S, 1)), np.tile(s, (S, 1))
    gaussian_nll = np.mean(0.5 * np.log(2 * np.pi * s**2) + 0.5 * ((y - m) / s) ** 2)
    np.testing.assert_allclose(float(metrics.mixture_nll(y, mu, sigma)), gaussian_nll, rtol=1e-5)


def test_mixture_cdf_matches_scipy(mixture):
    mu, sigma, y = mixture
    expected = np.mean(stats.norm.cdf(y[None, :], mu, sigma), axis=0)
    np.testing.assert_allclose(np.asarray(metrics.mixture_cdf(y, mu, sigma)), expected, atol=1e-6)


@pytest.mark.parametrize("q", [0.025, 0.25, 0.5, 0.9, 0.975])
def test_mixture_quantile_matches_brentq(mixture, q):
    mu, sigma, _ = mixture
    got = np.asarray(metrics.mixture_quantile(q, mu, sigma))
    expected = np.array(
        [
            ref_quantile(q, mu[:, i].astype(np.float64), sigma[:, i].astype(np.float64))
            for i in range(N)
        ]
    )
    # Float32 arithmetic on a bracket of width ~30: resolution ~1e-5 relative.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_interval_coverage_matches_brentq_intervals(mixture, level):
    mu, sigma, y = mixture
    pit = metrics.mixture_cdf(y, mu, sigma)
    got = float(metrics.interval_coverage(pit, level))
    assert got == pytest.approx(ref_coverage(y, mu, sigma, level), abs=1e-6)


def test_interval_coverage_of_calibrated_predictive(rng):
    # y drawn from the predictive itself: coverage ~ level (binomial sd < 0.005 at n = 20000).
    n = 20_000
    mu, sigma = rng.normal(size=(1, n)), rng.uniform(0.5, 2.0, size=(1, n))
    y = mu[0] + sigma[0] * rng.normal(size=n)
    pit = metrics.mixture_cdf(y, mu, sigma)
    for level in (0.5, 0.9, 0.95):
        assert float(metrics.interval_coverage(pit, level)) == pytest.approx(level, abs=0.02)


def test_regression_summary(mixture):
    mu, sigma, y = mixture
    out = {k: float(v) for k, v in metrics.regression_summary(y, mu, sigma).items()}
    mu64, sigma64 = mu.astype(np.float64), sigma.astype(np.float64)
    mean = mu64.mean(0)
    # Mixture moments directly: E[y] = mean_s mu_s, E[y^2] = mean_s (mu_s^2 + sigma_s^2).
    total_var = np.mean(mu64**2 + sigma64**2, axis=0) - mean**2
    epistemic_var = np.var(mu64, axis=0)  # Var_s[mu_s]
    aleatoric_var = np.mean(sigma64**2, axis=0)  # E_s[sigma_s^2]
    np.testing.assert_allclose(epistemic_var + aleatoric_var, total_var, rtol=1e-10)
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((mean - y) ** 2)), rel=1e-5)
    log_p = special.logsumexp(stats.norm.logpdf(y[None, :], mu64, sigma64), axis=0) - np.log(S)
    assert out["nll"] == pytest.approx(-np.mean(log_p), rel=1e-5)
    assert out["epistemic_std"] == pytest.approx(np.mean(np.sqrt(epistemic_var)), rel=1e-5)
    assert out["aleatoric_std"] == pytest.approx(np.mean(np.sqrt(aleatoric_var)), rel=1e-5)
    assert out["predictive_std"] == pytest.approx(np.mean(np.sqrt(total_var)), rel=1e-5)
    for level in (0.5, 0.9, 0.95):
        key = f"coverage_{round(level * 100)}"
        assert out[key] == pytest.approx(ref_coverage(y, mu, sigma, level), abs=1e-6)


# ------------------------------------------------------------------ Student-t components

DF = 3.5


def test_student_t_cdf_matches_scipy():
    z = np.linspace(-30, 30, 601, dtype=np.float32)
    for df in (2.5, DF, 40.0):
        got = np.asarray(metrics.student_t_cdf(z, np.float32(df)))
        np.testing.assert_allclose(got, stats.t.cdf(z, df), atol=2e-6)


def test_student_t_mixture_matches_scipy(mixture):
    mu, sigma, y = mixture
    mu64, sigma64, y64 = (a.astype(np.float64) for a in (mu, sigma, y))
    log_p = special.logsumexp(stats.t.logpdf(y64[None, :], DF, mu64, sigma64), axis=0) - np.log(S)
    got = np.asarray(metrics.mixture_log_density(y, mu, sigma, DF))
    np.testing.assert_allclose(got, log_p, rtol=1e-5, atol=1e-5)
    cdf = np.mean(stats.t.cdf(y64[None, :], DF, mu64, sigma64), axis=0)
    np.testing.assert_allclose(np.asarray(metrics.mixture_cdf(y, mu, sigma, DF)), cdf, atol=2e-6)
    out = {k: float(v) for k, v in metrics.regression_summary(y, mu, sigma, DF).items()}
    assert out["nll"] == pytest.approx(-np.mean(log_p), rel=1e-5)
    aleatoric = np.sqrt(np.mean(sigma64**2 * DF / (DF - 2), axis=0))  # Var t_df = df / (df - 2)
    assert out["aleatoric_std"] == pytest.approx(np.mean(aleatoric), rel=1e-5)


@pytest.mark.parametrize("q", [0.025, 0.5, 0.975])
def test_student_t_mixture_quantile_matches_brentq(mixture, q):
    mu, sigma, _ = mixture
    mu, sigma = mu[:, :40], sigma[:, :40]

    def cdf(t, i):
        return float(np.mean(stats.t.cdf(t, DF, mu[:, i], sigma[:, i])))

    expected = [
        optimize.brentq(lambda t, i=i: cdf(t, i) - q, -100.0, 100.0, xtol=1e-12) for i in range(40)
    ]
    got = np.asarray(metrics.mixture_quantile(q, mu, sigma, np.float32(DF)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- classification


def ref_ece(probs, labels, num_bins=15):
    """Guo et al. (2017): bins [b/B, (b+1)/B) (the last one closed), weighted |acc - conf|."""
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    total = 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        in_bin = (confidence >= lo) & (
            (confidence < hi) if b < num_bins - 1 else (confidence <= hi)
        )
        if in_bin.any():
            total += (
                in_bin.sum() / len(labels) * abs(correct[in_bin].mean() - confidence[in_bin].mean())
            )
    return total


@pytest.mark.parametrize("num_classes, temperature", [(2, 1.0), (5, 0.3), (10, 3.0)])
def test_expected_calibration_error(rng, num_classes, temperature):
    n = 2000
    logits = rng.normal(size=(n, num_classes)) / temperature
    probs = special.softmax(logits, axis=-1)
    labels = rng.integers(0, num_classes, size=n)
    got = float(metrics.expected_calibration_error(probs.astype(np.float32), labels))
    assert got == pytest.approx(ref_ece(probs, labels), abs=1e-5)


def test_ece_of_perfectly_confident_correct_predictions_is_zero():
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3)[labels]
    assert float(metrics.expected_calibration_error(probs, labels)) == pytest.approx(0.0, abs=1e-7)


def test_classification_summary(rng):
    draws, n, c = 6, 400, 4
    logits = rng.normal(size=(draws, n, c)) * 2
    log_probs = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    labels = rng.integers(0, c, size=n)
    out = {
        k: float(v)
        for k, v in metrics.classification_summary(labels, log_probs.astype(np.float32)).items()
    }
    probs = np.exp(log_probs).mean(0)  # the predictive mixture, (n, C)
    accuracy = np.mean(probs.argmax(-1) == labels)
    assert out["accuracy"] == pytest.approx(accuracy, abs=1e-7)
    assert out["error"] == pytest.approx(1 - accuracy, abs=1e-6)
    assert out["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(n), labels])), rel=1e-5)
    assert out["predictive_entropy"] == pytest.approx(
        np.mean(-np.sum(probs * np.log(probs), -1)), rel=1e-5
    )
    assert out["ece"] == pytest.approx(ref_ece(probs, labels), abs=1e-5)


@pytest.mark.parametrize("q", [0.025, 0.3, 0.5, 0.7, 0.975])
def test_mixture_quantile_of_far_apart_modes_matches_brentq(q):
    """Two narrow modes 40 standard deviations apart: the moment-matched start lies in the
    gap where the density is ~0, so Newton steps overshoot and bisection must take over.
    In the gap the CDF is flat and every point of it is a median: there the check is the
    definition, F(x_q) = q with the float64 CDF; elsewhere brentq's unique root."""
    mu = np.array([[-10.0, 0.0, 3.0], [10.0, 0.1, 3.0]], np.float32)  # (S=2, n=3)
    sigma = np.array([[0.5, 1e-3, 0.1], [0.5, 1.0, 100.0]], np.float32)
    got = np.asarray(metrics.mixture_quantile(q, mu, sigma)).astype(np.float64)
    for i in range(mu.shape[1]):
        mu_i, sigma_i = mu[:, i].astype(np.float64), sigma[:, i].astype(np.float64)
        if q == 0.5 and i == 0:
            assert ref_cdf(got[i], mu_i, sigma_i) == pytest.approx(q, abs=1e-6)
            continue
        expected = ref_quantile(q, mu_i, sigma_i)
        assert got[i] == pytest.approx(expected, abs=2e-6 * (abs(expected) + max(sigma_i)))


def test_ece_and_its_bins_on_a_hand_made_example():
    # Confidences 0.6, 0.6 (one right) and 0.9, 0.9 (both right), 15 bins of width 1/15:
    # bin 9 holds the 0.6s (accuracy 1/2, confidence 0.6), bin 13 the 0.9s (1, 0.9).
    # ECE = (2/4) |0.5 - 0.6| + (2/4) |1 - 0.9| = 0.1.
    probs = jnp.array([[0.6, 0.4], [0.4, 0.6], [0.9, 0.1], [0.1, 0.9]])
    labels = jnp.array([0, 0, 0, 1])
    bins = {k: np.asarray(v) for k, v in metrics.calibration_bins(probs, labels).items()}
    assert float(metrics.expected_calibration_error(probs, labels)) == pytest.approx(0.1, abs=1e-6)
    np.testing.assert_array_equal(np.nonzero(np.asarray(bins["counts"]))[0], [9, 13])
    np.testing.assert_allclose(bins["accuracy"][[9, 13]], [0.5, 1.0])
    np.testing.assert_allclose(bins["confidence"][[9, 13]], [0.6, 0.9], rtol=1e-6)
    np.testing.assert_allclose(bins["edges"], np.linspace(0, 1, 16), atol=1e-7)


def test_coverage_curve_of_draws_from_the_predictive_is_the_diagonal(rng):
    """y_i ~ N(mu_i, sigma_i): each central interval at level l holds y_i with probability l,
    so the observed coverage is Binomial(n, l) / n; 4 sd bounds every level."""
    n = 4000
    mu, sigma = rng.normal(size=n), rng.uniform(0.5, 2.0, n)
    y = mu + sigma * rng.normal(size=n)
    pit = metrics.mixture_cdf(jnp.asarray(y), jnp.asarray(mu)[None], jnp.asarray(sigma)[None])
    levels = np.linspace(0.05, 0.95, 19)
    observed = np.asarray(metrics.coverage_curve(pit, levels))
    assert np.all(np.abs(observed - levels) < 4 * np.sqrt(levels * (1 - levels) / n))
    # An overconfident predictive (half the true spread) covers too little at every level.
    narrow = metrics.mixture_cdf(
        jnp.asarray(y), jnp.asarray(mu)[None], 0.5 * jnp.asarray(sigma)[None]
    )
    assert np.all(np.asarray(metrics.coverage_curve(narrow, levels)) < levels)
