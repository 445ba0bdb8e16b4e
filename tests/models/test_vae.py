"""The VAE family (bslrun.models.vae) and its metrics, against independent references.

References are computed in float64 numpy/scipy: the encoder and decoder of the
MLP architecture are re-implemented as numpy matrix products, Bernoulli and
Normal log densities are written out, KL divergences come from the closed form,
from numerical integration and from Monte Carlo. Random draws are reproduced
through NumPyro's handlers (the same key gives the same z), never by re-running
the code under test.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_spec
from numpyro import handlers
from numpyro.infer import Trace_ELBO, TraceMeanField_ELBO
from scipy import integrate, stats
from scipy.special import logsumexp

from bslrun import metrics
from bslrun.config import (
    Architecture,
    KLEstimate,
    OptimConfig,
    Schedule,
    TrainerConfig,
    VaeConfig,
)
from bslrun.data.splits import Dataset, DataSpec, Split
from bslrun.inference import engine
from bslrun.models import batching
from bslrun.models.objectives import ScaledLoss
from bslrun.models.vae import VaeFamily

IMAGE_SHAPE = (28, 28, 1)
D = 784
N = 256  # training images
B = 32  # minibatch
LATENT = 4
HIDDEN = 32
NUM_CLASSES = 10


# ----------------------------------------------------------------------------- data


def image_spec(n_total: int) -> DataSpec:
    return make_spec(
        D, n_total, task="classification", num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE
    )


def binary_images(seed: int, n: int):
    """n flattened binary 28x28 images: Bernoulli pixels around one of 10 prototypes."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0.05, 0.6, size=(NUM_CLASSES, D))
    labels = rng.integers(0, NUM_CLASSES, size=n).astype(np.int32)
    x = (rng.random((n, D)) < prototypes[labels]).astype(np.float32)
    return x, labels


def image_dataset(x, y) -> Dataset:
    return Dataset(train=Split(x, y), val=None, test=Split(x, y), spec=image_spec(len(x)))


def mlp_family(**kw) -> VaeFamily:
    cfg = VaeConfig(architecture=Architecture.mlp, hidden=[HIDDEN], latent_dim=LATENT, **kw)
    return VaeFamily(cfg, image_spec(N), N)


# ----------------------------------------------------------------------------- numpy references


def np_softplus(a):
    return np.logaddexp(0.0, a)


