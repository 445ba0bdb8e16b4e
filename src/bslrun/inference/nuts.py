"""Hamiltonian Monte Carlo for Bayesian neural networks: ``inference=nuts``.

NUTS (Hoffman & Gelman 2014, NumPyro's ``MCMC(NUTS)``) samples the joint posterior
p(w, theta | D) of a BNN's weights w, under the family's prior N(0, s^2 I), and of the
likelihood parameters theta that SVI learns as point estimates (``numpyro.param`` sites,
which MCMC cannot optimise). Those get priors here (``PRIORS``), in the standardised
units the family works in:

- ``noise_scale`` sigma ~ HalfNormal(1): weakly informative (Gelman 2006, sec. 4): the
  standardised targets have variance 1, so sigma is at most about 1, and small noise is
  not penalised. (The Gamma(6, 6) prior on the precision 1 / sigma^2 of Hernandez-Lobato
  & Adams 2015, used for their HMC baseline on UCI data, is worth 12 observations of
  sigma = 1: on sine_gap's 200 points of noise 0.14 it would double the noise.)
- ``noise_coef`` c ~ N(0, I) (model.noise=linear, log sigma(x) = log sigma + c^T x).
- ``df`` = 2 + nu, nu ~ Gamma(2, 0.1) (model.likelihood=student_t): the prior of Juarez &
  Steel (2010), shifted to keep the variance finite as the family does (df > 2).

Settings the config fixes (``model.noise_scale``, ``model.df``) stay fixed. The likelihood
uses the full training set. The chains start from independent prior draws (over-dispersed
relative to the posterior, as split-R-hat presumes: Vehtari et al. 2021, sec. 3) and run
together as one vectorised program. Weights are not identifiable (hidden units permute),
so their R-hat is large whenever chains find different modes; the predictive's R-hat
(``diagnostics``) is the one to watch.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from numpyro.distributions import constraints, transforms
from numpyro.infer import MCMC, NUTS, init_to_sample

from bslrun import metrics
from bslrun.errors import ConfigError
from bslrun.inference import reference
from bslrun.models import bnn, bnn_figures

DRAW_CHUNK = 32  # posterior draws evaluated at once: bounds memory for large nets

PRIORS = {
    "noise_scale": lambda init: dist.HalfNormal(1.0),
    "noise_coef": lambda init: dist.Normal(0.0, 1.0).expand(init.shape).to_event(init.ndim),
    "df": lambda init: dist.TransformedDistribution(
        dist.Gamma(2.0, 0.1), transforms.AffineTransform(2.0, 1.0, domain=constraints.positive)
    ),
}


class Chains(NamedTuple):
    samples: dict  # site -> (chains, draws, ...): "w" and the likelihood's parameters
    stats: dict  # divergences, acceptance, tree sizes, step size, wall seconds


def likelihood_parameters(family, x) -> dict:
    """The point parameters of the family's likelihood (its ``numpyro.param`` sites) and
    their initial values: what SVI would learn and NUTS must sample."""
    out = family.forward(jnp.zeros(family.num_weights), x[:1])
    with handlers.trace() as sites:
        family.observation(out, x[:1])
    return {name: site["value"] for name, site in sites.items() if site["type"] == "param"}


def priors(family, x) -> dict:
    """A prior for each of ``likelihood_parameters``."""
    found = likelihood_parameters(family, x)
    unknown = sorted(set(found) - set(PRIORS))
    if unknown:
        raise ConfigError(
            f"inference=nuts has no prior for the learned {', '.join(unknown)} of "
            f"model.likelihood={family.likelihood}; fix it in the config or use inference=svi"
        )
    return {name: PRIORS[name](jnp.asarray(value)) for name, value in found.items()}


def model(family, theta_priors: dict, x, y=None):
    """w ~ p(w), theta ~ p(theta), y_i ~ p(y | x_i, w, theta) for all N rows (no scaling)."""
    w = numpyro.sample(bnn.SITE, family.prior)
    theta = {name: numpyro.sample(name, prior) for name, prior in theta_priors.items()}
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", family.observation(family.forward(w, x), x, theta), obs=y)


def sample(family, train, settings, key) -> Chains:
    """Run ``settings.num_chains`` NUTS chains on the ``train`` split from ``key``."""
    kernel = NUTS(
        functools.partial(model, family, priors(family, train.x)),
        target_accept_prob=settings.target_accept,
        max_tree_depth=settings.max_tree_depth,
        init_strategy=init_to_sample,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=settings.num_warmup,
        num_samples=settings.num_samples,
        num_chains=settings.num_chains,
        thinning=settings.thinning,
        chain_method="vectorized",
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.run(key, jnp.asarray(train.x), jnp.asarray(train.y),
             extra_fields=("diverging", "accept_prob", "num_steps"))  # fmt: skip
    samples = jax.device_get(mcmc.get_samples(group_by_chain=True))
    wall = time.perf_counter() - start
    extra = jax.device_get(mcmc.get_extra_fields(group_by_chain=True))
    limit = 2**settings.max_tree_depth - 1  # leapfrog steps of a full-depth tree
    stats = {
        "divergences": int(np.sum(extra["diverging"])),
        "mean_accept_prob": float(np.mean(extra["accept_prob"])),
        "mean_num_steps": float(np.mean(extra["num_steps"])),
        "max_tree_depth_fraction": float(np.mean(extra["num_steps"] >= limit)),
        "step_size": float(np.mean(mcmc.last_state.adapt_state.step_size)),
        "wall_s": wall,
    }
    return Chains(samples, stats)


# ------------------------------------------------------------------ the predictive


def components(family, samples: dict, x) -> dict:
    """The predictive's components at x, one per draw (S = chains x draws, chain-major):
    regression ``mu``, ``sigma``, ``df`` (S, n) in original units (``df`` absent for
    Normal components); classification ``logits`` (S, n, C)."""
    flat = jax.tree.map(lambda v: jnp.reshape(v, (-1, *v.shape[2:])), samples)
    weights = flat.pop(bnn.SITE)

    def one(draw):
        w, theta = draw
        p = family.observation(family.forward(w, x), x, theta)
        if family.spec.task == "classification":
            return {"logits": p.logits}
        out = {"mu": p.loc, "sigma": jnp.broadcast_to(p.scale, p.loc.shape)}
        if family.likelihood == "student_t":
            out["df"] = jnp.broadcast_to(p.df, p.loc.shape)
        return out

    found = jax.lax.map(one, (weights, flat), batch_size=DRAW_CHUNK)
    if "mu" in found:
        scaler = family.spec.y_scaler
        found["mu"], found["sigma"] = scaler.inverse(found["mu"]), found["sigma"] * scaler.std
    return found


def regression_predictions(c: dict, levels) -> dict:
    """The mixture (1/S) sum_s p(y | x, w_s) per point, as ``BnnFamily.predict`` gives it
    (``bnn.mixture_summary``)."""
    return bnn.mixture_summary(c["mu"], c["sigma"], c.get("df"), levels)


def scores(family, c: dict, y) -> dict:
    """Test metrics from the draws, as ``BnnFamily.evaluate`` computes them (no ELBO)."""
    if family.spec.task == "classification":
        return metrics.classification_summary(y, jax.nn.log_softmax(c["logits"]))
    targets = family.spec.y_scaler.inverse(y)
    return metrics.regression_summary(targets, c["mu"], c["sigma"], c.get("df"))


def predictive_means(c: dict, num_chains: int):
    """E[y | x, w_s, theta_s] per draw, grouped by chain: (chains, draws, n[, C])."""
    mean = jax.nn.softmax(c["logits"]) if "logits" in c else c["mu"]
    return np.asarray(mean).reshape(num_chains, -1, *mean.shape[1:])


# ------------------------------------------------------------------ diagnostics


def convergence(draws) -> tuple[np.ndarray, np.ndarray]:
    """Split-R-hat and effective sample size (Vehtari et al. 2021) of every coordinate of
    (chains, draws, ...) arrays, flattened."""
    draws = np.asarray(draws, np.float64)
    return (
        np.ravel(split_gelman_rubin(draws)),
        np.ravel(effective_sample_size(draws)),
    )


def diagnostics(samples: dict, means, stats: dict) -> dict:
    """metrics.json's ``mcmc`` section: R-hat and ESS of the predictive mean at each test
    point (max, median; min, median) and of each site (max R-hat, min ESS), with the
    sampler's statistics."""
    rhat, ess = convergence(means)
    out = {
        "chains": int(means.shape[0]),
        "draws_per_chain": int(means.shape[1]),
        "predictive_rhat_max": float(np.nanmax(rhat)),
        "predictive_rhat_median": float(np.nanmedian(rhat)),
        "predictive_ess_min": float(np.nanmin(ess)),
        "predictive_ess_median": float(np.nanmedian(ess)),
    }
    sites = {}
    for name, value in samples.items():
        site_rhat, site_ess = convergence(value)
        sites[name] = {"rhat_max": float(np.nanmax(site_rhat)),
                       "ess_min": float(np.nanmin(site_ess))}  # fmt: skip
    out["params_rhat_max"] = max(s["rhat_max"] for s in sites.values())
    out["params_ess_min"] = min(s["ess_min"] for s in sites.values())
    return {**out, **stats, "sites": sites}


