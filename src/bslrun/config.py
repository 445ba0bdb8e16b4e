"""Typed configuration: the dataclass schemas are the contract, YAML holds values.

Each config group validates against its own schema (registered in Hydra's
ConfigStore under ``schema/<group>``), so an unknown key or an enum value
outside its choices is refused while Hydra composes. Numeric ranges and
cross-field rules are checked by :func:`validate`, once, before anything is
compiled or written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import PurePath
from typing import Any, ClassVar

from bslrun.errors import ConfigError


class Activation(str, Enum):
    relu = "relu"
    tanh = "tanh"
    sigmoid = "sigmoid"
    gelu = "gelu"
    silu = "silu"
    elu = "elu"
    softplus = "softplus"
    leaky_relu = "leaky_relu"


class Likelihood(str, Enum):
    regression = "regression"  # Normal(f(x), sigma) with one learned sigma
    heteroscedastic = "heteroscedastic"  # Normal(f(x), g(x)): the lecture's probabilistic BNN
    student_t = "student_t"  # StudentT(df, f(x), sigma): heavy tails, df learned or fixed
    classification = "classification"  # Categorical(logits=f(x))


class Noise(str, Enum):
    constant = "constant"  # one noise scale sigma
    linear = "linear"  # log sigma(x) = log sigma + c^T x: c learned with sigma


class Posterior(str, Enum):
    map = "map"  # point estimate (Delta guide): the deterministic baseline
    mean_field = "mean_field"  # diagonal Gaussian
    lowrank = "lowrank"  # Gaussian with covariance W W^T + diag
    full_rank = "full_rank"  # Gaussian with a full lower-triangular scale
    iaf = "iaf"  # diagonal Gaussian pushed through inverse autoregressive affine steps
    iaf_spline = "iaf_spline"  # the same with rational-quadratic spline steps
    ensemble = "ensemble"  # M independently initialised MAP networks (deep ensembles)
    mc_dropout = "mc_dropout"  # MAP network with dropout kept on at test time (MC dropout)


class FlowKind(str, Enum):
    maf = "maf"  # masked affine autoregressive (Papamakarios et al. 2017)
    realnvp = "realnvp"  # affine coupling (Dinh et al. 2017)
    nsf = "nsf"  # rational-quadratic spline coupling (Durkan et al. 2019)
    nsf_ar = "nsf_ar"  # rational-quadratic spline, autoregressive (Durkan et al. 2019)


class PermutationKind(str, Enum):
    reverse = "reverse"  # reverse the coordinates after each layer (the lecture's Permute)
    random = "random"  # a fixed random permutation per layer, drawn from the seed
    none = "none"


class FileTask(str, Enum):
    regression = "regression"
    classification = "classification"


class Architecture(str, Enum):
    mlp = "mlp"  # dense encoder and mirrored decoder
    conv = "conv"  # the lecture's: conv 32/64/64/64 with batch norm and LeakyReLU, mirrored


class ImageLikelihood(str, Enum):
    bernoulli = "bernoulli"  # p(x | z) = prod Bernoulli(logits)
    gaussian = "gaussian"  # p(x | z) = prod Normal(mean, learned per-pixel scale)


class KLEstimate(str, Enum):
    analytic = "analytic"  # closed-form KL(q(z|x) || N(0, I))
    mc = "mc"  # Monte Carlo log q - log p on the sampled z


class OptimName(str, Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"
    rmsprop = "rmsprop"


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"
    warmup_constant = "warmup_constant"
    warmup_cosine = "warmup_cosine"


class Monitor(str, Enum):
    nll = "nll"
    rmse = "rmse"
    error = "error"


class Binarize(str, Enum):
    none = "none"  # intensities in [0, 1]
    static = "static"  # binarised once: threshold, or a seeded Bernoulli draw if threshold is null
    dynamic = "dynamic"  # a fresh Bernoulli draw of each training batch, inside the jitted step


@dataclass
class FractionSplits:
    """Rows cut into seeded train/validation/test fractions; standardised on training rows."""

    # Fractions of the rows for training, validation (0: none) and test; they sum to 1.
    train_fraction: float = 0.75
    val_fraction: float = 0.10
    test_fraction: float = 0.15
    # Fraction of the training split actually used (the lecture's small-data experiment).
    train_subset: float = 1.0
    # Standardise inputs (and regression targets) with the training rows' mean and std.
    standardize: bool = True


@dataclass
class DataConfig(FractionSplits):
    """Tabular data (wine quality): seeded fraction splits or a benchmark split folder."""

    name: str = "wine_white"
    # A standard benchmark split: folder with data.txt, index_features.txt,
    # index_target.txt, index_train_<k>.txt and index_test_<k>.txt.
    split_dir: str | None = None
    # Which split of data.split_dir (index_train_<split>.txt).
    split: int = 0


@dataclass
class ImageDataConfig:
    """MNIST-format images (IDX files): 60k training images (validation carved out), 10k test."""

    name: str = "mnist"
    # Folder holding the IDX files; null means $BSLRUN_DATA_DIR, else the user cache folder.
    root: str | None = None
    # Fetch missing files from the public mirrors (checked against SHA-256).
    download: bool = True
    # Training images held out (seeded) for validation.
    val_size: int = 10000
    # Fraction of the training images actually used.
    train_subset: float = 1.0
    # null: dynamic for model=vae (binary pixels), none (intensities) for other models.
    binarize: Binarize | None = None
    # Threshold of static binarisation; null draws a seeded Bernoulli sample once.
    threshold: float | None = 0.5


@dataclass
class ToyDataConfig:
    """Toy data sampled afresh from the seed: 2D densities and classes (moons, checkerboard,
    rings, ...) and 1D regression curves (sine_gap, heteroscedastic)."""

    name: str = "moons"
    # Points drawn for training, validation (0: none) and test.
    n_train: int = 10000
    n_val: int = 2000
    n_test: int = 5000
    # Observation noise of the samplers that have one (moons, circles, ...); null: the toy's default.
    noise: float | None = None


@dataclass
class FileDataConfig(FractionSplits):
    """Your own table: a CSV file with a header row, or a .npy / .npz array."""

    name: str = "file"
    # The file to read (required): .csv (header row), .npy, or .npz (one array, or data.key).
    path: str | None = None
    # Array inside an .npz file holding several.
    key: str | None = None
    # Input columns (CSV header names, or 0-based indices as strings for arrays); null: all
    # columns but the target.
    columns: list[str] | None = None
    # Columns left out of the inputs (names or indices, as data.columns): a text column
    # such as a label that is not the target (data.exclude=[colour]).
    exclude: list[str] | None = None
    # Target column for model=bnn; null: no target (density estimation with model=flow).
    target: str | None = None
    # What the target is; null: classification for text labels, regression for numbers.
    task: FileTask | None = None


@dataclass
class ModelConfig:
    """A model family's config group. Each subclass is a registered family: its ``family``
    names it, ``implementation`` ("module:class", imported on use) is its
    ``bslrun.models.family.Family``, ``check`` validates it and ``check_fits`` its pairing
    with the data and the trainer."""

    implementation: ClassVar[str]
    # How the family reads images when data.binarize is left null.
    natural_binarize: ClassVar[Binarize] = Binarize.none

    def fill_defaults(self, task: str | None) -> None:
        """Fill the null "natural choice" values that depend on the data's task."""

    def check(self) -> None:
        raise NotImplementedError

    def check_fits(self, cfg: Config, task: str | None) -> None:
        """Rules that involve the data (``task``: see ``registry.data_task``) or the trainer."""


