"""The BNN figures draw from arrays alone (smoke tests: a non-empty PNG on tiny inputs)."""

from __future__ import annotations

import numpy as np

from bslrun import plots

RNG = np.random.default_rng(0)


def written(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regression_curve_and_calibration(tmp_path):
    grid = np.linspace(-3, 3, 30)
    mean, epi, ale = np.sin(grid), 0.1 + 0.05 * grid**2, np.full(30, 0.2)
    std = np.sqrt(epi**2 + ale**2)
    arrays = {"curve_x": grid, "curve_mean": mean, "curve_std": std,
              "curve_epistemic_std": epi, "curve_aleatoric_std": ale,
              "curve_draws": mean + RNG.normal(size=(3, 30)) * epi,
              "x": RNG.uniform(-2, 2, 20), "y": RNG.normal(size=20)}  # fmt: skip
    for z, name in ((1.96, "95"), (0.674, "50")):
        arrays[f"curve_lower_{name}"], arrays[f"curve_upper_{name}"] = (
            mean - z * std,
            mean + z * std,
        )
    assert written(plots.regression_curve(arrays, tmp_path / "regression.png", ("x", "y")))
    levels = np.linspace(0.05, 0.95, 19)
    calibration = {"coverage_nominal": levels, "coverage_observed": levels**0.8,
                   "pit": RNG.uniform(size=50)}  # fmt: skip
    assert written(plots.regression_calibration(calibration, tmp_path / "calibration.png"))


def test_uncertainty_plane_with_and_without_mutual_information(tmp_path):
    gx, gy = np.linspace(-1, 1, 6), np.linspace(-2, 2, 5)
    probs = RNG.dirichlet(np.ones(3), size=30)
    entropy = -np.sum(probs * np.log(probs), axis=-1)
    x, labels = RNG.normal(size=(12, 2)), np.arange(12) % 3
    three = plots.uncertainty_plane(gx, gy, probs, entropy, x, labels, tmp_path / "a.png",
                                    0.5 * entropy)  # fmt: skip
    two = plots.uncertainty_plane(gx, gy, probs, entropy, x, labels, tmp_path / "b.png")
    assert written(three) and written(two)


def test_reliability_and_map_weights(tmp_path):
    counts = np.array([0, 0, 3, 5, 0, 40], float)
    arrays = {"calibration_counts": counts, "calibration_accuracy": np.linspace(0, 1, 6),
              "calibration_confidence": np.linspace(0.05, 0.95, 6),
              "calibration_edges": np.linspace(0, 1, 7), "ece": 0.05}  # fmt: skip
    assert written(plots.reliability(arrays, tmp_path / "reliability.png"))
    assert written(plots.reliability(arrays, tmp_path / "binary.png", binary=True))
    edges = np.linspace(-4, 4, 11)
    weights = {"weight_edges": edges, "weight_mean_density": np.ones(10) / 8,
               "weight_draw_density": np.ones(10) / 8, "weight_prior_density": np.ones(10) / 8,
               "prior_scale": 1.0}  # fmt: skip
    assert written(plots.weight_histograms(weights, tmp_path / "weights.png"))


def test_learning_curves_of_one_epoch_and_of_an_early_stop(tmp_path):
    one = [{"epoch": 1, "train_loss": 2.0, "lr": 1e-3, "val_nll": 1.5}]
    assert written(plots.learning_curves(one, tmp_path / "one.png", "-ELBO / N", "val_nll", "NLL"))
    rows = [{"epoch": e, "train_loss": 3.0 / e, "lr": 1e-3} for e in range(1, 30)]
    for row in rows[::3]:
        row["val_neg_elbo"] = 2.0 + (row["epoch"] - 10) ** 2 / 100
    path = plots.learning_curves(
        rows, tmp_path / "stopped.png", "-ELBO / N", "val_neg_elbo", "-ELBO", 10, True
    )
    assert written(path)
    # No validation column: the training panel alone.
    assert written(plots.learning_curves(rows, tmp_path / "train.png", "NLL", "val_nll", "NLL"))


def test_density_plane_with_kl_and_one_dimensional_samples(tmp_path):
    g = np.linspace(-2, 2, 20)
    log_p = -0.5 * (g[None, :] ** 2 + g[:, None] ** 2).ravel() - np.log(2 * np.pi)
    assert written(plots.density_plane(g, g, log_p, log_p, tmp_path / "d.png", 0.0123))
    data, samples = RNG.normal(size=(100, 1)), RNG.normal(size=(80, 1))
    assert written(plots.samples_beside_data(data, samples, tmp_path / "s.png"))


def test_a_figure_that_cannot_be_drawn_is_skipped_with_a_warning(caplog):
    from bslrun import run  # a figure that fails never costs the run

    def broken(*_):
        raise ValueError("x and y must have the same first dimension")

    with caplog.at_level("WARNING", logger="bslrun"):
        run.draw("the flow figures", broken, None)
    assert caplog.messages == [
        "skipped the flow figures: ValueError: x and y must have the same first dimension"
    ]


def titles_of(monkeypatch, draw) -> list[str]:
    """The axes titles of the figure that ``draw()`` saves."""
    seen = []
    real = plots._save

    def keep(fig, path):
        seen.extend(ax.get_title() for ax in fig.axes)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    draw()
    return seen


def test_figure_titles_quote_the_runs_test_numbers_as_the_console_does(monkeypatch, tmp_path):
    counts = np.array([0, 0, 3, 5, 0, 40], float)
    arrays = {"calibration_counts": counts, "calibration_accuracy": np.linspace(0, 1, 6),
              "calibration_confidence": np.linspace(0.05, 0.95, 6),
              "calibration_edges": np.linspace(0, 1, 7), "ece": 0.0010, "test.ece": 0.0023}  # fmt: skip
    shown = titles_of(monkeypatch, lambda: plots.reliability(arrays, tmp_path / "r.png"))
    assert "ECE = 0.0023" in shown[0]
    mean = np.arange(10.0)
    y = np.where(mean < 9, mean, 20.0)
    # The saved interval holds 9 of 10 targets; the run's own coverage is quoted.
    args = (y, mean, mean - 1, mean + 1, tmp_path / "p.png")
    shown = titles_of(monkeypatch, lambda: plots.predicted_vs_observed(*args, coverage=0.9537))
    assert shown == ["95% interval coverage 0.9537"]
    assert titles_of(monkeypatch, lambda: plots.predicted_vs_observed(*args)) == [
        "95% interval coverage 0.9000"
    ]
