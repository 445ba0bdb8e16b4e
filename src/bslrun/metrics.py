"""Pure jnp metrics over posterior predictive draws.

Conventions: ``mu`` and ``sigma`` have shape (S, n): S posterior draws of a
Normal predictive for n points, so the predictive is the equal-weight mixture
p(y | x) = (1/S) sum_s N(y; mu_s, sigma_s). Where ``df`` is given the components
are Student-t instead, t_df(y; mu_s, sigma_s). ``probs`` has shape (S, n, C).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.nn import logsumexp
from jax.scipy.special import betainc, ndtr, ndtri
from jax.scipy.stats import norm, t

INTERVAL_LEVELS = (0.5, 0.9, 0.95)


def rmse(prediction, y):
    """sqrt(mean_i (prediction_i - y_i)^2)."""
    return jnp.sqrt(jnp.mean((prediction - y) ** 2))


def log_mean_exp(a, axis: int = 0):
    """log((1/S) sum_s exp(a_s)), stable."""
    return logsumexp(a, axis=axis) - jnp.log(a.shape[axis])


def student_t_cdf(z, df):
    """Standard Student-t CDF from its tail P(T > |z|) = I_{df / (df + z^2)}(df/2, 1/2) / 2
    (Abramowitz and Stegun 26.7.1 with 26.5.27). Near the centre (z^2 < df) the tail is
    1/2 - I_{z^2 / (df + z^2)}(1/2, df/2) / 2, which keeps float32 precision there."""
    z2 = z**2
    centre = 0.5 - 0.5 * betainc(0.5, 0.5 * df, z2 / (df + z2))
    tail = jnp.where(z2 < df, centre, 0.5 * betainc(0.5 * df, 0.5, df / (df + z2)))
    return jnp.where(z >= 0, 1.0 - tail, tail)


def component_logpdf(y, mu, sigma, df=None):
    """log N(y; mu, sigma), or log t_df(y; mu, sigma) when ``df`` is given."""
    return norm.logpdf(y, mu, sigma) if df is None else t.logpdf(y, df, mu, sigma)


def mixture_log_density(y, mu, sigma, df=None):
    """log p(y_i | x_i) under the mixture of S Normals (Student-t with ``df``): shape (n,)."""
    return log_mean_exp(component_logpdf(y[None, :], mu, sigma, df), axis=0)


def mixture_nll(y, mu, sigma, df=None):
    """Negative log-likelihood per datum, -(1/n) sum_i log p(y_i | x_i)."""
    return -jnp.mean(mixture_log_density(y, mu, sigma, df))


def mixture_cdf(y, mu, sigma, df=None):
    """Predictive CDF F_i(y_i) = (1/S) sum_s Phi((y_i - mu_si) / sigma_si): shape (n,)
    (the Student-t CDF in place of Phi when ``df`` is given)."""
    z = (y[None, :] - mu) / sigma
    return jnp.mean(ndtr(z) if df is None else student_t_cdf(z, df), axis=0)


def component_variance(sigma, df=None):
    """Variance of each component: sigma^2, or sigma^2 df / (df - 2) for Student-t (df > 2)."""
    return sigma**2 if df is None else sigma**2 * df / (df - 2.0)


def interval_coverage(pit, level: float):
    """Fraction of points inside their central ``level`` predictive interval.

    y_i lies inside [F_i^-1((1-l)/2), F_i^-1((1+l)/2)] exactly when its
    probability integral transform u_i = F_i(y_i) lies in [(1-l)/2, (1+l)/2].
    """
    return jnp.mean(jnp.abs(pit - 0.5) <= level / 2)


def mixture_pdf(y, mu, sigma, df=None):
    """Predictive density p_i(y_i) = (1/S) sum_s N(y_i; mu_si, sigma_si): shape (n,)
    (Student-t components when ``df`` is given)."""
    return jnp.mean(jnp.exp(component_logpdf(y[None, :], mu, sigma, df)), axis=0)


def mixture_quantile(q: float, mu, sigma, df=None, iterations: int = 60):
    """F_i^-1(q) for each point: shape (n,). Safeguarded Newton on the mixture CDF.

    The quantile lies within [min_s mu - 10 sigma, max_s mu + 10 sigma]: for any
    practical q with Normal components, for q in [0.005, 0.995] with Student-t ones
    (df > 2; t_2's 0.995 quantile is 9.92). Each step keeps that bracket around the root
    (F(low) < q <= F(high)) and takes the Newton step x - (F(x) - q) / p(x) where it
    stays inside, else bisects (Press et al. 2007, "rtsafe", sec. 9.4): quadratic
    convergence from the moment-matched Normal start, never worse than bisection. It
    stops when every point's step is below float32 resolution or its F(x) equals q to
    float32 resolution, after ``iterations`` at most.
    """
    low = jnp.min(mu - 10 * sigma, axis=0)
    high = jnp.max(mu + 10 * sigma, axis=0)
    mean = jnp.mean(mu, axis=0)
    spread = jnp.sqrt(jnp.var(mu, axis=0) + jnp.mean(component_variance(sigma, df), axis=0))
    start = jnp.clip(mean + spread * ndtri(q), low, high)
    tolerance = 2 * jnp.finfo(mu.dtype).eps * (jnp.abs(mean) + spread)

    def body(carry):
        i, x, low, high, _ = carry
        cdf = mixture_cdf(x, mu, sigma, df)
        below = cdf < q
        low, high = jnp.where(below, x, low), jnp.where(below, high, x)
        newton = x - (cdf - q) / mixture_pdf(x, mu, sigma, df)
        # A closed bracket: a converged point (a zero step onto the end x just set) stays.
        inside = jnp.isfinite(newton) & (newton >= low) & (newton <= high)
        # Once F(x) is q to float32 resolution, a point takes Newton steps but never
        # bisects, and no longer holds the loop: its steps only chase F's rounding.
        settled = jnp.abs(cdf - q) <= 4 * jnp.finfo(mu.dtype).eps
        new = jnp.where(inside, newton, jnp.where(settled, x, 0.5 * (low + high)))
        step = jnp.where(settled, 0.0, jnp.abs(new - x) - tolerance)
        return i + 1, new, low, high, jnp.max(step)

    def going(carry):
        i, *_, worst_step = carry
        return (i < iterations) & (worst_step > 0)

    carry = (0, start, low, high, jnp.asarray(jnp.inf, mu.dtype))
    return lax.while_loop(going, body, carry)[1]


QUANTILE_CHUNK = 8  # levels solved at once: one compiled solve, memory bounded for long tests


def mixture_quantiles(levels, mu, sigma, df=None):
    """``mixture_quantile`` at each of ``levels``: shape (n, len(levels)), the levels
    solved QUANTILE_CHUNK at a time in one loop (a Python loop would compile one solve
    per level)."""
    if len(levels) == 0:
        return jnp.zeros((mu.shape[-1], 0), mu.dtype)
    solve = functools.partial(mixture_quantile, mu=mu, sigma=sigma, df=df)
    at = jnp.asarray(levels, mu.dtype)
    return lax.map(solve, at, batch_size=min(len(levels), QUANTILE_CHUNK)).T


def regression_summary(y, mu, sigma, df=None) -> dict:
    """RMSE of the predictive mean, NLL, interval coverage and the variance split.

    Total predictive variance = Var_s[mu_s] (epistemic) + E_s[Var component_s]
    (aleatoric), by the law of total variance; the reported figures are the
    means over points of the corresponding standard deviations.
    """
    mean = jnp.mean(mu, axis=0)
    epistemic = jnp.std(mu, axis=0)
    aleatoric = jnp.sqrt(jnp.mean(component_variance(sigma, df), axis=0))
    pit = mixture_cdf(y, mu, sigma, df)
    out = {
        "rmse": rmse(mean, y),
        "nll": mixture_nll(y, mu, sigma, df),
        "epistemic_std": jnp.mean(epistemic),
        "aleatoric_std": jnp.mean(aleatoric),
        "predictive_std": jnp.mean(jnp.sqrt(epistemic**2 + aleatoric**2)),
    }
    for level in INTERVAL_LEVELS:
        out[f"coverage_{round(level * 100)}"] = interval_coverage(pit, level)
    return out


def calibration_bins(probs, labels, num_bins: int = 15) -> dict:
    """Equal-width confidence bins on [0, 1] of (n, C) predictive probabilities.

    Per bin b: ``counts`` n_b, ``accuracy`` acc_b and mean ``confidence`` conf_b of the
    points whose confidence max_c p(c | x) falls in it (0 where n_b = 0), and the bin
    ``edges`` (num_bins + 1,). Guo et al. 2017, sec. 2.
    """
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
    bins = jnp.clip((confidence * num_bins).astype(jnp.int32), 0, num_bins - 1)
    counts = jnp.zeros(num_bins).at[bins].add(1.0)
    per_bin = jnp.maximum(counts, 1.0)
    return {
        "counts": counts,
        "accuracy": jnp.zeros(num_bins).at[bins].add(correct) / per_bin,
        "confidence": jnp.zeros(num_bins).at[bins].add(confidence) / per_bin,
        "edges": jnp.linspace(0.0, 1.0, num_bins + 1),
    }


def expected_calibration_error(probs, labels, num_bins: int = 15):
    """ECE: sum_b (n_b / n) |accuracy_b - confidence_b| over ``calibration_bins``.

    ``probs`` is (n, C) predictive probabilities (Guo et al. 2017, eq. 3).
    """
    bins = calibration_bins(probs, labels, num_bins)
    gaps = jnp.abs(bins["accuracy"] - bins["confidence"])
    return jnp.sum(bins["counts"] * gaps) / labels.shape[0]


def coverage_curve(pit, levels):
    """Observed coverage of the central predictive intervals at each nominal level (K,),
    from PIT values u_i = F_i(y_i) (n,); a calibrated predictive lies on the diagonal."""
    return jnp.stack([interval_coverage(pit, level) for level in levels])


def classification_summary(labels, log_probs) -> dict:
    """Accuracy, error, NLL, ECE and entropy of the posterior predictive.

    ``log_probs`` is (S, n, C): per-draw log-probabilities; the predictive is
    their mixture, log p(c | x) = log mean_s p_s(c | x).
    """
    log_pred = log_mean_exp(log_probs, axis=0)  # (n, C)
    probs = jnp.exp(log_pred)
    correct = jnp.argmax(log_pred, axis=-1) == labels
    accuracy = jnp.mean(correct)
    nll = -jnp.mean(jnp.take_along_axis(log_pred, labels[:, None], axis=-1))
    entropy = -jnp.sum(probs * log_pred, axis=-1)
    return {
        "accuracy": accuracy,
        "error": jnp.mean(~correct),  # not 1 - accuracy: no rounding below zero
        "nll": nll,
        "ece": expected_calibration_error(probs, labels),
        "predictive_entropy": jnp.mean(entropy),
    }


def gaussian_kl_to_standard(loc, scale):
    """KL(N(loc, diag(scale^2)) || N(0, I)), summed over the last axis.

    = 1/2 sum_j (scale_j^2 + loc_j^2 - 1 - log scale_j^2)  (Kingma and Welling 2014, app. B).
    """
    return 0.5 * jnp.sum(scale**2 + loc**2 - 1.0 - 2.0 * jnp.log(scale), axis=-1)


def importance_weighted_bound(log_weights):
    """log (1/K) sum_k w_k per datum from log-weights (K, n) (Burda et al. 2016).

    With log w_k = log p(x, z_k) - log q(z_k | x), z_k ~ q, this lower-bounds
    log p(x) and tightens as K grows; K = 1 gives the ELBO.
    """
    return log_mean_exp(log_weights, axis=0)


def active_units(latent_means, threshold: float = 0.01):
    """Number of latent dimensions u with Cov_x(E_q[z_u | x]) > threshold (Burda et al. 2016).

    ``latent_means`` is (n, L): encoder means of n data points.
    """
    return jnp.sum(jnp.var(latent_means, axis=0) > threshold)


def bits_per_dim(nll_nats, num_dims: int):
    """Negative log-likelihood per datum in nats -> bits per dimension."""
    return nll_nats / (num_dims * jnp.log(2.0))