def np_encoder(p, x):
    """MLPEncoder(hidden=[h]) in float64: relu(x W0 + b0) -> (loc, softplus(.) + 1e-6)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    h = np.maximum(np.asarray(x, np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    loc = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    scale = np_softplus(h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]) + 1e-6
    return loc, scale


def np_decoder(p, z):
    """MLPDecoder(hidden=[h]) in float64: logits = relu(z W0 + b0) W1 + b1."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p["MLP_0"])
    h = np.maximum(np.asarray(z, np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def np_bernoulli_log_prob(x, logits):
    """sum_d x_d log sigmoid(l_d) + (1 - x_d) log sigmoid(-l_d) = sum_d x_d l_d - log(1 + e^l_d)."""
    return np.sum(np.asarray(x, np.float64) * logits - np_softplus(logits), axis=-1)


def np_kl_standard(loc, scale):
    """KL(N(loc, diag scale^2) || N(0, I)) as the general Gaussian formula
    1/2 [tr(S) + m^T m - k - log det S], written with traces and determinants."""
    loc, scale = np.asarray(loc, np.float64), np.asarray(scale, np.float64)
    out = []
    for m, s in zip(loc.reshape(-1, loc.shape[-1]), scale.reshape(-1, loc.shape[-1]), strict=True):
        cov = np.diag(s**2)
        _, logdet = np.linalg.slogdet(cov)
        out.append(0.5 * (np.trace(cov) + m @ m - len(m) - logdet))
    return np.array(out).reshape(loc.shape[:-1])


def kl_by_quadrature(m: float, s: float) -> float:
    """KL(N(m, s^2) || N(0, 1)) = int q(z) [log q(z) - log p(z)] dz, numerically."""

    def integrand(z):
        log_q = stats.norm.logpdf(z, m, s)
        return np.exp(log_q) * (log_q - stats.norm.logpdf(z))

    value, _ = integrate.quad(integrand, m - 30 * s, m + 30 * s, limit=200)
    return value


def guide_draw(family, params, key, x, **kwargs):
    """The z that Trace_ELBO / TraceMeanField_ELBO draw with ``key`` (guide_seed = split(key)[1])."""
    _, guide_seed = jax.random.split(key)
    guide = handlers.substitute(handlers.seed(family.guide, guide_seed), data=params)
    return np.asarray(handlers.trace(guide).get_trace(x, None, **kwargs)["z"]["value"], np.float64)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images():
    return binary_images(0, N)


@pytest.fixture(scope="module")
def mlp_setup(images):
    """Analytic- and MC-KL families (same modules, same parameter names), initial params."""
    x, y = images
    analytic = mlp_family(kl=KLEstimate.analytic)
    mc = mlp_family(kl=KLEstimate.mc)
    svi_an = engine.make_svi(analytic, optax.adam(1e-3), 1)
    svi_mc = engine.make_svi(mc, optax.adam(1e-3), 1)
    state = jax.jit(svi_an.init)(jax.random.PRNGKey(0), x[:B], y[:B])
    params = svi_an.get_params(state)
    return analytic, mc, svi_an, svi_mc, params


@pytest.fixture(scope="module")
def trained_mlp(images):
    """An MLP VAE after 10 short epochs of engine.fit (parameters by site name)."""
    x, y = images
    family = mlp_family()
    result = engine.fit(
        family,
        image_dataset(x, y),
        OptimConfig(lr=3e-3, schedule=Schedule.constant),
        TrainerConfig(epochs=10, batch_size=B, progress=False),
        jax.random.PRNGKey(1),
        jax.random.PRNGKey(2),
        1,
    )
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]  # it did learn something
    return family, result.params


# ============================================================================ Gaussian KL


def test_gaussian_kl_zero_at_the_prior():
    kl = metrics.gaussian_kl_to_standard(jnp.zeros((3, 5)), jnp.ones((3, 5)))
    assert kl.shape == (3,)
    np.testing.assert_array_equal(np.asarray(kl), 0.0)


def test_gaussian_kl_closed_form_and_quadrature(rng):
    loc = rng.normal(scale=1.5, size=(6, 3))
    scale = rng.uniform(0.05, 3.0, size=(6, 3))
    kl = np.asarray(metrics.gaussian_kl_to_standard(jnp.asarray(loc), jnp.asarray(scale)))
    assert kl.shape == (6,)
    np.testing.assert_allclose(kl, np_kl_standard(loc, scale), rtol=1e-5)
    # Numerical integration, dimension by dimension (the KL of a product is the sum).
    quad = np.vectorize(kl_by_quadrature)(loc, scale)
    np.testing.assert_allclose(kl, quad.sum(-1), rtol=1e-4, atol=1e-6)
    assert np.all(kl > 0)
    # Batch shapes are kept; only the last axis is summed.
    kl3 = metrics.gaussian_kl_to_standard(
        jnp.asarray(loc.reshape(2, 3, 3)), jnp.asarray(scale.reshape(2, 3, 3))
    )
    np.testing.assert_allclose(np.asarray(kl3), kl.reshape(2, 3), rtol=1e-6)


def _kl_monte_carlo(rng, num_draws: int, loc, scale):
    """Per row: mean and standard error of log q(z) - log p(z), z ~ q."""
    z = loc + scale * rng.standard_normal((num_draws, *loc.shape))
    diff = (stats.norm.logpdf(z, loc, scale) - stats.norm.logpdf(z)).sum(-1)
    return diff.mean(0), diff.std(0) / math.sqrt(num_draws)


@pytest.mark.parametrize(
    "num_draws",
    [20_000, pytest.param(1_000_000, marks=pytest.mark.slow)],
)
def test_gaussian_kl_against_monte_carlo(rng, num_draws):
    loc = rng.normal(size=(3, 4))
    scale = rng.uniform(0.3, 2.0, size=(3, 4))
    kl = np.asarray(metrics.gaussian_kl_to_standard(jnp.asarray(loc), jnp.asarray(scale)))
    mean, se = _kl_monte_carlo(rng, num_draws, loc, scale)
    assert np.all(np.abs(mean - kl) < 5 * se), (mean, kl, se)


# ============================================================================ analytic KL in the guide


def reference_loss(family, params, key, x, beta=1.0):
    """-(1/N)(N/B) sum_i [log p(x_i | z_i) - beta KL_i] with the z the ELBO draws with key."""
    z = guide_draw(family, params, key, x, beta=beta)
    loc, scale = np_encoder(params["encoder$params"], x)
    log_px = np_bernoulli_log_prob(x, np_decoder(params["decoder$params"], z))
    kl = np_kl_standard(loc, scale)
    return -np.sum(log_px - beta * kl) / x.shape[0], z, loc, scale


def test_guide_draw_is_reparameterised(mlp_setup, images):
    """Sanity of the reference: the traced z lies where loc + scale * eps would (eps moderate)."""
    analytic, _, _, _, params = mlp_setup
    x = images[0][:B]
    loc, scale = np_encoder(params["encoder$params"], x)
    z = guide_draw(analytic, params, jax.random.PRNGKey(5), x)
    eps = (z - loc) / scale
    assert z.shape == (B, LATENT) and np.all(np.abs(eps) < 6) and 0.5 < eps.std() < 1.5


@pytest.mark.parametrize("seed", [3, 4])
def test_analytic_kl_loss_matches_independent_computation(mlp_setup, images, seed):
    analytic, mc, svi_an, svi_mc, params = mlp_setup
    x, y = images[0][:B], images[1][:B]
    key = jax.random.PRNGKey(seed)
    loss = float(
        ScaledLoss(Trace_ELBO(), svi_an.loss.factor).loss(
            key, params, svi_an.model, svi_an.guide, x, y
        )
    )
    expected, _, _, _ = reference_loss(analytic, params, key, x)
    np.testing.assert_allclose(loss, expected, rtol=2e-5)
    # NumPyro's mean-field ELBO (closed-form KL from numpyro.distributions.kl) on the
    # MC family, whose guide has no factor: the same number.
    mean_field = float(
        ScaledLoss(TraceMeanField_ELBO(), svi_mc.loss.factor).loss(
            key, params, svi_mc.model, svi_mc.guide, x, y
        )
    )
    np.testing.assert_allclose(loss, mean_field, rtol=1e-5)
    # ... and the MC estimate on the same draw is a different number.
    loss_mc = float(
        ScaledLoss(Trace_ELBO(), svi_mc.loss.factor).loss(
            key, params, svi_mc.model, svi_mc.guide, x, y
        )
    )
    assert abs(loss_mc - loss) > 1e-3


def test_analytic_kl_gradient_equals_mean_field_elbo(mlp_setup, images):
    _, _, svi_an, svi_mc, params = mlp_setup
    x, y = images[0][:B], images[1][:B]
    key = jax.random.PRNGKey(7)

    def grad_of(elbo, svi):
        return jax.jit(
            jax.grad(
                lambda p: ScaledLoss(elbo, svi.loss.factor).loss(key, p, svi.model, svi.guide, x, y)
            )
        )(params)

    g_an = grad_of(Trace_ELBO(), svi_an)
    g_mf = grad_of(TraceMeanField_ELBO(), svi_mc)
    g_mc = grad_of(Trace_ELBO(), svi_mc)
    assert set(g_an) == {"encoder$params", "decoder$params"}
    flat_an, flat_mf, flat_mc = (
        np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)]) for g in (g_an, g_mf, g_mc)
    )
    assert jax.tree.structure(g_an) == jax.tree.structure(g_mf)
    scale = np.abs(flat_mf).max()
    np.testing.assert_allclose(flat_an, flat_mf, rtol=1e-4, atol=1e-5 * scale)
    # The encoder gradient of the MC estimate differs (the comparison has power).
    assert np.abs(flat_mc - flat_mf).max() > 1e-3 * scale