@dataclass
class BnnConfig(ModelConfig):
    implementation: ClassVar[str] = "bslrun.models.bnn:BnnFamily"
    family: str = "bnn"
    # Hidden layer widths; [] is Bayesian linear (or logistic) regression.
    hidden: list[int] = field(default_factory=lambda: [50, 50])
    activation: Activation = Activation.relu
    # null: the data's natural likelihood (regression or classification).
    likelihood: Likelihood | None = None
    # Variational family of q(w).
    posterior: Posterior = Posterior.mean_field
    # Standard deviation of the Gaussian prior N(0, s^2) on every weight and bias.
    prior_scale: float = 1.0
    # Initial standard deviation of the Gaussian posteriors.
    init_scale: float = 1e-3
    # Rank of the covariance factor for posterior=lowrank.
    rank: int = 10
    # Fixed observation noise (standardised units) for likelihood=regression or student_t;
    # null learns it.
    noise_scale: float | None = None
    # How the noise scale of likelihood=regression or student_t depends on the inputs.
    noise: Noise = Noise.constant
    # Degrees of freedom of likelihood=student_t (above 2: finite variance); null learns them.
    df: float | None = None
    # posterior=iaf / iaf_spline: flow steps on top of the diagonal Gaussian, and the
    # hidden widths of each step's MADE.
    flow_steps: int = 2
    flow_hidden: list[int] = field(default_factory=lambda: [256])
    # posterior=ensemble: members M, each a MAP network of its own initialisation, noise and
    # training; the predictive is their equal mixture (Lakshminarayanan et al. 2017).
    ensemble_size: int = 5
    # posterior=mc_dropout: the probability of dropping each input and hidden unit, in
    # training and in every predictive draw (Gal & Ghahramani 2016).
    dropout: float = 0.05

    def fill_defaults(self, task: str | None) -> None:
        if self.likelihood is None and task in TASKS_WITH_TARGETS:
            self.likelihood = natural_likelihood(task)

    def check(self) -> None:
        """Ranges and cross-field rules of this group: ConfigError naming the key."""
        # hidden=[]: no hidden layer, f(x; w) = W x + b, i.e. Bayesian linear (or logistic) regression.
        if any(h <= 0 for h in self.hidden):
            raise ConfigError(
                f"model.hidden={list(self.hidden)} must list positive layer widths "
                "(or be [] for Bayesian linear regression)"
            )
        _widths("model.flow_hidden", self.flow_hidden)
        check_counts("model", self, ("flow_steps",))
        _positive("model.prior_scale", self.prior_scale)
        _positive("model.init_scale", self.init_scale)
        if self.rank < 1:
            raise ConfigError(f"model.rank={self.rank} must be at least 1")
        check_counts("model", self, ("ensemble_size",))
        if not 0 < self.dropout < 1:
            raise ConfigError(
                f"model.dropout={self.dropout} must lie strictly between 0 and 1 (the "
                "probability of dropping a unit)"
            )
        if self.noise_scale is not None:
            _positive("model.noise_scale", self.noise_scale)
        likelihood = None if self.likelihood is None else Likelihood(self.likelihood)
        if self.df is not None:
            if not (self.df > 2 and math.isfinite(self.df)):
                raise ConfigError(
                    f"model.df={self.df} must be above 2 (a Student-t with finite variance)"
                )
            if likelihood is not Likelihood.student_t:
                raise ConfigError(
                    "model.df is the Student-t's degrees of freedom: add "
                    "model.likelihood=student_t, or set model.df=null"
                )
        check_noise_fits(self, likelihood)

    def check_fits(self, cfg: Config, task: str | None) -> None:
        check_likelihood_fits(self, task, cfg.data.name)


