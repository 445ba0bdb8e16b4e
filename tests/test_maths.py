"""Closed forms: conjugate Bayesian linear regression with known noise.

Model: w ~ N(0, alpha^2 I), y_i ~ N(phi_i^T w, sigma^2), phi_i = (x_i, 1) in
the order of the flat weight vector. The exact posterior is Gaussian
(Bishop 2006, eq. 3.53-3.54):

    Lambda = Phi^T Phi / sigma^2 + I / alpha^2,   Sigma = Lambda^-1,
    mu = Sigma Phi^T y / sigma^2.

The full-rank Gaussian family contains it, so the ELBO's maximiser is exactly
(mu, Sigma); the MAP estimate is mu (ridge regression); and the optimal
mean-field Gaussian has mean mu and variances 1 / diag(Lambda) (Bishop 2006,
sec. 10.1.2). Training goes through bslrun's engine, so these checks cover
the ELBO's KL weighting: weighting the KL by N too often (or not at all)
scales the learned covariance by ~N = 200, far outside the tolerances below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose, linear_regression_data, make_dataset

from bslrun import models
from bslrun.config import BnnConfig, OptimConfig, OptimName, Posterior, Schedule, TrainerConfig
from bslrun.inference import engine
from bslrun.models.bnn import BnnFamily

N, DIM, SIGMA, ALPHA = 200, 2, 0.5, 1.0

# Tolerances (in units of the exact posterior):
MEAN_TOL_SD = 0.1  # |mu_q - mu| < 0.1 posterior sd per coordinate (observed ~0.03)
COV_TOL = 0.10  # ||Sigma_q - Sigma||_F / ||Sigma||_F < 10% (observed ~3%)
MAP_TOL = 1e-4  # |w_map - mu| < 1e-4 absolute (~0.003 posterior sd; observed ~1e-7)


def build(posterior: str, seed: int = 0):
    x, y = linear_regression_data(np.random.default_rng(seed), N, DIM, SIGMA)
    data = make_dataset(x, y)
    cfg = BnnConfig(
        hidden=[],
        posterior=Posterior(posterior),
        prior_scale=ALPHA,
        noise_scale=SIGMA,
        init_scale=0.1,
        rank=DIM + 1,
    )
    family = BnnFamily(cfg, data.spec, n_train=N)
    return family, data


def design_matrix(family, x) -> np.ndarray:
    """Phi with columns in flat-vector order: f(x; w) is linear in w, so column j is f(x; e_j)."""
    eye = jnp.eye(family.num_weights)
    return np.stack(
        [np.asarray(family.forward(eye[j], x))[:, 0] for j in range(family.num_weights)], 1
    )


def exact_posterior(family, data):
    x = np.asarray(data.train.x, np.float64)
    y = np.asarray(data.train.y, np.float64)
    phi = design_matrix(family, data.train.x).astype(np.float64)
    # The columns are the inputs and a column of ones (the bias), in some order.
    assert phi.shape == (N, DIM + 1)
    reference = np.concatenate([x, np.ones((N, 1))], axis=1)
    matched = sorted(
        int(np.argmin([np.max(np.abs(phi[:, j] - reference[:, k])) for k in range(DIM + 1)]))
        for j in range(DIM + 1)
    )
    assert matched == list(range(DIM + 1))
    for j in range(DIM + 1):
        assert min(np.max(np.abs(phi[:, j] - reference[:, k])) for k in range(DIM + 1)) < 1e-5
    precision = phi.T @ phi / SIGMA**2 + np.eye(DIM + 1) / ALPHA**2
    cov = np.linalg.inv(precision)
    mu = cov @ phi.T @ y / SIGMA**2
    return mu, cov, precision


def train(family, data, *, epochs, batch_size, particles, lr, seed=0):
    optim_cfg = OptimConfig(name=OptimName.adam, lr=lr, schedule=Schedule.cosine)
    trainer_cfg = TrainerConfig(
        epochs=epochs, batch_size=batch_size, num_particles=particles, progress=False
    )
    result = engine.fit(
        family,
        data,
        optim_cfg,
        trainer_cfg,
        jax.random.PRNGKey(seed),
        jax.random.PRNGKey(seed + 100),
        10,
    )
    assert result.epochs_run == epochs
    return family.posterior_distribution(result.params)


def check_gaussian(q, mu, cov, *, mean_tol_sd=MEAN_TOL_SD, cov_tol=COV_TOL):
    sd = np.sqrt(np.diag(cov))
    mean_err = np.abs(np.asarray(q.mean, np.float64) - mu) / sd
    assert np.all(mean_err < mean_tol_sd), f"mean error in posterior sds: {mean_err}"
    cov_q = np.asarray(q.covariance_matrix, np.float64)
    rel = np.linalg.norm(cov_q - cov) / np.linalg.norm(cov)
    assert rel < cov_tol, f"relative Frobenius error of the covariance: {rel:.3f}"


def test_exact_posterior_is_sensitive_to_kl_weighting():
    """The tolerance separates the right answer from a KL weighted N times too much or too little."""
    family, data = build("full_rank")
    mu, cov, precision = exact_posterior(family, data)
    for factor in (N, 1.0 / N):
        # Data term scaled by 1/factor relative to the prior: the posterior a wrong weighting targets.
        phi = design_matrix(family, data.train.x).astype(np.float64)
        wrong_cov = np.linalg.inv(phi.T @ phi / SIGMA**2 / factor + np.eye(DIM + 1) / ALPHA**2)
        assert np.linalg.norm(wrong_cov - cov) / np.linalg.norm(cov) > 5 * COV_TOL


def test_full_rank_recovers_exact_posterior_full_batch():
    family, data = build("full_rank")
    mu, cov, _ = exact_posterior(family, data)
    q = train(family, data, epochs=2000, batch_size=N, particles=16, lr=0.05)
    check_gaussian(q, mu, cov)


def test_full_rank_recovers_exact_posterior_minibatches():
    """Batches of 50: checks the N / B likelihood scaling as well."""
    family, data = build("full_rank")
    mu, cov, _ = exact_posterior(family, data)
    q = train(family, data, epochs=1000, batch_size=50, particles=16, lr=0.02)
    check_gaussian(q, mu, cov)


def test_mean_field_variances_are_reciprocal_precision_diagonal():
    family, data = build("mean_field")
    mu, cov, precision = exact_posterior(family, data)
    q = train(family, data, epochs=2000, batch_size=N, particles=16, lr=0.05)
    mf_var = 1.0 / np.diag(precision)
    # The mean-field optimum: mean mu, variances 1 / Lambda_jj (smaller than Sigma_jj here).
    assert np.all(mf_var < np.diag(cov))
    sd = np.sqrt(np.diag(cov))
    mean_err = np.abs(np.asarray(q.mean, np.float64) - mu) / sd
    assert np.all(mean_err < MEAN_TOL_SD), mean_err
    np.testing.assert_allclose(np.asarray(q.variance, np.float64), mf_var, rtol=COV_TOL)


def test_map_is_ridge_solution():
    family, data = build("map")
    mu, _, _ = exact_posterior(family, data)
    q = train(family, data, epochs=2000, batch_size=N, particles=1, lr=0.05)
    w = np.asarray(q.sample(jax.random.PRNGKey(0)), np.float64)
    np.testing.assert_allclose(w, mu, rtol=0, atol=MAP_TOL)


def test_lowrank_recovers_exact_posterior():
    family, data = build("lowrank")  # rank = D: the family contains the posterior
    mu, cov, _ = exact_posterior(family, data)
    q = train(family, data, epochs=2000, batch_size=N, particles=16, lr=0.05)
    check_gaussian(q, mu, cov)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_full_rank_exact_posterior_tight(seed):
    """Longer training, more particles, other data: tighter tolerances."""
    family, data = build("full_rank", seed=seed)
    mu, cov, _ = exact_posterior(family, data)
    q = train(family, data, epochs=4000, batch_size=N, particles=32, lr=0.05, seed=seed)
    check_gaussian(q, mu, cov, mean_tol_sd=0.05, cov_tol=0.05)


def test_command_line_linear_bnn_recovers_exact_posterior_and_predictive_mean():
    """``bslrun model.hidden=[] model.posterior=full_rank model.noise_scale=...``, built and
    trained as run.py does it (Hydra composition, models.build, engine.fit): the network is
    then one affine layer, the model conjugate, and q is the closed-form posterior."""
    cfg = compose(
        "model.hidden=[]",
        "model.posterior=full_rank",
        "model.likelihood=regression",
        f"model.noise_scale={SIGMA}",  # the known noise of the closed form
        f"model.prior_scale={ALPHA}",
        "model.init_scale=0.1",
        "optim.lr=0.05",
        "optim.schedule=cosine",
        "trainer.epochs=2000",
        f"trainer.batch_size={N}",
        "trainer.num_particles=16",
        "trainer.progress=false",
    )
    x, y = linear_regression_data(np.random.default_rng(0), N, DIM, SIGMA)
    data = make_dataset(x, y)
    family = models.build(cfg.model, data.spec, len(data.train))
    assert family.num_weights == DIM + 1  # W (DIM x 1) and b: one affine layer
    mu, cov, _ = exact_posterior(family, data)
    result = engine.fit(
        family, data, cfg.optim, cfg.trainer, jax.random.PRNGKey(0), jax.random.PRNGKey(100), 10
    )
    assert result.epochs_run == cfg.trainer.epochs
    check_gaussian(family.posterior_distribution(result.params), mu, cov)

    # Predictive mean E[f(x)] = phi(x)^T mu (the noise has mean zero), from the family's own
    # artifacts with S = 2000 posterior draws: its error is phi^T (mu_q - mu), a few hundredths
    # of sd(f(x)) when the weights' means are within ~0.03 sd (as observed), plus Monte Carlo
    # error sd(f(x)) / sqrt(S) ~ 0.02 sd(f(x)). Tolerance: 0.25 sd(f(x)) at every test point
    # (observed 0.08). The spread of f(x) under q must be within 15% of the exact
    # sqrt(phi^T Sigma phi) (observed 3%: a 10% covariance error moves it ~5%, the draws ~1.6%).
    draws = 2000
    arrays = family.artifacts(result.params, data.test.x, data.test.y, jax.random.PRNGKey(1), draws)
    phi = design_matrix(family, data.test.x).astype(np.float64)
    exact_mean = phi @ mu
    exact_sd = np.sqrt(np.einsum("ij,jk,ik->i", phi, cov, phi))
    error = np.abs(np.asarray(arrays["mean"], np.float64) - exact_mean) / exact_sd
    assert np.all(error < 0.25), f"predictive mean error in sds of f(x): {error.max():.3f}"
    spread = np.asarray(arrays["epistemic_std"], np.float64) / exact_sd
    assert np.all(np.abs(spread - 1) < 0.15), f"sd of f(x) / exact: {spread}"
    np.testing.assert_allclose(np.asarray(arrays["aleatoric_std"]), SIGMA, rtol=1e-5)
