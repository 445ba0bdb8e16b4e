"""inference=nuts: the sampler against the conjugate posterior of Bayesian linear
regression, the joint density it samples, and runs through the command line."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import bslrun_here, compose, linear_regression_data, make_spec
from numpyro.diagnostics import effective_sample_size
from numpyro.infer.util import log_density
from scipy import stats
from test_cli import bslrun, run_folder
from test_maths import SIGMA, build, design_matrix, exact_posterior

from bslrun.config import BnnConfig, InferenceConfig, Likelihood, Noise
from bslrun.errors import ConfigError
from bslrun.inference import nuts, reference
from bslrun.models.bnn import BnnFamily


@pytest.fixture(scope="module")
def conjugate():
    """Linear regression with a fixed noise (model.hidden=[] model.noise_scale=0.5): the
    posterior of the 3 weights is Gaussian in closed form (tests/test_maths.py)."""
    family, data = build("mean_field")
    settings = InferenceConfig(num_warmup=300, num_samples=500, num_chains=2)
    chains = nuts.sample(family, data.train, settings, jax.random.PRNGKey(11))
    return family, data, chains


def test_nuts_recovers_the_conjugate_posterior_within_monte_carlo_error(conjugate):
    family, data, chains = conjugate
    mu, cov, _ = exact_posterior(family, data)
    w = np.asarray(chains.samples["w"], np.float64)  # (chains, draws, 3)
    assert set(chains.samples) == {"w"}  # a fixed noise is not sampled
    ess = effective_sample_size(w)
    draws = w.reshape(-1, w.shape[-1])
    # Means: within 4 Monte Carlo standard errors sqrt(Sigma_jj / ESS_j).
    z = (draws.mean(0) - mu) / np.sqrt(np.diag(cov) / ess)
    assert np.all(np.abs(z) < 4), z
    # Covariance, whitened by the exact one: L^-1 C L^-T = I up to sampling error, whose
    # sd is about sqrt(2 / ESS) on the diagonal (Gaussian draws); 5 of those allowed.
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, np.linalg.solve(chol, np.cov(draws.T)).T)
    assert np.max(np.abs(white - np.eye(3))) < 5 * np.sqrt(2 / ess.min()), white
    rhat = nuts.convergence(w)[0]
    assert np.all(rhat < 1.05), rhat
    assert chains.stats["divergences"] == 0


def test_the_predictive_and_its_reference_quantiles_match_the_exact_predictive(conjugate):
    """y* | x*, D ~ N(phi^T mu, phi^T Sigma phi + sigma^2) (Bishop 2006, eq. 3.58-3.59);
    the reference's quantiles are within a few hundredths of its std in W2."""
    family, data, chains = conjugate
    mu, cov, _ = exact_posterior(family, data)
    result = nuts.evaluate(family, chains, data)
    phi = design_matrix(family, data.test.x).astype(np.float64)
    mean = phi @ mu
    f_sd = np.sqrt(np.einsum("ij,jk,ik->i", phi, cov, phi))
    std = np.sqrt(f_sd**2 + SIGMA**2)
    np.testing.assert_allclose(result.predictions["aleatoric_std"], SIGMA, rtol=1e-5)
    assert np.max(np.abs(result.predictions["mean"] - mean) / f_sd) < 0.3
    assert np.max(np.abs(result.predictions["epistemic_std"] / f_sd - 1)) < 0.2
    exact = stats.norm.ppf(np.asarray(reference.levels())[None, :], mean[:, None], std[:, None])
    w2 = reference.wasserstein2(result.reference["quantiles"], exact)
    assert np.max(w2 / std) < 0.05, np.max(w2 / std)
    assert result.mcmc["predictive_rhat_max"] < 1.05
    assert result.test["coverage_95"] > 0.85 and np.isfinite(result.test["nll"])


def test_the_sampled_density_is_the_full_data_joint_with_the_noise_priors(rng):
    """log p(w, sigma, c, df, y) = log N(w; 0, s^2) + log HalfNormal(sigma; 1)
    + log N(c; 0, I) + log Gamma(df - 2; 2, 0.1) + sum_i log t_df(y_i; f(x_i), sigma(x_i)),
    over all N rows (no minibatch scaling)."""
    x, y = linear_regression_data(rng, 30, 2, 0.3)
    spec = make_spec(2, 30)
    cfg = BnnConfig(hidden=[], likelihood=Likelihood.student_t, noise=Noise.linear)
    family = BnnFamily(cfg, spec, n_train=1000)  # n_train must not scale the likelihood
    theta_priors = nuts.priors(family, x)
    assert set(theta_priors) == {"noise_scale", "noise_coef", "df"}
    w = np.array([0.4, -0.3, 0.1], np.float32)
    theta = {"noise_scale": 0.7, "noise_coef": np.array([0.2, -0.1], np.float32), "df": 5.0}
    found, _ = log_density(nuts.model, (family, theta_priors, x, y), {}, {"w": w, **theta})
    f = np.asarray(family.forward(w, x))[:, 0]
    sigma = 0.7 * np.exp(x @ theta["noise_coef"])
    expected = (
        stats.norm.logpdf(w, 0, cfg.prior_scale).sum()
        + stats.halfnorm.logpdf(0.7)
        + stats.norm.logpdf(theta["noise_coef"]).sum()
        + stats.gamma.logpdf(5.0 - 2.0, 2.0, scale=10.0)
        + stats.t.logpdf(y, 5.0, f, sigma).sum()
    )
    np.testing.assert_allclose(float(found), expected, rtol=1e-5)