@dataclass
class VaeConfig(ModelConfig):
    implementation: ClassVar[str] = "bslrun.models.vae:VaeFamily"
    natural_binarize: ClassVar[Binarize] = Binarize.dynamic
    family: str = "vae"
    # Encoder and decoder networks.
    architecture: Architecture = Architecture.mlp
    # Encoder widths for architecture=mlp; the decoder mirrors them.
    hidden: list[int] = field(default_factory=lambda: [400])
    activation: Activation = Activation.relu
    # Dimension L of the latent code z.
    latent_dim: int = 20
    # p(x | z) per pixel.
    likelihood: ImageLikelihood = ImageLikelihood.bernoulli
    # The ELBO's KL term: closed form, or Monte Carlo on the sampled z.
    kl: KLEstimate = KLEstimate.analytic
    # Linear KL warm-up from 0 to 1 over this many epochs (0: no warm-up).
    beta_warmup_epochs: int = 0
    # Importance samples of the training objective (1: the ELBO; K > 1: the IWAE bound).
    iw_samples: int = 1
    # Inverse autoregressive flow steps on q(z | x) (Kingma et al. 2016); 0: Gaussian q.
    # With steps the KL term is estimated by Monte Carlo.
    posterior_flow: int = 0
    posterior_flow_hidden: list[int] = field(default_factory=lambda: [256])

    def check(self) -> None:
        """Ranges and cross-field rules of this group: ConfigError naming the key."""
        if any(h <= 0 for h in self.hidden):
            raise ConfigError(f"model.hidden={list(self.hidden)} must list positive layer widths")
        check_counts("model", self, ("latent_dim", "iw_samples"))
        if self.beta_warmup_epochs < 0:
            raise ConfigError(f"model.beta_warmup_epochs={self.beta_warmup_epochs} must be >= 0")
        _off_or_positive("model.posterior_flow", self.posterior_flow)
        _widths("model.posterior_flow_hidden", self.posterior_flow_hidden)
        if self.iw_samples > 1 and Architecture(self.architecture) is Architecture.conv:
            raise ConfigError(
                "model.iw_samples > 1 is not available with model.architecture=conv (NumPyro's "
                "importance-weighted objective cannot carry batch-norm statistics); use "
                "model.architecture=mlp or model.iw_samples=1"
            )

    def check_fits(self, cfg: Config, task: str | None) -> None:
        if not isinstance(cfg.data, ImageDataConfig):
            raise ConfigError(
                f"model=vae needs an image data set; data={cfg.data.name} is tabular "
                "(use data=mnist or data=fashion_mnist)"
            )
        if Architecture(self.architecture) is Architecture.conv and cfg.trainer.num_particles > 1:
            raise ConfigError(
                "trainer.num_particles > 1 is not available with model.architecture=conv "
                "(NumPyro drops batch-norm state with several particles); use "
                "trainer.num_particles=1 or model.architecture=mlp"
            )