@pytest.mark.parametrize(
    "num_keys",
    [2_000, pytest.param(20_000, marks=pytest.mark.slow)],
)
def test_mc_kl_loss_is_unbiased_for_the_analytic_one(mlp_setup, images, num_keys):
    _, _, svi_an, svi_mc, params = mlp_setup
    x, y = images[0][:B], images[1][:B]

    def both(key):
        return (
            ScaledLoss(Trace_ELBO(), svi_an.loss.factor).loss(
                key, params, svi_an.model, svi_an.guide, x, y
            ),
            ScaledLoss(Trace_ELBO(), svi_mc.loss.factor).loss(
                key, params, svi_mc.model, svi_mc.guide, x, y
            ),
        )

    keys = jax.random.split(jax.random.PRNGKey(11), num_keys)
    loss_an, loss_mc = (np.asarray(a, np.float64) for a in jax.jit(jax.vmap(both))(keys))
    # Paired by key: the difference -(1/B) sum_i [log p(z_i) - log q(z_i) + KL_i] has mean 0.
    diff = loss_mc - loss_an
    se_diff = diff.std() / math.sqrt(num_keys)
    assert diff.std() > 0
    assert abs(diff.mean()) < 5 * se_diff, (diff.mean(), se_diff)
    # The two averages agree within their Monte Carlo errors.
    se = math.hypot(loss_an.std(), loss_mc.std()) / math.sqrt(num_keys)
    assert abs(loss_mc.mean() - loss_an.mean()) < 5 * se


