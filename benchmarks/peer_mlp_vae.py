"""Peers workload (a): the MLP VAE 784-400-20 / 20-400-784 on random binary images.

Encoder x -> ReLU(Dense 400) -> (loc, scale = softplus(.) + 1e-6), latent 20; decoder
z -> ReLU(Dense 400) -> Dense 784 Bernoulli logits; q(z | x) = N(loc, diag(scale^2)),
p(z) = N(0, I), analytic KL; Adam (lr 1e-3), batch 128, float32. The images are
Bernoulli(0.13) pixels (MNIST's mean), so no stack depends on a file.

The peers' networks and objective are written here from the equations, with no bslrun
code: -ELBO(x) = KL(q(z | x) || p(z)) - E_q[log p(x | z)], one reparameterised draw,
KL = 1/2 sum(scale^2 + loc^2 - 1 - 2 log scale) (Kingma and Welling 2014, appendix B).
The NumPyro peers use ``TraceMeanField_ELBO``, which takes the KL in closed form.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import flax_module
from numpyro.infer import SVI, TraceMeanField_ELBO

from benchmarks import peer_stacks as stacks
from benchmarks.common import random_image_spec
from bslrun import seeding
from bslrun.config import OptimConfig, Schedule, VaeConfig, as_dict
from bslrun.data.splits import Split
from bslrun.models import build as build_family

NAME = "mlp_vae"
SIDE, HIDDEN, LATENT = 28, 400, 20
DIM = SIDE * SIDE
BATCH = 128
LR = 1e-3
N_TRAIN = BATCH * 100  # 12,800 images: one epoch is 100 steps
EPOCHS = 2  # epochs per timed segment (about 0.3 to 0.5 s each on 2 CPU cores)
PIXEL_MEAN = 0.13
# Losses fall towards 303 nats per image (784 pixels' Bernoulli(0.13) entropy): after two
# epochs on CPU the stacks' best epochs were 310.4 to 310.6, their first 329.0 to 329.6.
# A stack that trained another model (no KL, a wrong scale, another likelihood) misses by
# far more than the tolerance.
TOLERANCE = 0.05


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(HIDDEN)(x))
        return nn.Dense(LATENT)(h), nn.softplus(nn.Dense(LATENT)(h)) + 1e-6


class Decoder(nn.Module):
    @nn.compact
    def __call__(self, z):
        h = nn.relu(nn.Dense(HIDDEN)(z))  # built first: Flax names it Dense_0, as bslrun's
        return nn.Dense(DIM)(h)


def model(x, y=None):
    decoder = flax_module("decoder", Decoder(), input_shape=(1, LATENT))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)


def guide(x, y=None):
    encoder = flax_module("encoder", Encoder(), input_shape=(1, DIM))
    loc, scale = encoder(x)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


def loss(params, extra, key, x, y):
    """-ELBO per image of the batch x (B, 784): analytic KL minus one draw's log p(x | z)."""
    loc, scale = Encoder().apply(params["encoder"], x)
    z = loc + scale * jax.random.normal(key, loc.shape)
    logits = Decoder().apply(params["decoder"], z)
    log_lik = jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)  # Bernoulli(logits)
    kl = 0.5 * jnp.sum(scale**2 + loc**2 - 1.0 - 2.0 * jnp.log(scale), axis=-1)
    return jnp.mean(kl - log_lik), extra


def init(key) -> dict:
    ke, kd = jax.random.split(key)
    return {
        "encoder": Encoder().init(ke, jnp.zeros((1, DIM))),
        "decoder": Decoder().init(kd, jnp.zeros((1, LATENT))),
    }


def data(key, n: int = N_TRAIN) -> Split:
    rng = seeding.numpy_rng(key)
    x = (rng.random((n, DIM), dtype=np.float32) < PIXEL_MEAN).astype(np.float32)
    return Split(x, np.zeros(n, np.int32))


def model_config() -> VaeConfig:
    return VaeConfig(
        architecture="mlp",
        hidden=[HIDDEN],
        latent_dim=LATENT,
        likelihood="bernoulli",
        kl="analytic",
    )


def build(seed: int) -> stacks.Workload:
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    train = data(keys[0])
    optim_cfg = OptimConfig(lr=LR, schedule=Schedule.constant)
    spec = random_image_spec(len(train), (SIDE, SIDE, 1))
    family = build_family(model_config(), spec, len(train))
    x, y = jnp.asarray(train.x), jnp.asarray(train.y)
    svi = SVI(model, guide, numpyro.optim.Adam(LR), TraceMeanField_ELBO())
    runners = [
        stacks.bslrun(family, train, optim_cfg, BATCH, keys[1]),
        # the plate covers the batch: the SVI loss is a sum over B images
        *stacks.numpyro_pair(svi, x, y, BATCH, 1.0 / BATCH, keys[2]),
        stacks.flax_optax_scan(loss, init(keys[3]), {}, LR, x, y, BATCH, keys[3]),
    ]
    return stacks.Workload(
        name=NAME,
        title=f"MLP VAE {DIM}-{HIDDEN}-{LATENT}-{HIDDEN}-{DIM}, batch {BATCH}",
        runners=runners,
        baseline="numpyro_loop",
        examples_per_epoch=(len(train) // BATCH) * BATCH,
        epochs=EPOCHS,
        tolerance=TOLERANCE,
        config={
            "data": f"random Bernoulli({PIXEL_MEAN}) images, {SIDE}x{SIDE}",
            "n_train": len(train),
            "batch_size": BATCH,
            "optimiser": f"Adam, lr {LR}, constant",
            "model": as_dict(model_config()),
            "numpyro_objective": "TraceMeanField_ELBO (closed-form KL)",
            "dtype": "float32",
        },
    )