@dataclass
class FlowConfig(ModelConfig):
    implementation: ClassVar[str] = "bslrun.models.flow:FlowFamily"
    family: str = "flow"
    # The kind of layer (bijection).
    flow: FlowKind = FlowKind.maf
    # Number of flow layers (each followed by a permutation unless permutation=none).
    depth: int = 5
    # Hidden widths of each layer's conditioner (MADE or coupling MLP).
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    activation: Activation = Activation.relu
    # The permutation between layers.
    permutation: PermutationKind = PermutationKind.reverse
    # Rational-quadratic splines (nsf, nsf_ar): bins on [-tail_bound, tail_bound],
    # identity (linear tails) outside.
    bins: int = 8
    tail_bound: float = 5.0
    # Images: dequantised intensities s in (0, 1) are modelled as logit(a + (1 - 2a) s).
    logit_alpha: float = 1e-6

    def check(self) -> None:
        """Ranges and cross-field rules of this group: ConfigError naming the key."""
        _widths("model.hidden", self.hidden)
        check_counts("model", self, ("depth",))
        if self.bins < 2:
            raise ConfigError(f"model.bins={self.bins} must be at least 2")
        _positive("model.tail_bound", self.tail_bound)
        if not 0 < self.logit_alpha < 0.5:
            raise ConfigError(f"model.logit_alpha={self.logit_alpha} must lie in (0, 0.5)")

    def check_fits(self, cfg: Config, task: str | None) -> None:
        images = isinstance(cfg.data, ImageDataConfig)
        if images and Binarize(cfg.data.binarize) is not Binarize.none:
            raise ConfigError(
                "model=flow models dequantised 8-bit intensities; use data.binarize=none "
                f"(not {Binarize(cfg.data.binarize).value})"
            )


@dataclass
class OptimConfig:
    name: OptimName = OptimName.adam
    # Peak learning rate.
    lr: float = 3e-3
    # Decoupled weight decay (adamw).
    weight_decay: float = 0.0
    # Momentum (sgd).
    momentum: float = 0.9
    # Nesterov momentum (sgd).
    nesterov: bool = False
    # Learning-rate schedule over the whole run.
    schedule: Schedule = Schedule.cosine
    # Linear warm-up epochs of the warmup_* schedules.
    warmup_epochs: int = 0
    # Final learning rate of the cosine schedules, as a fraction of lr.
    final_lr_fraction: float = 0.0
    # Clip gradients to this global norm; null disables clipping.
    clip_norm: float | None = None


@dataclass
class TrainerConfig:
    # Passes over the training split (fewer if early stopping ends the run).
    epochs: int = 300
    batch_size: int = 64
    # Monte Carlo samples of the ELBO per step.
    num_particles: int = 1
    # Validate every this many epochs.
    eval_every: int = 1
    # Stop after this many validations without improvement; 0 disables early stopping.
    # Without a validation split there is nothing to monitor and it has no effect.
    patience: int = 50
    # The validation metric early stopping and restore_best follow (and an optuna sweep minimises).
    monitor: Monitor = Monitor.nll
    # Keep the parameters of the best validation epoch (true) or of the last epoch.
    restore_best: bool = True
    # Show a progress bar (on interactive terminals).
    progress: bool = True
    # Without a terminal (a cluster job, output to a file), log a progress line (epoch,
    # loss, time so far and left) to run.log and the console every this many seconds; 0 never.
    progress_every_s: float = 30.0
    # Save the training state (parameters, optimiser, keys, early-stopping bookkeeping) to
    # <run>/checkpoint/train every this many epochs, and after the last; 0 disables it.
    checkpoint_every: int = 10
    # A run folder to continue from its last checkpoint (the same config is required).
    resume: str | None = None
    # Data-parallel training over this many devices (the batch is split between them).
    devices: int = 1
    # Train this many replicas of the run, with seeds seed, seed+1, ..., as one compiled
    # program; each is written as a run folder of its own, <run>/replica_<r>.
    replicas: int = 1
    # Memory (GB) training may use: a run whose estimated peak (parameters, optimiser state,
    # gradients, activations, data) exceeds it is refused before anything compiles.
    # null: what the machine has free (MemAvailable on CPU, the accelerator's limit on GPU).
    max_memory_gb: float | None = None
    # Where compiled programs are kept between runs (compilation.py, docs/speed.md): a
    # folder, off (or null), or auto ($BSLRUN_COMPILATION_CACHE, else ~/.cache/bslrun/jax).
    compilation_cache: str | None = "auto"
    # The most (GB) that cache keeps per machine type; the least recently used goes first.
    compilation_cache_gb: float = 1.0


