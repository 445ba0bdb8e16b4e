"""Every config option and preset composes and validates; bad values are refused
with one message naming the key (checked in-process: no JAX compilation)."""

from __future__ import annotations

import pytest

from bslrun import cli
from bslrun.config import Binarize, BnnConfig, Config, DataConfig, Likelihood, Posterior
from bslrun.errors import ConfigError

GROUPS = {
    group.name: sorted(p.stem for p in group.glob("*.yaml"))
    for group in cli.CONFIG_DIR.iterdir()
    if group.is_dir() and group.name != "hydra"
}


def compose(*overrides: str) -> Config:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bslrun.config import register

    register()
    with initialize_config_dir(config_dir=str(cli.CONFIG_DIR), version_base="1.3"):
        return cli.to_config(hydra_compose("config", overrides=list(overrides)))


def test_default_composes_to_typed_config():
    cfg = compose()
    assert isinstance(cfg, Config)
    assert isinstance(cfg.data, DataConfig) and cfg.data.name == "wine_white"
    assert isinstance(cfg.model, BnnConfig) and cfg.model.posterior is Posterior.mean_field
    assert cfg.name == "bnn_wine_white"


# Options that need a partner to form a valid run (the default model is a BNN
# regressor on wine, the default data tabular).
PARTNERS = {
    "model=vae": ["data=mnist"],
}


@pytest.mark.parametrize(
    "override", [f"{group}={option}" for group, options in GROUPS.items() for option in options]
)
def test_every_group_option_composes(override):
    compose(override, *PARTNERS.get(override, []))


def test_natural_choices_follow_the_model_and_data():
    assert compose().model.likelihood is Likelihood.regression
    bnn = compose("data=mnist")
    assert bnn.model.likelihood is Likelihood.classification
    assert bnn.data.binarize is Binarize.none
    vae = compose("data=mnist", "model=vae")
    assert vae.data.binarize is Binarize.dynamic
    assert compose("data=mnist", "model=vae", "data.binarize=none").data.binarize is Binarize.none


def test_model_and_data_mismatches_are_refused_before_loading():
    with pytest.raises(ConfigError, match="does not fit data=mnist, a classification data set"):
        cli.prevalidate(["data=mnist", "model.likelihood=regression"])
    with pytest.raises(ConfigError, match="model=vae needs an image data set"):
        cli.prevalidate(["model=vae"])
    with pytest.raises(ConfigError, match="iw_samples > 1 is not available"):
        cli.prevalidate(["experiment=lecture_vae_mnist", "model.iw_samples=5"])


LECTURE = {
    "lecture_wine_baseline": dict(posterior="map", likelihood="regression", epochs=100, subset=1.0),
    "lecture_bnn_wine_small": dict(
        posterior="full_rank", likelihood="regression", epochs=500, subset=0.3
    ),
    "lecture_bnn_wine": dict(
        posterior="full_rank", likelihood="regression", epochs=500, subset=1.0
    ),
    "lecture_prob_bnn_wine": dict(
        posterior="full_rank", likelihood="heteroscedastic", epochs=1000, subset=1.0
    ),
}


@pytest.mark.parametrize("preset", sorted(LECTURE))
def test_lecture_wine_presets_match_the_notebook_setup(preset):
    cfg = compose(f"experiment={preset}")
    expected = LECTURE[preset]
    assert cfg.name == preset
    assert cfg.data.name == "wine_white"
    assert (cfg.data.train_fraction, cfg.data.val_fraction, cfg.data.test_fraction) == (
        0.85,
        0.0,
        0.15,
    )
    assert cfg.data.train_subset == expected["subset"]
    assert list(cfg.model.hidden) == [8, 8] and cfg.model.activation.value == "sigmoid"
    assert cfg.model.posterior.value == expected["posterior"]
    assert cfg.model.likelihood.value == expected["likelihood"]
    assert cfg.optim.name.value == "rmsprop" and cfg.optim.lr == 1e-3
    assert cfg.optim.schedule.value == "constant"
    assert cfg.trainer.batch_size == 256 and cfg.trainer.epochs == expected["epochs"]


def test_lecture_vae_preset_matches_the_notebook_setup():
    cfg = compose("experiment=lecture_vae_mnist")
    assert cfg.data.name == "mnist"
    assert cfg.data.binarize.value == "static" and cfg.data.threshold == 0.5
    assert cfg.model.architecture.value == "conv" and cfg.model.latent_dim == 2
    assert cfg.optim.name.value == "adam" and cfg.optim.lr == 5e-4
    assert cfg.trainer.batch_size == 32


def test_user_overrides_beat_presets():
    cfg = compose("experiment=lecture_bnn_wine", "optim.lr=0.01", "model.posterior=lowrank")
    assert cfg.optim.lr == 0.01 and cfg.model.posterior is Posterior.lowrank


BAD = [
    ("model.foo=1", "unknown key model.foo"),
    ("+model.foo=1", "unknown key model.foo"),
    ("foo=1", "unknown key foo"),
    ("model=nope", "unknown option model=nope; choose one of: bnn"),
    ("data=nope", "unknown option data=nope"),
    ("experiment=nope", "unknown option experiment=nope"),
    ("optim.lr=-0.1", "optim.lr=-0.1 must be a positive number"),
    ("optim.lr=abc", "optim.lr"),
    ("trainer.batch_size=0", "trainer.batch_size=0 must be a positive integer"),
    ("trainer.epochs=0", "trainer.epochs=0"),
    ("model.activation=swish", "model.activation"),
    ("model.posterior=laplace", "model.posterior"),
    ("optim.name=lbfgs", "optim.name"),
    ("data.val_fraction=0.5", "must sum to 1"),
    ("data.train_subset=0", "data.train_subset=0.0 must lie in (0, 1]"),
    ("model.hidden=[8,-1]", "model.hidden"),
    ("model.prior_scale=0", "model.prior_scale"),
    ("optim.momentum=1.5", "optim.momentum"),
    ("eval.num_samples=0", "eval.num_samples"),
    ("trainer.patience=-1", "trainer.patience"),
    ("seed=-3", "seed=-3"),
    ("model.likelihood=classification", "does not fit data=wine_white, a regression data set"),
]


@pytest.mark.parametrize("override, message", BAD)
def test_bad_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        cli.prevalidate([override])
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_allowed_values_are_listed():
    with pytest.raises(ConfigError, match=r"expected one of \[relu, tanh, sigmoid"):
        cli.prevalidate(["model.activation=swish"])


def test_sweeps_validate_every_value():
    cli.prevalidate(["-m", "model.posterior=map,mean_field,lowrank,full_rank"])
    with pytest.raises(ConfigError, match="optim.lr=-1.0"):
        cli.prevalidate(["-m", "optim.lr=0.1,-1", "seed=1,2"])


def test_a_sweep_without_multirun_is_refused():
    with pytest.raises(ConfigError, match="add -m"):
        cli.prevalidate(["seed=1,2"])


def test_patience_without_a_validation_split_is_accepted():
    cfg = compose("experiment=lecture_bnn_wine", "trainer.patience=5")
    assert cfg.data.val_fraction == 0.0 and cfg.trainer.patience == 5


def test_help_lists_every_group_and_option_with_a_description():
    text = cli.help_text()
    for group, options in GROUPS.items():
        assert f"  {group}:" in text
        for option in options:
            line = next(line for line in text.splitlines() if line.strip().startswith(option + " "))
            assert len(line.split(None, 1)) == 2, f"{group}/{option} has no description"
