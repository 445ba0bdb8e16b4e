"""Every config option and preset composes and validates; bad values are refused
with one message naming the key (checked in-process: no JAX compilation, but for one
test that checks the seed's range against JAX itself)."""

from __future__ import annotations

import pytest
from conftest import compose

from bslrun import cli
from bslrun.config import (
    MAX_SEED,
    Binarize,
    BnnConfig,
    Config,
    DataConfig,
    Likelihood,
    Posterior,
)
from bslrun.errors import ConfigError

GROUPS = {
    group.name: sorted(cli.option_name(group, p) for p in group.rglob("*.yaml"))
    for group in cli.CONFIG_DIR.iterdir()
    if group.is_dir() and group.name != "hydra"
}


def test_default_composes_to_typed_config():
    cfg = compose()
    assert isinstance(cfg, Config)
    assert isinstance(cfg.data, DataConfig) and cfg.data.name == "wine_white"
    assert isinstance(cfg.model, BnnConfig) and cfg.model.posterior is Posterior.mean_field
    assert cfg.name == "bnn_wine_white"


# Options that need a partner to form a valid run (the default model is a BNN
# regressor on wine, the default data tabular). data=file needs a path (its existence is
# checked when loading, not when composing) and, for the default BNN, a target column.
PARTNERS = {
    "model=vae": ["data=mnist"],
    "data=file": ["data.path=table.csv", "data.target=y"],
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
    ("seed=-3", "seed=-3 is out of range; use an integer from 0 to 2147483647"),
    ("seed=2147483648", "seed=2147483648 is out of range; use an integer from 0 to 2147483647"),
    ("trainer.max_memory_gb=0", "trainer.max_memory_gb=0.0 must be a positive number"),
    ("model.likelihood=classification", "does not fit data=wine_white, a regression data set"),
]


@pytest.mark.parametrize("override, message", BAD)
def test_bad_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        cli.prevalidate([override])
    text = str(info.value)
    assert message in text
    assert "\n" not in text


BAD_COMBINATIONS = [
    (["model=flow", "model.depth=0"], "model.depth=0 must be a positive integer"),
    (["model=flow", "model.bins=1"], "model.bins=1 must be at least 2"),
    (["model=flow", "model.tail_bound=-1"], "model.tail_bound=-1.0 must be a positive number"),
    (["model=flow", "model.flow=glow"], "model.flow"),
    (["model=flow", "model.hidden=[]"], "model.hidden=[] must list positive layer widths"),
    (["model=flow", "data=mnist", "data.binarize=static"], "use data.binarize=none"),
    (["data=file"], "data=file needs a file: add data.path="),
    (["data=file", "data.path=t.csv"], "model=bnn needs targets but data=file has none"),
    (["model=flow", "data=file", "data.path=t.csv", "data.key=x"], "data.key=x names an array"),
    (["model=flow", "data=file", "data.path=t.csv", "data.task=regression"], "needs data.target"),
    (["data=file", "data.path=t.csv", "data.target=y", "data.columns=[y]"], "also in data.columns"),
    (["model=vae", "data=mnist", "model.posterior_flow=-1"], "model.posterior_flow=-1"),
    (["model.posterior=iaf", "model.flow_steps=0"], "model.flow_steps=0"),
    (["model.posterior=iaf", "model.flow_hidden=[0]"], "model.flow_hidden"),
    (["model.likelihood=student_t", "model.df=2"], "model.df=2.0 must be above 2"),
    (["model.df=5"], "add model.likelihood=student_t"),
    (["model.likelihood=heteroscedastic", "model.noise=linear"], "model.noise=linear needs"),
    (["data=mnist", "model.noise=linear"], "model.noise=linear needs"),
    (["model.noise=quadratic"], "model.noise"),
]