@dataclass
class EvalConfig:
    # Posterior draws per test point (BNN predictive).
    num_samples: int = 200
    # Flows: points drawn for samples.npz and plots/samples.png.
    flow_samples: int = 5000
    # Importance samples per test image for the VAE's log-likelihood bound.
    iw_samples: int = 1000
    # A run folder of inference=nuts on the same data and split: a variational BNN run
    # then reports how far its predictive is from that reference (metrics.json
    # "reference": W2 and Gaussian KL for regression, agreement and total variation for
    # classification; docs/nuts.md). null: no comparison.
    reference: str | None = None


class InferenceMethod(str, Enum):
    svi = "svi"  # train the model's posterior (model.posterior) by stochastic variational inference
    nuts = "nuts"  # sample a BNN's posterior by Hamiltonian Monte Carlo (NUTS): no training


@dataclass
class InferenceConfig:
    """How the posterior is found. inference=nuts samples p(w, noise | data) of model=bnn
    with NumPyro's NUTS on the full training set (docs/nuts.md); model.posterior, optim
    and the trainer's epochs are then not used."""

    method: InferenceMethod = InferenceMethod.svi
    # NUTS: warm-up iterations per chain (step size and mass matrix adaptation; discarded).
    num_warmup: int = 500
    # NUTS: iterations kept per chain after warm-up (before thinning).
    num_samples: int = 500
    # NUTS: independent chains, run together as one vectorised program.
    num_chains: int = 4
    # NUTS: the mean acceptance probability that warm-up adapts the step size to.
    target_accept: float = 0.8
    # NUTS: the deepest trajectory tree (at most 2^depth - 1 leapfrog steps per iteration).
    max_tree_depth: int = 10
    # NUTS: keep every thinning-th iteration (num_samples / thinning draws per chain).
    thinning: int = 1


@dataclass
class TensorBoardConfig:
    # Event files go to <run folder>/<dir>; tensorboard --logdir <run or sweep folder>.
    dir: str = "tensorboard"


@dataclass
class MlflowConfig:
    # Tracking URI: null is a local store, the SQLite database <output folder>/mlflow.db
    # (mlflow ui --backend-store-uri sqlite:///experiments/mlflow.db); or any MLflow URI
    # (http://host:5000, databricks, sqlite:///...).
    tracking_uri: str | None = None
    # Experiment: null is the run's name; a sweep's jobs go to "<name> sweep <its folder>".
    experiment: str | None = None


@dataclass
class WandbConfig:
    project: str = "bslrun"
    # The W&B team or user; null is your default entity.
    entity: str | None = None
    # offline (files under <run folder>/wandb, for wandb sync) or online; null: online when
    # a key is configured (WANDB_API_KEY or wandb login), offline otherwise.
    mode: str | None = None


@dataclass
class LoggerConfig:
    """history.csv is always written (the run folder's record); each section, filled by
    logger=<name> (or several: logger=[csv,tensorboard,mlflow]), adds a logger."""

    # Event files for TensorBoard, written by tensorboardX.
    tensorboard: TensorBoardConfig | None = None
    # An MLflow run: parameters, per-epoch and final metrics, plots as artifacts.
    mlflow: MlflowConfig | None = None
    # A Weights & Biases run, offline unless a key is configured.
    wandb: WandbConfig | None = None


