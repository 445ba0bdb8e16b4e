"""2D toy densities: seeded samplers, class labels and log-densities.

Every sampler draws from a numpy generator (``numpy_rng``) seeded by a JAX
key and returns x float32 (n, 2) in the toy's natural coordinates (never
rescaled) and y int32 (n,) labels. The geometries follow the usual
references: sklearn's ``make_moons``/``make_circles`` and the toy data of
FFJORD (Grathwohl et al. 2019, arXiv:1810.01367, ``lib/toy_data.py``).
``noise`` (``data.noise``) replaces a toy's default noise scale.

Log-densities (``log_density(name, noise)``) are pure jnp maps x (n, 2) -> (n,):

* 8gaussians: exact, (1/8) sum_k N(x; c_k, s^2 I), c_k = r (cos 2 pi k/8, sin 2 pi k/8).
* checkerboard: exact, -log 32 on the 8 dark squares of the board, -inf off them.
* circles, rings: exact. A circle of radius r with isotropic noise,
  x = r (cos t, sin t) + s eps, t ~ U[0, 2 pi), has, with rho = |x|,
  p(x) = (1 / 2 pi) int N(x; r u(t), s^2 I) dt
       = exp(-(rho^2 + r^2) / 2 s^2) I0(rho r / s^2) / (2 pi s^2),
  because int_0^{2 pi} exp(a cos t) dt = 2 pi I0(a). In logs, with the
  exponentially scaled Bessel function i0e(z) = exp(-z) I0(z):
  log p = -(rho - r)^2 / 2 s^2 + log i0e(rho r / s^2) - log(2 pi s^2).
  Both toys are equal-weight mixtures of such circles.
* moons, 2spirals: numerical. The noise is Gaussian, so p(x) = E_t[N(x; m(t), s^2 I)]
  over the curve parameter t; it is computed by the midpoint rule with nodes
  close enough that neighbouring curve points lie at most s/4 apart (at least
  2048 nodes per curve), where the rule's error is far below float32 rounding.
* pinwheel: none (None). Its arms are Gaussian blobs bent by an x-dependent
  rotation, x = 2 R(-phi(a)) (a, b) with phi = theta_k + 0.25 exp(a); the map
  is not globally injective, so a density would need every preimage found by
  root finding.

A density with noise = 0 is singular (mass on curves or points): ``log_density``
then returns None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bslrun.config import ToyDataConfig
from bslrun.data.splits import IDENTITY, Dataset, DataSpec, Split
from bslrun.errors import DataError
from bslrun.registry import DataSet
from bslrun.seeding import numpy_rng, split_keys

LOG_2PI = math.log(2.0 * math.pi)
MIN_NODES = 2048  # quadrature nodes per curve, at least
BLOCK = 256  # kernel centres per scan step: memory O(n * BLOCK)

CIRCLE_RADII = (1.0, 0.5)  # outer (label 0), inner (label 1): make_circles(factor=0.5)
EIGHT_RADIUS = 2.0 * math.sqrt(2.0)  # FFJORD: centres at scale 4, then all x / sqrt(2)
RING_RADII = (0.75, 1.5, 2.25, 3.0)  # FFJORD's rings: radii (1/4, 1/2, 3/4, 1) x 3
SPIRAL_T = 3.0 * math.pi  # 540 degrees of turn
BOARD_SIDE = 2.0  # 4 x 4 squares of side 2 on [-4, 4]^2
# The dark squares (i + j even, i: column, j: row); the label is the index in this list.
DARK = tuple((i, j) for j in range(4) for i in range(4) if (i + j) % 2 == 0)
PINWHEEL_ARMS, PINWHEEL_RADIAL, PINWHEEL_RATE = 5, 0.3, 0.25


# ----------------------------------------------------------------------------- curves


def moon_points(t: np.ndarray, label: np.ndarray) -> np.ndarray:
    """make_moons: outer moon (cos t, sin t), inner moon (1 - cos t, 1/2 - sin t), t in [0, pi]."""
    outer = np.stack([np.cos(t), np.sin(t)], axis=-1)
    inner = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=-1)
    return np.where(np.asarray(label)[..., None] == 0, outer, inner)


def spiral_points(t: np.ndarray, label: np.ndarray) -> np.ndarray:
    """FFJORD's arm m(t) = (t / 3)(-cos t, sin t) (label 0) and its mirror -m(t) (label 1)."""
    arm = np.stack([-np.cos(t), np.sin(t)], axis=-1) * (t[..., None] / 3.0)
    return np.where(np.asarray(label)[..., None] == 0, arm, -arm)


