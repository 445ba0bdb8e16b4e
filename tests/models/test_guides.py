"""Variational families (bslrun.models.guides) and their wiring into BnnFamily."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_spec

from bslrun.config import BnnConfig, Likelihood, Posterior, Schedule
from bslrun.inference import engine
from bslrun.models import guides
from bslrun.models.bnn import BnnFamily

D, RANK = 5, 2
NUM_DRAWS = 40_000


def softplus(a):
    return np.log1p(np.exp(a))


@pytest.fixture
def params(rng):
    """Constrained parameters for each family, with the closed-form covariance."""
    loc = rng.normal(size=D)
    scale = rng.uniform(0.2, 1.5, size=D)
    factor = rng.normal(size=(D, RANK))
    diag = rng.uniform(0.1, 0.5, size=D)
    unit = rng.normal(size=(D, D)) * 0.5  # upper triangle and diagonal must be ignored
    tril_scale = rng.uniform(0.3, 1.2, size=D)
    tril = tril_scale[:, None] * (np.tril(unit, -1) + np.eye(D))
    return {
        "map": ({"loc": loc}, np.zeros((D, D))),
        "mean_field": ({"loc": loc, "scale": scale}, np.diag(scale**2)),
        "lowrank": (
            {"loc": loc, "cov_factor": factor, "cov_diag": diag},
            factor @ factor.T + np.diag(diag),
        ),
        "full_rank": ({"loc": loc, "scale": tril_scale, "unit_tril": unit}, tril @ tril.T),
    }


@pytest.mark.parametrize("kind", ["mean_field", "lowrank", "full_rank"])
def test_gaussian_families_covariance(params, kind):
    p, cov = params[kind]
    q = guides.distribution(kind, {k: jnp.asarray(v, jnp.float32) for k, v in p.items()})
    assert q.event_shape == (D,)
    np.testing.assert_allclose(np.asarray(q.mean), p["loc"], rtol=1e-6)
    if kind == "mean_field":
        np.testing.assert_allclose(np.asarray(q.variance), np.diag(cov), rtol=1e-5)
    else:
        np.testing.assert_allclose(np.asarray(q.covariance_matrix), cov, rtol=1e-5, atol=1e-6)
    # Empirical moments of many samples: the sampler implements the same Gaussian.
    draws = np.asarray(q.sample(jax.random.PRNGKey(0), (NUM_DRAWS,)), np.float64)
    assert draws.shape == (NUM_DRAWS, D)
    sd = np.sqrt(np.diag(cov))
    # Standard errors: sd / sqrt(S) ~ 0.005 sd for the mean, ~1% for covariances.
    np.testing.assert_allclose(draws.mean(0), p["loc"], atol=float(0.03 * sd.max()))
    emp = np.cov(draws, rowvar=False)
    assert np.linalg.norm(emp - cov) / np.linalg.norm(cov) < 0.05
    # log density against the closed-form multivariate normal.
    from scipy import stats

    x = draws[:10]
    ref = stats.multivariate_normal(p["loc"], cov).logpdf(x)
    np.testing.assert_allclose(
        np.asarray(q.log_prob(jnp.asarray(x, jnp.float32))), ref, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("num", [1, 3])
def test_map_samples_are_loc(params, num):
    p, _ = params["map"]
    q = guides.distribution("map", {"loc": jnp.asarray(p["loc"], jnp.float32)})
    draws = np.asarray(q.sample(jax.random.PRNGKey(1), (num,)))
    assert draws.shape == (num, D)
    np.testing.assert_array_equal(draws, np.tile(p["loc"].astype(np.float32), (num, 1)))


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown posterior family"):
        guides.distribution("flow", {"loc": jnp.zeros(2)})


def test_site_params_strips_prefix():
    out = guides.site_params("w", {"w_loc": 1, "w_scale": 2, "noise_scale": 3, "v_loc": 4})
    assert out == {"loc": 1, "scale": 2}


# ----------------------------------------------------------------------------- through BnnFamily

IN_DIM, HIDDEN, N_TRAIN = 11, 4, 32


def expected_weights(out_dim):
    """Dense(11 -> 4) + Dense(4 -> out_dim), weights and biases."""
    return IN_DIM * HIDDEN + HIDDEN + HIDDEN * out_dim + out_dim


CASES = [
    (posterior, Likelihood.regression, 1)
    for posterior in ("map", "mean_field", "lowrank", "full_rank")
] + [
    ("mean_field", Likelihood.heteroscedastic, 2),
    ("lowrank", Likelihood.classification, 3),
]


@pytest.mark.parametrize("posterior, likelihood, out_dim", CASES)
def test_family_posterior_from_svi_init(rng, posterior, likelihood, out_dim):
    classification = likelihood == Likelihood.classification
    spec = make_spec(
        IN_DIM,
        N_TRAIN,
        task="classification" if classification else "regression",
        num_classes=out_dim if classification else 0,
    )
    cfg = BnnConfig(
        hidden=[HIDDEN],
        posterior=Posterior(posterior),
        likelihood=likelihood,
        rank=3,
        init_scale=0.05,
    )
    family = BnnFamily(cfg, spec, N_TRAIN)
    assert family.num_weights == expected_weights(out_dim)
    x = rng.normal(size=(8, IN_DIM)).astype(np.float32)
    y = (
        rng.integers(0, out_dim, size=8).astype(np.int32)
        if classification
        else rng.normal(size=8).astype(np.float32)
    )
    svi = engine.make_svi(family, optax.adam(1e-3), num_particles=1)
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), x, y)
    params = svi.get_params(state)
    q = family.posterior_distribution(params)
    draws = np.asarray(q.sample(jax.random.PRNGKey(1), (6,)))
    assert draws.shape == (6, family.num_weights)
    assert np.all(np.isfinite(draws))
    # The variational mean starts at the network's own initialisation (not all zeros).
    loc = np.asarray(params["w_loc"])
    assert loc.shape == (family.num_weights,) and np.std(loc) > 0
    if posterior == "map":
        np.testing.assert_array_equal(draws, np.tile(loc, (6, 1)))
    elif posterior == "mean_field":
        np.testing.assert_allclose(np.asarray(params["w_scale"]), 0.05, rtol=1e-5)
    elif posterior == "full_rank":
        tril = guides.scale_tril(guides.site_params("w", params))
        np.testing.assert_allclose(np.asarray(tril), 0.05 * np.eye(family.num_weights), atol=1e-6)
    elif posterior == "lowrank":
        assert params["w_cov_factor"].shape == (family.num_weights, 3)
    # Each draw gives a network output of the right width.
    assert family.forward(jnp.asarray(draws[0]), jnp.asarray(x)).shape == (8, out_dim)


# ------------------------------------------------- no hidden layer: Bayesian linear regression


@pytest.mark.parametrize(
    "likelihood, out_dim", [(Likelihood.regression, 1), (Likelihood.classification, 3)]
)
def test_no_hidden_layer_is_one_affine_map(rng, likelihood, out_dim):
    """hidden=[]: f(x; w) = x W + b, W (d, out), b (out,): the weights are a linear model's."""
    classification = likelihood is Likelihood.classification
    spec = make_spec(
        IN_DIM, N_TRAIN, task=likelihood.value, num_classes=out_dim if classification else 0
    )
    family = BnnFamily(BnnConfig(hidden=[], likelihood=likelihood), spec, N_TRAIN)
    assert family.num_weights == (IN_DIM + 1) * out_dim
    w = jnp.asarray(rng.normal(size=family.num_weights), jnp.float32)
    x = jnp.asarray(rng.normal(size=(8, IN_DIM)), jnp.float32)
    params = family.flat.unravel(w)["Dense_0"]
    assert params["kernel"].shape == (IN_DIM, out_dim) and params["bias"].shape == (out_dim,)
    expected = np.asarray(x) @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
    np.testing.assert_allclose(np.asarray(family.forward(w, x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("posterior", [p.value for p in Posterior])
def test_no_hidden_layer_trains_and_validates_with_every_posterior(rng, posterior):
    """hidden=[] through engine.fit (which validates every epoch) for every q family:
    Bayesian logistic regression (3 classes) with the Gaussian families, linear regression
    with the flows (map, mean_field, lowrank and full_rank regression are checked against
    the closed-form posterior in test_maths.py)."""
    from conftest import make_dataset

    from bslrun.config import OptimConfig, TrainerConfig

    x = rng.normal(size=(N_TRAIN, 2)).astype(np.float32)
    if posterior in guides.FLOW_BINS:
        task, y, classes = "regression", x @ np.array([1.0, -0.5], np.float32), 0
    else:
        labels = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1).astype(np.int32)
        task, y, classes = "classification", labels, 3
    data = make_dataset(x, y, val=(x[:8], y[:8]), task=task, num_classes=classes)
    cfg = BnnConfig(hidden=[], posterior=Posterior(posterior), rank=2, flow_hidden=[8])
    family = BnnFamily(cfg, data.spec, N_TRAIN)
    assert family.num_weights == 3 * max(classes, 1)
    trainer = TrainerConfig(epochs=2, batch_size=16, progress=False)
    result = engine.fit(
        family, data, OptimConfig(lr=0.01, schedule=Schedule.constant), trainer, jax.random.PRNGKey(0),
        jax.random.PRNGKey(1), 4,
    )  # fmt: skip
    last = result.history[-1]
    assert last["epoch"] == 2 and np.isfinite(last["train_loss"]) and np.isfinite(last["val_nll"])