@dataclass
class Config:
    # The run's name: its folder is experiments/<name>/<timestamp>/.
    name: str = "default"
    # Root of every random draw: same seed, same machine, same numbers.
    seed: int = 0
    # Typed by the chosen group's own schema (see register()).
    data: Any = None
    model: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


# --------------------------------------------------------------------------- checks


def _positive(key: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{key}={value} must be a positive number")


def check_counts(prefix: str, group, keys) -> None:
    """Each of ``keys`` of ``group`` is a count of at least 1."""
    for key in keys:
        if getattr(group, key) < 1:
            raise ConfigError(f"{prefix}.{key}={getattr(group, key)} must be a positive integer")


def _off_or_positive(key: str, value: int) -> None:
    if value < 0:
        raise ConfigError(f"{key}={value} must be zero (off) or positive")


def _non_negative(key: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{key}={value} must be zero or positive")


def _fraction(key: str, value: float, *, open_low: bool = False) -> None:
    low_ok = value > 0 if open_low else value >= 0
    if not (low_ok and value <= 1):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ConfigError(f"{key}={value} must lie in {interval}")


def _check_fractions(d: FractionSplits, fixed_split: bool = False) -> None:
    _fraction("data.train_fraction", d.train_fraction, open_low=True)
    _fraction("data.val_fraction", d.val_fraction)
    _fraction("data.test_fraction", d.test_fraction)
    total = d.train_fraction + d.val_fraction + d.test_fraction
    if not fixed_split and abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"data.train_fraction + data.val_fraction + data.test_fraction = {total:g}; "
            "they must sum to 1"
        )
    _fraction("data.train_subset", d.train_subset, open_low=True)


def _check_data(d: DataConfig) -> None:
    _check_fractions(d, fixed_split=d.split_dir is not None)
    if d.split < 0:
        raise ConfigError(f"data.split={d.split} must be a split index >= 0")


def _check_file(d: FileDataConfig) -> None:
    if not d.path:
        raise ConfigError("data=file needs a file: add data.path=<your .csv, .npy or .npz>")
    if d.test_fraction <= 0:
        raise ConfigError(f"data.test_fraction={d.test_fraction} must be above 0 for data=file")
    _check_fractions(d)
    if d.task is not None and d.target is None:
        raise ConfigError(f"data.task={FileTask(d.task).value} needs data.target=<column>")
    if d.key is not None and not d.path.lower().endswith(".npz"):
        raise ConfigError(f"data.key={d.key} names an array in an .npz file, not in {d.path}")
    if d.columns is None:
        return
    columns = [str(c).strip() for c in d.columns]
    if not columns:
        raise ConfigError("data.columns=[] selects no inputs; list columns, or null for all")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ConfigError(f"data.columns lists {', '.join(repeated)} more than once")
    if d.target is not None and str(d.target).strip() in columns:
        raise ConfigError(f"data.target={d.target} is also in data.columns; remove it there")


def _check_images(d: ImageDataConfig) -> None:
    if not 0 <= d.val_size < 60000:
        raise ConfigError(f"data.val_size={d.val_size} must lie in [0, 60000)")
    _fraction("data.train_subset", d.train_subset, open_low=True)
    if d.threshold is not None and not 0 < d.threshold < 1:
        raise ConfigError(f"data.threshold={d.threshold} must lie in (0, 1), or be null")


def _check_toy(d: ToyDataConfig) -> None:
    check_counts("data", d, ("n_train", "n_test"))
    if d.n_val < 0:
        raise ConfigError(f"data.n_val={d.n_val} must be zero or positive")
    if d.noise is not None:
        _non_negative("data.noise", d.noise)


DATA_CHECKS = {
    DataConfig: _check_data,
    ImageDataConfig: _check_images,
    ToyDataConfig: _check_toy,
    FileDataConfig: _check_file,
}


def _widths(key: str, widths) -> None:
    if not widths or any(h <= 0 for h in widths):
        raise ConfigError(f"{key}={list(widths or [])} must list positive layer widths")


def natural_likelihood(task: str) -> Likelihood:
    """The BNN likelihood a data set's targets call for."""
    return Likelihood.classification if task == "classification" else Likelihood.regression


TASKS_WITH_TARGETS = ("regression", "classification")


def check_likelihood_fits(m: BnnConfig, task: str | None, data_name: str) -> None:
    if task == "density":
        raise ConfigError(
            f"model=bnn needs targets but data={data_name} has none; "
            "add data.target=<column> (or use model=flow to fit the density)"
        )
    if m.likelihood is None or task is None:
        return
    classifies = Likelihood(m.likelihood) is Likelihood.classification
    if classifies != (task == "classification"):
        fitting = (
            "classification"
            if task == "classification"
            else "regression, heteroscedastic or student_t"
        )
        raise ConfigError(
            f"model.likelihood={Likelihood(m.likelihood).value} does not fit data={data_name}, "
            f"a {task} data set; use model.likelihood={fitting}"
        )


def check_noise_fits(m: BnnConfig, likelihood: Likelihood | None) -> None:
    """model.noise=linear shapes the one noise scale of regression and student_t."""
    if Noise(m.noise) is Noise.linear and likelihood in (
        Likelihood.heteroscedastic,
        Likelihood.classification,
    ):
        raise ConfigError(
            f"model.noise=linear needs model.likelihood=regression or student_t "
            f"(not {likelihood.value})"
        )


def check_optim(o: OptimConfig) -> None:
    _positive("optim.lr", o.lr)
    _non_negative("optim.weight_decay", o.weight_decay)
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"optim.momentum={o.momentum} must lie in [0, 1)")
    if o.warmup_epochs < 0:
        raise ConfigError(f"optim.warmup_epochs={o.warmup_epochs} must be zero or positive")
    _fraction("optim.final_lr_fraction", o.final_lr_fraction)
    if o.clip_norm is not None:
        _positive("optim.clip_norm", o.clip_norm)