def circle_points(angle: np.ndarray, radius: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1) * radius[..., None]


# ----------------------------------------------------------------------------- samplers
# Each: (rng, n, noise) -> (x float32 (n, 2), y int32 (n,)). Classes are drawn
# with equal probability (not in fixed halves), so the rows are i.i.d. from p.


def _out(x: np.ndarray, y: np.ndarray):
    return x.astype(np.float32), y.astype(np.int32)


def _jitter(rng, x: np.ndarray, noise: float) -> np.ndarray:
    return x + noise * rng.standard_normal(x.shape)


def sample_moons(rng, n: int, noise: float):
    y = rng.integers(0, 2, n)
    t = rng.uniform(0.0, math.pi, n)
    return _out(_jitter(rng, moon_points(t, y), noise), y)


def sample_circles(rng, n: int, noise: float):
    y = rng.integers(0, len(CIRCLE_RADII), n)
    x = circle_points(rng.uniform(0.0, 2.0 * math.pi, n), np.asarray(CIRCLE_RADII)[y])
    return _out(_jitter(rng, x, noise), y)


def sample_rings(rng, n: int, noise: float):
    y = rng.integers(0, len(RING_RADII), n)
    x = circle_points(rng.uniform(0.0, 2.0 * math.pi, n), np.asarray(RING_RADII)[y])
    return _out(_jitter(rng, x, noise), y)


def eight_centres() -> np.ndarray:
    return circle_points(2.0 * math.pi * np.arange(8) / 8.0, np.full(8, EIGHT_RADIUS))


def sample_eight_gaussians(rng, n: int, noise: float):
    y = rng.integers(0, 8, n)
    return _out(_jitter(rng, eight_centres()[y], noise), y)


def sample_two_spirals(rng, n: int, noise: float):
    """t = 3 pi sqrt(u), u ~ U[0, 1): density p(t) = 2 t / T^2 on [0, T] (FFJORD).

    FFJORD also adds U[0, 1/6) jitter to both coordinates; it is left out so
    that the noise is Gaussian and the density computable.
    """
    y = rng.integers(0, 2, n)
    t = SPIRAL_T * np.sqrt(rng.uniform(0.0, 1.0, n))
    return _out(_jitter(rng, spiral_points(t, y), noise), y)


def sample_checkerboard(rng, n: int, noise: float | None):
    """Uniform on the dark squares; y = which dark square (index into DARK)."""
    y = rng.integers(0, len(DARK), n)
    corner = -4.0 + BOARD_SIDE * np.asarray(DARK, dtype=np.float64)[y]
    return _out(corner + BOARD_SIDE * rng.uniform(0.0, 1.0, (n, 2)), y)


def sample_pinwheel(rng, n: int, noise: float):
    """FFJORD's pinwheel; ``noise`` is the tangential (arm width) scale, default 0.1.

    (a, b) ~ N((1, 0), diag(0.3^2, noise^2)) is rotated by -(2 pi k / 5 + 0.25 e^a)
    and doubled; y = k, the arm.
    """
    y = rng.integers(0, PINWHEEL_ARMS, n)
    a = 1.0 + PINWHEEL_RADIAL * rng.standard_normal(n)
    b = noise * rng.standard_normal(n)
    phi = 2.0 * math.pi * y / PINWHEEL_ARMS + PINWHEEL_RATE * np.exp(a)
    c, s = np.cos(phi), np.sin(phi)
    return _out(2.0 * np.stack([a * c + b * s, -a * s + b * c], axis=-1), y)


