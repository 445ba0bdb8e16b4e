"""Bayesian neural networks: a deterministic Flax MLP plus a Gaussian prior.

All weights and biases form one vector w ~ N(0, prior_scale^2 I) (Neal 1996;
Blundell et al. 2015). With no hidden layer (``model.hidden=[]``) the network is one
affine map f(x; w) = W^T x + b: Bayesian linear regression (conjugate, with a fixed
``noise_scale``, so its posterior has a closed form; Bishop 2006, sec. 3.3) or Bayesian
multinomial logistic regression. The variational posterior q(w) is one of the families
in ``bslrun.models.guides``, or one of two baselines that are not variational:

- ensemble:   M MAP networks w_1..w_M, each its own initialisation, noise parameters
              and (through Adam's per-coordinate steps) training; the predictive is the
              equal mixture (1/M) sum_m p(y | x, w_m) (Lakshminarayanan et al. 2017)
- mc_dropout: one MAP network trained and evaluated with dropout masks z on its inputs
              and hidden units: w_s = w * z_s / (1 - p), the predictive a mixture over
              draws of z (Gal & Ghahramani 2016)

Likelihoods, for network output f(x; w):

- regression:      y ~ N(f(x), sigma(x)^2), sigma learned (type-II maximum likelihood) or fixed
- student_t:       y ~ t_df(f(x), sigma(x)), df > 2 learned with sigma, or fixed
- heteroscedastic: y ~ N(f_1(x), (softplus(f_2(x)) + 1e-3)^2)
- classification:  y ~ Categorical(logits = f(x))

with sigma(x) = sigma for noise=constant, and log sigma(x) = log sigma + c^T x for
noise=linear (c learned with sigma: a heteroscedastic noise of d + 1 parameters, where
the network head of ``heteroscedastic`` has hidden + 1 and overfits small data sets).

Targets are standardised by the data module; predictions and metrics are
mapped back to original units here.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from bslrun import metrics
from bslrun.config import (
    Activation,
    Likelihood,
    Noise,
    Posterior,
    check_likelihood_fits,
    check_noise_fits,
    natural_likelihood,
)
from bslrun.errors import ConfigError
from bslrun.flows.inverse_autoregressive import outputs_per_coordinate
from bslrun.models import bnn_figures, guides
from bslrun.models.batching import PREDICT_ROWS, chunked_map
from bslrun.models.family import Family, FamilyInfo
from bslrun.nets import MLP, FlatView, dropout_mask

SITE = "w"
POINT_BASELINES = ("ensemble", "mc_dropout")  # trained as MAP networks (a Delta guide)
MIN_SCALE = 1e-3  # keeps heteroscedastic scales away from 0 (and the NLL finite)
EVAL_CHUNK = 32  # posterior draws evaluated at once: bounds memory for large nets
INTERVAL = (0.025, 0.975)  # the central 95% predictive interval of predictions.npz
# A MADE's weights and masks (constants in the compiled program), with Adam's two moments:
# beyond this many parameters a flow posterior needs gigabytes.
FLOW_MAX_PARAMETERS = 50_000_000
DF_INIT = 10.0  # initial learned Student-t degrees of freedom (close to Normal)


class BnnFamily(Family):
    info = FamilyInfo(
        "bnn",
        offers="predict (posterior predictive) and sample (weight draws)",
        samples_are="weight vectors",
        samples_data=False,
        traced_settings=("prior_scale",),
    )

    def __init__(self, cfg, spec, n_train: int, key=None):  # key: nothing random in its structure
        # Enum(value) accepts members and plain strings alike (handy in library use).
        likelihood = Likelihood(cfg.likelihood or natural_likelihood(spec.task)).value
        check_likelihood_fits(cfg, spec.task, spec.name)
        check_noise_fits(cfg, Likelihood(likelihood))
        super().__init__(cfg, spec, n_train)
        self.likelihood = likelihood
        self.posterior = Posterior(cfg.posterior).value
        out_dim = {"regression": 1, "student_t": 1, "heteroscedastic": 2}.get(
            likelihood, spec.num_classes
        )
        dropout = cfg.dropout if self.posterior == "mc_dropout" else 0.0
        self.net = MLP(
            tuple(cfg.hidden), out_dim, Activation(cfg.activation).value, dropout=dropout
        )
        # The ensemble's members along a leading axis of the weights and noise parameters.
        self.members = (cfg.ensemble_size,) if self.posterior == "ensemble" else ()
        self.input_dim = spec.input_dim
        abstract_key = jax.ShapeDtypeStruct((2,), jnp.uint32)
        shapes = jax.eval_shape(self.net.init, abstract_key, jnp.zeros((1, spec.input_dim)))
        self.flat = FlatView(shapes["params"])
        self.num_weights = self.flat.size
        self._check_size()
        self.flow = guides.FlowShape(cfg.flow_steps, tuple(cfg.flow_hidden))
        # p(w) of one weight vector; the ensemble's prior is that of each member.
        self.weight_prior = dist.Normal(0.0, cfg.prior_scale).expand([self.num_weights])
        self.weight_prior = self.weight_prior.to_event(1)
        shape = [*self.members, self.num_weights]
        self.prior = dist.Normal(0.0, cfg.prior_scale).expand(shape).to_event(len(shape))
        self.guide_kind = "map" if self.posterior in POINT_BASELINES else self.posterior
        self.guide = guides.make_guide(
            self.guide_kind,
            SITE,
            self._initial_members if self.members else self._initial_weights,
            self.num_weights,
            cfg.init_scale,
            cfg.rank,
            self.flow,
        )

    def _check_size(self):
        """Refuse, before anything compiles, posteriors whose size grows too fast with D."""
        d = self.num_weights
        if self.posterior == "full_rank" and d > guides.FULL_RANK_MAX_DIM:
            raise ConfigError(
                f"model.posterior=full_rank needs a {d}x{d} "
                f"scale matrix for this network; use model.posterior=lowrank or mean_field, "
                f"or fewer than {guides.FULL_RANK_MAX_DIM} weights"
            )
        if self.posterior in guides.FLOW_BINS and d > guides.FLOW_MAX_DIM:
            raise ConfigError(
                f"model.posterior={self.posterior} puts a MADE over all {d} weights of this "
                f"network (at most {guides.FLOW_MAX_DIM}); use model.posterior=mean_field or "
                "lowrank, or a smaller network (model.hidden)"
            )
        if self.posterior in guides.FLOW_BINS:
            size = flow_parameters(d, self.cfg.flow_hidden, guides.FLOW_BINS[self.posterior])
            if self.cfg.flow_steps * size > FLOW_MAX_PARAMETERS:
                raise ConfigError(
                    f"model.posterior={self.posterior} would need "
                    f"{self.cfg.flow_steps * size / 1e6:.0f} million flow parameters for "
                    f"{d} weights (at most {FLOW_MAX_PARAMETERS / 1e6:.0f} million); lower "
                    "model.flow_hidden or model.flow_steps, or use a smaller network"
                )

    def _initial_weights(self, key):
        """The network's own initialisation (LeCun normal weights), as a flat vector."""
        template = self.net.init(key, jnp.zeros((1, self.input_dim)))["params"]
        return self.flat.ravel(template)

    def _initial_members(self, key):
        """The ensemble's members (M, D), each initialised from a key of its own."""
        return jax.vmap(self._initial_weights)(jax.random.split(key, self.members[0]))

    # ------------------------------------------------------------------ model

    def forward(self, w, x, dropout_key=None):
        """Network output f(x; w) for one flat weight vector: (n, out_dim); with
        posterior=mc_dropout and a key, under dropout masks drawn from it (one per row)."""
        return self.net.apply({"params": self.flat.unravel(w)}, x, dropout_key)

    def _outputs(self, w, x):
        """The model's network outputs: (M, n, out_dim) for the ensemble's members w (M, D),
        (n, out_dim) otherwise, under fresh dropout masks for posterior=mc_dropout."""
        if self.members:
            return jax.vmap(self.forward, (0, None))(w, x)
        if self.posterior == "mc_dropout":
            return self.forward(w, x, numpyro.prng_key())
        return self.forward(w, x)

    @staticmethod
    def _param(params, name: str, init, constraint):
        """A point-estimated parameter: from ``params`` (evaluation), else numpyro.param."""
        if params is not None:
            return params[name]
        return numpyro.param(name, init, constraint=constraint)

    def _noise(self, x, params=None):
        """sigma(x) in standardised units: (n,) for noise=linear, else a scalar; an
        ensemble's members have noise parameters of their own, (M, n) or (M, 1)."""
        if self.cfg.noise_scale is not None:
            sigma = jnp.asarray(self.cfg.noise_scale)
        else:
            ones = jnp.ones(self.members)
            sigma = self._param(params, "noise_scale", ones, constraints.positive)
        if Noise(self.cfg.noise) is Noise.linear:
            zeros = jnp.zeros((*self.members, self.input_dim))
            coef = self._param(params, "noise_coef", zeros, constraints.real)
            # x @ coef.T: (n,) for one coefficient vector, (n, M) for the members'
            return self._per_member(sigma) * jnp.moveaxis(jnp.exp(x @ coef.T), 0, -1)
        return self._per_member(sigma)

    def _per_member(self, value):
        """A member's parameter (M,) as (M, 1), beside its outputs (M, n)."""
        return value[..., None] if self.members and jnp.ndim(value) else value

    def _df(self, params=None):
        if self.cfg.df is not None:
            return jnp.asarray(self.cfg.df)
        init = jnp.full(self.members, DF_INIT)
        return self._per_member(self._param(params, "df", init, constraints.greater_than(2.0)))

    def observation(self, out, x, params=None):
        """p(y | x, w) for network outputs ``out`` (..., n, out_dim) at inputs x (n, d)."""
        if self.likelihood == "regression":
            return dist.Normal(out[..., 0], self._noise(x, params))
        if self.likelihood == "student_t":
            return dist.StudentT(self._df(params), out[..., 0], self._noise(x, params))
        if self.likelihood == "heteroscedastic":
            return dist.Normal(out[..., 0], jax.nn.softplus(out[..., 1]) + MIN_SCALE)
        return dist.Categorical(logits=out)

    def model(self, x, y=None):
        w = numpyro.sample(SITE, self.prior)
        batch = x.shape[0]
        # Scaling a batch of B by N / B makes the ELBO an unbiased estimate of the
        # full-data ELBO; the engine's 1 / N then gives the lecture's KL weight 1/N.
        # An ensemble's members each add their own log-likelihood: their gradients
        # (and Adam's steps) are those of M separate trainings.
        members = (
            numpyro.plate("members", self.members[0], dim=-2) if self.members else nullcontext()
        )
        with members, numpyro.plate("data", batch, dim=-1):
            with numpyro.handlers.scale(scale=self.n_train / batch):
                numpyro.sample("y", self.observation(self._outputs(w, x), x), obs=y)

    # ------------------------------------------------------------- posterior

    def posterior_distribution(self, params):
        """q(w) of the variational families; the baselines' point estimates as a Delta."""
        return guides.distribution(self.guide_kind, guides.site_params(SITE, params), self.flow)

    def weight_draws(self, params, key, num_samples):
        """Weights w_s (S, D) of the predictive mixture and their log q(w_s) (S,): draws of
        q; the ensemble's M members (all of them, whatever ``num_samples``); for MC dropout,
        the trained weights under S draws of the masks (``sample``): each draw one network
        for every input, so a draw is a function, and each point's mixture is the one of
        per-row masks."""
        if self.members:
            return guides.site_params(SITE, params)["loc"], jnp.zeros(self.members)
        if self.posterior == "mc_dropout":
            return self.sample(params, key, num_samples), jnp.zeros(num_samples)
        return guides.sample_and_log_prob(self.posterior_distribution(params), key, (num_samples,))

    def _draws(self, params, x, key, num_samples):
        """Weights w_s, their log q(w_s) (S,) and per-draw predictive distributions
        for x (batch shape (S, n))."""
        weights, log_q = self.weight_draws(params, key, num_samples)
        return weights, log_q, self.predictive(params, weights, x)

    def predictive(self, params, weights, x):
        """p(y | x, w_s) for each weight draw w_s (S, D): batch shape (S, n)."""
        draws = weights.shape[0]
        outputs = jax.lax.map(
            lambda w: self.forward(w, x), weights, batch_size=min(draws, EVAL_CHUNK)
        )
        return self.observation(outputs, x, params)

    def in_original_units(self, predictive):
        """Location and scale (S, n) of a Normal or Student-t predictive, mapped back
        through the target standardiser, and the degrees of freedom (None for Normal)."""
        scaler = self.spec.y_scaler
        mu = scaler.inverse(predictive.loc)
        sigma = jnp.broadcast_to(predictive.scale * scaler.std, mu.shape)
        df = predictive.df if self.likelihood == "student_t" else None
        return mu, sigma, df

    def elbo(self, weights, log_q, predictive, y):
        """Per-datum ELBO on (x, y), in nats per datum of the original target units.

        ELBO/n = mean_i E_q[log p(y_i | x_i, w)] - KL(q || p) / N_train, with the
        KL estimated by Monte Carlo on the same draws. For MAP, log q = 0 and the
        bound is the log joint, as in MAP training.
        """
        loglik = jnp.mean(predictive.log_prob(y[None, :]))
        kl = jnp.mean(log_q - self.weight_prior.log_prob(weights))
        elbo = loglik - kl / self.n_train
        if self.spec.task == "regression":
            elbo = elbo - jnp.log(self.spec.y_scaler.std)  # change of variables y = a z + b
        return elbo

    def evaluate(self, params, x, y, key, num_samples):
        weights, log_q, predictive = self._draws(params, x, key, num_samples)
        if self.spec.task == "classification":
            out = metrics.classification_summary(y, jax.nn.log_softmax(predictive.logits))
        else:
            mu, sigma, df = self.in_original_units(predictive)
            out = metrics.regression_summary(self.spec.y_scaler.inverse(y), mu, sigma, df)
        out["elbo"] = self.elbo(weights, log_q, predictive, y)
        return out

    def eval_samples(self, eval_cfg) -> int:
        return eval_cfg.num_samples

    # ------------------------------------------------------------- predictions

    def predict(self, params, x, key, num_samples, levels=INTERVAL):
        """Posterior predictive summaries per row of x (n, d), from S = num_samples weight
        draws w_s ~ q (drawn once from ``key``), in chunks of PREDICT_ROWS rows.

        Regression (original units): ``mean``, ``std`` (total), ``epistemic_std``
        (std_s of the component means), ``aleatoric_std`` (sqrt E_s[component variance])
        and ``quantiles`` (n, len(levels)) of the mixture (1/S) sum_s p(y | x, w_s).
        Classification: ``probs`` (n, C) = mean_s softmax f(x; w_s), their ``entropy``
        H[p], the ``mutual_information`` H[p] - mean_s H[p_s] between the label and w
        (Houlsby et al. 2011; the epistemic part), and the arg-max ``prediction``.
        """
        weights, _ = self.weight_draws(params, key, num_samples)

        def rows(xc, _):
            predictive = self.predictive(params, weights, xc)
            if self.spec.task == "classification":
                return classification_summary(predictive.logits)
            return self._regression_summary(predictive, levels)

        return chunked_map(rows, x, key, min(x.shape[0], PREDICT_ROWS))

    def _regression_summary(self, predictive, levels) -> dict:
        return mixture_summary(*self.in_original_units(predictive), levels)

    def sample(self, params, key, num: int):
        """``num`` weight vectors w ~ q (num, number of weights): for the ensemble, members
        drawn uniformly; for MC dropout, the weights under dropout masks on the rows of
        each layer's kernel (the inputs that the layer's dropout drops), scaled by 1 / (1 - p)."""
        if self.posterior not in POINT_BASELINES:
            q = self.posterior_distribution(params)
            return guides.sample_and_log_prob(q, key, (num,))[0]
        loc = guides.site_params(SITE, params)["loc"]
        if self.members:
            return loc[jax.random.randint(key, (num,), 0, self.members[0])]
        return jax.vmap(lambda k: self._dropped_weights(loc, k))(jax.random.split(key, num))

    def _dropped_weights(self, w, key):
        """The flat weights w with one dropout mask on each Dense layer's input rows."""
        layers = self.flat.unravel(w)
        keep = 1.0 - self.cfg.dropout
        dropped = {}
        for i, (name, layer) in enumerate(sorted(layers.items(), key=lambda kv: _layer(kv[0]))):
            mask = dropout_mask(key, i, layer["kernel"].shape[:1], self.cfg.dropout)
            dropped[name] = {**layer, "kernel": layer["kernel"] * mask[:, None] / keep}
        return self.flat.ravel(dropped)

    def weight_marginals(self, params, key):
        """(mean, std, one draw) of the weights (each (D,)) for the weight histograms: q's
        marginals (std None for MAP and MC dropout), or over the ensemble's members."""
        draw_key, moment_key = jax.random.split(key)
        draw = self.sample(params, draw_key, 1)[0]
        if self.members:  # the spread of one member is no spread
            members = guides.site_params(SITE, params)["loc"]
            spread = jnp.std(members, axis=0) if self.members[0] > 1 else None
            return jnp.mean(members, axis=0), spread, draw
        mean, std = bnn_figures.posterior_marginals(self.posterior_distribution(params), moment_key)
        return mean, None if self.guide_kind == "map" else std, draw

    def artifacts(self, params, x, y, key, num_samples, ood_x=None, ood_source=None):
        """``predict``'s summaries of the test set beside its targets (original units), and
        the arrays of the figures: calibration, the weights, and by input kind the plane
        (2D), the predictive curve (1D) or the most uncertain images and the predictive
        entropy of out-of-distribution images ``ood_x`` (from ``artifact_inputs``).

        The predictions use ``key`` itself, so a reopened run reproduces them; the figures
        draw from keys folded from it.
        """
        out = self.predict(params, x, key, num_samples)
        figures = bnn_figures.weight_histograms(self, params, jax.random.fold_in(key, 1))
        view_key = jax.random.fold_in(key, 2)
        if self.spec.task == "classification":
            out["y"] = y
            calibration = metrics.calibration_bins(out["probs"], y)
            figures.update({f"calibration_{k}": v for k, v in calibration.items()})
            figures["ece"] = metrics.expected_calibration_error(out["probs"], y)
            if self.spec.input_dim == 2:
                out["x"] = self.spec.x_scaler.inverse(x)
                figures.update(bnn_figures.plane(self, params, out["x"], key, num_samples))
            if self.spec.image_shape is not None:
                figures.update(
                    bnn_figures.images(self, params, x, out, view_key, num_samples, ood_x)
                )
                if ood_source is not None:
                    figures["ood_source"] = ood_source
            return {**out, **figures}
        lower, upper = jnp.moveaxis(out.pop("quantiles"), -1, 0)
        figures.update(bnn_figures.calibration_curve(self, params, x, y, key, num_samples))
        if self.spec.input_dim == 1:
            figures.update(bnn_figures.curve(self, params, x, view_key, num_samples))
        targets = self.spec.y_scaler.inverse(y)
        return {"y": targets, **out, "lower_95": lower, "upper_95": upper, **figures}

    def artifact_inputs(self, data_cfg, data, key) -> dict:
        """Out-of-distribution images for an image classifier (see ``artifacts``)."""
        if self.spec.image_shape is None or self.spec.task != "classification":
            return {}
        from bslrun.data.mnist import out_of_distribution  # on use: reopening needs no data

        images, source = out_of_distribution(data_cfg, data.test.x, jax.random.fold_in(key, 3))
        return {"ood_x": images, "ood_source": source}

    def plot(self, arrays, plots_dir: Path) -> list:
        return bnn_figures.plot(self, arrays, Path(plots_dir))


