"""Variational autoencoders (Kingma and Welling 2014; Rezende et al. 2014).

Generative model p(z) = N(0, I), p(x | z) = Bernoulli(logits = f(z)) or
Normal(f(z), sigma^2) per pixel; amortised Gaussian guide
q(z | x) = N(mu(x), diag(s(x)^2)), reparameterised, optionally pushed through
K inverse autoregressive affine steps (``model.posterior_flow``; Kingma et al.
2016): z = T_x(z0), z0 ~ N(mu(x), s(x)^2), each step's MADE reading the context
h(x) = (mu(x), log s(x)); then log q(z | x) = log N(z0) - log|det dz/dz0|, the KL
term is a Monte Carlo estimate. Encoder and decoder are
Flax modules registered through NumPyro's ``flax_module``; the convolutional
architecture's batch-norm statistics are NumPyro mutable state (batch
statistics while training, running averages at evaluation).

Objectives (per datum, scaled by the engine): the ELBO with an analytic or
Monte Carlo KL term, weighted by beta during a linear warm-up (Bowman et al.
2016; Sonderby et al. 2016), or the importance-weighted bound with K samples
(Burda et al. 2016; NumPyro's RenyiELBO with alpha = 0).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import flax_module
from numpyro.infer import RenyiELBO, Trace_ELBO

from bslrun import metrics, plots
from bslrun.config import Activation, Architecture, ImageLikelihood, KLEstimate
from bslrun.errors import ConfigError
from bslrun.flows.inverse_autoregressive import InverseAutoregressive, iaf_conditioner
from bslrun.models.batching import chunked_map
from bslrun.models.family import Family, FamilyInfo
from bslrun.models.objectives import ScaledLoss
from bslrun.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

# Importance-weighted evaluation decodes at most this many latent samples at once
# (convolutional decoders keep ~30x more activations per image than dense ones).
EVAL_DECODES = {"mlp": 2**15, "conv": 2**10}
MIN_PIXEL_SCALE = 1e-3
GRID_SAMPLES = 64  # images drawn from the prior for plots/samples.png
GRID_RECONSTRUCTIONS = 16
MANIFOLD_SIDE = 20  # the lecture's 2D latent map: a 20 x 20 grid of decoded images


class VaeFamily(Family):
    info = FamilyInfo(
        "vae",
        saves="samples",
        offers="encode, decode, sample (images from the prior) and log_prob (an "
        "importance-weighted bound)",
        samples_are="images",
        exact_log_prob=False,
        val_loss="neg_elbo",
    )

    def __init__(self, cfg, spec, n_train: int, key=None):  # key: nothing random in its structure
        if spec.image_shape is None:
            raise ConfigError(f"model=vae needs image data; data={spec.name} has no image shape")
        super().__init__(cfg, spec, n_train)
        self.latent_dim = cfg.latent_dim
        self.dim = spec.input_dim
        self.likelihood = ImageLikelihood(cfg.likelihood).value
        self.eval_decodes = EVAL_DECODES[Architecture(cfg.architecture).value]
        if Architecture(cfg.architecture) is Architecture.conv:
            self.encoder = ConvEncoder(tuple(spec.image_shape), cfg.latent_dim)
            self.decoder = ConvDecoder(tuple(spec.image_shape))
            self.mutable = ["batch_stats"]
        else:
            act = Activation(cfg.activation).value
            self.encoder = MLPEncoder(tuple(cfg.hidden), cfg.latent_dim, act)
            self.decoder = MLPDecoder(tuple(reversed(cfg.hidden)), self.dim, act)
            self.mutable = None
        # The IAF steps' MADEs (zero outputs: training starts from the Gaussian encoder).
        self.flow = [
            iaf_conditioner(cfg.latent_dim, cfg.posterior_flow_hidden, k)
            for k in range(cfg.posterior_flow)
        ]

    # ------------------------------------------------------------- training

    @property
    def importance_weighted(self) -> bool:
        return self.cfg.iw_samples > 1

    def objective(self, num_particles: int):
        if self.importance_weighted:
            # RenyiELBO (alpha = 0) sums log mean_k w_ik over the batch; N / B makes it
            # an unbiased estimate of the full-data bound. The sites stay unscaled
            # (see _batch_scale): scaled log-weights would temper the bound.
            bound = RenyiELBO(alpha=0.0, num_particles=self.cfg.iw_samples)
            return ScaledLoss(bound, lambda x, *args: self.n_train / x.shape[0])
        return Trace_ELBO(num_particles=num_particles)

    def _batch_scale(self, batch: int) -> float:
        """N / B on the batch's sites for the ELBO; 1 for the importance-weighted bound."""
        return 1.0 if self.importance_weighted else self.n_train / batch

    @property
    def analytic_kl(self) -> bool:
        """The closed-form KL needs a Gaussian q: off with the IWAE bound or a flow."""
        analytic = KLEstimate(self.cfg.kl) is KLEstimate.analytic
        return analytic and not self.importance_weighted and not self.flow

    def epoch_kwargs(self, epoch: int) -> dict:
        """KL weight beta: linear from 1/W to 1 over the first W epochs."""
        warmup = self.cfg.beta_warmup_epochs
        return {"beta": min(1.0, epoch / warmup) if warmup else 1.0}

    def _observation(self, out, pixel_scale_raw=None):
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        return dist.Normal(out, jax.nn.softplus(pixel_scale_raw) + MIN_PIXEL_SCALE).to_event(1)

    def _pixel_scale_param(self):
        if self.likelihood == "gaussian":
            return numpyro.param("pixel_scale_raw", jnp.zeros(self.dim))
        return None

    def model(self, x, y=None, beta=1.0):
        decoder = flax_module(
            "decoder",
            self.decoder,
            input_shape=(1, self.latent_dim),
            mutable=self.mutable,
            train=True,
        )
        pixel_scale_raw = self._pixel_scale_param()
        batch = x.shape[0]
        prior = dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1)
        with numpyro.plate("data", batch), numpyro.handlers.scale(scale=self._batch_scale(batch)):
            with numpyro.handlers.scale(scale=beta):
                z = numpyro.sample("z", prior)
            numpyro.sample("x", self._observation(decoder(z, train=True), pixel_scale_raw), obs=x)

    def _flow_params(self) -> list:
        """numpyro.param of each IAF step's MADE, named ``iaf_<k>`` (Flax variables)."""
        latent, context = jnp.zeros((1, self.latent_dim)), jnp.zeros((1, 2 * self.latent_dim))
        return [
            numpyro.param(f"iaf_{k}", lambda key, made=made: made.init(key, latent, context))
            for k, made in enumerate(self.flow)
        ]

    def _flow_steps(self, loc, scale, flow_params) -> list:
        """The IAF steps T_x for encoder outputs loc, scale (..., L); context (mu, log s)."""
        context = jnp.concatenate([loc, jnp.log(scale)], axis=-1)
        return [
            InverseAutoregressive(made, params, context=context)
            for made, params in zip(self.flow, flow_params, strict=True)
        ]

    def posterior(self, loc, scale, flow_params=()):
        """q(z | x): N(loc, scale^2) (batch shape loc.shape[:-1]), pushed through the flow."""
        q = dist.Normal(loc, scale).to_event(1)
        if not self.flow:
            return q
        return dist.TransformedDistribution(q, self._flow_steps(loc, scale, flow_params))

    def guide(self, x, y=None, beta=1.0):
        encoder = flax_module(
            "encoder", self.encoder, input_shape=(1, self.dim), mutable=self.mutable, train=True
        )
        loc, scale = encoder(x, train=True)
        batch = x.shape[0]
        # Sampled with intermediates, so the ELBOs score log q(z | x) without inverting T_x.
        q = self.posterior(loc, scale, self._flow_params())
        with numpyro.plate("data", batch), numpyro.handlers.scale(scale=self._batch_scale(batch)):
            with numpyro.handlers.scale(scale=beta):
                z = numpyro.sample("z", q)
                if self.analytic_kl:
                    # Trace_ELBO scores log p(z) - log q(z) on the sample; this factor
                    # (counted on the guide's side) swaps that estimate for the
                    # closed-form -KL, in value and in gradient. Unlike
                    # TraceMeanField_ELBO, it also works with batch-norm state.
                    prior = dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1)
                    kl = metrics.gaussian_kl_to_standard(loc, scale)
                    numpyro.factor("analytic_kl", prior.log_prob(z) - q.log_prob(z) + kl)

    # ----------------------------------------------------------- evaluation

    def _apply(self, name: str, variables: dict, inputs):
        """Encoder or decoder in evaluation mode (batch norm uses running averages)."""
        module = self.encoder if name == "encoder" else self.decoder
        state = variables.get(f"{name}$state", {})
        return module.apply({"params": variables[f"{name}$params"], **state}, inputs, train=False)

    def _decode(self, variables, z):
        return self._apply("decoder", variables, z)

    def _mean_image(self, variables, z):
        """E[x | z]: pixel probabilities (Bernoulli) or means (Gaussian)."""
        out = self._decode(variables, z)
        return jax.nn.sigmoid(out) if self.likelihood == "bernoulli" else out

    def _draw(self, variables, loc, scale, eps):
        """z ~ q(z | x) from eps (K, c, L) and log q(z | x) (K, c).

        z0 = loc + scale * eps; z = T_x(z0); log q = log N(z0; loc, scale^2) - log|det dz/dz0|
        (change of variables; the steps' log-determinants come from their sampling pass).
        """
        z = loc + scale * eps
        log_q = jnp.sum(dist.Normal(loc, scale).log_prob(z), axis=-1)
        flow_params = [variables[f"iaf_{k}"] for k in range(len(self.flow))]
        for step in self._flow_steps(loc, scale, flow_params):
            z_in = z
            z, intermediates = step.call_with_intermediates(z_in)
            log_q = log_q - step.log_abs_det_jacobian(z_in, z, intermediates)
        return z, log_q

    def _image_scores(self, variables, x, key, num_samples: int) -> dict:
        """Per-image bounds for a chunk of images x (c, D) with K = num_samples draws."""
        loc, scale = self._apply("encoder", variables, x)
        eps = jax.random.normal(key, (num_samples, *loc.shape))
        z, log_qz = self._draw(variables, loc, scale, eps)
        out = self._decode(variables, z.reshape(-1, self.latent_dim))
        out = out.reshape(num_samples, x.shape[0], self.dim)
        log_px = self._observation(out, variables.get("pixel_scale_raw")).log_prob(x)
        log_pz = jnp.sum(dist.Normal(0.0, 1.0).log_prob(z), axis=-1)
        log_weights = log_px + log_pz - log_qz  # (K, c)
        # With a flow the KL has no closed form: the Monte Carlo estimate on the same draws.
        kl = jnp.mean(log_qz - log_pz, axis=0) if self.flow else None
        return {
            "bound": metrics.importance_weighted_bound(log_weights),
            "elbo": jnp.mean(log_weights, axis=0),
            "recon": jnp.mean(log_px, axis=0),
            "kl": metrics.gaussian_kl_to_standard(loc, scale) if kl is None else kl,
            "code": loc,
        }

    def _scores(self, variables, x, key, num_samples: int) -> dict:
        """``_image_scores`` over every image of x, in chunks so that memory stays bounded
        for K = 1000."""
        chunk = max(1, min(x.shape[0], self.eval_decodes // num_samples))
        return chunked_map(
            lambda xc, kc: self._image_scores(variables, xc, kc, num_samples), x, key, chunk
        )

    def evaluate(self, variables, x, y, key, num_samples: int) -> dict:
        """Test ELBO, importance-weighted NLL bound (K = num_samples), KL, active units."""
        scores = self._scores(variables, x, key, num_samples)
        nll = -jnp.mean(scores["bound"])
        return {
            "nll": nll,
            "elbo": jnp.mean(scores["elbo"]),
            "recon": jnp.mean(scores["recon"]),
            "kl": jnp.mean(scores["kl"]),
            "active_units": metrics.active_units(scores["code"]),
            "bits_per_dim": metrics.bits_per_dim(nll, self.dim),
        }

    # Validation (every epoch and in metrics.json) scores the single-sample bound, named
    # for what it is, -ELBO (``neg_elbo``): importance sampling the validation set each
    # epoch would cost more than the epoch itself. The test set gets the importance-
    # weighted bound with eval.iw_samples draws, and only that is called ``nll``.
    def validate(self, variables, x, y, key, num_samples: int) -> dict:
        scores = self._scores(variables, x, key, 1)
        return {
            "neg_elbo": -jnp.mean(scores["elbo"]),
            "recon": jnp.mean(scores["recon"]),
            "kl": jnp.mean(scores["kl"]),
        }

    final_validate = validate

    def curve_labels(self) -> tuple[str, str]:
        return "-ELBO (nats per image)", "validation -ELBO (nats per image, one draw)"

    def val_samples(self, eval_cfg) -> int:
        return 1

    def final_val_samples(self, eval_cfg) -> int:
        return 1

    def eval_samples(self, eval_cfg) -> int:
        return eval_cfg.iw_samples

    # ------------------------------------------------------------ reopening

    def log_prob(self, variables, x, key, num_samples: int):
        """The importance-weighted lower bound on log p(x) per image (n,), K = num_samples
        (Burda et al. 2016); its negative mean over the test set is the test ``nll``."""
        return self._scores(variables, x, key, num_samples)["bound"]

    def encode(self, variables, x):
        """Encoder outputs (loc, scale), each (n, L): q(z | x) = N(loc, scale^2) (before
        any IAF steps)."""
        return self._apply("encoder", variables, x)

    def decode(self, variables, z):
        """E[x | z] (n, D): pixel probabilities (Bernoulli) or means (Gaussian)."""
        return self._mean_image(variables, z)

    def sample(self, variables, key, num: int):
        """``num`` images E[x | z], z ~ N(0, I) (as plots/samples.png shows them)."""
        return self._mean_image(variables, jax.random.normal(key, (num, self.latent_dim)))

    # ------------------------------------------------------------ artifacts

    def artifacts(self, variables, x, y, key, num_samples: int) -> dict:
        """Prior samples, reconstructions, latent codes (2D view) and the 2D manifold."""
        codes = chunked_map(
            lambda xc, _: {"code": self._apply("encoder", variables, xc)[0]},
            x,
            key,
            min(x.shape[0], self.eval_decodes),
        )["code"]
        originals = x[:GRID_RECONSTRUCTIONS]
        out = {
            "prior_samples": self.sample(variables, key, GRID_SAMPLES),
            "originals": originals,
            "reconstructions": self._mean_image(variables, codes[:GRID_RECONSTRUCTIONS]),
            "latent_codes": codes,
            "latent_2d": project_2d(codes),
            "labels": y,
        }
        if self.latent_dim == 2:
            z0, z1 = latent_grid(codes, MANIFOLD_SIDE)
            grid = jnp.stack(jnp.meshgrid(z0, z1[::-1]), axis=-1).reshape(-1, 2)
            out.update(manifold=self._mean_image(variables, grid), manifold_z0=z0, manifold_z1=z1)
        return out

    def plot(self, arrays: dict, plots_dir: Path) -> list:
        shape = tuple(self.spec.image_shape)
        images = {k: arrays[k].reshape(-1, *shape[:2]) for k in arrays if k in IMAGE_KEYS}
        paths = [
            plots.image_grid(
                images["prior_samples"], 8, plots_dir / "samples.png", "p(x | z), z ~ N(0, I)"
            ),
            plots.image_grid(
                jnp.concatenate([images["originals"], images["reconstructions"]]),
                GRID_RECONSTRUCTIONS,
                plots_dir / "reconstructions.png",
                "test images (top) and reconstructions E[x | mu(x)] (bottom)",
            ),
            plots.latent_scatter(
                arrays["latent_2d"],
                arrays["labels"],
                plots_dir / "latent.png",
                "test codes" + (" (first two principal axes)" if self.latent_dim > 2 else ""),
            ),
        ]
        if "manifold" in images:
            paths.append(
                plots.latent_manifold(
                    images["manifold"],
                    arrays.get("manifold_z0"),  # older samples files have no grid values
                    arrays.get("manifold_z1"),
                    plots_dir / "manifold.png",
                )
            )
        return paths


IMAGE_KEYS = ("prior_samples", "originals", "reconstructions", "manifold")


def latent_grid(codes, side: int, coverage: float = 0.98):
    """The decoded latent map's axes: ``side`` evenly spaced values per latent dimension,
    from the (1 - coverage)/2 to the (1 + coverage)/2 quantile of the test codes (n, 2).

    The codes of a trained encoder spread wider than the prior's N(0, I) (the aggregate
    posterior is not the prior), so a grid at the prior's 5-95% quantiles (+-1.64) leaves
    out many codes; a grid over the codes themselves shows what the decoder does where
    the data lie."""
    tail = 100 * (1 - coverage) / 2
    low, high = jnp.percentile(codes, jnp.array([tail, 100 - tail]), axis=0)
    steps = jnp.linspace(0.0, 1.0, side)
    return low[0] + steps * (high[0] - low[0]), low[1] + steps * (high[1] - low[1])


def project_2d(codes):
    """Codes (n, L) -> (n, 2): as they are for L <= 2, else onto the two principal axes."""
    if codes.shape[1] <= 2:
        return jnp.pad(codes, ((0, 0), (0, 2 - codes.shape[1])))
    centred = codes - jnp.mean(codes, axis=0)
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T
