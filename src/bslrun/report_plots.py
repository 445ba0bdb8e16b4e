"""The report's figures (matplotlib's Agg canvas, PNG bytes out): per metric, each group's
mean ± standard error with its runs as dots and reference lines; and the groups' learning
curves overlaid. Group labels are shortened so the ticks and legends stay readable.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np

from bslrun.runs import REPLICATES, group_value
from bslrun.summary import Row, better, shorten

MAX_LABEL = 18  # characters of one value on a tick or in a legend
MAX_WIDTH = 16  # inches of a metric's figure; more groups rotate their labels


# ------------------------------------------------------------------ labels


def drop_shared_prefix(values: list[str]) -> list[str]:
    """``["runs/a.csv", "runs/b.csv"]`` -> ``["a.csv", "b.csv"]``: the folders all values
    share are dropped. Only at a ``/``: ``0.003`` and ``0.01``, or ``mean_field`` and
    ``mean_field_iaf``, share a prefix that is part of their value."""
    if len(set(values)) < 2:
        return values
    cut = os.path.commonprefix(values).rfind("/") + 1
    return values if any(len(v) <= cut for v in values) else [v[cut:] for v in values]


def short_key(key: str, keys: list[str]) -> str:
    """``model.posterior`` -> ``posterior`` when no other key ends the same way."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def label_parts(rows: list[Row], keys: list[str]) -> tuple[list[str], list[tuple]]:
    """(short names of the keys whose values differ between rows, each row's values of
    them, shortened). Keys every row shares say nothing about a row and are left out."""
    columns = [[row.values[i] for row in rows] for i in range(len(keys))]
    varying = [i for i, column in enumerate(columns) if len(set(column)) > 1]
    names = [short_key(keys[i], [keys[j] for j in varying]) for i in varying]
    shown = [[shorten(v, MAX_LABEL) for v in drop_shared_prefix(columns[i])] for i in varying]
    return names, list(zip(*shown, strict=True)) if shown else [()] * len(rows)


def tick_labels(rows: list[Row], keys: list[str]) -> tuple[list[str], str]:
    """(one tick label per row: its values, one per line; the axis title: the keys' short
    names, ``posterior / lr``, in the same order)."""
    names, values = label_parts(rows, keys)
    return ["\n".join(v) or "all runs" for v in values], " / ".join(names)


def legend_labels(rows: list[Row], keys: list[str]) -> list[str]:
    """One label per row: ``posterior=map, lr=0.01`` (a bare value says too little)."""
    names, values = label_parts(rows, keys)
    return [", ".join(f"{n}={v}" for n, v in zip(names, vs, strict=True)) for vs in values]


def run_labels(runs: list) -> list[str]:
    """One label per run of one group: the replicates that differ between them (``seed 1,
    split 3``), else the run's folder name."""
    keys = [key for key in REPLICATES.values() if len({group_value(r, key) for r in runs}) > 1]
    if not keys:
        return [run.path.name for run in runs]
    return [", ".join(f"{short_key(k, keys)} {group_value(run, k)}" for k in keys) for run in runs]


# ------------------------------------------------------------------ figures


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def reference_lines(ax, references: list[tuple[str, float]]) -> None:
    """Dashed horizontal lines, each in the legend with its value."""
    for k, (label, value) in enumerate(references):
        ax.axhline(value, color=f"C{k + 2}", ls="--", lw=1, label=f"{label}: {value:g}")


def metric_figure(rows: list[Row], keys: list[str], metric: str, references=()):
    """Mean ± standard error per group, each run as a faint dot, ``references`` as
    (label, value) lines; the title says which way is better."""
    labels, axis_title = tick_labels(rows, keys)
    widest = max(len(line) for label in labels for line in label.split("\n"))
    needed = len(rows) * max(1.1, 0.09 * widest)  # inches for level labels side by side
    rotate = needed > MAX_WIDTH - 2
    fig = figure(min(max(4.5, needed + 2), MAX_WIDTH), 4)
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0)
    for i, row in enumerate(rows):
        values = [row_value(r.metrics.get(metric)) for r in row.runs]
        x = i + jitter.uniform(-0.15, 0.15, len(values))
        ax.scatter(
            x, values, color="C0", alpha=0.35, s=14, zorder=2, label="runs" if i == 0 else None
        )
        mean, se = row.stats[metric][:2]
        yerr = se if math.isfinite(se) else 0
        label = "group mean ± s.e." if i == 0 else None
        ax.errorbar(i, mean, yerr=yerr, fmt="o", color="C3", capsize=4, zorder=3, label=label)
    reference_lines(ax, list(references))
    ax.set_xticks(range(len(rows)), labels, rotation=30 if rotate else 0,
                  ha="right" if rotate else "center")  # fmt: skip
    ax.set_xlabel(axis_title)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    way = better(metric)
    ax.set_title(metric if way is None else f"{metric} ({way.meaning})", fontsize="medium")
    ax.legend(fontsize="small", loc="best", framealpha=0.8)
    ax.grid(alpha=0.3, axis="y")
    return fig


