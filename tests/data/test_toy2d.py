"""2D toy data sets (bslrun.data.toy2d): samplers, geometry and log-densities.

Geometry is checked on noiseless draws against the defining equations;
densities are checked by normalisation on fine grids, by histograms of
200k samples, by entropy, and (for the numerical ones) against brute-force
Monte Carlo averages of the Gaussian kernel over the curve parameter.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy.special import ndtr

from bslrun.config import ToyDataConfig
from bslrun.data import load, toy2d
from bslrun.errors import DataError
from bslrun.registry import datasets

TOYS = ["moons", "circles", "8gaussians", "checkerboard", "pinwheel", "2spirals", "rings"]
CLASSES = {
    "moons": 2,
    "circles": 2,
    "8gaussians": 8,
    "checkerboard": 8,
    "pinwheel": 5,
    "2spirals": 2,
    "rings": 4,
}
NOISY = [t for t in TOYS if t != "checkerboard"]
WITH_DENSITY = [t for t in TOYS if t != "pinwheel"]
# Boxes holding all but a negligible part of the mass at the default noise.
BOXES = {
    "moons": ((-1.6, 2.6), (-1.0, 1.5)),
    "circles": ((-1.5, 1.5), (-1.5, 1.5)),
    "8gaussians": ((-5.0, 5.0), (-5.0, 5.0)),
    "checkerboard": ((-4.5, 4.5), (-4.5, 4.5)),
    "2spirals": ((-3.8, 3.8), (-3.8, 3.8)),
    "rings": ((-3.6, 3.6), (-3.6, 3.6)),
}
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


# ----------------------------------------------------------------------------- helpers


def key(seed: int = 0):
    return jax.random.PRNGKey(seed)


def sample(name: str, n: int, noise=None, seed: int = 0):
    """(x, y) of a training split of n rows."""
    cfg = ToyDataConfig(name=name, n_train=n, n_val=0, n_test=1, noise=noise)
    split = load(cfg, key(seed)).train
    return split.x, split.y


def evaluate(logp, x: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """log p at rows of x, in chunks (the kernel sums hold chunk x 256 distances)."""
    f = jax.jit(logp)
    out = [np.asarray(f(x[i : i + chunk])) for i in range(0, len(x), chunk)]
    return np.concatenate(out).astype(np.float64)


def grid(box, h: float):
    """Cell midpoints of a grid of spacing ~h over box; returns (points (n, 2), shape, cell area)."""
    (x0, x1), (y0, y1) = box
    nx, ny = int(round((x1 - x0) / h)), int(round((y1 - y0) / h))
    hx, hy = (x1 - x0) / nx, (y1 - y0) / ny
    gx, gy = x0 + hx * (np.arange(nx) + 0.5), y0 + hy * (np.arange(ny) + 0.5)
    xx, yy = np.meshgrid(gx, gy, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32), (nx, ny), hx * hy


def gauss(x: np.ndarray, m: np.ndarray, s: float) -> np.ndarray:
    """N(x; m, s^2 I) in 2D for x (k, 2), m (n, 2) -> (k, n)."""
    d2 = ((x[:, None, :] - m[None]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * s**2)) / (2 * math.pi * s**2)


# ----------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("name", TOYS)
def test_loader_shapes_dtypes_labels_and_spec(name):
    cfg = ToyDataConfig(name=name, n_train=3000, n_val=500, n_test=700)
    data = load(cfg, key(1))
    for split, n in ((data.train, 3000), (data.val, 500), (data.test, 700)):
        assert split.x.shape == (n, 2) and split.x.dtype == np.float32
        assert split.y.shape == (n,) and split.y.dtype == np.int32
        assert np.all(np.isfinite(split.x))
        assert set(np.unique(split.y)) == set(range(CLASSES[name]))
    spec = data.spec
    assert (spec.name, spec.task, spec.input_dim) == (name, "classification", 2)
    assert spec.num_classes == CLASSES[name]
    assert spec.feature_names == ("x1", "x2") and spec.target_name == "label"
    assert spec.n_total == 4200 and spec.image_shape is None
    assert spec.x_scaler == toy2d.IDENTITY and spec.y_scaler == toy2d.IDENTITY


@pytest.mark.parametrize("name", TOYS)
def test_seeded_reproducible_and_splits_independent(name):
    cfg = ToyDataConfig(name=name, n_train=400, n_val=400, n_test=400)
    a, b, c = load(cfg, key(3)), load(cfg, key(3)), load(cfg, key(4))
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(a, part).x, getattr(b, part).x)
        assert np.array_equal(getattr(a, part).y, getattr(b, part).y)
        assert not np.array_equal(getattr(a, part).x, getattr(c, part).x)
    assert not np.array_equal(a.train.x, a.val.x)
    assert not np.array_equal(a.train.x, a.test.x)
    assert not np.array_equal(a.val.x, a.test.x)
    # No validation split: None, and the other splits are unchanged.
    no_val = load(ToyDataConfig(name=name, n_train=400, n_val=0, n_test=400), key(3))
    assert no_val.val is None
    assert np.array_equal(no_val.train.x, a.train.x) and np.array_equal(no_val.test.x, a.test.x)


@pytest.mark.parametrize("name", NOISY)
def test_noise_scales_the_spread(name):
    """With one key, x(s) = x(0) + s * e: the residual is linear in s with RMS s per axis.

    (Pinwheel's noise is 1D, across the arm, before its final doubling: RMS sqrt(2) s.)
    """
    x0, y0 = sample(name, 20000, noise=0.0)
    x1, y1 = sample(name, 20000, noise=0.1)
    x2, _ = sample(name, 20000, noise=0.3)
    xd, _ = sample(name, 20000, noise=None)
    assert np.array_equal(y0, y1)
    r1, r2 = x1.astype(np.float64) - x0, x2.astype(np.float64) - x0
    np.testing.assert_allclose(r2, 3.0 * r1, atol=1e-5)
    factor = math.sqrt(2.0) if name == "pinwheel" else 1.0
    assert np.sqrt(np.mean(r1**2)) == pytest.approx(0.1 * factor, rel=0.02)
    default = toy2d.TOYS[name].default_noise
    rd = np.sqrt(np.mean((xd.astype(np.float64) - x0) ** 2))
    assert rd == pytest.approx(default * factor, rel=0.02)


def test_moons_default_noise_is_the_lecture_value():
    assert toy2d.TOYS["moons"].default_noise == 0.05


def test_checkerboard_refuses_a_noise_value():
    with pytest.raises(DataError, match="no noise scale"):
        sample("checkerboard", 10, noise=0.1)
    with pytest.raises(DataError, match="no noise scale"):
        toy2d.log_density("checkerboard", 0.1)


def test_noiseless_geometry():
    x, y = (a.astype(np.float64) for a in sample("moons", 5000, noise=0.0))
    outer, inner = x[y == 0], x[y == 1] - [1.0, 0.5]
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.hypot(*inner.T), 1.0, atol=1e-6)
    assert outer[:, 1].min() >= -1e-6 and inner[:, 1].max() <= 1e-6

    x, y = (a.astype(np.float64) for a in sample("circles", 5000, noise=0.0))
    np.testing.assert_allclose(np.hypot(*x.T), np.where(y == 0, 1.0, 0.5), atol=1e-6)
    x, y = (a.astype(np.float64) for a in sample("rings", 5000, noise=0.0))
    np.testing.assert_allclose(np.hypot(*x.T), 0.75 * (y + 1), atol=1e-6)

    x, y = (a.astype(np.float64) for a in sample("8gaussians", 2000, noise=0.0))
    angle = 2 * math.pi * y / 8
    expect = 2 * math.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], 1)
    np.testing.assert_allclose(x, expect, atol=1e-6)

    x, y = (a.astype(np.float64) for a in sample("2spirals", 5000, noise=0.0))
    t = 3.0 * np.hypot(*x.T)  # |m(t)| = t / 3
    arm = (t / 3)[:, None] * np.stack([-np.cos(t), np.sin(t)], 1)
    np.testing.assert_allclose(x, np.where(y[:, None] == 0, arm, -arm), atol=1e-4)
    assert t.max() <= 3 * math.pi + 1e-5

    x, y = sample("checkerboard", 20000)
    ij = np.floor((x.astype(np.float64) + 4.0) / 2.0)
    assert ij.min() >= 0 and ij.max() <= 3 and np.all((ij.sum(1) % 2) == 0)
    square = (ij[:, 1] * 4 + ij[:, 0]) // 2  # dark squares numbered row by row
    np.testing.assert_array_equal(square, y)


def test_pinwheel_arms():
    """Noiseless arms: x = 2 a (cos phi, -sin phi), phi = 2 pi k / 5 + 0.25 e^a, a = +-|x| / 2
    (a ~ N(1, 0.3^2) is rarely negative)."""
    x, y = (a.astype(np.float64) for a in sample("pinwheel", 5000, noise=0.0))
    err = []
    for a in (np.hypot(*x.T) / 2.0, -np.hypot(*x.T) / 2.0):
        phi = 2 * math.pi * y / 5 + 0.25 * np.exp(a)
        arm = 2 * a[:, None] * np.stack([np.cos(phi), -np.sin(phi)], 1)
        err.append(np.abs(x - arm).max(1))
    assert np.min(err, axis=0).max() < 1e-4


# ----------------------------------------------------------------------------- densities


def test_density_registry():
    assert toy2d.log_density("pinwheel") is None
    for name in NOISY:
        assert toy2d.log_density(name, 0.0) is None  # singular
    for name in WITH_DENSITY:
        assert callable(toy2d.log_density(name))


@pytest.mark.parametrize("name", WITH_DENSITY)
def test_density_integrates_to_one(name):
    """Riemann sum of exp(log p) over cell midpoints; the checkerboard grid is not
    aligned with the board (h = 0.013), so cut cells count their midpoint only."""
    h = {"checkerboard": 0.013, "moons": 0.01, "circles": 0.01, "rings": 0.01}.get(name, 0.02)
    points, _, area = grid(BOXES[name], h)
    total = np.exp(evaluate(toy2d.log_density(name), points)).sum() * area
    assert total == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("name", ["moons", "2spirals", "rings", "8gaussians"])
def test_density_integrates_to_one_at_other_noise(name):
    noise = {"moons": 0.02, "2spirals": 0.2, "rings": 0.15, "8gaussians": 0.6}[name]
    box = {"8gaussians": ((-6.0, 6.0),) * 2, "2spirals": ((-4.5, 4.5),) * 2}.get(name, BOXES[name])
    points, _, area = grid(box, {"moons": 0.005, "rings": 0.01}.get(name, 0.02))
    total = np.exp(evaluate(toy2d.log_density(name, noise), points)).sum() * area
    assert total == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("name", WITH_DENSITY)
def test_samples_follow_the_density(name):
    """Histogram of 200k samples vs p integrated over the same bins (5 x 5 midpoints each):
    the total variation is within the sampling noise, E|p_hat - p| = sqrt(2 p (1 - p) / pi N)
    per bin (about 0.02 here), and far below 0.05. The entropy -E log p(x) over 50k of the
    samples matches -sum p log p on a fine grid. (36 bins put the checkerboard's edges on
    bin edges.)"""
    n = 200_000
    x, _ = sample(name, n, seed=7)
    logp = toy2d.log_density(name)
    bins = 36
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=BOXES[name])
    points, area = binned_grid(BOXES[name], bins, 5)
    dens = np.exp(evaluate(logp, points)).reshape(bins, 5, bins, 5).sum((1, 3)) * area
    tv = 0.5 * np.abs(counts / n - dens).sum()
    noise_tv = 0.5 * np.sqrt(2 * dens * (1 - dens) / (math.pi * n)).sum()
    assert tv < min(1.3 * noise_tv + 0.005, 0.05), (tv, noise_tv)

    lp = evaluate(logp, x[:50_000])
    assert np.all(np.isfinite(lp))
    g, _, garea = grid(BOXES[name], 0.01 if name in ("moons", "circles", "rings") else 0.02)
    lg = evaluate(logp, g)
    pg = np.exp(lg)
    grid_entropy = -np.sum(pg * np.where(pg > 0, lg, 0.0)) * garea
    assert -lp.mean() == pytest.approx(grid_entropy, abs=0.02)


def binned_grid(box, bins: int, sub: int):
    """Midpoints of a (bins * sub)^2 grid ordered so reshape(bins, sub, bins, sub) groups bins."""
    (x0, x1), (y0, y1) = box
    gx = x0 + (x1 - x0) / (bins * sub) * (np.arange(bins * sub) + 0.5)
    gy = y0 + (y1 - y0) / (bins * sub) * (np.arange(bins * sub) + 0.5)
    xx, yy = np.meshgrid(gx, gy, indexing="ij")
    area = (x1 - x0) * (y1 - y0) / (bins * sub) ** 2
    return np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32), area


def gauss_entropy(s: float) -> float:
    """Entropy of N(0, s^2) in 1D."""
    return 0.5 * math.log(2 * math.pi * math.e * s**2)


def blurred_segment_entropy(length: float, s: float) -> float:
    """Entropy of U[0, L] + N(0, s^2): density (Phi(u / s) - Phi((u - L) / s)) / L."""
    u = np.linspace(-10 * s, length + 10 * s, 200_001)
    f = (ndtr(u / s) - ndtr((u - length) / s)) / length
    f = f[f > 0]
    return float(-np.sum(f * np.log(f)) * (u[1] - u[0]))


def test_entropies_in_closed_form():
    """Checkerboard: log 32 exactly. Well separated components: 8gaussians
    log 8 + log(2 pi e s^2); thin noisy curves (a tube, locally flat) with weights w_k:
    H(w) + sum_k w_k [H(along curve k) + H(N(0, s^2))] + O(s^2), where along a closed
    curve of length L the entropy is log L and along an open one that of U[0, L] + N(0, s^2)."""
    gauss_h = gauss_entropy
    expect = {
        "checkerboard": math.log(32.0),
        "8gaussians": math.log(8.0) + 2 * gauss_h(0.5 / math.sqrt(2)),
        "moons": math.log(2.0) + blurred_segment_entropy(math.pi, 0.05) + gauss_h(0.05),
        "rings": math.log(4.0)
        + np.mean(np.log(2 * math.pi * np.array([0.75, 1.5, 2.25, 3.0])))
        + gauss_h(0.08),
    }
    for name, h in expect.items():
        x, _ = sample(name, 100_000, seed=11)
        lp = evaluate(toy2d.log_density(name), x)
        assert -lp.mean() == pytest.approx(h, abs=0.01), name


def test_circle_density_matches_brute_force_angle_average():
    """Bessel closed form vs the mean of N(x; r u(t), s^2 I) over 200k uniform angles."""
    rng = np.random.default_rng(5)
    t = rng.uniform(0, 2 * math.pi, 200_000)
    s = 0.08
    pts = np.array([[0.7, 0.1], [0.0, 1.55], [-1.2, -1.3], [2.2, 0.4], [0.3, 0.2]])
    for name, radii in (("rings", (0.75, 1.5, 2.25, 3.0)), ("circles", (1.0, 0.5))):
        noise = s if name == "rings" else 0.05
        centres = np.concatenate([r * np.stack([np.cos(t), np.sin(t)], 1) for r in radii])
        mc = gauss(pts, centres, noise).mean(1)
        ours = np.exp(evaluate(toy2d.log_density(name), pts.astype(np.float32)))
        np.testing.assert_allclose(ours, mc, rtol=0.01, atol=1e-4)


@pytest.mark.parametrize("name", ["moons", "2spirals"])
def test_curve_density_matches_brute_force_monte_carlo(name):
    """Quadrature vs the average of N(x; m(t_i), s^2 I) over 400k t_i drawn as the sampler draws them."""
    rng = np.random.default_rng(9)
    n = 400_000
    label = rng.integers(0, 2, n)
    if name == "moons":
        s, t = 0.05, rng.uniform(0, math.pi, n)
        m = np.where(
            label[:, None] == 0,
            np.stack([np.cos(t), np.sin(t)], 1),
            np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1),
        )
        pts = np.array([[0.0, 1.0], [1.0, -0.47], [0.5, 0.25], [-1.02, 0.05], [2.0, 0.55]])
    else:
        s, t = 0.1, 3 * math.pi * np.sqrt(rng.uniform(0, 1, n))
        arm = (t / 3)[:, None] * np.stack([-np.cos(t), np.sin(t)], 1)
        m = np.where(label[:, None] == 0, arm, -arm)
        pts = np.array([[0.05, 0.0], [1.0, 0.0], [-1.0, 1.0], [0.0, 2.5], [-3.1, 0.1]])
    mc = np.concatenate([gauss(pts, m[i : i + 50_000], s) for i in range(0, n, 50_000)], 1)
    est, err = mc.mean(1), mc.std(1) / math.sqrt(n)
    ours = np.exp(evaluate(toy2d.log_density(name), pts.astype(np.float32)))
    assert np.all(np.abs(ours - est) < 4 * err + 1e-3 * est + 1e-6), (ours, est, err)


def test_checkerboard_density_values():
    lp = toy2d.log_density("checkerboard")
    x = np.array([[-3.0, -3.0], [-1.0, -3.0], [3.9, 3.9], [4.1, 0.0], [0.5, 0.5], [-0.5, 0.5]])
    out = np.asarray(lp(x.astype(np.float32)))
    np.testing.assert_allclose(out[[0, 2, 4]], -math.log(32.0), rtol=1e-6)
    assert np.all(np.isneginf(out[[1, 3, 5]]))


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", TOYS)
def test_registered_with_a_config_file(name):
    assert datasets()[name].loader is toy2d.load
    assert datasets()[name].task == "classification"
    text = (CONFIGS / f"{name}.yaml").read_text().splitlines()
    assert text[0].startswith("# ") and len(text[0]) > 10
    assert "  - /schema/data/toy@_here_" in text and f"name: {name}" in text
