"""Figures: arrays in, PNG out (matplotlib's Agg backend). No model maths here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bslrun.artifacts import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use: reopening a run or
    validating a config need no figures, and pyplot takes most of a second to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _mark_epochs(ax, best_epoch: int | None, stopped_at: int | None) -> None:
    """The restored (best) epoch and an early stop as vertical lines, with legend entries."""
    if best_epoch:
        ax.axvline(best_epoch, color="C2", ls="--", lw=1, label=f"best epoch ({best_epoch})")
    if stopped_at:
        ax.axvline(stopped_at, color="C3", ls=":", lw=1.2, label=f"stopped early ({stopped_at})")


def learning_curves(
    history: list,
    path: Path,
    train_label: str,
    val_key: str | None = None,
    val_label: str = "",
    best_epoch: int | None = None,
    stopped_early: bool = False,
) -> Path:
    """The training loss against epoch and, on an axis of its own (its units differ), the
    validation column ``val_key`` of the history; the best epoch and an early stop marked.
    ``train_label`` and ``val_label`` name each estimator with its units."""
    plt = pyplot()
    epochs = np.array([row["epoch"] for row in history])
    val = np.array([(row["epoch"], row[val_key]) for row in history if val_key in row])
    fig, axes = plt.subplots(
        2 if len(val) else 1, 1, sharex=True, figsize=(6.5, 6 if len(val) else 3.6), squeeze=False
    )
    # Markers keep a run of a few epochs visible; thinned so a long run stays a line.
    style = dict(marker="o", ms=3, markevery=max(1, len(epochs) // 40))
    stopped_at = int(epochs[-1]) if stopped_early and len(epochs) else None
    top = axes[0, 0]
    top.plot(epochs, [row["train_loss"] for row in history], color="C0", **style)
    top.set_ylabel(train_label)
    top.set_title("training")
    panels = [top]
    if len(val):
        bottom = axes[1, 0]
        bottom.plot(val[:, 0], val[:, 1], color="C1", **style)
        bottom.set_ylabel(val_label)
        bottom.set_title("validation")
        panels.append(bottom)
    for ax in panels:
        _mark_epochs(ax, best_epoch if len(val) else None, stopped_at)
        _epoch_axis(ax)
    if best_epoch and len(val) or stopped_at:
        panels[-1].legend(fontsize=8)
    panels[-1].set_xlabel("epoch")
    fig.tight_layout()
    return _save(fig, path)


def predicted_vs_observed(
    y, mean, lower, upper, path: Path, target: str = "y", coverage: float | None = None
) -> Path:
    """Predictive means with 95% intervals against the observed targets; the title quotes
    ``coverage``, the run's test.coverage_95 (the console's number), where given."""
    plt = pyplot()
    y, mean, lower, upper = map(np.asarray, (y, mean, lower, upper))
    rng = np.random.default_rng(0)  # jitter only separates tied integer targets visually
    jitter = rng.uniform(-0.15, 0.15, size=y.shape) if np.allclose(y, np.round(y)) else 0.0
    inside = (y >= lower) & (y <= upper)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.errorbar(
        y + jitter,
        mean,
        yerr=[mean - lower, upper - mean],
        fmt="none",
        ecolor="0.75",
        elinewidth=0.6,
        zorder=1,
    )
    ax.scatter(y + jitter, mean, s=6, c=np.where(inside, "C0", "C3"), zorder=2)
    lo, hi = min(y.min(), lower.min()), max(y.max(), upper.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"observed {target}")
    ax.set_ylabel(f"predicted {target} (mean, 95% interval)")
    ax.set_title(f"95% interval coverage {inside.mean() if coverage is None else coverage:.4f}")
    return _save(fig, path)


def reliability(arrays: dict, path: Path, binary: bool = False) -> Path:
    """Reliability diagram (Guo et al. 2017, fig. 1) from ``calibration_counts``,
    ``_accuracy``, ``_confidence`` and ``_edges`` of the bins and the ``ece``: accuracy
    per bin with its gap to the mean confidence and its count, above a histogram of the
    confidences. A binary classifier's confidence is at least 1/2: its axis starts there."""
    plt = pyplot()
    counts, accuracy, confidence, edges = (
        np.asarray(arrays[f"calibration_{k}"])
        for k in ("counts", "accuracy", "confidence", "edges")
    )
    low = 0.5 if binary else 0.0
    left = np.maximum(edges[:-1], low)
    width = edges[1:] - left
    used = (counts > 0) & (width > 0)
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]}
    )
    ax.bar(left[used], accuracy[used], width[used], align="edge", color="C0",
           edgecolor="k", lw=0.6, label="accuracy")  # fmt: skip
    gap = confidence - accuracy
    ax.bar(left[used], gap[used], width[used], bottom=accuracy[used], align="edge", fill=False,
           hatch="///", edgecolor="C3", lw=0.6, label="gap to mean confidence")  # fmt: skip
    for x, w, c in zip(left[used], width[used], counts[used], strict=True):
        ax.annotate(f"{int(c)}", (x + w / 2, 0.01), ha="center", va="bottom", fontsize=6,
                    color="w")  # fmt: skip
    ax.plot([low, 1], [low, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy in the bin (white: points)")
    n = int(counts.sum())
    ece = float(arrays.get("test.ece", arrays["ece"]))  # the run's test.ece, as the console
    ax.set_title(f"reliability: ECE = {ece:.4f} ({len(counts)} bins, n = {n})")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(
        left[used], counts[used], width[used], align="edge", color="0.6", edgecolor="k", lw=0.6
    )
    hist.set_yscale("log")
    hist.set_xlim(low, 1)
    hist.set_xlabel("confidence max_c p(c | x)")
    hist.set_ylabel("points (log)")
    return _save(fig, path)


def image_grid(images, columns: int, path: Path, title: str = "") -> Path:
    """Grey-scale images (n, H, W) with values in [0, 1], tiled ``columns`` per row."""
    plt = pyplot()
    images = np.clip(np.asarray(images), 0.0, 1.0)
    n, height, width = images.shape
    rows = -(-n // columns)
    canvas = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1))
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[1 + r * (height + 1) : 1 + r * (height + 1) + height,
               1 + c * (width + 1) : 1 + c * (width + 1) + width] = image  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(3, columns * 0.45), max(2, rows * 0.45 + 0.4)))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def latent_manifold(images, z0, z1, path: Path) -> Path:
    """Decoded images of a 2D latent grid (side x side, row-major from the top left) on
    axes of the latent values ``z0`` (columns) and ``z1`` (rows, increasing upwards); an
    older samples file without them gives the bare grid."""
    if z0 is None or z1 is None:
        return image_grid(images, int(np.sqrt(len(images))), path, "decoded latent grid")
    plt = pyplot()
    images, z0, z1 = np.clip(np.asarray(images), 0.0, 1.0), np.asarray(z0), np.asarray(z1)
    side, (height, width) = len(z0), images.shape[1:]
    canvas = images.reshape(side, side, height, width).transpose(0, 2, 1, 3)
    canvas = canvas.reshape(side * height, side * width)
    half0, half1 = (z0[1] - z0[0]) / 2, (z1[1] - z1[0]) / 2
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest",
              extent=(z0[0] - half0, z0[-1] + half0, z1[0] - half1, z1[-1] + half1))  # fmt: skip
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("decoded latent grid E[x | z] over 98% of the test codes", fontsize=10)
    return _save(fig, path)


