"""The two non-variational baselines of the BNN family against their definitions: a deep
ensemble is M separate MAP networks whose predictive is the equal mixture
(Lakshminarayanan et al. 2017); MC dropout drops input and hidden units with probability
p, rescaled by 1 / (1 - p), in training and in every predictive draw (Gal & Ghahramani
2016)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_spec
from numpyro import handlers
from numpyro.infer import Trace_ELBO
from scipy import stats
from scipy.special import logsumexp

from bslrun.config import BnnConfig, Likelihood, Noise, Posterior
from bslrun.models.bnn import BnnFamily

DIM, N, M = 3, 24, 4


def family(posterior, **kw) -> BnnFamily:
    cfg = BnnConfig(hidden=[5, 3], likelihood=Likelihood("student_t"), noise=Noise("linear"),
                    posterior=Posterior(posterior), ensemble_size=M, **kw)  # fmt: skip
    return BnnFamily(cfg, make_spec(DIM, N), n_train=N)


def members(fam, rng):
    """Per-member weights, noise scales, noise coefficients and degrees of freedom."""
    return {
        "w_loc": rng.normal(size=(M, fam.num_weights)).astype(np.float32) * 0.5,
        "noise_scale": rng.uniform(0.5, 1.5, size=M).astype(np.float32),
        "noise_coef": rng.normal(size=(M, DIM)).astype(np.float32) * 0.2,
        "df": rng.uniform(3.0, 9.0, size=M).astype(np.float32),
    }


def data(rng):
    return rng.normal(size=(N, DIM)).astype(np.float32), rng.normal(size=N).astype(np.float32)


def test_ensemble_members_train_as_separate_map_networks(rng):
    """The ensemble's loss gradient for member m is member m's own MAP loss gradient."""
    ensemble, single = family("ensemble"), family("map")
    params = members(ensemble, rng)
    x, y = data(rng)

    def loss(fam, p):
        return Trace_ELBO().loss(jax.random.PRNGKey(0), p, fam.model, fam.guide, x, y)

    grads = jax.grad(lambda p: loss(ensemble, p))(params)
    for m in range(M):
        own = {k: v[m] for k, v in params.items()}
        expected = jax.grad(lambda p: loss(single, p))(own)
        for name in params:
            np.testing.assert_allclose(grads[name][m], expected[name], rtol=2e-4, atol=1e-5)


def test_ensemble_predictive_is_the_equal_mixture_of_its_members(rng):
    fam = family("ensemble")
    params = members(fam, rng)
    x, y = data(rng)
    out = jax.jit(fam.evaluate, static_argnums=4)(params, x, y, jax.random.PRNGKey(1), 7)
    log_p = []
    for m in range(M):
        mean = np.asarray(fam.forward(jnp.asarray(params["w_loc"][m]), x))[:, 0]
        scale = params["noise_scale"][m] * np.exp(x.astype(np.float64) @ params["noise_coef"][m])
        log_p.append(stats.t.logpdf(y, params["df"][m], mean, scale))
    nll = -np.mean(logsumexp(np.stack(log_p), axis=0) - np.log(M))
    assert float(out["nll"]) == pytest.approx(nll, rel=1e-5)
    draws = jax.jit(fam.sample, static_argnums=2)(params, jax.random.PRNGKey(2), 50)
    found = {int(np.argmin(np.abs(params["w_loc"] - d).sum(axis=1))) for d in np.asarray(draws)}
    assert found <= set(range(M)) and np.isin(np.asarray(draws), params["w_loc"]).all()


def test_ensemble_members_start_from_their_own_initialisation():
    fam = family("ensemble")
    x, y = data(np.random.default_rng(0))
    seeded = handlers.seed(fam.guide, jax.random.PRNGKey(3))
    loc = handlers.trace(seeded).get_trace(x, y)["w_loc"]["value"]
    assert loc.shape == (M, fam.num_weights)
    assert len({tuple(np.round(np.asarray(row), 6)) for row in loc}) == M


def test_dropout_keeps_units_with_probability_one_minus_p_rescaled():
    p = 0.3
    fam = family("mc_dropout", dropout=p)
    x = np.ones((4000, DIM), np.float32)
    dropped = fam.net._drop(jnp.asarray(x), jax.random.PRNGKey(4), 0)
    values = np.unique(np.asarray(dropped))
    np.testing.assert_allclose(values, [0.0, 1.0 / (1.0 - p)], rtol=1e-6)
    kept = np.mean(np.asarray(dropped) > 0)
    assert abs(kept - (1 - p)) < 4 * np.sqrt(p * (1 - p) / x.size)
    np.testing.assert_array_equal(fam.net._drop(jnp.asarray(x), None, 0), x)  # no key: none


def test_a_dropout_weight_draw_is_the_network_under_that_rows_masks(rng):
    """For one input row, masking the row's units (the forward pass) and masking the
    rows of each layer's kernel (``sample``: a draw of q(W)) are the same network."""
    fam = family("mc_dropout", dropout=0.4)
    w = jnp.asarray(rng.normal(size=fam.num_weights).astype(np.float32))
    x = jnp.asarray(rng.normal(size=(1, DIM)).astype(np.float32))
    for seed in range(5):
        key = jax.random.PRNGKey(seed)
        masked_units = fam.forward(w, x, key)
        masked_weights = fam.forward(fam._dropped_weights(w, key), x)
        np.testing.assert_allclose(masked_units, masked_weights, rtol=1e-5, atol=1e-6)


def test_mc_dropout_predictive_mixes_draws_of_the_masks(rng):
    """Each predictive draw is one network (one set of masks for every input, so a draw is
    a function); per point, the mixture is that of the forward pass's per-row masks, whose
    mean differs from the plain network's."""
    fam = family("mc_dropout", dropout=0.2)
    w = rng.normal(size=fam.num_weights).astype(np.float32)
    params = {"w_loc": w, "noise_scale": np.float32(0.5), "noise_coef": np.zeros(DIM, np.float32),
              "df": np.float32(5.0)}  # fmt: skip
    x, y = data(rng)
    draws = 2000
    out = jax.jit(fam.predict, static_argnums=3)(params, x, jax.random.PRNGKey(5), draws)
    assert float(np.mean(np.asarray(out["epistemic_std"]))) > 0  # the masks vary the network
    keys = jax.random.split(jax.random.PRNGKey(6), 4000)
    by_hand = np.asarray(jax.vmap(lambda k: fam.forward(jnp.asarray(w), x, k)[:, 0])(keys))
    plain = np.asarray(fam.forward(jnp.asarray(w), x))[:, 0]
    error = 5 * by_hand.std(0) * np.sqrt(1 / draws + 1 / len(keys))
    assert (np.abs(np.asarray(out["mean"]) - by_hand.mean(0)) <= error).all()
    np.testing.assert_allclose(np.asarray(out["epistemic_std"]), by_hand.std(0), rtol=0.15)
    assert not np.allclose(by_hand.mean(0), plain, atol=1e-3)  # ReLU: E[f] is not f(E[w])
    twice = jnp.asarray(np.repeat(x[:1], 2, axis=0))
    weights, _ = fam.weight_draws(params, jax.random.PRNGKey(7), 16)
    means = np.asarray(fam.predictive(params, weights, twice).loc)
    np.testing.assert_array_equal(means[:, 0], means[:, 1])  # the same input, the same draw
    assert np.unique(means[:, 0]).size > 1  # ... and the draws differ
