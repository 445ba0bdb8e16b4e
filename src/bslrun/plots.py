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


def learning_curves(history: list, path: Path) -> Path:
    """Training loss (negative ELBO per datum) and validation NLL against epoch."""
    plt = pyplot()
    epochs = np.array([row["epoch"] for row in history])
    loss = np.array([row["train_loss"] for row in history])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, loss, label="train: -ELBO / N")
    val = [(row["epoch"], row["val_nll"]) for row in history if "val_nll" in row]
    if val:
        ve, vn = np.array(val).T
        ax.plot(ve, vn, label="validation NLL (original units)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datum")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def predicted_vs_observed(y, mean, lower, upper, path: Path, target: str = "y") -> Path:
    """Predictive means with 95% intervals against the observed targets."""
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
    ax.set_title(f"95% interval coverage {inside.mean():.3f}")
    return _save(fig, path)


def reliability(probs, labels, path: Path, num_bins: int = 15) -> Path:
    """Reliability diagram: accuracy against confidence in equal-width bins."""
    plt = pyplot()
    probs, labels = np.asarray(probs), np.asarray(labels)
    confidence = probs.max(axis=-1)
    correct = probs.argmax(axis=-1) == labels
    bins = np.clip((confidence * num_bins).astype(int), 0, num_bins - 1)
    centres = (np.arange(num_bins) + 0.5) / num_bins
    counts = np.bincount(bins, minlength=num_bins)
    accuracy = np.bincount(bins, weights=correct, minlength=num_bins) / np.maximum(counts, 1)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(centres, accuracy, width=1 / num_bins, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend()
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


def uncertainty_plane(grid_x, grid_y, grid_probs, grid_entropy, x, labels, path: Path) -> Path:
    """Predictive class probability (or confidence) and entropy over the plane, data on top."""
    plt = pyplot()
    grid_x, grid_y = np.asarray(grid_x), np.asarray(grid_y)
    probs, entropy = np.asarray(grid_probs), np.asarray(grid_entropy)
    shape = (len(grid_y), len(grid_x))
    binary = probs.shape[-1] == 2
    mean = (probs[:, 1] if binary else probs.max(axis=-1)).reshape(shape)
    x, labels = np.asarray(x), np.asarray(labels)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = [
        (mean, "p(class 1 | x)" if binary else "max_c p(c | x)", "RdBu_r"),
        (entropy.reshape(shape), "predictive entropy (nats)", "viridis"),
    ]
    for ax, (values, title, cmap) in zip(axes, panels, strict=True):
        image = ax.pcolormesh(grid_x, grid_y, values, cmap=cmap, shading="auto")
        fig.colorbar(image, ax=ax)
        ax.scatter(x[:, 0], x[:, 1], c=labels, cmap="tab10", vmin=0, vmax=9, s=3, alpha=0.7)
        ax.set_title(title)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    return _save(fig, path)


def density_plane(grid_x, grid_y, log_prob, true_log_prob, path: Path) -> Path:
    """exp(log density) on a grid, as in the lecture's heatmaps; the true one beside it if known."""
    plt = pyplot()
    grid_x, grid_y = np.asarray(grid_x), np.asarray(grid_y)
    shape = (len(grid_y), len(grid_x))
    panels = [(np.exp(np.asarray(log_prob)).reshape(shape), "learned density")]
    if true_log_prob is not None:
        panels.append((np.exp(np.asarray(true_log_prob)).reshape(shape), "true density"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.5), squeeze=False)
    vmax = max(float(np.nanmax(values)) for values, _ in panels)
    for ax, (values, title) in zip(axes[0], panels, strict=True):
        image = ax.pcolormesh(grid_x, grid_y, values, cmap="magma", shading="auto", vmax=vmax)
        fig.colorbar(image, ax=ax)
        ax.set_title(title)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
    return _save(fig, path)


def samples_beside_data(data, samples, path: Path) -> Path:
    """Data and model samples side by side (first two coordinates), on shared axes."""
    plt = pyplot()
    data, samples = np.asarray(data), np.asarray(samples)
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