def latent_scatter(codes, labels, path: Path, title: str = "") -> Path:
    """2D latent codes coloured by class label."""
    plt = pyplot()
    codes, labels = np.asarray(codes), np.asarray(labels)
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=2, alpha=0.6)
    fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def uncertainty_plane(
    grid_x, grid_y, grid_probs, grid_entropy, x, labels, path: Path, grid_mutual_information=None
) -> Path:
    """Predictive class probability (or confidence), its entropy H[p] and, where given, the
    mutual information H[p] - E_w H[p_w] (its epistemic part) over the plane, data on top."""
    plt = pyplot()
    grid_x, grid_y = np.asarray(grid_x), np.asarray(grid_y)
    probs, entropy = np.asarray(grid_probs), np.asarray(grid_entropy)
    shape = (len(grid_y), len(grid_x))
    binary = probs.shape[-1] == 2
    mean = (probs[:, 1] if binary else probs.max(axis=-1)).reshape(shape)
    most = np.log(probs.shape[-1])  # H and I are at most log C nats
    panels = [
        (mean, "p(class 1 | x)" if binary else "confidence max_c p(c | x)", "RdBu_r", (0, 1)),
        (entropy.reshape(shape), "total: predictive entropy H[p] (nats)", "viridis", (0, most)),
    ]
    if grid_mutual_information is not None:
        info = np.asarray(grid_mutual_information).reshape(shape)
        panels.append((info, "epistemic: mutual information (nats)", "magma", (0, None)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (values, title, cmap, (vmin, vmax)) in zip(axes[0], panels, strict=True):
        image = ax.pcolormesh(grid_x, grid_y, values, cmap=cmap, shading="auto",
                              vmin=vmin, vmax=vmax, rasterized=True)  # fmt: skip
        ax.set_aspect("equal")
        _colorbar_beside(fig, ax, image)
        _class_points(ax, np.asarray(x), np.asarray(labels))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x1")
    axes[0, 0].set_ylabel("x2")
    fig.subplots_adjust(wspace=0.3)
    return _save(fig, path)


def _colorbar_beside(fig, ax, image) -> None:
    """A colour bar exactly as tall as ``ax`` (which keeps an equal aspect)."""
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    fig.colorbar(image, cax=make_axes_locatable(ax).append_axes("right", size="4%", pad=0.08))


# Point colours that stand out from every colour map above: light fill, dark edge.
CLASS_COLOURS = ("#ffd700", "#00e5ff", "#ff4fd8", "#7cff4f", "#ff8c00", "#ffffff",
                 "#b0b0ff", "#ff6060", "#60ffb0", "#c8a0ff")  # fmt: skip


def _class_points(ax, x, labels) -> None:
    """Test points by class (at most 250 per class, so the colours below stay visible),
    light markers with a black edge."""
    for c in np.unique(labels):
        points = x[labels == c][:250]
        ax.scatter(points[:, 0], points[:, 1], s=8, c=CLASS_COLOURS[int(c) % len(CLASS_COLOURS)],
                   edgecolors="k", linewidths=0.35, label=f"class {int(c)}")  # fmt: skip
    if len(np.unique(labels)) <= 4:
        ax.legend(loc="lower right", fontsize=7, framealpha=0.8, markerscale=1.3)


def _colour_bar(fig, ax, image, label: str) -> None:
    """A labelled colour bar exactly as tall as ``ax`` (also when its aspect is fixed)."""
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    bar_ax = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.08)
    fig.colorbar(image, cax=bar_ax, label=label)


def density_plane(
    grid_x, grid_y, log_prob, true_log_prob, path: Path, kl_to_true: float | None = None
) -> Path:
    """exp(log density) on a grid, as in the lecture's heatmaps; the true one beside it if
    known, on one colour scale, and the KL from the true density to the learned one in the
    title when it was measured (on the test points)."""
    plt = pyplot()
    grid_x, grid_y = np.asarray(grid_x), np.asarray(grid_y)
    shape = (len(grid_y), len(grid_x))
    learned = "learned density q(x)"
    if kl_to_true is not None and np.isfinite(kl_to_true):
        learned += f"\nKL(p || q) = {float(kl_to_true):.3f} nats"
    panels = [(np.exp(np.asarray(log_prob)).reshape(shape), learned)]
    if true_log_prob is not None:
        panels.append((np.exp(np.asarray(true_log_prob)).reshape(shape), "true density p(x)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.8), squeeze=False)
    vmax = max(float(np.nanmax(values)) for values, _ in panels)
    for ax, (values, title) in zip(axes[0], panels, strict=True):
        image = ax.pcolormesh(grid_x, grid_y, values, cmap="magma", shading="auto", vmax=vmax)
        ax.set_aspect("equal")
        _colour_bar(fig, ax, image, "density")
        ax.set_title(title)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    fig.tight_layout()
    return _save(fig, path)


def samples_beside_data(data, samples, path: Path) -> Path:
    """Data and model samples side by side (first two coordinates), on shared axes."""
    plt = pyplot()
    data, samples = np.asarray(data), np.asarray(samples)
    if data.shape[-1] == 1:
        return _histograms_beside(data[:, 0], samples[:, 0], path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharex=True, sharey=True)
    for ax, (points, title, colour) in zip(
        axes, [(data, "data", "C0"), (samples, "flow samples", "C1")], strict=True
    ):
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, c=colour, linewidths=0)
        ax.set_title(f"{title} ({len(points)} points)")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    lo = np.minimum(data[:, :2].min(axis=0), np.percentile(samples[:, :2], 0.5, axis=0))
    hi = np.maximum(data[:, :2].max(axis=0), np.percentile(samples[:, :2], 99.5, axis=0))
    pad = 0.05 * (hi - lo)
    axes[0].set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    axes[0].set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    return _save(fig, path)


def _histograms_beside(data, samples, path: Path) -> Path:
    """1D data and model samples as overlaid density histograms on common bins."""
    plt = pyplot()
    edges = np.histogram_bin_edges(np.concatenate([data, samples]), bins=50)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.hist(data, edges, density=True, alpha=0.5, color="C0", label=f"data ({len(data)})")
    ax.hist(samples, edges, density=True, histtype="step", lw=1.5, color="C1",
            label=f"flow samples ({len(samples)})")  # fmt: skip
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.legend()
    return _save(fig, path)


def base_to_data(base_lines, pushed_lines, data, path: Path) -> Path:
    """A grid of lines in base space (left) and its image under the flow (right)."""
    plt = pyplot()
    base_lines, pushed_lines = np.asarray(base_lines), np.asarray(pushed_lines)
    data = np.asarray(data)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    colours = plt.cm.viridis(np.linspace(0, 1, len(base_lines)))
    axes[1].scatter(data[:, 0], data[:, 1], s=1, c="0.8", linewidths=0, zorder=0)
    for lines, ax in ((base_lines, axes[0]), (pushed_lines, axes[1])):
        for line, colour in zip(lines, colours, strict=True):
            ax.plot(line[:, 0], line[:, 1], lw=0.8, color=colour)
        ax.set_xlabel("1st coordinate")
        ax.set_ylabel("2nd coordinate")
    axes[0].set_title("base space: grid in [-3, 3]^2")
    axes[1].set_title("data space: the grid pushed through the flow")
    finite = pushed_lines[np.all(np.isfinite(pushed_lines), axis=-1)]
    if len(data):
        lo = np.minimum(data.min(axis=0), np.percentile(finite, 1, axis=0))
        hi = np.maximum(data.max(axis=0), np.percentile(finite, 99, axis=0))
        axes[1].set_xlim(lo[0], hi[0])
        axes[1].set_ylim(lo[1], hi[1])
    return _save(fig, path)


# ----------------------------------------------------------------------------- BNN figures


def regression_curve(arrays: dict, path: Path, names: tuple = ("x", "y")) -> Path:
    """The posterior predictive of a 1D regression (the lecture's signature BNN figure).

    Top: test points, the predictive mean, the central 50% and 95% bands and function
    draws E[y | x, w_s]. Bottom: the predictive std split by the law of total variance,
    total^2 = epistemic^2 (spread of the draws' means) + aleatoric^2 (mean noise variance).
    ``arrays``: ``curve_*`` on the grid ``curve_x``, and the test points ``x``, ``y``.
    """
    plt = pyplot()
    a = {k: np.asarray(v) for k, v in arrays.items()}
    grid, (xname, yname) = a["curve_x"], names
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7.5, 6.6), sharex=True, gridspec_kw={"height_ratios": [2.2, 1]}
    )
    top.fill_between(grid, a["curve_lower_95"], a["curve_upper_95"], color="C0", alpha=0.18,
                     lw=0, label="95% predictive band")  # fmt: skip
    top.fill_between(grid, a["curve_lower_50"], a["curve_upper_50"], color="C0", alpha=0.35,
                     lw=0, label="50% predictive band")  # fmt: skip
    for i, draw in enumerate(a["curve_draws"]):
        top.plot(grid, draw, color="C1", lw=0.7, alpha=0.8,
                 label="posterior draws E[y | x, w]" if i == 0 else None)  # fmt: skip
    top.plot(grid, a["curve_mean"], color="C0", lw=2, label="predictive mean")
    top.scatter(a["x"], a["y"], s=7, c="k", alpha=0.6, linewidths=0, zorder=3,
                label=f"test data ({len(a['x'])})")  # fmt: skip
    spread = a["curve_upper_95"] - a["curve_lower_95"]
    centre = np.concatenate([a["y"], a["curve_mean"]])
    top.set_ylim(centre.min() - 0.6 * np.median(spread), centre.max() + 0.6 * np.median(spread))
    top.set_ylabel(yname)
    top.set_title("posterior predictive p(y | x, D)")
    top.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.85)
    bottom.plot(grid, a["curve_std"], color="k", lw=1.6, label="total")
    bottom.plot(grid, a["curve_epistemic_std"], color="C3", lw=1.4, label="epistemic (model)")
    bottom.plot(grid, a["curve_aleatoric_std"], color="C2", lw=1.4, ls="--",
                label="aleatoric (noise)")  # fmt: skip
    bottom.plot(a["x"], np.zeros_like(a["x"]), "|", color="k", alpha=0.4, ms=6)
    bottom.set_ylim(0, 1.45 * float(np.max(a["curve_std"])))  # room for the legend
    bottom.set_xlim(grid[0], grid[-1])
    bottom.set_xlabel(xname)
    bottom.set_ylabel(f"predictive std of {yname}")
    bottom.legend(fontsize=7, loc="upper center", ncol=3)
    for ax in (top, bottom):
        ax.grid(alpha=0.25)
    return _save(fig, path)


