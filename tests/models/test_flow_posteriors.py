"""Flows as variational posteriors: the IAF step (bslrun.flows.inverse_autoregressive),
the BNN's posterior=iaf / iaf_spline (bslrun.models.guides) and the VAE's
model.posterior_flow.

References are independent of the code under test: log-determinants come from
jax.jacobian of the sampling map, the exact posterior of conjugate linear regression
from its closed form, and the "one conditioner pass per step" claim from counting the
matrix products and loops XLA compiles.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from conftest import make_dataset, make_spec, perturb
from numpyro import handlers
from scipy import stats
from scipy.special import logsumexp
from test_maths import ALPHA, SIGMA, exact_posterior, train
from test_vae import (
    LATENT,
    binary_images,
    guide_draw,
    image_dataset,
    image_spec,
    mlp_family,
    np_bernoulli_log_prob,
    np_decoder,
    np_encoder,
)

from bslrun.config import (
    Architecture,
    BnnConfig,
    KLEstimate,
    OptimConfig,
    Posterior,
    Schedule,
    TrainerConfig,
    VaeConfig,
)
from bslrun.errors import ConfigError
from bslrun.flows.inverse_autoregressive import InverseAutoregressive, outputs_per_coordinate
from bslrun.flows.made import MaskedMLP
from bslrun.flows.spline import MaskedSplineAutoregressive
from bslrun.inference import engine
from bslrun.models import guides
from bslrun.models.bnn import BnnFamily
from bslrun.models.vae import VaeFamily

FLOW_KINDS = ("iaf", "iaf_spline")


def float64(tree):
    """A pytree's arrays in float64 (call inside ``jax.enable_x64(True)``): the references'
    Jacobians of steep spline segments lose ~1e-3 in float32."""
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)


def log_abs_det_by_jacobian(fn, points, *extra):
    """log|det d fn(p, *e) / dp| per row of points (n, D), extra rows (n, ...) or None,
    in float64."""
    with jax.enable_x64(True):
        points, extra = float64(points), float64(extra)
        axes = (0, *(None if e is None else 0 for e in extra))
        jac = jax.jit(jax.vmap(jax.jacobian(fn), in_axes=axes))(points, *extra)
        return np.linalg.slogdet(np.asarray(jac))[1]


# ============================================================================ the IAF step

DIM, CONTEXT = 5, 3


def random_step(bins, key, context=None, order=None):
    """An IAF step with a random (non-zero) conditioner."""
    made = MaskedMLP(DIM, (12, 12), outputs_per_coordinate(bins), order)
    params = made.init(key, jnp.zeros(DIM), None if context is None else jnp.zeros(CONTEXT))
    return InverseAutoregressive(made, perturb(params, key, 0.2), bins, 3.0, context)


# Spline with a context: see the next test; affine without one: the BNN tests below.
@pytest.mark.parametrize("bins, with_context", [(0, True), (4, False)])
def test_iaf_step_inverse_and_log_det(bins, with_context):
    keys = jax.random.split(jax.random.PRNGKey(bins), 3)
    x = 1.5 * jax.random.normal(keys[0], (7, DIM))  # some beyond the tail bound 3
    ctx = jax.random.normal(keys[1], (7, CONTEXT)) if with_context else None
    step = random_step(bins, keys[2], ctx, order=(3, 0, 4, 1, 2))

    @jax.jit
    def run(step, x):
        y, log_tau = step.call_with_intermediates(x)
        plain = step.log_abs_det_jacobian(x, y)
        return y, step.inv(y), step.log_abs_det_jacobian(x, y, log_tau), plain

    y, x_back, log_det, plain = run(step, x)
    np.testing.assert_allclose(x_back, x, atol=1e-4)  # the sequential inverse
    np.testing.assert_allclose(log_det, plain, rtol=1e-6)

    def one(p, c):  # the map of one point, with its own context
        params = float64(step.params)
        return InverseAutoregressive(step.made, params, bins, 3.0, c)(p)

    expected = log_abs_det_by_jacobian(one, x, ctx)
    np.testing.assert_allclose(log_det, expected, rtol=1e-5, atol=1e-4)
    assert np.abs(np.asarray(y - x)).max() > 0.1  # not the identity


def test_spline_step_is_the_masked_spline_layer_inverted():
    """The same conditioner gives MaskedSplineAutoregressive(...).inv, value and log-det."""
    key = jax.random.PRNGKey(3)
    ctx = jax.random.normal(key, (6, CONTEXT))
    step = random_step(4, key, ctx)
    layer = MaskedSplineAutoregressive(step.made, step.params, 4, 3.0, ctx).inv
    x = 1.5 * jax.random.normal(jax.random.PRNGKey(4), (6, DIM))
    y = step(x)
    np.testing.assert_allclose(y, layer(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        step.log_abs_det_jacobian(x, y), layer.log_abs_det_jacobian(x, y), rtol=1e-5, atol=1e-5
    )


# ============================================================================ BNN posteriors

IN_DIM, N_TRAIN = 3, 32


def bnn(posterior, hidden=(4,), steps=2, flow_hidden=(16,), **kw):
    spec = make_spec(IN_DIM, N_TRAIN)
    cfg = BnnConfig(
        hidden=list(hidden),
        posterior=Posterior(posterior),
        init_scale=0.05,
        flow_steps=steps,
        flow_hidden=list(flow_hidden),
        **kw,
    )
    return BnnFamily(cfg, spec, N_TRAIN)


def initial_params(family, seed=0):
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(8, IN_DIM)), jnp.float32)
    y = jnp.sum(x, axis=1)
    svi = engine.make_svi(family, optax.adam(1e-3), 1)
    state = jax.jit(svi.init)(jax.random.PRNGKey(seed), x, y)
    return svi, svi.get_params(state), x, y


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_flow_posterior_starts_as_the_mean_field_one(kind):
    family = bnn(kind)
    _, params, _, _ = initial_params(family)
    q = family.posterior_distribution(params)
    key = jax.random.PRNGKey(1)
    w, log_q = guides.sample_and_log_prob(q, key, (16,))
    mean_field = dist.Normal(params["w_loc"], params["w_scale"]).to_event(1)
    np.testing.assert_allclose(params["w_scale"], 0.05, rtol=1e-6)
    # T is the identity: the same key draws the same weights, with the same density.
    np.testing.assert_allclose(w, mean_field.sample(key, (16,)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(log_q, mean_field.log_prob(w), rtol=1e-6)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_flow_log_q_is_the_change_of_variables(kind):
    """log q(w) from intermediates = log N(eps) - log|det dw/deps| by jax.jacobian."""
    family = bnn(kind, hidden=(2,), steps=2)  # D = 3 * 2 + 2 + 2 + 1 = 11
    _, params, _, _ = initial_params(family)
    for k in range(family.flow.steps):
        params[f"w_flow_{k}"] = perturb(params[f"w_flow_{k}"], jax.random.PRNGKey(10 + k))
    params["w_scale"] = jnp.linspace(0.2, 1.5, family.num_weights)

    @jax.jit
    def run(params):
        q = family.posterior_distribution(params)
        w, intermediates = q.sample_with_intermediates(jax.random.PRNGKey(2), (5,))
        return w, intermediates[0][0], q.log_prob(w, intermediates)

    w, eps, log_q = run(params)

    def sample_map(e):
        for transform in family.posterior_distribution(float64(params)).transforms:
            e = transform(e)
        return e

    expected = stats.norm.logpdf(np.asarray(eps, np.float64)).sum(-1)
    expected -= log_abs_det_by_jacobian(sample_map, eps)
    np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-4)
    with jax.enable_x64(True):
        np.testing.assert_allclose(jax.vmap(sample_map)(float64(eps)), w, rtol=1e-5, atol=1e-5)
    mean_field = dist.Normal(params["w_loc"], params["w_scale"]).to_event(1).log_prob(w)
    assert np.abs(expected - mean_field).max() > 0.1  # the flow is not the identity


def hlo_counts(fn, *args):
    """(matrix products, while loops) in the compiled program of fn(*args)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    count = lambda op: sum(line.count(f" {op}(") for line in text.splitlines())  # noqa: E731
    return count("dot"), count("while")


