"""Normalising flows: density estimation by maximum likelihood, trained as SVI.

The model is x = T(u), u ~ N(0, I_D), with T a stack of bijections from
``bslrun.flows`` (Papamakarios et al. 2021, "Normalizing flows for
probabilistic modeling and inference"):

  log p(x) = log N(T^-1(x); 0, I) + log |det d T^-1(x) / dx|.

The guide is empty, so the ELBO is exactly the log-likelihood per datum and
the shared engine maximises it. ``model.flow`` picks the layers, each
followed by a permutation (not after the last):

- maf:     masked affine autoregressive (Papamakarios et al. 2017); density
           in one MADE pass per layer, sampling sequential
- realnvp: affine coupling (Dinh et al. 2017); both directions parallel
- nsf:     rational-quadratic spline coupling (Durkan et al. 2019)
- nsf_ar:  rational-quadratic spline, autoregressive (Durkan et al. 2019)

Data enter in the coordinates the data module gives (standardised tables,
natural toy coordinates) and every reported density is in original units:
the standardiser's log-Jacobian -sum log std is added. Images (8-bit
intensities k / 255) are dequantised, s = (255 x + u) / 256 with
u ~ U[0, 1)^D (Theis et al. 2016), and modelled in logit space
y = logit(a + (1 - 2a) s) (Dinh et al. 2017), so the reported NLL is in nats
per image on the 256-level scale and bounds the discrete NLL from above.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from bslrun import metrics, plots
from bslrun.config import FlowKind, PermutationKind
from bslrun.errors import ConfigError
from bslrun.flows import LAYERS, Flow, Permutation
from bslrun.models.batching import chunked_map
from bslrun.models.family import Family, FamilyInfo

EVAL_CHUNK = 4096  # points per log-density pass at evaluation: bounds memory for images
GRID_SIDE = 200  # plots/density.png: a GRID_SIDE x GRID_SIDE grid over the data's range
BASE_LINES, LINE_POINTS = 13, 200  # plots/base_to_data.png: lines of the grid u in [-3, 3]^2
IMAGE_SAMPLES = 64  # sampling an image flow is sequential over 784 pixels: keep it small


class FlowFamily(Family):
    info = FamilyInfo(
        "flow", saves="samples", offers="sample (points) and log_prob (the exact density)",
        samples_are="points",
    )  # fmt: skip

    @classmethod
    def random_structure(cls, cfg) -> bool:
        return PermutationKind(cfg.permutation) is PermutationKind.random

    def __init__(self, cfg, spec, n_train: int, key=None):
        super().__init__(cfg, spec, n_train)
        self.dim = spec.input_dim
        self.kind = FlowKind(cfg.flow).value
        self.layer = LAYERS[self.kind]
        self.images = spec.image_shape is not None
        permutation = PermutationKind(cfg.permutation).value
        if self.layer.coupling and self.dim < 2:
            raise ConfigError(
                f"model.flow={self.kind} splits the coordinates in two, but data={spec.name} "
                "has one column; use model.flow=maf or nsf_ar"
            )
        if self.layer.coupling and permutation == "none" and cfg.depth > 1:
            raise ConfigError(
                f"model.flow={self.kind} with model.permutation=none would leave half the "
                "coordinates untouched by every layer; use model.permutation=reverse or random"
            )
        if permutation == "random" and key is None:
            raise ValueError("a random permutation needs a key")
        self.permutations = make_permutations(permutation, self.dim, cfg.depth, key)
        # Each layer's network starts as the identity (its output layer at zero), so training
        # starts from the base density, free of the spikes random spline knots put in it.
        self.conditioners = [self.layer.conditioner(self.dim, cfg) for _ in range(cfg.depth)]

    @property
    def log_jacobian_to_original(self):
        """Standardised tables: x = a z + b in original units, so log p(x) = log p(z) - sum log a."""
        std = jnp.asarray(self.spec.x_scaler.std)
        return -jnp.sum(jnp.log(std)) * (self.dim if std.ndim == 0 else 1)

    # --------------------------------------------------------------- layers

    def _declare(self) -> list:
        """numpyro.param for each layer's conditioner, initialised lazily from SVI's key."""
        width = self.layer.input_width(self.dim)
        return [
            numpyro.param(f"layer_{k}", lambda key, net=net: net.init(key, jnp.zeros((1, width))))
            for k, net in enumerate(self.conditioners)
        ]

    def distribution(self, layer_params) -> Flow:
        """The flow x = T(u), u ~ N(0, I_D), from one parameter pytree per layer."""
        transforms = []
        for k, (net, params) in enumerate(zip(self.conditioners, layer_params, strict=True)):
            transforms.append(self.layer.bijection(net, params, self.dim, self.cfg))
            if k < len(self.conditioners) - 1 and self.permutations[k] is not None:
                transforms.append(self.permutations[k])
        base = dist.Normal(jnp.zeros(self.dim), 1.0).to_event(1)
        return Flow(base, transforms)

    def _layer_params(self, params: dict) -> list:
        return [params[f"layer_{k}"] for k in range(len(self.conditioners))]

    # ------------------------------------------------------------ data space

    def to_flow_space(self, x, key):
        """Data (n, D) -> (flow coordinates (n, D), log |d flow coords / d original x| (n,)).

        Tables: the data module's standardised values, with the standardiser's Jacobian.
        Images: 8-bit levels plus uniform noise from ``key``, v = 255 x + u in [0, 256)^D,
        then ``logit_coordinates`` (so densities are per unit volume of v).
        """
        if not self.images:
            return x, jnp.full(x.shape[:1], self.log_jacobian_to_original)
        return logit_coordinates(255.0 * x + jax.random.uniform(key, x.shape), self.cfg.logit_alpha)

    def from_flow_space(self, y):
        """Flow coordinates -> original units (images: intensities in [0, 1])."""
        if not self.images:
            return self.spec.x_scaler.inverse(y)
        alpha = self.cfg.logit_alpha
        return jnp.clip((jax.nn.sigmoid(y) - alpha) / (1.0 - 2.0 * alpha), 0.0, 1.0)

    # ------------------------------------------------------------- training

    def model(self, x, y=None):
        flow = self.distribution(self._declare())
        key = numpyro.prng_key() if self.images else None
        coords, log_jacobian = self.to_flow_space(x, key)
        batch = x.shape[0]
        # N / B: the engine's 1 / N then makes the loss the mean NLL per datum.
        with numpyro.plate("data", batch), numpyro.handlers.scale(scale=self.n_train / batch):
            numpyro.sample("x", flow, obs=coords)
            numpyro.factor("jacobian", log_jacobian)

    def guide(self, x, y=None):
        """Nothing is latent: the ELBO is the log-likelihood."""

    # ----------------------------------------------------------- evaluation

    def log_prob(self, params, x, key, num_samples: int = 1):
        """log p(x) per point (n,), in original units, of data-module coordinates x (n, D);
        chunked to bound memory. ``key`` dequantises images; nothing is latent, so
        ``num_samples`` is not used."""
        flow = self.distribution(self._layer_params(params))

        def chunk(xc, kc):
            coords, log_jacobian = self.to_flow_space(xc, kc)
            return {"log_prob": flow.log_prob(coords) + log_jacobian}

        size = min(x.shape[0], EVAL_CHUNK)
        return chunked_map(chunk, x, key, size)["log_prob"]

    def validate(self, params, x, y, key, num_samples: int) -> dict:
        """What early stopping needs every epoch: the mean NLL (nats per point), and bits
        per dimension for images. ``num_samples`` is not used (nothing is latent)."""
        nll = -jnp.mean(self.log_prob(params, x, key))
        out = {"nll": nll}
        if self.images:
            out["bits_per_dim"] = metrics.bits_per_dim(nll, self.dim)
        return out

    def evaluate(self, params, x, y, key, num_samples: int) -> dict:
        """``validate``'s metrics and, where the true density is known, the KL to it.

        The true density (a quadrature for some toys) does not change with the
        parameters, so it is computed for the final scores only, not every epoch.
        """
        out = self.validate(params, x, y, key, num_samples)
        if self.spec.log_density is not None:
            true_log_p = self.spec.log_density(self.spec.x_scaler.inverse(x))
            # KL(p || q) = E_p[log p - log q], estimated on the same test points.
            out["kl_to_true"] = out["nll"] + jnp.mean(true_log_p)
            out["true_entropy"] = -jnp.mean(true_log_p)
        return out

    def eval_samples(self, eval_cfg) -> int:
        """How many points ``artifacts`` draws from the flow."""
        return IMAGE_SAMPLES if self.images else eval_cfg.flow_samples

    def curve_labels(self) -> tuple[str, str]:
        # Nothing is latent: the training loss is the exact NLL of the (dequantised) data.
        unit = "nats per image" if self.images else "nats per point"
        return f"NLL ({unit})", f"validation NLL ({unit})"

    # evaluate() draws no posterior samples; one dequantisation draw
    def val_samples(self, eval_cfg) -> int:
        return 1

    def final_val_samples(self, eval_cfg) -> int:
        return 1

    def sample(self, params, key, num: int):
        """``num`` points x = T(u), u ~ N(0, I), in original units (images: intensities)."""
        flow = self.distribution(self._layer_params(params))
        return self.from_flow_space(flow.sample(key, (num,)))

    # ------------------------------------------------------------ artifacts

    def artifacts(self, params, x, y, key, num_samples: int) -> dict:
        """Samples beside the data; for 2D data, the density on a grid and a pushed base grid."""
        flow = self.distribution(self._layer_params(params))
        sample_key, grid_key = jax.random.split(key)
        samples = self.sample(params, sample_key, num_samples)
        out = {"samples": samples, "data": self.spec.x_scaler.inverse(x[: max(num_samples, 1)])}
        if self.dim == 2 and not self.images:
            out.update(self._plane(params, flow, out["data"], grid_key))
        return out

    def _plane(self, params, flow, data, key) -> dict:
        low, high = jnp.min(data, axis=0), jnp.max(data, axis=0)
        margin = 0.1 * (high - low)
        axes = [jnp.linspace(low[i] - margin[i], high[i] + margin[i], GRID_SIDE) for i in (0, 1)]
        grid = jnp.stack(jnp.meshgrid(*axes), axis=-1).reshape(-1, 2)
        scaled = self.spec.x_scaler.forward(grid)
        out = {"grid_x": axes[0], "grid_y": axes[1]}
        out["grid_log_prob"] = self.log_prob(params, scaled, key)
        if self.spec.log_density is not None:
            out["grid_true_log_prob"] = self.spec.log_density(grid)
        ticks = jnp.linspace(-3.0, 3.0, BASE_LINES)
        along = jnp.linspace(-3.0, 3.0, LINE_POINTS)
        rows = jnp.stack(jnp.broadcast_arrays(along[None, :], ticks[:, None]), axis=-1)
        lines = jnp.concatenate([rows, rows[..., ::-1]])  # (2 * BASE_LINES, LINE_POINTS, 2)
        pushed = self.from_flow_space(_push(flow, lines.reshape(-1, 2)))
        out["base_lines"] = lines
        out["pushed_lines"] = pushed.reshape(lines.shape)
        return out

    def plot(self, arrays: dict, plots_dir: Path) -> list:
        plots_dir = Path(plots_dir)
        if self.images:
            shape = tuple(self.spec.image_shape)[:2]
            images = arrays["samples"].reshape(-1, *shape)
            return [plots.image_grid(images, 8, plots_dir / "samples.png", "flow samples")]
        paths = [
            plots.samples_beside_data(arrays["data"], arrays["samples"], plots_dir / "samples.png")
        ]
        if "grid_log_prob" in arrays:
            paths.append(
                plots.density_plane(
                    arrays["grid_x"],
                    arrays["grid_y"],
                    arrays["grid_log_prob"],
                    arrays.get("grid_true_log_prob"),
                    plots_dir / "density.png",
                    arrays.get("test.kl_to_true"),  # run.py passes the test scores
                )
            )
            paths.append(
                plots.base_to_data(
                    arrays["base_lines"],
                    arrays["pushed_lines"],
                    arrays["data"],
                    plots_dir / "base_to_data.png",
                )
            )
        return paths


def logit_coordinates(v, alpha: float):
    """Dequantised levels v in [0, 256)^D -> y = logit(a + (1 - 2a) v / 256) and
    log |det dy/dv| = sum_i [log(1 - 2a) - log 256 - log p_i - log(1 - p_i)], p = a + (1 - 2a) v / 256.

    The logit spreads [0, 1] over the real line for the flow's Gaussian base; a keeps
    it finite at the ends (Dinh et al. 2017 use a = 0.05, Papamakarios et al. 2017 1e-6).
    """
    p = alpha + (1.0 - 2.0 * alpha) * v / 256.0
    log_p, log_q = jnp.log(p), jnp.log1p(-p)
    log_dy_dv = math.log(1.0 - 2.0 * alpha) - math.log(256.0) - log_p - log_q
    return log_p - log_q, jnp.sum(log_dy_dv, axis=-1)


def _push(flow: dist.TransformedDistribution, u):
    """Base points u (n, D) through every transform: T(u)."""
    for transform in flow.transforms:
        u = transform(u)
    return u


def make_permutations(kind: str, dim: int, depth: int, key) -> list:
    """The permutation after each layer but the last (None: no permutation)."""
    if kind == "none" or dim < 2:
        return [None] * depth
    if kind == "reverse":
        return [Permutation.reverse(dim)] * depth
    return [Permutation.random(k, dim) for k in jax.random.split(key, depth)]