def check_trainer(t: TrainerConfig) -> None:
    check_counts("trainer", t, ("epochs", "batch_size", "num_particles", "eval_every"))
    _off_or_positive("trainer.patience", t.patience)
    _off_or_positive("trainer.checkpoint_every", t.checkpoint_every)
    _non_negative("trainer.progress_every_s", t.progress_every_s)
    check_counts("trainer", t, ("devices", "replicas"))
    if t.max_memory_gb is not None:
        _positive("trainer.max_memory_gb", t.max_memory_gb)
    _positive("trainer.compilation_cache_gb", t.compilation_cache_gb)
    if t.batch_size % t.devices:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} must be a multiple of trainer.devices={t.devices}"
            " (each device takes an equal share of every batch)"
        )
    if t.replicas > 1 and (t.devices > 1 or t.resume):
        other = f"trainer.devices={t.devices}" if t.devices > 1 else "trainer.resume"
        raise ConfigError(
            f"trainer.replicas={t.replicas} trains on one device from the start; drop {other} "
            "or set trainer.replicas=1"
        )


def check_inference(i: InferenceConfig) -> None:
    """The sampler's ranges (checked whatever the method, so a typo is caught at once)."""
    check_counts("inference", i, ("num_warmup", "num_samples", "num_chains", "max_tree_depth"))
    check_counts("inference", i, ("thinning",))
    if i.thinning > i.num_samples:
        raise ConfigError(
            f"inference.thinning={i.thinning} keeps no draw of inference.num_samples="
            f"{i.num_samples}; lower the thinning or raise num_samples"
        )
    if not 0 < i.target_accept < 1:
        raise ConfigError(
            f"inference.target_accept={i.target_accept} must lie strictly between 0 and 1 "
            "(0.8 is usual; 0.9-0.99 for hard posteriors)"
        )


# jax.random.PRNGKey takes a 32-bit signed integer while 64-bit mode is off (JAX's default):
# seed=2**31 overflows when the key is made, after the run folder exists.
MAX_SEED = 2**31 - 1


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed={seed} is out of range; use an integer from 0 to {MAX_SEED}")


WANDB_MODES = ("online", "offline", "disabled")


def check_loggers(cfg: LoggerConfig) -> None:
    """A W&B mode it knows; TensorBoard's folder inside the run folder, or an absolute
    path the user chose (a relative one climbing out with ``..`` would write elsewhere)."""
    if cfg.wandb is not None and cfg.wandb.mode is not None and cfg.wandb.mode not in WANDB_MODES:
        raise ConfigError(
            f"logger.wandb.mode={cfg.wandb.mode}: choose one of {', '.join(WANDB_MODES)} "
            "(or null: online when a key is configured, offline otherwise)"
        )
    if cfg.tensorboard is not None:
        folder = PurePath(str(cfg.tensorboard.dir))
        if not folder.is_absolute() and ".." in folder.parts:
            raise ConfigError(
                f"logger.tensorboard.dir={cfg.tensorboard.dir!r} leaves the run folder; give "
                "a folder inside it (tensorboard, the default) or an absolute path"
            )