def regression_calibration(arrays: dict, path: Path) -> Path:
    """Calibration of a regression predictive: the observed coverage of its central
    intervals against their nominal level (``coverage_nominal``, ``coverage_observed``),
    and the histogram of the PIT values F_i(y_i) (``pit``), uniform when calibrated."""
    plt = pyplot()
    nominal, observed = (
        np.asarray(arrays["coverage_nominal"]),
        np.asarray(arrays["coverage_observed"]),
    )
    pit = np.asarray(arrays["pit"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4))
    left.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    # Binomial sampling error of a calibrated predictive on n points: +- 2 sd.
    band = 2 * np.sqrt(nominal * (1 - nominal) / len(pit))
    left.fill_between(
        nominal, nominal - band, nominal + band, color="0.85", label="±2 sd for n points"
    )
    left.plot(nominal, observed, "o-", color="C0", ms=4, label="observed")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.set_aspect("equal")
    left.set_xlabel("nominal level of the central interval")
    left.set_ylabel("fraction of test targets inside")
    left.set_title("coverage (above the diagonal: too wide)", fontsize=10)
    left.legend(fontsize=8, loc="upper left")
    bins = 20
    right.hist(pit, bins=bins, range=(0, 1), color="C0", edgecolor="k", lw=0.5)
    right.axhline(len(pit) / bins, color="k", ls="--", lw=0.8, label="uniform")
    right.set_xlim(0, 1)
    _name_axes(right, "PIT  F(y | x)", "test points",
               "PIT histogram (U-shape: too narrow, hump: too wide)")  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def _name_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, a small title and the legend of a panel in a row of panels."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def weight_histograms(arrays: dict, path: Path) -> Path:
    """The weights under prior and posterior: densities of the posterior means and of one
    posterior draw beside the prior N(0, s^2); histogram of log10 posterior stds beside s."""
    plt = pyplot()
    a = {k: np.asarray(v) for k, v in arrays.items() if k.startswith(("weight_", "prior_"))}
    edges, s = a["weight_edges"], float(a["prior_scale"])
    with_std = "weight_log_std_counts" in a
    fig, axes = plt.subplots(1, 2 if with_std else 1, figsize=(11 if with_std else 5.5, 4.2),
                             squeeze=False)  # fmt: skip
    ax = axes[0, 0]
    ax.stairs(a["weight_mean_density"], edges, fill=True, color="C0", alpha=0.5,
              label="posterior means μ_j")  # fmt: skip
    ax.stairs(a["weight_draw_density"], edges, color="C1", lw=1.2, label="one draw w ~ q")
    centres = 0.5 * (edges[1:] + edges[:-1])
    ax.plot(centres, a["weight_prior_density"], "k--", lw=1.2, label=f"prior N(0, {s:g}²)")
    ax.set_yscale("log")
    ax.set_xlabel("weight value")
    ax.set_ylabel("density (log)")
    ax.set_title("weights: prior and posterior", fontsize=10)
    ax.legend(fontsize=8)
    if with_std:
        ax = axes[0, 1]
        ax.stairs(a["weight_log_std_counts"], a["weight_log_std_edges"], fill=True, color="C2",
                  alpha=0.6, label="posterior stds σ_j")  # fmt: skip
        ax.axvline(np.log10(s), color="k", ls="--", lw=1.2, label=f"prior std {s:g}")
        ax.set_yscale("log")
        _name_axes(ax, "log10 of the posterior std σ_j", "weights (log)",
                   "posterior stds against the prior std")  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def uncertain_images(arrays: dict, shape: tuple, path: Path, columns: int = 8) -> Path:
    """The test images of highest predictive entropy, each captioned with its label,
    the prediction (with its probability) and the entropy H in nats."""
    plt = pyplot()
    images = np.asarray(arrays["uncertain_images"]).reshape(-1, *shape)
    labels, predictions = arrays["uncertain_labels"], arrays["uncertain_predictions"]
    confidence, entropy = arrays["uncertain_confidence"], arrays["uncertain_entropy"]
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.25, rows * 1.55), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(images):
            continue
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        wrong = int(labels[i]) != int(predictions[i])
        ax.set_title(f"label {int(labels[i])} → {int(predictions[i])} ({float(confidence[i]):.2f})\n"
                     f"H = {float(entropy[i]):.2f}", fontsize=7,
                     color="C3" if wrong else "k")  # fmt: skip
    fig.suptitle(
        "most uncertain test images: label → prediction (its probability), predictive "
        "entropy H (nats); red: misclassified",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, path)


def entropy_histograms(inside, outside, names: tuple, num_classes: int, path: Path) -> Path:
    """Predictive entropy of in-distribution test images and of out-of-distribution ones:
    a model that knows what it doesn't know puts the second near log C."""
    plt = pyplot()
    inside, outside = np.asarray(inside), np.asarray(outside)
    most = np.log(num_classes)
    bins = np.linspace(0, most, 41)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for values, name, colour in ((inside, names[0], "C0"), (outside, names[1], "C3")):
        ax.hist(values, bins=bins, color=colour, alpha=0.3, histtype="stepfilled")
        ax.hist(values, bins=bins, color=colour, histtype="step", lw=1.4,
                label=f"{name} ({len(values)}): mean {values.mean():.2f}")  # fmt: skip
    ax.axvline(most, color="k", ls="--", lw=0.8, label=f"log {num_classes}: uniform prediction")
    ax.set_yscale("log")
    ax.set_xlabel("predictive entropy H[p(y | x, D)] (nats)")
    ax.set_ylabel("images (log)")
    ax.set_title("does the model know what it doesn't know?", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    return _save(fig, path)