# ============================================================================ importance-weighted bound


def test_importance_weighted_bound_log_mean_exp(rng):
    row = rng.normal(scale=50.0, size=(1, 9)) - 500.0
    np.testing.assert_allclose(
        np.asarray(metrics.importance_weighted_bound(jnp.asarray(row))), row[0], rtol=1e-6
    )
    const = np.full((17, 5), -123.25)
    np.testing.assert_allclose(
        np.asarray(metrics.importance_weighted_bound(jnp.asarray(const))), -123.25, rtol=1e-6
    )
    # Stable log-mean-exp at log-weights around -1e4 (exp underflows in float32).
    w = rng.normal(scale=20.0, size=(100, 6)) - 1e4
    expected = logsumexp(w, axis=0) - math.log(100)
    got = np.asarray(metrics.importance_weighted_bound(jnp.asarray(w, jnp.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Between the mean (Jensen) and the max of the weights.
    assert np.all(got >= w.mean(0) - 1e-2) and np.all(got <= w.max(0) + 1e-2)


def evaluate(family, params, x, y, seed, k):
    out = jax.jit(family.evaluate, static_argnums=4)(params, x, y, jax.random.PRNGKey(seed), k)
    return {name: float(v) for name, v in out.items()}


def test_iw_bound_with_one_sample_is_the_elbo(trained_mlp, images):
    family, params = trained_mlp
    x, y = images[0][:64], images[1][:64]
    out = evaluate(family, params, x, y, 0, 1)
    np.testing.assert_allclose(out["nll"], -out["elbo"], rtol=1e-6)


def test_iw_bound_tightens_from_one_to_hundred_samples(trained_mlp, images):
    family, params = trained_mlp
    x, y = images[0][:128], images[1][:128]
    one, hundred = evaluate(family, params, x, y, 0, 1), evaluate(family, params, x, y, 1, 100)
    for out in (one, hundred):
        # On the same draws log-mean-exp >= mean: the IW NLL never exceeds -ELBO.
        assert out["nll"] <= -out["elbo"] + 1e-4 * abs(out["elbo"])
        # The Monte Carlo ELBO estimates recon - KL (analytic KL).
        assert np.isfinite(out["nll"]) and out["kl"] > 0
    np.testing.assert_allclose(hundred["elbo"], hundred["recon"] - hundred["kl"], rtol=2e-3)
    # Expected gap here ~1.5 nats; one draw's NLL varies by ~0.15 (K=1) and ~0.04 (K=100).
    assert hundred["nll"] < one["nll"] - 0.5, (one, hundred)
    assert hundred["bits_per_dim"] == pytest.approx(hundred["nll"] / (D * math.log(2)), rel=1e-6)


@pytest.mark.slow
def test_iw_bound_monotone_in_k(trained_mlp, images):
    family, params = trained_mlp
    x, y = images
    fn = jax.jit(family.evaluate, static_argnums=4)
    nll = {
        k: np.array([float(fn(params, x, y, jax.random.PRNGKey(s), k)["nll"]) for s in range(8)])
        for k in (1, 10, 100)
    }
    means = {k: v.mean() for k, v in nll.items()}
    se = {k: v.std(ddof=1) / math.sqrt(len(v)) for k, v in nll.items()}
    for small, large in ((1, 10), (10, 100)):
        assert means[large] < means[small] - 4 * math.hypot(se[small], se[large]), (means, se)


# ============================================================================ chunked evaluation


@pytest.mark.parametrize("chunk", [1, 5, 37])
def test_chunked_map_matches_direct_computation(rng, chunk):
    n = 37
    x = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
    key = jax.random.PRNGKey(9)

    def fn(xc, kc):
        noise = jax.random.normal(kc, (xc.shape[0],))
        return {"sum": jnp.sum(xc**2, axis=-1), "row": 2.0 * xc, "noise": noise}

    out = batching.chunked_map(fn, x, key, chunk)
    assert out["sum"].shape == (n,) and out["row"].shape == (n, 3)
    np.testing.assert_allclose(np.asarray(out["sum"]), np.sum(np.asarray(x) ** 2, -1), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["row"]), 2.0 * np.asarray(x))
    # Chunk c draws with the c-th of split(key, num_chunks); padding rows are dropped.
    num_chunks = -(-n // chunk)
    keys = jax.random.split(key, num_chunks)
    noise = np.concatenate([np.asarray(jax.random.normal(k, (chunk,))) for k in keys])[:n]
    np.testing.assert_allclose(np.asarray(out["noise"]), noise, rtol=1e-6)


def reference_scores(params, x, eps):
    """Per-image IW bound, ELBO, recon, KL (numpy) for draws z = loc + scale * eps, eps (K, n, L)."""
    loc, scale = np_encoder(params["encoder$params"], x)
    z = loc + scale * eps
    log_px = np_bernoulli_log_prob(x[None], np_decoder(params["decoder$params"], z))
    log_w = log_px + stats.norm.logpdf(z).sum(-1) - stats.norm.logpdf(z, loc, scale).sum(-1)
    bound = logsumexp(log_w, axis=0) - math.log(eps.shape[0])
    return bound, log_w.mean(0), log_px.mean(0), np_kl_standard(loc, scale), loc


def test_evaluate_in_uneven_chunks_against_numpy(trained_mlp, images, monkeypatch):
    family, params = trained_mlp
    n, k, chunk = 37, 4, 5  # 8 chunks, the last holds 2 images and 3 padding rows
    x, y = images[0][:n], images[1][:n]
    key = jax.random.PRNGKey(21)
    monkeypatch.setattr(family, "eval_decodes", k * chunk)
    got = evaluate(family, params, x, y, 21, k)
    # Reproduce the draws: chunk c uses eps ~ N(0, I) of shape (K, chunk, L) from split(key)[c].
    keys = jax.random.split(key, -(-n // chunk))
    eps = np.concatenate(
        [np.asarray(jax.random.normal(kc, (k, chunk, LATENT)), np.float64) for kc in keys], axis=1
    )[:, :n]
    bound, elbo, recon, kl, codes = reference_scores(params, x, eps)
    np.testing.assert_allclose(got["nll"], -bound.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["elbo"], elbo.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["recon"], recon.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["kl"], kl.mean(), rtol=1e-5)
    assert got["active_units"] == np.sum(np.var(codes, axis=0) > 0.01)
    np.testing.assert_allclose(got["bits_per_dim"], -bound.mean() / (D * np.log(2)), rtol=1e-5)


# ============================================================================ KL warm-up


@pytest.mark.parametrize("warmup", [1, 4, 7])
def test_beta_warmup_is_linear_and_reaches_one(warmup):
    family = mlp_family(beta_warmup_epochs=warmup)
    betas = np.array([family.epoch_kwargs(e)["beta"] for e in range(1, warmup + 5)])
    np.testing.assert_allclose(betas[:warmup], np.arange(1, warmup + 1) / warmup, rtol=1e-12)
    assert betas[warmup - 1] == 1.0 and np.all(betas[warmup:] == 1.0)
    assert np.all(np.diff(betas[:warmup]) > 0)
    kwargs = engine.epoch_kwargs(family, 1)
    assert kwargs["beta"].dtype == jnp.float32 and float(kwargs["beta"]) == pytest.approx(
        1 / warmup
    )


def test_no_warmup_means_beta_one():
    family = mlp_family(beta_warmup_epochs=0)
    assert all(family.epoch_kwargs(e)["beta"] == 1.0 for e in (1, 2, 10, 1000))


@pytest.mark.parametrize("beta", [0.05, 0.3, 0.75])
def test_beta_scales_only_the_kl_term(mlp_setup, images, beta):
    analytic, mc, svi_an, svi_mc, params = mlp_setup
    x, y = images[0][:B], images[1][:B]
    key = jax.random.PRNGKey(13)

    def loss(svi, b):
        return float(
            ScaledLoss(Trace_ELBO(), svi.loss.factor).loss(
                key, params, svi.model, svi.guide, x, y, beta=jnp.float32(b)
            )
        )

    expected, z, loc, scale = reference_loss(analytic, params, key, x, beta=beta)
    np.testing.assert_allclose(loss(svi_an, beta), expected, rtol=2e-5)
    kl = np_kl_standard(loc, scale)
    # loss(beta) = -(1/B) sum_i [log p(x_i | z_i) - beta KL_i]: only the KL term moves,
    # loss(beta) - loss(1) = (beta - 1) mean_i KL_i.
    np.testing.assert_allclose(
        loss(svi_an, beta) - loss(svi_an, 1.0), (beta - 1) * kl.mean(), rtol=1e-3, atol=2e-3
    )
    # MC KL: the same draw, the sampled log q(z) - log p(z) is weighted by beta.
    log_ratio = stats.norm.logpdf(z, loc, scale).sum(-1) - stats.norm.logpdf(z).sum(-1)
    np.testing.assert_allclose(
        loss(svi_mc, beta) - loss(svi_mc, 1.0), (beta - 1) * log_ratio.mean(), rtol=1e-3, atol=2e-3
    )


# ============================================================================ IWAE training objective


def test_iwae_training_loss_is_the_per_datum_iw_bound(mlp_setup, images):
    x, y = images[0][:B], images[1][:B]
    k = 5
    params = mlp_setup[-1]  # the same modules, so the same parameter names
    family = mlp_family(iw_samples=k)
    svi = engine.make_svi(family, optax.adam(1e-3), 1)
    key = jax.random.PRNGKey(3)
    loss = float(jax.jit(lambda p: svi.loss.loss(key, p, svi.model, svi.guide, x, y))(params))
    # RenyiELBO.loss: (plate_key, key) = split(key); particle keys = split(key, K); each
    # particle's guide seed is split(particle key)[1].
    _, particles = jax.random.split(key)
    z = np.stack([guide_draw(family, params, pk, x) for pk in jax.random.split(particles, k)])
    loc, scale = np_encoder(params["encoder$params"], x)
    log_px = np_bernoulli_log_prob(x[None], np_decoder(params["decoder$params"], z))
    log_w = log_px + stats.norm.logpdf(z).sum(-1) - stats.norm.logpdf(z, loc, scale).sum(-1)
    iw_bound = logsumexp(log_w, axis=0) - math.log(k)
    np.testing.assert_allclose(loss, -iw_bound.mean(), rtol=1e-4)


def test_conv_with_several_particles_is_refused_up_front():
    from bslrun.config import Config, ImageDataConfig
    from bslrun.errors import ConfigError
    from bslrun.registry import validate

    cfg = Config(
        data=ImageDataConfig(),
        model=VaeConfig(architecture=Architecture.conv),
        trainer=TrainerConfig(num_particles=2),
    )
    try:
        validate(cfg)
    except ConfigError as error:
        assert "num_particles" in str(error)
        return
    raise AssertionError("model.architecture=conv with trainer.num_particles=2 was accepted")


# ============================================================================ batch norm (conv)

CONV_N, CONV_BATCH = 48, 16


@pytest.fixture(scope="module")
def conv_fit():
    x, y = binary_images(1, CONV_N)
    spec = image_spec(CONV_N)
    family = VaeFamily(VaeConfig(architecture=Architecture.conv, latent_dim=2), spec, CONV_N)
    data = Dataset(train=Split(x, y), val=None, test=Split(x, y), spec=spec)
    result = engine.fit(
        family,
        data,
        OptimConfig(lr=1e-3, schedule=Schedule.constant),
        TrainerConfig(epochs=2, batch_size=CONV_BATCH, progress=False),
        jax.random.PRNGKey(0),
        jax.random.PRNGKey(1),
        1,
    )
    return family, result.params, x


def test_conv_fit_moves_batch_norm_running_averages(conv_fit):
    family, variables, _ = conv_fit
    assert {"encoder$params", "decoder$params", "encoder$state", "decoder$state"} <= set(variables)
    for name, layers in (("encoder", 4), ("decoder", 3)):
        stats_ = variables[f"{name}$state"]["batch_stats"]
        assert sorted(stats_) == [f"BatchNorm_{i}" for i in range(layers)]
        for layer in stats_.values():
            mean, var = np.asarray(layer["mean"]), np.asarray(layer["var"])
            assert np.all(np.isfinite(mean)) and np.all(var > 0)
            # Initial running mean 0 and variance 1; 6 steps with momentum 0.99 move both.
            assert np.abs(mean).max() > 1e-3
            assert np.abs(var - 1.0).max() > 1e-3


def apply_fn(module, train: bool):
    """A jitted module.apply in evaluation mode or in training mode (batch statistics)."""
    if train:
        return jax.jit(lambda v, a: module.apply(v, a, train=True, mutable=["batch_stats"]))
    return jax.jit(lambda v, a: module.apply(v, a, train=False))


def test_conv_batch_norm_momentum_update(conv_fit):
    """One training-mode pass: running mean <- 0.99 mean + 0.01 batch mean (Keras momentum)."""
    family, variables, x = conv_fit
    params = variables["encoder$params"]
    state = variables["encoder$state"]
    xb = jnp.asarray(x[:8])
    _, new = apply_fn(family.encoder, train=True)({"params": params, **state}, xb)
    conv = params["Conv_0"]
    pre = (
        jax.lax.conv_general_dilated(
            xb.reshape(-1, *IMAGE_SHAPE),
            conv["kernel"],
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + conv["bias"]
    )
    pre = np.asarray(pre, np.float64)
    old = state["batch_stats"]["BatchNorm_0"]
    got = new["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(
        np.asarray(got["mean"]),
        0.99 * np.asarray(old["mean"]) + 0.01 * pre.mean((0, 1, 2)),
        rtol=1e-4,
        atol=1e-6,
    )
    # Flax keeps the biased batch variance (mean of squares minus squared mean).
    np.testing.assert_allclose(
        np.asarray(got["var"]),
        0.99 * np.asarray(old["var"]) + 0.01 * pre.var((0, 1, 2)),
        rtol=1e-4,
        atol=1e-6,
    )


def test_conv_evaluation_uses_running_averages(conv_fit):
    family, variables, x = conv_fit
    enc = {"params": variables["encoder$params"], **variables["encoder$state"]}
    dec = {"params": variables["decoder$params"], **variables["decoder$state"]}
    batch, alone = jnp.asarray(x[:8]), jnp.asarray(x[:1])
    z = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), jnp.float32)
    encode, decode = apply_fn(family.encoder, False), apply_fn(family.decoder, False)
    # Evaluation mode: one image's code does not depend on the other images.
    loc_b, scale_b = encode(enc, batch)
    loc_1, scale_1 = encode(enc, alone)
    np.testing.assert_allclose(np.asarray(loc_1[0]), np.asarray(loc_b[0]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scale_1[0]), np.asarray(scale_b[0]), rtol=1e-4, atol=1e-6)
    out_b, out_1 = decode(dec, z), decode(dec, z[:1])
    np.testing.assert_allclose(np.asarray(out_1[0]), np.asarray(out_b[0]), rtol=1e-4, atol=1e-4)
    # The family's evaluation path is that mode.
    loc_f, _ = jax.jit(lambda v, a: family._apply("encoder", v, a))(variables, alone)
    np.testing.assert_allclose(np.asarray(loc_f), np.asarray(loc_1), rtol=1e-6, atol=1e-6)
    # Training mode normalises with batch statistics: the same image codes differently.
    encode_t, decode_t = apply_fn(family.encoder, True), apply_fn(family.decoder, True)
    (loc_tb, _), _ = encode_t(enc, batch)
    (loc_t1, _), _ = encode_t(enc, alone)
    assert np.abs(np.asarray(loc_tb[0]) - np.asarray(loc_t1[0])).max() > 1e-3
    out_tb, _ = decode_t(dec, z)
    out_t1, _ = decode_t(dec, z[:1])
    assert np.abs(np.asarray(out_tb[0]) - np.asarray(out_t1[0])).max() > 1e-3


# ============================================================================ active units, bits/dim


def test_active_units_against_numpy(rng):
    stds = np.array([0.0, 0.05, 0.08, 0.2, 1.0, 3.0])  # variances 0, .0025, .0064, .04, 1, 9
    codes = rng.normal(size=(2000, 6)) * stds + rng.normal(size=6)
    for threshold in (0.01, 0.001, 0.5, 100.0):
        expected = int(np.sum(np.var(codes, axis=0) > threshold))
        got = int(metrics.active_units(jnp.asarray(codes, jnp.float32), threshold))
        assert got == expected
    assert int(metrics.active_units(jnp.asarray(codes, jnp.float32))) == 3
    assert int(metrics.active_units(jnp.ones((5, 4)))) == 0


def test_bits_per_dim_against_numpy(rng):
    assert float(metrics.bits_per_dim(D * math.log(2.0), D)) == pytest.approx(1.0, rel=1e-6)
    nll = rng.uniform(50, 300, size=5)
    got = np.asarray(metrics.bits_per_dim(jnp.asarray(nll, jnp.float32), D))
    np.testing.assert_allclose(got, nll / D / np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(got, np.log2(np.exp(nll / D)), rtol=1e-5)


def test_the_latent_map_spans_the_codes_and_is_drawn_on_latent_axes(conv_fit, tmp_path):
    from bslrun.models.vae import MANIFOLD_SIDE, latent_grid

    # Codes wider than the prior: a grid at its 5-95% quantiles (+-1.64) leaves out 59%.
    codes = 2.5 * jax.random.normal(jax.random.PRNGKey(3), (4000, 2)) + jnp.array([1.0, -2.0])
    z0, z1 = latent_grid(codes, MANIFOLD_SIDE)
    assert z0.shape == z1.shape == (MANIFOLD_SIDE,)
    inside = (codes[:, 0] >= z0[0]) & (codes[:, 0] <= z0[-1])
    inside &= (codes[:, 1] >= z1[0]) & (codes[:, 1] <= z1[-1])
    assert 0.955 <= float(inside.mean()) <= 0.97  # 0.98 per axis
    np.testing.assert_allclose(np.diff(z0), (z0[-1] - z0[0]) / (MANIFOLD_SIDE - 1), rtol=1e-4)
    family, variables, x = conv_fit
    arrays = jax.device_get(
        family.artifacts(variables, x, np.zeros(len(x)), jax.random.PRNGKey(0), 1)
    )
    assert arrays["manifold"].shape[0] == MANIFOLD_SIDE**2
    expected = latent_grid(arrays["latent_codes"], MANIFOLD_SIDE)
    np.testing.assert_allclose(arrays["manifold_z0"], expected[0], rtol=1e-6)
    paths = family.plot(arrays, tmp_path)
    assert tmp_path / "manifold.png" in paths and (tmp_path / "manifold.png").stat().st_size > 0