# ------------------------------------------------------------------ evaluation


class Evaluation(NamedTuple):
    test: dict  # test metrics (floats)
    val: dict  # validation metrics ({} without a validation split)
    predictions: dict  # predictions.npz: what a BNN run's holds, and the figures' arrays
    reference: dict  # reference.npz (reference.reference_arrays)
    mcmc: dict  # metrics.json's "mcmc" section (``diagnostics``)


def evaluate(family, chains: Chains, data) -> Evaluation:
    """Metrics, predictions and the reference predictive of the test split from the
    posterior draws (and metrics of the validation split when there is one)."""
    draws_at = jax.jit(functools.partial(components, family))
    score = jax.jit(functools.partial(scores, family))
    test_draws = draws_at(chains.samples, data.test.x)
    # The metrics of a variational run; a sampled posterior has no variational bound.
    test = {**floats(score(test_draws, data.test.y)), "elbo": None}
    val = {}
    if data.val is not None:
        val = {**floats(score(draws_at(chains.samples, data.val.x), data.val.y)), "elbo": None}
    num_chains = next(iter(chains.samples.values())).shape[0]
    mcmc = diagnostics(chains.samples, predictive_means(test_draws, num_chains), chains.stats)
    y = reference.targets(family.spec, data.test.y)
    if family.spec.task == "classification":
        summary = jax.device_get(bnn.classification_summary(test_draws["logits"]))
        figures = classification_figures(summary["probs"], y)
        return Evaluation(test, val, {"y": y, **summary, **figures},
                          reference.reference_arrays("classification", summary, y), mcmc)  # fmt: skip
    at = (*bnn.INTERVAL, *reference.levels())
    summary = jax.device_get(jax.jit(lambda c: regression_predictions(c, at))(test_draws))
    quantiles = summary.pop("quantiles")
    predictions = {"y": y, **summary, "lower_95": quantiles[:, 0], "upper_95": quantiles[:, 1]}
    predictions.update(calibration_figures(test_draws, y))
    if family.spec.input_dim == 1:
        predictions.update(curve_figure(family, chains.samples, data.test.x))
    ref = reference.reference_arrays("regression", {**summary, "quantiles": quantiles[:, 2:]}, y)
    return Evaluation(test, val, predictions, ref, mcmc)


