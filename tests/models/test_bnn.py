"""BNN regression likelihoods against scipy: Student-t, the log-linear noise scale, and the
mapping of the predictive back to original units."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_spec
from numpyro import handlers
from scipy import stats

from bslrun.config import BnnConfig, Likelihood, Noise, Posterior
from bslrun.data.splits import Standardiser
from bslrun.inference import engine
from bslrun.models.bnn import BnnFamily

DIM, N = 3, 40
SIGMA, COEF, DF = 0.7, np.array([0.3, -0.2, 0.1], np.float32), 5.0


def family(likelihood="student_t", noise="linear", spec=None, **kw) -> BnnFamily:
    cfg = BnnConfig(
        hidden=[4],
        likelihood=Likelihood(likelihood),
        noise=Noise(noise),
        posterior=Posterior.map,
        **kw,
    )
    return BnnFamily(cfg, spec or make_spec(DIM, N), n_train=N)


def problem(fam, rng):
    """Inputs, targets, a weight vector and the parameters that go with it."""
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    y = rng.standard_t(DF, size=N).astype(np.float32)
    w = rng.normal(size=fam.num_weights).astype(np.float32) * 0.5
    params = {"w_loc": w, "noise_scale": SIGMA, "noise_coef": COEF, "df": DF}
    return x, y, w, params


@pytest.mark.parametrize("likelihood, noise", [("student_t", "linear"), ("regression", "linear")])
def test_model_log_likelihood_matches_scipy(rng, likelihood, noise):
    fam = family(likelihood, noise)
    x, y, w, params = problem(fam, rng)
    values = {"w": w, **{k: v for k, v in params.items() if k != "w_loc"}}
    trace = handlers.trace(handlers.substitute(fam.model, data=values)).get_trace(x, y)
    mean = np.asarray(fam.forward(jnp.asarray(w), x))[:, 0]
    scale = SIGMA * np.exp(x.astype(np.float64) @ COEF)  # log sigma(x) = log sigma + c^T x
    if likelihood == "student_t":
        expected = stats.t.logpdf(y, DF, mean, scale)
    else:
        expected = stats.norm.logpdf(y, mean, scale)
    site = trace["y"]
    got = site["scale"] * np.asarray(site["fn"].log_prob(site["value"]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)  # batch = N: scale 1


def test_evaluation_is_in_original_units(rng):
    y_scaler = Standardiser(np.float32(5.6), np.float32(0.8))
    spec = dataclasses.replace(make_spec(DIM, N), y_scaler=y_scaler)
    fam = family(spec=spec)
    x, y, w, params = problem(fam, rng)
    out = jax.jit(fam.evaluate, static_argnums=4)(params, x, y, jax.random.PRNGKey(0), 3)
    mean = 5.6 + 0.8 * np.asarray(fam.forward(jnp.asarray(w), x))[:, 0]
    scale = 0.8 * SIGMA * np.exp(x.astype(np.float64) @ COEF)
    y_orig = 5.6 + 0.8 * y.astype(np.float64)
    assert float(out["rmse"]) == pytest.approx(np.sqrt(np.mean((mean - y_orig) ** 2)), rel=1e-5)
    nll = -np.mean(stats.t.logpdf(y_orig, DF, mean, scale))
    assert float(out["nll"]) == pytest.approx(nll, rel=1e-5)
    std = np.mean(scale * np.sqrt(DF / (DF - 2)))  # a MAP posterior: no epistemic part
    assert float(out["aleatoric_std"]) == pytest.approx(std, rel=1e-5)
    arrays = jax.jit(fam.artifacts, static_argnums=4)(params, x, y, jax.random.PRNGKey(0), 3)
    upper = np.asarray(arrays["upper_95"])
    np.testing.assert_allclose(upper, mean + scale * stats.t.ppf(0.975, DF), rtol=1e-4)


def test_fixed_df_and_noise_scale_are_not_learned(rng):
    fam = family(df=4.0, noise_scale=0.5, noise="constant")
    x, y, _, _ = problem(fam, rng)
    svi = engine.make_svi(fam, optax.adam(1e-3), num_particles=1)
    params = svi.get_params(jax.jit(svi.init)(jax.random.PRNGKey(0), x, y))
    assert set(params) == {"w_loc"}
    predictive = fam.observation(fam.forward(params["w_loc"], x), x, params)
    assert np.all(np.asarray(predictive.df) == 4.0) and np.all(np.asarray(predictive.scale) == 0.5)


@pytest.mark.slow
def test_linear_noise_recovers_the_true_log_scale():
    """y = x_0 + exp(-0.3 + 0.6 x_1) eps: MAP fitting learns sigma and c (type-II ML)."""
    rng = np.random.default_rng(0)
    n = 4000
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x[:, 0] + np.exp(-0.3 + 0.6 * x[:, 1]) * rng.normal(size=n)).astype(np.float32)
    fam = BnnFamily(
        BnnConfig(hidden=[8], likelihood=Likelihood.regression, noise=Noise.linear,
                  posterior=Posterior.map),
        make_spec(2, n),
        n_train=n,
    )  # fmt: skip
    svi = engine.make_svi(fam, optax.adam(1e-2), num_particles=1)
    result = svi.run(jax.random.PRNGKey(0), 3000, x, y, progress_bar=False)
    np.testing.assert_allclose(float(result.params["noise_scale"]), np.exp(-0.3), rtol=0.08)
    np.testing.assert_allclose(np.asarray(result.params["noise_coef"]), [0.0, 0.6], atol=0.05)