def classification_summary(logits) -> dict:
    """Per-row summaries of S draws of class logits (S, n, C); see ``BnnFamily.predict``."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.mean(jnp.exp(log_probs), axis=0)
    entropy = -jnp.sum(probs * jnp.log(jnp.clip(probs, 1e-30)), axis=-1)
    expected_entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1), axis=0)
    return {
        "probs": probs,
        "prediction": jnp.argmax(probs, axis=-1),
        "entropy": entropy,
        "mutual_information": jnp.maximum(entropy - expected_entropy, 0.0),
    }


def flow_parameters(dim: int, hidden, bins: int) -> int:
    """Weights of one MADE step over ``dim`` weights: dim -> hidden... -> dim x outputs."""
    outputs = outputs_per_coordinate(bins)
    widths = [dim, *hidden]
    return (
        sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
        + widths[-1] * dim * outputs
    )


def _layer(name: str) -> int:
    """Flax's layer order from its name ("Dense_10" after "Dense_9")."""
    return int(name.rsplit("_", 1)[-1])


def mixture_summary(mu, sigma, df, levels) -> dict:
    """Summaries per point of the mixture (1/S) sum_s p(y | mu_s, sigma_s, df) with
    components (S, n) in original units (``BnnFamily.predict``'s regression keys):
    ``mean``, ``std`` (total), ``epistemic_std`` (std_s of mu_s), ``aleatoric_std``
    (sqrt mean_s Var_s) and ``quantiles`` (n, len(levels))."""
    epistemic = jnp.std(mu, axis=0)
    aleatoric = jnp.sqrt(jnp.mean(metrics.component_variance(sigma, df), axis=0))
    return {
        "mean": jnp.mean(mu, axis=0),
        "std": jnp.sqrt(epistemic**2 + aleatoric**2),
        "epistemic_std": epistemic,
        "aleatoric_std": aleatoric,
        "quantiles": metrics.mixture_quantiles(levels, mu, sigma, df),
    }