# ----------------------------------------------------------------------------- densities
# The densities import JAX when built: the registry imports this module to check a config,
# which should not wait for JAX.


def kernel_mixture(centres: np.ndarray, weights: np.ndarray, noise: float) -> Callable:
    """x (n, 2) -> log sum_j w_j N(x; c_j, s^2 I), shape (n,).

    Centres are visited in blocks by ``lax.scan`` with a running log-sum-exp,
    so memory stays O(n * BLOCK) however many centres there are.
    """
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    block = min(BLOCK, len(centres))
    pad = -len(centres) % block
    c = np.concatenate([centres, np.zeros((pad, 2))]).reshape(-1, block, 2)
    logw = np.concatenate([np.log(weights), np.full(pad, -np.inf)]).reshape(-1, block)
    c, logw = jnp.asarray(c, jnp.float32), jnp.asarray(logw, jnp.float32)
    const = -LOG_2PI - 2.0 * math.log(noise)
    inv_two_var = 0.5 / noise**2

    def log_density(x):
        x = jnp.asarray(x)

        def step(acc, blk):
            cb, wb = blk
            d2 = jnp.sum((x[:, None, :] - cb[None]) ** 2, axis=-1)
            return jnp.logaddexp(acc, logsumexp(wb - inv_two_var * d2, axis=1)), None

        acc, _ = jax.lax.scan(step, jnp.full(x.shape[0], -jnp.inf, x.dtype), (c, logw))
        return acc + const

    return log_density


def curve_nodes(t_max: float, speed: float, noise: float):
    """Midpoint nodes t_j = (j + 1/2) T / M with M so that curve points lie <= s/4 apart.

    ``speed`` bounds |dm/dt|. Returns (t (M,), M).
    """
    m = max(MIN_NODES, math.ceil(4.0 * speed * t_max / noise))
    m += -m % BLOCK
    return (np.arange(m) + 0.5) * t_max / m, m


def moons_density(noise: float) -> Callable:
    """p(x) = (1/2) sum_k (1/pi) int_0^pi N(x; m_k(t), s^2 I) dt, midpoint rule in t."""
    t, m = curve_nodes(math.pi, 1.0, noise)
    centres = np.concatenate([moon_points(t, np.zeros(m)), moon_points(t, np.ones(m))])
    return kernel_mixture(centres, np.full(2 * m, 0.5 / m), noise)


def spirals_density(noise: float) -> Callable:
    """p(x) = (1/2) sum_k int_0^T (2t / T^2) N(x; m_k(t), s^2 I) dt, midpoint rule in t."""
    speed = math.sqrt(1.0 + SPIRAL_T**2) / 3.0  # |m'(t)| = sqrt(1 + t^2) / 3
    t, m = curve_nodes(SPIRAL_T, speed, noise)
    w = 2.0 * t / SPIRAL_T**2 * (SPIRAL_T / m)
    centres = np.concatenate([spiral_points(t, np.zeros(m)), spiral_points(t, np.ones(m))])
    return kernel_mixture(centres, 0.5 * np.concatenate([w, w]), noise)


def eight_gaussians_density(noise: float) -> Callable:
    return kernel_mixture(eight_centres(), np.full(8, 1.0 / 8.0), noise)


def circle_mixture(radii, noise: float) -> Callable:
    """Equal-weight mixture of noisy circles (see the module docstring for the Bessel form)."""
    import jax.numpy as jnp
    from jax.scipy.special import i0e, logsumexp

    r = jnp.asarray(radii, jnp.float32)
    const = -LOG_2PI - 2.0 * math.log(noise) - math.log(len(radii))

    def log_density(x):
        rho = jnp.sqrt(jnp.sum(jnp.asarray(x) ** 2, axis=-1))[:, None]
        terms = -((rho - r) ** 2) / (2.0 * noise**2) + jnp.log(i0e(rho * r / noise**2))
        return logsumexp(terms, axis=1) + const

    return log_density