def programs(family):
    """Compiled-size probes: the training loss, its gradient, and the test evaluation."""
    svi, params, x, y = initial_params(family)
    key = jax.random.PRNGKey(3)

    def loss(p):
        return svi.loss.loss(key, p, svi.model, svi.guide, x, y)

    def evaluate(p):
        return family.evaluate(p, x, y, key, 10)

    return {
        name: hlo_counts(fn, params)
        for name, fn in (("loss", loss), ("grad", jax.grad(loss)), ("eval", evaluate))
    }


@pytest.fixture(scope="module")
def mean_field_programs():
    return programs(bnn("mean_field", hidden=(8,)))


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_flow_posterior_costs_one_made_pass_per_step(kind, mean_field_programs):
    """The ELBO and the evaluation run each step's MADE once: log q reuses the sampling
    pass, and no sequential (D-pass) inverse appears (it would add a loop)."""
    steps, flow_hidden = 3, (16, 16)
    base = mean_field_programs
    flow = programs(bnn(kind, hidden=(8,), steps=steps, flow_hidden=flow_hidden))
    per_pass = len(flow_hidden) + 1
    for name in ("loss", "eval"):
        assert flow[name][0] == base[name][0] + steps * per_pass, (name, base, flow)
    for name in ("loss", "grad", "eval"):
        assert flow[name][1] == base[name][1], (name, base, flow)  # no extra loop
    # Backward: at most two products per layer (weights and inputs) on top of the forward.
    assert flow["grad"][0] <= base["grad"][0] + 3 * steps * per_pass, (base, flow)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_flow_posterior_refused_for_large_networks(kind):
    weights = (IN_DIM * 150 + 150) + (150 * 150 + 150) + (150 + 1)  # 23401
    with pytest.raises(ConfigError, match=rf"{kind} .* all {weights} weights .*20000.*mean_field"):
        bnn(kind, hidden=(150, 150))
    assert bnn("mean_field", hidden=(150, 150)).num_weights == weights


