"""Figures: arrays in, PNG out (matplotlib's Agg backend). No model maths here."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bslrun.artifacts import atomic_path


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def learning_curves(history: list, path: Path) -> Path:
    """Training loss (negative ELBO per datum) and validation NLL against epoch."""
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