def test_a_fixed_noise_and_df_are_not_sampled():
    spec = make_spec(1, 10)
    cfg = BnnConfig(hidden=[3], likelihood=Likelihood.student_t, noise_scale=0.2, df=4.0)
    x = np.zeros((5, 1), np.float32)
    assert nuts.priors(BnnFamily(cfg, spec, n_train=10), x) == {}


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (("model=vae", "data=mnist"), "model=bnn"),
        (("model=flow", "data=moons"), "model=bnn"),
        (("trainer.replicas=2",), "trainer.replicas=2"),
        (("trainer.devices=2", "trainer.batch_size=64"), "trainer.devices=2"),
        (("inference.target_accept=1.0",), "inference.target_accept"),
        (("inference.num_chains=0",), "inference.num_chains"),
        (("inference.thinning=1000",), "inference.thinning"),
        (("eval.reference=/some/run",), "eval.reference"),
    ],
)
def test_nuts_refuses_what_it_cannot_do_in_one_line(overrides, words):
    with pytest.raises(ConfigError) as error:
        compose("inference=nuts", *overrides)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_the_default_inference_is_svi_with_the_schemas_settings():
    cfg = compose("data=sine_gap")
    assert cfg.inference == InferenceConfig() and cfg.eval.reference is None
    assert compose("inference=nuts").inference.method.value == "nuts"


# ------------------------------------------------------------------ command line

TINY = ("data=sine_gap", "data.n_train=40", "data.n_val=10", "data.n_test=20",
        "model.hidden=[4]", "eval.num_samples=8")  # fmt: skip


@pytest.fixture(scope="module")
def nuts_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nuts")
    result = bslrun_here(*TINY, "inference=nuts", "inference.num_warmup=40",
                         "inference.num_samples=20", "inference.num_chains=2", out=out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run_folder(out)


def test_a_nuts_run_writes_metrics_predictions_samples_and_its_reference(nuts_run):
    metrics = json.loads((nuts_run / "metrics.json").read_text())
    mcmc = metrics["mcmc"]
    assert mcmc["chains"] == 2 and mcmc["draws_per_chain"] == 20
    for key in ("predictive_rhat_max", "predictive_rhat_median", "predictive_ess_min",
                "params_rhat_max", "divergences", "mean_accept_prob", "wall_s"):  # fmt: skip
        assert mcmc[key] is not None, key
    assert set(mcmc["sites"]) == {"w", "noise_scale"}
    assert metrics["train"]["n"] == 40 and np.isfinite(metrics["test"]["rmse"])
    predictions = np.load(nuts_run / "predictions.npz")
    for name in ("y", "mean", "std", "epistemic_std", "aleatoric_std", "lower_95", "upper_95"):
        assert predictions[name].shape == (20,), name
    samples = np.load(nuts_run / "posterior_samples.npz")
    assert samples["w"].shape == (2, 20, 3 * 4 + 1) and samples["noise_scale"].shape == (2, 20)
    ref = np.load(nuts_run / "reference.npz")
    assert ref["quantiles"].shape == (20, 100)
    assert np.all(np.diff(ref["quantiles"], axis=1) >= 0)  # quantiles increase with u
    np.testing.assert_allclose(ref["y"], predictions["y"])
    assert not (nuts_run / "history.csv").exists()


def test_reopening_a_nuts_run_is_refused_in_one_line(nuts_run):
    import bslrun
    from bslrun.errors import ConfigError

    with pytest.raises(ConfigError, match="is a NUTS run") as error:
        bslrun.load(nuts_run)
    assert "\n" not in str(error.value) and "posterior_samples.npz" in str(error.value)


def test_a_variational_run_reports_its_distance_from_the_reference(nuts_run, tmp_path):
    result = bslrun_here(*TINY, "trainer.epochs=3", "trainer.progress=false",
                         f"eval.reference={nuts_run}", out=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads((run_folder(tmp_path) / "metrics.json").read_text())["reference"]
    assert np.isfinite(found["w2"]) and found["w2"] >= 0
    assert np.isfinite(found["kl_gauss"]) and found["kl_gauss"] >= 0
    assert found["folder"] == str(nuts_run) and "reference.w2" in result.stdout


def test_a_reference_of_other_test_points_is_refused_in_one_line(nuts_run, tmp_path):
    result = bslrun(*TINY, "seed=1", f"eval.reference={nuts_run}", out=tmp_path)  # other toy data
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sampled on other test points" in lines[0]


def test_nuts_with_a_vae_exits_2_in_one_line(tmp_path):
    result = bslrun("inference=nuts", "model=vae", "data=mnist", out=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "inference=nuts" in lines[0] and "model=bnn" in lines[0]