def row_value(value) -> float:
    """A run's value for the axis: NaN (not drawn) when missing or infinite."""
    return value if value is not None and math.isfinite(value) else math.nan


def plot_metric(rows: list[Row], keys: list[str], metric: str, references=()) -> bytes:
    return png(metric_figure(rows, keys, metric, references))


# ---------------------------------------------------------- learning curves


def validation_column(histories: list[dict]) -> str | None:
    """The validation loss: ``val_nll`` when some run has it, else a VAE's one-draw bound
    ``val_neg_elbo``, else the first validation column, else None."""
    columns = sorted({c for h in histories for c in h if c.startswith("val_")})
    losses = [c for c in ("val_nll", "val_neg_elbo") if c in columns]
    return (losses or columns or [None])[0]


def mean_curve(histories: list[dict], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, the mean over runs at each epoch) of the runs that have ``column``; a run
    that stopped early leaves the mean after its last epoch. Non-finite values skipped."""
    by_epoch: dict = {}
    for history in histories:
        for epoch, value in zip(history.get("epoch", ()), history.get(column, ()), strict=False):
            if math.isfinite(value):
                by_epoch.setdefault(float(epoch), []).append(value)
    epochs = np.array(sorted(by_epoch))
    return epochs, np.array([np.mean(by_epoch[e]) for e in epochs])


def draw_curves(ax, histories: list[dict], column: str, color: str, label: str) -> None:
    """Each run faint, their mean over the group strong (and labelled)."""
    if len(histories) > 1:
        for history in histories:
            if column in history:
                ax.plot(history["epoch"], history[column], color=color, alpha=0.35, lw=0.8)
    epochs, mean = mean_curve(histories, column)
    if epochs.size:
        ax.plot(epochs, mean, color=color, lw=1.8, label=label)


SPELLED = {"nll": "NLL", "rmse": "RMSE", "ece": "ECE", "elbo": "ELBO", "neg_elbo": "-ELBO"}


def metric_name(column: str) -> str:
    """``val_nll`` -> ``NLL (lower is better)``: a history column as a plot title says it."""
    name = column.removeprefix("val_")
    way = better(name)
    name = SPELLED.get(name, name.replace("_", " "))
    return name if way is None else f"{name} ({way.meaning})"


def learning_curves(rows: list[Row], keys: list[str], histories: list[list[dict]]) -> bytes | None:
    """``learning_figure``'s PNG; None without histories."""
    fig = learning_figure(rows, keys, histories)
    return None if fig is None else png(fig)


def learning_figure(rows: list[Row], keys: list[str], histories: list[list[dict]]):
    """Training loss and the validation curve against epoch; ``histories``: per row, its
    runs' history.csv (column -> array). Several groups: one colour each, their mean
    strong and their runs faint; one group: one colour per run. None without histories."""
    from matplotlib.ticker import MaxNLocator

    if len(rows) > 1:
        groups = list(zip(legend_labels(rows, keys), histories, strict=True))
    else:
        labels = run_labels(rows[0].runs)
        groups = [(label, [h]) for label, h in zip(labels, histories[0], strict=True)]
    found = [h for _, hs in groups for h in hs if "epoch" in h]
    if not found:
        return None
    val = validation_column(found)
    columns = [("train_loss", "training loss (-ELBO per datum; a flow's NLL)")]
    columns += [(val, f"validation {metric_name(val)}")] if val else []
    fig = figure(5.5 * len(columns) + 1, 4)
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    for ax, (column, title) in zip(axes, columns, strict=True):
        for k, (label, runs) in enumerate(groups):
            draw_curves(ax, [h for h in runs if "epoch" in h], column, f"C{k % 10}", label)
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    what = "group means (faint: runs)" if len(rows) > 1 else "runs"
    fig.suptitle(f"Learning curves: {what}")
    return fig