def checkerboard_log_density(x):
    """-log 32 on the dark squares of [-4, 4]^2 (8 squares of area 4), -inf elsewhere."""
    import jax.numpy as jnp

    x = jnp.asarray(x)
    ij = jnp.floor((x + 4.0) / BOARD_SIDE)
    on_board = jnp.all((ij >= 0) & (ij < 4), axis=-1)
    dark = jnp.mod(ij[:, 0] + ij[:, 1], 2) == 0
    return jnp.where(on_board & dark, -math.log(32.0), -jnp.inf)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Toy:
    sample: Callable  # (rng, n, noise) -> (x, y)
    num_classes: int
    default_noise: float | None  # None: the toy has no noise scale
    density: Callable | None  # noise -> log p (for noise=None toys: log p itself); None: absent


TOYS = {
    "moons": Toy(sample_moons, 2, 0.05, moons_density),
    "circles": Toy(sample_circles, 2, 0.05, lambda s: circle_mixture(CIRCLE_RADII, s)),
    "8gaussians": Toy(sample_eight_gaussians, 8, 0.5 / math.sqrt(2.0), eight_gaussians_density),
    "checkerboard": Toy(sample_checkerboard, len(DARK), None, checkerboard_log_density),
    "pinwheel": Toy(sample_pinwheel, PINWHEEL_ARMS, 0.1, None),
    "2spirals": Toy(sample_two_spirals, 2, 0.1, spirals_density),
    "rings": Toy(sample_rings, len(RING_RADII), 0.08, lambda s: circle_mixture(RING_RADII, s)),
}


def resolve_noise(name: str, noise: float | None) -> float | None:
    """The noise scale to use: ``noise`` if given, else the toy's default."""
    toy = TOYS[name]
    if toy.default_noise is None:
        if noise is not None:
            raise DataError(f"data={name} has no noise scale; leave data.noise null")
        return None
    return toy.default_noise if noise is None else float(noise)


def log_density(name: str, noise: float | None = None) -> Callable | None:
    """log p(x) for toy ``name``: a pure jnp map x (n, 2) -> (n,), or None.

    None when the toy has no density here (pinwheel) or noise = 0 makes it singular.
    """
    toy = TOYS[name]
    s = resolve_noise(name, noise)
    if toy.density is None or s == 0.0:
        return None
    return toy.density if s is None else toy.density(s)


# ----------------------------------------------------------------------------- loaders


def load_toy(name: str, cfg, key) -> Dataset:
    """Fresh i.i.d. draws: independent keys for train, val and test (val None if n_val = 0)."""
    toy = TOYS[name]
    noise = resolve_noise(name, cfg.noise)
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    keys = dict(zip(sizes, split_keys(key, 3), strict=True))
    parts = {}
    for part, n in sizes.items():
        if n > 0:
            parts[part] = Split(*toy.sample(numpy_rng(keys[part]), n, noise))
    spec = DataSpec(
        name=name,
        task="classification",
        input_dim=2,
        num_classes=toy.num_classes,
        x_scaler=IDENTITY,
        y_scaler=IDENTITY,
        feature_names=("x1", "x2"),
        target_name="label",
        n_total=cfg.n_train + cfg.n_val + cfg.n_test,
        log_density=log_density(name, cfg.noise),
        density_args={"name": name, "noise": cfg.noise},
    )
    return Dataset(train=parts["train"], val=parts.get("val"), test=parts["test"], spec=spec)


def load(cfg, key) -> Dataset:
    """The toy named ``cfg.name`` (every toy shares this loader)."""
    return load_toy(cfg.name, cfg, key)


DATASETS = {name: DataSet(load, ToyDataConfig, "classification") for name in TOYS}