def floats(scores_: dict) -> dict:
    return {k: float(v) for k, v in jax.device_get(scores_).items()}


def calibration_figures(c: dict, y) -> dict:
    """PIT values of the test targets and the coverage curve (``bnn_figures``' arrays)."""
    pit = metrics.mixture_cdf(jnp.asarray(y), c["mu"], c["sigma"], c.get("df"))
    nominal = bnn_figures.COVERAGE_LEVELS
    observed = metrics.coverage_curve(pit, nominal)
    return jax.device_get({"pit": pit, "coverage_nominal": jnp.asarray(nominal),
                           "coverage_observed": observed})  # fmt: skip


def classification_figures(probs, y) -> dict:
    bins = metrics.calibration_bins(jnp.asarray(probs), jnp.asarray(y))
    ece = metrics.expected_calibration_error(jnp.asarray(probs), jnp.asarray(y))
    return jax.device_get({**{f"calibration_{k}": v for k, v in bins.items()}, "ece": ece})


def curve_figure(family, samples: dict, x) -> dict:
    """``bnn_figures.curve``'s arrays for 1D inputs from the posterior draws: the
    predictive along a grid over the inputs' range widened on each side, its 50% and 95%
    bands, and function draws spread over the chains."""
    scaler = family.spec.x_scaler
    inputs = scaler.inverse(x[:, 0])
    low, high = jnp.min(inputs), jnp.max(inputs)
    pad = bnn_figures.CURVE_MARGIN * (high - low)
    grid = jnp.linspace(low - pad, high + pad, bnn_figures.CURVE_POINTS)

    def along(samples, grid):
        c = components(family, samples, scaler.forward(grid[:, None]))
        return c["mu"], regression_predictions(c, bnn_figures.CURVE_LEVELS)

    mu, curve = jax.device_get(jax.jit(along)(samples, grid))
    shown = np.linspace(0, mu.shape[0] - 1, bnn_figures.CURVE_DRAWS).astype(int)
    bands = np.moveaxis(curve.pop("quantiles"), -1, 0)
    ends = ("lower_95", "lower_50", "upper_50", "upper_95")
    return {
        "curve_x": np.asarray(grid),
        "curve_draws": mu[shown],
        "x": np.asarray(inputs),
        **{f"curve_{k}": v for k, v in curve.items()},
        **{f"curve_{k}": v for k, v in zip(ends, bands, strict=True)},
    }