@pytest.mark.parametrize("overrides, message", BAD_COMBINATIONS)
def test_bad_combinations_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        cli.prevalidate(overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_lecture_maf_preset_matches_the_notebook_setup():
    cfg = compose("experiment=lecture_maf_moons")
    assert (cfg.data.name, cfg.data.n_train, cfg.data.noise) == ("moons", 10000, 0.05)
    assert (cfg.model.family, cfg.model.flow.value, cfg.model.depth) == ("flow", "maf", 3)
    assert list(cfg.model.hidden) == [128, 128] and cfg.model.activation.value == "relu"
    assert cfg.model.permutation.value == "reverse"
    assert (cfg.optim.name.value, cfg.optim.lr, cfg.optim.schedule.value) == (
        "adam",
        1e-3,
        "constant",
    )


def test_allowed_values_are_listed():
    with pytest.raises(ConfigError, match=r"expected one of \[relu, tanh, sigmoid"):
        cli.prevalidate(["model.activation=swish"])


def test_sweeps_validate_every_value():
    cli.prevalidate(["-m", "model.posterior=map,mean_field,lowrank,full_rank"])
    with pytest.raises(ConfigError, match="optim.lr=-1.0"):
        cli.prevalidate(["-m", "optim.lr=0.1,-1", "seed=1,2"])


def test_a_sweep_without_multirun_is_refused():
    with pytest.raises(ConfigError, match="add -m") as refused:
        cli.prevalidate(["seed=1,2"])
    assert "list value" not in str(refused.value)  # a seed is never a list
    with pytest.raises(ConfigError, match="add -m") as refused:
        cli.prevalidate(["data=moons,circles"])
    assert "list value" not in str(refused.value)  # nor a config group


def test_a_comma_list_for_a_list_key_hints_at_brackets():
    with pytest.raises(ConfigError) as refused:
        cli.prevalidate(["model=vae", "model.hidden=50,50"])
    assert str(refused.value) == (
        "model.hidden=50,50 sweeps over several values; add -m to run a sweep, "
        "or write model.hidden=[50,50] for one list value"
    )


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


# ----------------------------------------------------------------------- seed and name


def test_seed_range_is_the_one_jax_accepts():
    """JAX makes keys from 32-bit signed seeds (64-bit mode off): both ends work, one past fails."""
    import jax

    from bslrun import seeding

    assert MAX_SEED == 2**31 - 1
    for seed in (0, MAX_SEED):
        assert compose(f"seed={seed}").seed == seed
        seeding.streams(seed)
    with pytest.raises(OverflowError):
        seeding.streams(MAX_SEED + 1)
    assert not jax.config.jax_enable_x64


HOSTILE_NAMES = [
    "../../x",
    "..",
    ".",
    ".hidden",
    "a/b",
    "/abs",
    "a/",
    "a\\b",
    "-rf",
    "a b",
    "'a\nb'",  # quoted: the override parser then reads the escape as a newline
    "'a\tb'",
    "x" * 300,
    "'" + "é" * 128 + "'",  # 128 characters, 256 bytes in UTF-8
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_run_names_are_refused_in_one_line(name):
    with pytest.raises(ConfigError) as info:
        cli.prevalidate([f"name={name}"])
    message = str(info.value)
    assert message.startswith("name=") and "\n" not in message
    assert "use one folder name of letters, digits and ._-=+,@" in message


def test_an_empty_run_name_is_refused():
    with pytest.raises(ConfigError, match="^name is empty; use one folder name"):
        cli.prevalidate(["name="])


@pytest.mark.parametrize(
    "name", ["bnn_wine_white", "my-run.v2", "lr=0.01,seed=3", "a+b@host", "x" * 255, "_1"]
)
def test_ordinary_run_names_pass(name):
    assert compose(f"name='{name}'").name == name


def test_newline_in_a_name_is_named_escaped():
    with pytest.raises(ConfigError) as info:
        cli.prevalidate(["name='a\nb'"])
    assert str(info.value).startswith("name='a\\nb' is not a safe run name")


# ------------------------------------------------------------ Bayesian linear regression


def test_bnn_without_hidden_layers_composes_from_the_command_line():
    """model.hidden=[]: Bayesian linear (or logistic) regression, for every posterior."""
    for posterior in Posterior:
        cfg = compose("model.hidden=[]", f"model.posterior={posterior.value}")
        assert cfg.model.hidden == [] and cfg.model.posterior is posterior
    assert compose("model.hidden=[]", "data=mnist").model.likelihood is Likelihood.classification


def test_empty_hidden_is_refused_for_flows_and_kept_for_linear_vaes():
    with pytest.raises(ConfigError, match=r"model.hidden=\[\] must list positive layer widths"):
        cli.prevalidate(["model=flow", "model.hidden=[]"])
    # An MLP VAE without hidden layers has a linear encoder and decoder (a linear VAE).
    assert compose("model=vae", "data=mnist", "model.hidden=[]").model.hidden == []


def test_bnn_hidden_widths_must_be_positive():
    with pytest.raises(ConfigError) as info:
        cli.prevalidate(["model.hidden=[8,0]"])
    assert str(info.value) == (
        "model.hidden=[8, 0] must list positive layer widths "
        "(or be [] for Bayesian linear regression)"
    )


def test_checking_every_data_set_imports_no_jax():
    """The registry imports the data modules to find the data sets; a config error must
    still come before JAX is imported (about half a second)."""
    import subprocess
    import sys

    from bslrun.registry import datasets

    # Each data set with a family that accepts it (a flow models MNIST's raw intensities).
    commands = [
        [f"data={name}", "model=flow", "data.binarize=none"]
        if "mnist" in name
        else [f"data={name}"]
        for name in sorted(set(datasets()) - {"file"})
    ]
    code = (
        "import sys\n"
        "from bslrun.preflight import prevalidate\n"
        f"for argv in {commands!r}:\n"
        "    prevalidate(argv)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'numpyro')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_model_group_and_its_family_agree():
    with pytest.raises(ConfigError, match="choose the family with model=vae"):
        cli.prevalidate(["model.family=vae"])
