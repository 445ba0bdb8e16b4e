"""The arrays behind a BNN's figures, and the figures: the predictive over a plane (2D
inputs) or along a curve (1D), calibration, the most uncertain and out-of-distribution
images, and the weights under prior and posterior. Functions of a ``BnnFamily``, which
calls them from ``artifacts`` (jit-compiled) and ``plot``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from bslrun import metrics, plots
from bslrun.models import guides
from bslrun.models.batching import PREDICT_ROWS, chunked_map

PLANE_SIDE = 100  # grid points per axis of plots/uncertainty.png (2D inputs)
# The plane and the 1D curve extend the data's range by this fraction of it on each side:
# far enough to show what the posterior does away from the data.
PLANE_MARGIN, CURVE_MARGIN = 0.75, 0.5
CURVE_POINTS = 400  # grid points of plots/regression.png (1D inputs)
CURVE_DRAWS = 8  # posterior function draws f(x; w_s) shown in plots/regression.png
CURVE_LEVELS = (0.025, 0.25, 0.75, 0.975)  # the 95% and 50% central predictive bands
COVERAGE_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # nominal 0.05 ... 0.95
WEIGHT_BINS = 100  # histogram bins of plots/weights.png
MOMENT_DRAWS = 64  # draws for the weights' marginal moments where q has no closed form
UNCERTAIN_IMAGES = 24  # the most uncertain test images in plots/uncertain_images.png


def plane(family, params, x, key, num_samples):
    """Predictive probabilities, entropy H[p] and mutual information H[p] - E_w H[p_w]
    on a PLANE_SIDE^2 grid (original units) around 2D inputs x."""
    low, high = jnp.min(x, axis=0), jnp.max(x, axis=0)
    margin = PLANE_MARGIN * (high - low)
    axes = [jnp.linspace(low[i] - margin[i], high[i] + margin[i], PLANE_SIDE) for i in (0, 1)]
    grid = jnp.stack(jnp.meshgrid(*axes), axis=-1).reshape(-1, 2)
    plane = family.predict(params, family.spec.x_scaler.forward(grid), key, num_samples)
    return {
        "grid_x": axes[0],
        "grid_y": axes[1],
        "grid_probs": plane["probs"],
        "grid_entropy": plane["entropy"],
        "grid_mutual_information": plane["mutual_information"],
    }


def curve(family, params, x, key, num_samples):
    """The predictive on CURVE_POINTS inputs spanning the 1D inputs' range widened by
    CURVE_MARGIN of it on each side (original units): mean, the epistemic and
    aleatoric stds, the 50% and 95% band ends, and CURVE_DRAWS function draws
    E[y | x, w_s] (the first of the same S draws)."""
    inputs = family.spec.x_scaler.inverse(x[:, 0])
    low, high = jnp.min(inputs), jnp.max(inputs)
    pad = CURVE_MARGIN * (high - low)
    grid = jnp.linspace(low - pad, high + pad, CURVE_POINTS)
    scaled = family.spec.x_scaler.forward(grid[:, None])
    curve = family.predict(params, scaled, key, num_samples, levels=CURVE_LEVELS)
    weights, _ = family.weight_draws(params, key, num_samples)
    draws = weights[: min(CURVE_DRAWS, weights.shape[0])]
    bands = jnp.moveaxis(curve.pop("quantiles"), -1, 0)
    ends = ("lower_95", "lower_50", "upper_50", "upper_95")
    return {
        "curve_x": grid,
        "curve_draws": family.in_original_units(family.predictive(params, draws, scaled))[0],
        "x": inputs,
        **{f"curve_{k}": v for k, v in curve.items()},
        **{f"curve_{k}": v for k, v in zip(ends, bands, strict=True)},
    }


def calibration_curve(family, params, x, y, key, num_samples):
    """PIT values u_i = F_i(y_i) of the test targets under the predictive mixture (the
    same S draws as ``predict``) and the observed coverage of the central intervals at
    the nominal COVERAGE_LEVELS (Gneiting et al. 2007)."""
    weights, _ = family.weight_draws(params, key, num_samples)

    def rows(xy, _):  # targets ride along as the last column, chunked with their rows
        mu, sigma, df = family.in_original_units(family.predictive(params, weights, xy[:, :-1]))
        targets = family.spec.y_scaler.inverse(xy[:, -1])
        return {"pit": metrics.mixture_cdf(targets, mu, sigma, df)}

    xy = jnp.concatenate([x, y[:, None].astype(x.dtype)], axis=1)
    pit = chunked_map(rows, xy, key, min(x.shape[0], PREDICT_ROWS))["pit"]
    levels = jnp.asarray(COVERAGE_LEVELS)
    return {
        "pit": pit,
        "coverage_nominal": levels,
        "coverage_observed": metrics.coverage_curve(pit, COVERAGE_LEVELS),
    }


def images(family, params, x, out, key, num_samples, ood_x):
    """The UNCERTAIN_IMAGES test images of highest predictive entropy with their labels
    and predictions; the predictive entropy of the out-of-distribution images."""
    _, top = jax.lax.top_k(out["entropy"], min(UNCERTAIN_IMAGES, x.shape[0]))
    found = {
        "uncertain_images": x[top],
        "uncertain_labels": out["y"][top],
        "uncertain_predictions": out["prediction"][top],
        "uncertain_confidence": jnp.max(out["probs"][top], axis=-1),
        "uncertain_entropy": out["entropy"][top],
    }
    if ood_x is not None:
        ood = family.predict(params, ood_x, key, num_samples)
        found["ood_entropy"] = ood["entropy"]
        found["ood_mutual_information"] = ood["mutual_information"]
    return found


def weight_histograms(family, params, key) -> dict:
    """Histograms (densities) of the weights' posterior means mu_j, of one draw w ~ q and
    the prior density N(0, s^2) on the same bins; and of log10 of the posterior stds
    sigma_j (none for MAP and MC dropout; over the members for an ensemble), beside log10 s."""
    mean, std, draw = family.weight_marginals(params, key)
    s = family.cfg.prior_scale
    span = jnp.maximum(2.0 * s, jnp.max(jnp.abs(jnp.concatenate([mean, draw]))))
    edges = jnp.linspace(-span, span, WEIGHT_BINS + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    out = {
        "weight_edges": edges,
        "weight_mean_density": jnp.histogram(mean, edges, density=True)[0],
        "weight_draw_density": jnp.histogram(draw, edges, density=True)[0],
        "weight_prior_density": jax.scipy.stats.norm.pdf(centres, 0.0, s),
        "prior_scale": jnp.asarray(s),
    }
    if std is not None:
        log_std = jnp.log10(std)
        low = jnp.minimum(jnp.min(log_std), jnp.log10(s)) - 0.1
        high = jnp.maximum(jnp.max(log_std), jnp.log10(s)) + 0.1
        log_edges = jnp.linspace(low, high, WEIGHT_BINS + 1)
        out["weight_log_std_edges"] = log_edges
        out["weight_log_std_counts"] = jnp.histogram(log_std, log_edges)[0]
    return out


def posterior_marginals(q, key):
    """Per-weight mean and std (D,) of q(w): exact for the Gaussian and Delta families,
    from MOMENT_DRAWS draws for the flows (no closed form)."""
    if isinstance(q, dist.TransformedDistribution):
        w = guides.sample_and_log_prob(q, key, (MOMENT_DRAWS,))[0]
        return jnp.mean(w, axis=0), jnp.std(w, axis=0)
    return q.mean, jnp.sqrt(q.variance)


def plot(family, arrays, plots_dir: Path) -> list:
    """The BNN's figures from its ``artifacts`` arrays; what is drawn follows the task and
    the inputs (and what an older arrays file holds)."""
    paths = []
    if "weight_edges" in arrays:  # older arrays files have no weights
        paths.append(plots.weight_histograms(arrays, plots_dir / "weights.png"))
    if family.spec.task == "classification":
        return paths + _plot_classification(family, arrays, plots_dir)
    paths.append(
        plots.predicted_vs_observed(
            arrays["y"],
            arrays["mean"],
            arrays["lower_95"],
            arrays["upper_95"],
            plots_dir / "predicted_vs_observed.png",
            target=family.spec.target_name,
            coverage=arrays.get("test.coverage_95"),  # the run's number, as the console's
        )
    )
    if "coverage_observed" in arrays:
        paths.append(plots.regression_calibration(arrays, plots_dir / "calibration.png"))
    if "curve_x" in arrays:
        names = (family.spec.feature_names[0], family.spec.target_name)
        paths.append(plots.regression_curve(arrays, plots_dir / "regression.png", names))
    return paths


def _plot_classification(family, arrays, plots_dir: Path) -> list:
    paths = []
    if "calibration_counts" in arrays:
        paths.append(
            plots.reliability(
                arrays, plots_dir / "reliability.png", binary=family.spec.num_classes == 2
            )
        )
    if "grid_probs" in arrays:
        paths.append(
            plots.uncertainty_plane(
                arrays["grid_x"],
                arrays["grid_y"],
                arrays["grid_probs"],
                arrays["grid_entropy"],
                arrays["x"],
                arrays["y"],
                plots_dir / "uncertainty.png",
                arrays.get("grid_mutual_information"),
            )
        )
    if "uncertain_images" in arrays:
        shape = tuple(family.spec.image_shape)[:2]
        paths.append(plots.uncertain_images(arrays, shape, plots_dir / "uncertain_images.png"))
    if "ood_entropy" in arrays:
        source = int(arrays.get("ood_source", -1))
        from bslrun.data.mnist import OOD_SOURCES  # on use: reopening needs no data

        ood = OOD_SOURCES[source] if source >= 0 else "out-of-distribution images"
        paths.append(
            plots.entropy_histograms(
                arrays["entropy"],
                arrays["ood_entropy"],
                (f"{family.spec.name} test images", ood),
                family.spec.num_classes,
                plots_dir / "ood_entropy.png",
            )
        )
    return paths
