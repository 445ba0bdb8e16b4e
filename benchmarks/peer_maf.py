"""Peers workload (c): a masked autoregressive flow of 5 MADE [128, 128] layers on two moons.

The flow (Papamakarios et al. 2017) is x = T(u), u ~ N(0, I_2), T = M_0 . P . M_1 . P
... M_4 with a reversing permutation P between layers; each M_k is affine
autoregressive, x_i = shift_i(x_<i) + sigma_i(x_<i) u_i, with shift and
log sigma = log(softplus(raw + c) + 1e-3) (c makes raw = 0 the identity) from a
MADE (Germain et al. 2015: degrees, ReLU hidden layers [128, 128]) whose output layer
starts at zero, so every stack starts from the base density. The density runs the
fast direction, one MADE pass per layer:

  log p(x) = log N(u; 0, I) - sum_k sum_i log sigma_i,  u = T^-1(x).

The data are bslrun's two moons (10,000 points, noise 0.05, the lecture's), Adam
(lr 1e-3), batch 256, float32. bslrun's flow family with ``model.depth=5`` (its
default; the lecture preset, which ``maf_epoch`` races, has 3). The peers' MADE and
flow are written here; the NumPyro peers score the same density with
``numpyro.factor`` under an empty guide, so their ELBO is the log-likelihood.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax.scipy.stats import norm
from numpyro.contrib.module import flax_module
from numpyro.infer import SVI, Trace_ELBO

from benchmarks import peer_stacks as stacks
from bslrun import seeding
from bslrun.config import FlowConfig, OptimConfig, Schedule, ToyDataConfig, as_dict
from bslrun.data import load as load_data
from bslrun.models import build as build_family

NAME = "maf"
DIM, DEPTH, HIDDEN = 2, 5, (128, 128)
BATCH = 256
LR = 1e-3
N_TRAIN = 10_000  # 39 steps of 256 per epoch
EPOCHS = 10  # epochs per timed segment
MIN_SCALE = 1e-3
IDENTITY_OFFSET = float(np.log(np.expm1(1.0 - MIN_SCALE)))  # softplus^-1(1 - 1e-3)
# Every stack starts from the same density (the base N(0, I): the MADEs' output layers are
# zero); first-epoch means were 1.78 to 1.81 nats on CPU. Epoch losses then spike (1.0 to
# 2.9 and back), so the best epoch is compared, and trainings drift apart: best epochs
# 1.01 to 1.16 after 25 epochs, 0.50 to 0.88 after 51 (last epochs 0.51 to 1.35). A
# stack that does not train stays near its first epoch's loss, a nat above.
TOLERANCE = 0.5


def made_masks(dim: int, hidden: Sequence[int]):
    """Germain et al.'s masks for the identity order: hidden unit k of degree m_k sees
    inputs of degree <= m_k; output i (degree i + 1) sees hidden degrees < i + 1."""
    degrees = [np.arange(1, dim + 1)] + [np.arange(w) % max(dim - 1, 1) + 1 for w in hidden]
    hidden_masks = [
        (a[:, None] <= b[None, :]) for a, b in zip(degrees[:-1], degrees[1:], strict=True)
    ]
    out_mask = degrees[-1][:, None] < degrees[0][None, :]
    return [m.astype(np.float32) for m in hidden_masks], out_mask.astype(np.float32)


class MaskedDense(nn.Module):
    features: int
    zero: bool = False

    @nn.compact
    def __call__(self, x, mask):
        init = nn.initializers.zeros_init() if self.zero else nn.initializers.lecun_normal()
        kernel = self.param("kernel", init, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return x @ (kernel * mask) + bias


class Made(nn.Module):
    """x (n, D) -> (shift, log sigma), each (n, D); output i depends on x_<i only."""

    @nn.compact
    def __call__(self, x):
        hidden_masks, out_mask = made_masks(DIM, HIDDEN)
        h = x
        for width, mask in zip(HIDDEN, hidden_masks, strict=True):
            h = nn.relu(MaskedDense(width)(h, mask))
        # columns 2i and 2i + 1 are coordinate i's shift and raw scale
        out = MaskedDense(2 * DIM, zero=True)(h, np.repeat(out_mask, 2, axis=1))
        out = out.reshape(*out.shape[:-1], DIM, 2)
        return out[..., 0], jnp.log(nn.softplus(out[..., 1] + IDENTITY_OFFSET) + MIN_SCALE)


def log_prob(conditioners: list, x):
    """log p(x) (n,) of the flow whose layer k's MADE is ``conditioners[k]`` (x -> out)."""
    log_det = 0.0
    for k in reversed(range(len(conditioners))):
        shift, log_sigma = conditioners[k](x)
        x = (x - shift) * jnp.exp(-log_sigma)
        log_det = log_det + jnp.sum(log_sigma, axis=-1)
        if k > 0:
            x = x[..., ::-1]  # the reversing permutation before layer k is its own inverse
    return jnp.sum(norm.logpdf(x), axis=-1) - log_det


def model(x, y=None):
    nets = [flax_module(f"made_{k}", Made(), input_shape=(1, DIM)) for k in range(DEPTH)]
    with numpyro.plate("data", x.shape[0]):
        numpyro.factor("log_lik", log_prob(nets, x))


def guide(x, y=None):
    """Nothing is latent."""


def loss(params, extra, key, x, y):
    nets = [lambda v, p=p: Made().apply(p, v) for p in params]
    return -jnp.mean(log_prob(nets, x)), extra


def init(key) -> list:
    return [Made().init(k, jnp.zeros((1, DIM))) for k in jax.random.split(key, DEPTH)]


def model_config() -> FlowConfig:
    return FlowConfig(flow="maf", depth=DEPTH, hidden=list(HIDDEN))


def build(seed: int) -> stacks.Workload:
    keys = seeding.streams(seed)
    data_cfg = ToyDataConfig(name="moons", n_train=N_TRAIN, n_val=0, n_test=1, noise=0.05)
    data = load_data(data_cfg, keys.data)
    train = data.train
    n = len(train)
    optim_cfg = OptimConfig(lr=LR, schedule=Schedule.constant)
    family = build_family(model_config(), data.spec, n, keys.structure)
    x, y = jnp.asarray(train.x), jnp.asarray(train.y)
    svi = SVI(model, guide, numpyro.optim.Adam(LR), Trace_ELBO())
    k = jax.random.split(keys.init, 3)
    runners = [
        stacks.bslrun(family, train, optim_cfg, BATCH, k[0]),
        # the plate covers the batch: the SVI loss is a sum over B points
        *stacks.numpyro_pair(svi, x, y, BATCH, 1.0 / BATCH, k[1]),
        stacks.flax_optax_scan(loss, init(k[2]), {}, LR, x, y, BATCH, k[2]),
    ]
    return stacks.Workload(
        name=NAME,
        title=f"MAF {DEPTH} x MADE {list(HIDDEN)} on two moons, batch {BATCH}",
        runners=runners,
        baseline="numpyro_loop",
        examples_per_epoch=(n // BATCH) * BATCH,
        epochs=EPOCHS,
        tolerance=TOLERANCE,
        config={
            "data": as_dict(data_cfg),
            "n_train": n,
            "batch_size": BATCH,
            "optimiser": f"Adam, lr {LR}, constant",
            "model": as_dict(model_config()),
            "numpyro_objective": "Trace_ELBO, empty guide (the log-likelihood)",
            "dtype": "float32",
        },
    )
