"""The flow model family against mathematics: densities in original units integrate
to 1, the image transform's Jacobian matches autodiff, and SVI with an empty guide
recovers a Gaussian's known entropy."""

from __future__ import annotations

import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_dataset, make_spec, perturb
from numpyro.infer import SVI, Trace_ELBO
from numpyro.optim import Adam

from bslrun.config import FlowConfig, OptimConfig, Schedule, TrainerConfig
from bslrun.data.splits import Standardiser
from bslrun.errors import ConfigError
from bslrun.inference import engine
from bslrun.models.flow import FlowFamily, logit_coordinates

KINDS = ["maf", "realnvp", "nsf", "nsf_ar"]
KEY = jax.random.PRNGKey(0)


def family(kind: str, spec, **kw) -> FlowFamily:
    cfg = FlowConfig(flow=kind, depth=2, hidden=[16], bins=6, tail_bound=4.0, **kw)
    return FlowFamily(cfg, spec, 100, key=jax.random.PRNGKey(1))


def initial_params(fam: FlowFamily, x) -> dict:
    """Parameters as SVI.init draws them (what training starts from)."""
    svi = SVI(fam.model, fam.guide, Adam(1e-3), Trace_ELBO())
    return svi.get_params(svi.init(KEY, x, jnp.zeros(len(x), jnp.int32)))


@pytest.mark.parametrize("kind", KINDS)
def test_density_in_original_units_integrates_to_one(kind):
    """x = 2 z + (1, -0.5): the reported density includes the standardiser's Jacobian."""
    spec = replace(
        make_spec(2, 100),
        x_scaler=Standardiser(np.float32([1.0, -0.5]), np.float32([2.0, 0.5])),
    )
    fam = family(kind, spec)
    params = perturb(initial_params(fam, jnp.zeros((4, 2))), jax.random.PRNGKey(2), 0.1)
    ticks_x = np.linspace(-23.0, 25.0, 561)  # +-12 standard units around the mean
    ticks_y = np.linspace(-6.5, 5.5, 561)
    grid = np.stack(np.meshgrid(ticks_x, ticks_y, indexing="ij"), -1).reshape(-1, 2)
    standardised = jnp.asarray(spec.x_scaler.forward(grid))
    log_p = jax.jit(fam.log_prob)(params, standardised, KEY)
    cell = (ticks_x[1] - ticks_x[0]) * (ticks_y[1] - ticks_y[0])
    assert abs(float(jnp.sum(jnp.exp(log_p))) * cell - 1.0) < 0.01


def test_logit_coordinates_jacobian_matches_autodiff():
    v = jnp.asarray([[0.3, 17.0, 128.5, 255.9]])
    y, log_det = logit_coordinates(v, 1e-6)
    slope = jax.vmap(jax.grad(lambda t: logit_coordinates(t[None], 1e-6)[0][0]))(v[0])
    expected = jnp.sum(jnp.log(slope))
    np.testing.assert_allclose(log_det[0], expected, rtol=1e-5)
    assert np.all(np.diff(np.asarray(y[0])) > 0)


def test_image_density_integrates_to_one_over_the_dequantised_levels():
    """One pixel, identity flow: p(v) = N(y(v)) |dy/dv| integrated over [0, 256) is the
    base's mass on the image of the interval, [logit(a), logit(1 - a)]."""
    alpha = 0.05
    v = jnp.linspace(0.0, 256.0, 2_000_001)[:, None]
    y, log_det = logit_coordinates(v, alpha)
    density = np.exp(np.asarray(-0.5 * y[:, 0] ** 2 - 0.5 * math.log(2 * math.pi) + log_det))
    edge = math.log((1 - alpha) / alpha)
    expected = math.erf(edge / math.sqrt(2.0))  # P(|N(0, 1)| < logit(1 - a))
    assert np.trapezoid(density, np.asarray(v[:, 0])) == pytest.approx(expected, abs=1e-4)


def test_image_flow_reports_bits_per_dim_and_samples_images():
    spec = make_spec(4, 100, task="classification", num_classes=10, image_shape=(2, 2, 1))
    fam = family("maf", spec)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 4)) / 255.0, jnp.float32)
    params = initial_params(fam, x)
    scores = fam.evaluate(params, x, None, KEY, 1)
    assert float(scores["bits_per_dim"]) == pytest.approx(
        float(scores["nll"]) / (4 * math.log(2.0)), rel=1e-6
    )
    samples = fam.artifacts(params, x, None, KEY, 5)["samples"]
    assert samples.shape == (5, 4) and np.all((samples >= 0) & (samples <= 1))


def test_maf_fit_reaches_a_gaussians_entropy():
    """Data from N(m, S): a 2-layer MAF can represent it exactly, so the test NLL
    must approach the closed-form entropy 0.5 log det(2 pi e S)."""
    rng = np.random.default_rng(3)
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    mean = np.array([0.5, -1.0])
    x = rng.multivariate_normal(mean, cov, size=6000).astype(np.float32)
    data = make_dataset(x[:4000], np.zeros(4000), test=(x[4000:], np.zeros(2000)))
    entropy = 0.5 * math.log(np.linalg.det(2 * math.pi * math.e * cov))
    inverse_cov = np.linalg.inv(cov)

    def true_log_density(points):
        d = points - mean
        quad = jnp.einsum("ni,ij,nj->n", d, inverse_cov, d)
        return -0.5 * quad - 0.5 * math.log(np.linalg.det(2 * math.pi * cov))

    spec = replace(data.spec, log_density=true_log_density)
    data = replace(data, spec=spec)
    fam = FlowFamily(FlowConfig(flow="maf", depth=2, hidden=[16]), spec, 4000, key=KEY)
    trainer = TrainerConfig(epochs=40, batch_size=128, progress=False)
    result = engine.fit(
        fam,
        data,
        OptimConfig(lr=3e-3, schedule=Schedule.constant),
        trainer,
        KEY,
        jax.random.PRNGKey(1),
        1,
    )
    test = fam.evaluate(result.params, data.test.x, data.test.y, KEY, 1)
    assert float(test["true_entropy"]) == pytest.approx(entropy, abs=0.05)
    assert abs(float(test["kl_to_true"])) < 0.03
    assert float(test["nll"]) == pytest.approx(entropy, abs=0.06)


def test_training_loss_is_the_negative_log_likelihood_per_datum():
    spec = make_spec(2, 100)
    fam = family("realnvp", spec)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(32, 2)), jnp.float32)
    params = initial_params(fam, x)
    loss = Trace_ELBO().loss(KEY, params, fam.model, fam.guide, x, None)
    # The model scales the batch by N / B (N = 100); the engine's 1 / N is not applied here.
    expected = -100 / 32 * float(jnp.sum(fam.log_prob(params, x, KEY)))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_structures_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="has one column"):
        family("realnvp", make_spec(1, 10))
    with pytest.raises(ConfigError, match="permutation=none"):
        family("nsf", make_spec(2, 10), permutation="none")