# A run name is one folder under the output root (experiments/<name>/<timestamp>/): letters,
# digits and the characters below, starting with a letter, digit or _. So no path
# separator, no "." or "..", no hidden folder, no control characters, no folder a shell
# would read as an option, nothing written outside the root.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+,@-]*")
MAX_NAME_BYTES = 255  # the longest file name common file systems allow
NAME_RULE = (
    "use one folder name of letters, digits and ._-=+,@ that starts with a letter, "
    f"digit or _ (at most {MAX_NAME_BYTES} bytes, no '/')"
)


def check_name(name) -> None:
    text = str(name)
    if not text:
        raise ConfigError(f"name is empty; {NAME_RULE}")
    size = len(text.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ConfigError(f"name={text[:32]!r}... is {size} bytes long; {NAME_RULE}")
    if not _NAME.fullmatch(text):
        raise ConfigError(f"name={text!r} is not a safe run name; {NAME_RULE}")


@dataclass(frozen=True)
class KeyPolicy:
    """What one config key (with its sub-keys and its config group) may do."""

    key: str
    # Whether it can change a run's numbers. A key that cannot is left out of a sweep's job
    # folder names, the report's groups and header, and the keys jobs must share to train
    # as one vectorised program.
    changes_results: bool
    # Whether a run may be resumed with another value than its checkpoint was made with.
    may_change_on_resume: bool
    why: str


# The one table of config keys that are not plain settings of the computation: every key
# not listed changes results and must be the same on resume. A key that cannot change
# results may always change on resume (tests/test_key_policy.py holds the table to this
# and to the schema). A key covers its sub-keys ("logger" covers "logger.wandb.mode") and
# its config group ("hydra/launcher").
KEY_POLICY = (
    KeyPolicy("hydra", False, True,
              "Hydra's own settings (folders, launcher, logging); not in a run's config.json"),
    KeyPolicy("sweep", False, True,
              "the sweep preset: its jobs' own overrides carry what it sweeps"),
    KeyPolicy("name", False, True,
              "a label: a resumed run keeps the folder trainer.resume names"),
    KeyPolicy("logger", False, True,
              "where metrics are sent besides history.csv, not what they are"),
    KeyPolicy("data.root", False, True,
              "where the image files are found; their checksums fix their content"),
    KeyPolicy("data.download", False, True,
              "whether missing files are fetched; fetched files are checked alike"),
    KeyPolicy("trainer.progress", False, True, "how a run is watched"),
    KeyPolicy("trainer.progress_every_s", False, True, "how a run is watched"),
    KeyPolicy("trainer.checkpoint_every", False, True,
              "when the state is saved; epoch e draws from fold_in(key, e) wherever it starts"),
    KeyPolicy("trainer.resume", False, True, "which run folder continues"),
    KeyPolicy("trainer.max_memory_gb", False, True,
              "a cap that only refuses a run before it compiles"),
    KeyPolicy("trainer.compilation_cache", False, True,
              "a program loaded from the cache is the program compiled"),
    KeyPolicy("trainer.compilation_cache_gb", False, True, "the cache's size"),
    KeyPolicy("trainer.devices", True, True,
              "splits each batch between devices: the same sums in another order, so the "
              "numbers agree within float rounding; a run may move, runs do not group"),
)  # fmt: skip


def key_policy(key: str) -> KeyPolicy | None:
    """The row of ``KEY_POLICY`` that covers ``key`` (the longest), or None (a leading + or
    ~ of an override is ignored)."""
    key = key.lstrip("+~")
    rows = [r for r in KEY_POLICY if key == r.key or key.startswith((f"{r.key}.", f"{r.key}/"))]
    return max(rows, key=lambda r: len(r.key), default=None)


def changes_results(key: str) -> bool:
    """Whether ``key`` can change a run's numbers (``KEY_POLICY``; True for unlisted keys)."""
    row = key_policy(key)
    return row is None or row.changes_results


def may_change_on_resume(key: str) -> bool:
    """Whether a run may be resumed with another value of ``key`` (``KEY_POLICY``; False for
    unlisted keys)."""
    row = key_policy(key)
    return row is not None and row.may_change_on_resume


def flatten(tree, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b": leaf} (lists stay leaves): a config's dotted keys."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def as_dict(obj: Any) -> Any:
    """Plain JSON-ready view of a config dataclass (enums become their values)."""
    if is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    return obj