def test_flow_posterior_refused_when_its_made_would_be_huge():
    # Bayesian linear regression has 4 weights, but a 2-step spline MADE of 600,000
    # hidden units over them has 115 million parameters.
    with pytest.raises(ConfigError, match=r"million flow parameters .* model.flow_hidden"):
        bnn("iaf_spline", hidden=(), flow_hidden=(600_000,))
    assert bnn("iaf_spline", hidden=(), flow_hidden=(16,)).num_weights == IN_DIM + 1


# ----------------------------------------------------------------- conjugate regression

CONJ_N = 100


def correlated_regression(seed=0):
    """x with correlation 0.95 between its two columns: a strongly correlated posterior."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(CONJ_N, 2))
    x = np.stack([z[:, 0], 0.95 * z[:, 0] + math.sqrt(1 - 0.95**2) * z[:, 1]], 1)
    y = x @ np.array([1.0, -0.5]) + 0.3 + SIGMA * rng.normal(size=CONJ_N)
    return make_dataset(x.astype(np.float32), y.astype(np.float32))


def kl_to_exact(q, mu, cov, num_draws=20000):
    """KL(q || N(mu, cov)) = E_q[log q(w) - log N(w; mu, cov)], Monte Carlo; and its s.e."""
    draw = jax.jit(lambda key: guides.sample_and_log_prob(q, key, (num_draws,)))
    w, log_q = (np.asarray(a, np.float64) for a in draw(jax.random.PRNGKey(5)))
    diff = log_q - stats.multivariate_normal(mu, cov).logpdf(w)
    return diff.mean(), diff.std() / math.sqrt(num_draws)


def conjugate_fit(kind, epochs, monkeypatch):
    data = correlated_regression()
    cfg = BnnConfig(
        hidden=[],
        posterior=Posterior(kind),
        prior_scale=ALPHA,
        noise_scale=SIGMA,
        init_scale=0.1,
        flow_hidden=[32],
    )
    family = BnnFamily(cfg, data.spec, n_train=CONJ_N)
    monkeypatch.setattr("test_maths.N", CONJ_N)  # exact_posterior checks shapes against N
    mu, cov, precision = exact_posterior(family, data)
    q = train(family, data, epochs=epochs, batch_size=CONJ_N, particles=8, lr=0.01)
    # The best any mean-field Gaussian can do: KL = (sum_j log L_jj - log det L) / 2.
    mean_field_best = 0.5 * (np.sum(np.log(np.diag(precision))) - np.linalg.slogdet(precision)[1])
    return kl_to_exact(q, mu, cov), mean_field_best


def test_iaf_beats_mean_field_on_the_conjugate_posterior(monkeypatch):
    """The best mean-field Gaussian is 1.21 nats from the exact posterior; IAF gets to ~0.04
    in 300 epochs (~0.01 in 600): well within 10% of it."""
    (kl, se), mean_field_best = conjugate_fit("iaf", 300, monkeypatch)
    assert mean_field_best > 1.0
    assert kl < 0.1 * mean_field_best, (kl, se, mean_field_best)


@pytest.mark.slow
def test_iaf_spline_beats_mean_field_on_the_conjugate_posterior(monkeypatch):
    (kl, se), mean_field_best = conjugate_fit("iaf_spline", 1500, monkeypatch)
    assert kl < 0.1 * mean_field_best, (kl, se, mean_field_best)


@pytest.mark.parametrize(
    "kind",
    # posterior=iaf also goes through engine.fit in the conjugate check above.
    [pytest.param("iaf", marks=pytest.mark.slow), "iaf_spline"],
)
def test_flow_posterior_trains_end_to_end(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, IN_DIM)).astype(np.float32)
    y = (np.sin(x[:, 0]) + 0.1 * rng.normal(size=48)).astype(np.float32)
    data = make_dataset(x[:32], y[:32], val=(x[32:], y[32:]))
    family = bnn(kind, hidden=(8,))
    result = engine.fit(
        family,
        data,
        OptimConfig(lr=1e-2, schedule=Schedule.constant),
        TrainerConfig(epochs=5, batch_size=16, progress=False),
        jax.random.PRNGKey(0),
        jax.random.PRNGKey(1),
        8,
    )
    # Every epoch's training loss and validation scores (family.evaluate) are finite.
    assert all(math.isfinite(v) for row in result.history for v in row.values())
    assert "val_elbo" in result.history[-1] and "val_nll" in result.history[-1]
    # The flow moved off the identity (its zero output layer got gradients).
    out = result.params["w_flow_0"]["params"]["out"]["kernel"]
    assert np.abs(np.asarray(out)).max() > 0


# ============================================================================ VAE posteriors

B = 16


def flow_vae(steps=1, **kw):
    return mlp_family(posterior_flow=steps, posterior_flow_hidden=[16], **kw)


@pytest.fixture(scope="module")
def vae_setup():
    """Initial parameters of a 2-step flow VAE (encoder/decoder as the Gaussian one's)."""
    x, y = binary_images(0, 64)
    family = flow_vae(steps=2)
    svi = engine.make_svi(family, optax.adam(1e-3), 1)
    params = svi.get_params(jax.jit(svi.init)(jax.random.PRNGKey(0), x[:B], y[:B]))
    return family, svi, params, x[:B], y[:B]


def perturbed_flow(params, steps):
    out = dict(params)
    for k in range(steps):
        out[f"iaf_{k}"] = perturb(params[f"iaf_{k}"], jax.random.PRNGKey(20 + k), 0.2)
    return out


def guide_site(family, params, key, x):
    """The guide's traced z site under the seed Trace_ELBO / RenyiELBO derive from key."""
    _, guide_seed = jax.random.split(key)
    guide = handlers.substitute(handlers.seed(family.guide, guide_seed), data=params)
    return handlers.trace(guide).get_trace(x, None)["z"]


def test_vae_flow_analytic_kl_is_switched_off(vae_setup):
    assert mlp_family(kl=KLEstimate.analytic).analytic_kl
    family, _, params, x, _ = vae_setup
    assert KLEstimate(family.cfg.kl) is KLEstimate.analytic and not family.analytic_kl
    guide = handlers.substitute(handlers.seed(family.guide, 0), data=params)
    trace = handlers.trace(guide).get_trace(x, None)
    # No closed-form factor; the z site keeps the flow's intermediates for log q.
    assert "analytic_kl" not in trace and trace["z"]["intermediates"]


def test_vae_flow_at_init_is_the_gaussian_encoder(vae_setup):
    family, svi, params, x, y = vae_setup
    gaussian = mlp_family()
    key = jax.random.PRNGKey(4)
    z = guide_draw(family, params, key, x)
    np.testing.assert_allclose(z, guide_draw(gaussian, params, key, x), rtol=1e-6, atol=1e-6)
    # log q(z | x) of the guide's site (from intermediates) is the Gaussian encoder's.
    site = guide_site(family, params, key, x)
    loc, scale = np_encoder(params["encoder$params"], x)
    expected = stats.norm.logpdf(np.asarray(site["value"], np.float64), loc, scale).sum(-1)
    got = site["fn"].log_prob(site["value"], site["intermediates"])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Evaluation: the same bounds as the Gaussian family's on the same draws.
    flow_scores = jax.jit(family.evaluate, static_argnums=4)(params, x, y, key, 8)
    plain = {k: v for k, v in params.items() if not k.startswith("iaf_")}
    plain_scores = jax.jit(gaussian.evaluate, static_argnums=4)(plain, x, y, key, 8)
    for name in ("nll", "elbo", "recon"):
        np.testing.assert_allclose(flow_scores[name], plain_scores[name], rtol=1e-6)


def reference_flow(family, params, z0, loc, scale):
    """z = T_x(z0) and log q(z | x) = log N(z0; loc, scale^2) - log|det dz/dz0|, the
    determinant by jax.jacobian per image; z0 (K, c, L), loc and scale (c, L)."""
    flow_params = [params[f"iaf_{k}"] for k in range(len(family.flow))]

    def sample_map(a, m, s):  # one image: its own context (m, log s)
        for step in family._flow_steps(m, s, float64(flow_params)):
            a = step(a)
        return a

    rows = [np.broadcast_to(a, z0.shape).reshape(-1, z0.shape[-1]) for a in (z0, loc, scale)]
    log_det = log_abs_det_by_jacobian(sample_map, *rows).reshape(z0.shape[:-1])
    with jax.enable_x64(True):
        z = np.asarray(jax.jit(jax.vmap(sample_map))(*float64(rows))).reshape(z0.shape)
    log_n = stats.norm.logpdf(np.asarray(z0, np.float64), np.asarray(loc), np.asarray(scale))
    return z, log_n.sum(-1) - log_det


def test_vae_flow_log_q_is_the_change_of_variables(vae_setup):
    """Evaluation's log q(z | x) = log N(z0; mu, s^2) - log|det dz/dz0|."""
    family, _, params, x, _ = vae_setup
    params = perturbed_flow(params, 2)
    loc, scale = family._apply("encoder", params, x)
    eps = jax.random.normal(jax.random.PRNGKey(6), (3, *loc.shape))
    z, log_q = family._draw(params, loc, scale, eps)
    expected_z, expected = reference_flow(family, params, loc + scale * eps, loc, scale)
    np.testing.assert_allclose(z, expected_z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-4)
    gaussian = stats.norm.logpdf(np.asarray(loc + scale * eps), loc, scale).sum(-1)
    assert np.abs(expected - gaussian).max() > 0.05  # the flow is not the identity


def test_vae_flow_iw_bound_is_at_least_the_elbo(vae_setup):
    family, _, params, x, y = vae_setup
    params = perturbed_flow(params, 2)
    for k in (1, 20):
        out = jax.jit(family.evaluate, static_argnums=4)(params, x, y, jax.random.PRNGKey(k), k)
        out = {name: float(v) for name, v in out.items()}
        assert all(math.isfinite(v) for v in out.values())
        assert out["nll"] <= -out["elbo"] + 1e-6 * abs(out["elbo"]), out
        # The Monte Carlo KL on the same draws: elbo = recon - kl.
        np.testing.assert_allclose(out["elbo"], out["recon"] - out["kl"], rtol=1e-5)


def test_vae_flow_iwae_objective_uses_the_flow(vae_setup):
    """RenyiELBO's loss is the per-datum IW bound with log q from the flow's log-det."""
    _, _, params, x, y = vae_setup
    k = 4
    family = flow_vae(steps=2, iw_samples=k)
    params = perturbed_flow(params, 2)
    svi = engine.make_svi(family, optax.adam(1e-3), 1)
    key = jax.random.PRNGKey(3)
    loss = float(jax.jit(lambda p: svi.loss.loss(key, p, svi.model, svi.guide, x, y))(params))
    _, particles = jax.random.split(key)  # as in test_vae's IWAE check
    sites = [guide_site(family, params, pk, x) for pk in jax.random.split(particles, k)]
    z0 = np.stack([np.asarray(site["intermediates"][0][0]) for site in sites])  # base draws
    loc, scale = np_encoder(params["encoder$params"], x)
    z, log_q = reference_flow(family, params, z0, loc, scale)
    np.testing.assert_allclose(z, np.stack([site["value"] for site in sites]), atol=1e-5)
    log_px = np_bernoulli_log_prob(x[None], np_decoder(params["decoder$params"], z))
    log_w = log_px + stats.norm.logpdf(z).sum(-1) - log_q
    iw_bound = logsumexp(log_w, axis=0) - math.log(k)
    np.testing.assert_allclose(loss, -iw_bound.mean(), rtol=1e-4)


@pytest.mark.parametrize("architecture", [Architecture.mlp, Architecture.conv])
def test_vae_flow_trains_end_to_end(architecture):
    n = 2 * B
    x, y = binary_images(2, n)
    cfg = VaeConfig(
        architecture=architecture,
        hidden=[32],
        latent_dim=LATENT,
        posterior_flow=2,
        posterior_flow_hidden=[16],
    )
    family = VaeFamily(cfg, image_spec(n), n)
    result = engine.fit(
        family,
        image_dataset(x, y),
        OptimConfig(lr=3e-3, schedule=Schedule.constant),
        TrainerConfig(epochs=1, batch_size=B, progress=False),
        jax.random.PRNGKey(0),
        jax.random.PRNGKey(1),
        1,
    )
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    scores = jax.jit(family.evaluate, static_argnums=4)(
        result.params, x, y, jax.random.PRNGKey(2), 4
    )
    assert all(np.isfinite(float(v)) for v in scores.values()), scores
    assert np.abs(np.asarray(result.params["iaf_1"]["params"]["out"]["kernel"])).max() > 0
    if architecture is Architecture.conv:  # batch-norm state still carried
        assert "encoder$state" in result.params
