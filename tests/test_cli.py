"""The command line end to end, with tiny settings (debug=tiny): runs that end well in
this process through ``cli.main`` (conftest's ``bslrun_here``); in subprocesses what a
process of its own shows: a second process reproducing the first one's numbers, an exit
code after an error (``cli.leave`` ends the process with ``os._exit``), refusals, shell
completion, --version and --help."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import bslrun_here, make_uci_tree

from bslrun import artifacts, cli

EXPERIMENTS = cli.CONFIG_DIR / "experiment"
PRESETS = sorted(cli.option_name(EXPERIMENTS, p) for p in EXPERIMENTS.rglob("*.yaml"))
MNIST_PRESETS = ["bnn_mnist", "lecture_vae_mnist", "vae_mnist_benchmark"]
SHARED = Path(os.environ.get("BSLRUN_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
MNIST_DIR = SHARED / "data" / "mnist"
# Wine, toy data, and the UCI presets on a synthetic benchmark tree (conftest.make_uci_tree):
# a clone without the shared split files runs them too.
OFFLINE_PRESETS = [p for p in PRESETS if p not in MNIST_PRESETS]
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST copy not present")
REQUIRED = [
    "test.rmse",
    "test.nll",
    "test.coverage_95",
    "val.nll",
    "timing.compile_s",
    "timing.train_s",
    "timing.train_examples_per_sec",
    "seed",
    "versions.jax",
]


def bslrun(*args: str, out: Path, timeout: int = 300, **env_vars) -> subprocess.CompletedProcess:
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(out), HYDRA_FULL_ERROR="0", **env_vars)
    return subprocess.run(
        [sys.executable, "-m", "bslrun", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=out,
    )


def lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def run_folder(out: Path) -> Path:
    found = [p.parent for p in out.rglob("metrics.json")]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    result = bslrun_here("debug=tiny", "trainer.epochs=2", "seed=7", out=out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_default_run_writes_the_experiment_folder(default_run):
    out, result = default_run
    folder = run_folder(out)
    assert folder.parent.name == "bnn_wine_white" and folder.parent.parent == out
    for name in [
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "run.log",
        "history.csv",
        "predictions.npz",
        "checkpoint/params.msgpack",
        "plots/learning_curves.png",
        "plots/predicted_vs_observed.png",
    ]:
        assert (folder / name).is_file(), name
    assert not list(folder.rglob("*.tmp")), "a temporary file was left behind"
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "completed" and status["exit_code"] == 0
    assert status["error"] is None and status["started"] < status["ended"]
    # Written files get the usual permissions (umask), not mkstemp's private 0600.
    assert (folder / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~artifacts.CURRENT_UMASK
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in REQUIRED:
        assert lookup(metrics, key) is not None, key
    assert metrics["seed"] == 7
    assert 0.0 <= metrics["test"]["coverage_95"] <= 1.0
    with open(folder / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["train_loss"])) and r["val_nll"] for r in rows)
    predictions = np.load(folder / "predictions.npz")
    n_test = metrics["data"]["test_n"]
    for name in ["y", "mean", "std", "lower_95", "upper_95", "epistemic_std", "aleatoric_std"]:
        assert predictions[name].shape == (n_test,)
    assert np.all(predictions["lower_95"] <= predictions["upper_95"])
    # Targets come back in the original units: wine quality scores 3..9.
    assert set(np.unique(np.round(predictions["y"]))) <= set(range(3, 10))
    params = artifacts.load_params(folder / "checkpoint" / "params.msgpack")
    assert set(params) == {"w_loc", "w_scale", "noise_scale"}
    assert "test.rmse" in result.stdout and "wrote" in (folder / "run.log").read_text()


def test_same_seed_gives_identical_numbers(default_run, tmp_path):
    """The run again, in a process of its own (nothing it compiled or drew is shared)."""
    out, _ = default_run
    first = json.loads((run_folder(out) / "metrics.json").read_text())
    again = bslrun("debug=tiny", "trainer.epochs=2", "seed=7", out=tmp_path)
    assert again.returncode == 0, again.stderr
    second = json.loads((run_folder(tmp_path) / "metrics.json").read_text())
    for section in ("test", "val", "train"):
        assert first[section] == second[section], section


def run_presets(tmp_path, presets, *overrides, **env_vars):
    """All ``presets`` as one sweep (in this process); returns {name: metrics} of the jobs."""
    sweep = tmp_path / "sweep"
    result = bslrun_here(
        "-m", "experiment=" + ",".join(presets), "debug=tiny", *overrides,
        f"hydra.sweep.dir={sweep}", out=tmp_path, timeout=900, **env_vars,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = {}
    for job in sorted(sweep.iterdir()):
        if (job / "metrics.json").exists():
            metrics = json.loads((job / "metrics.json").read_text())
            overrides = (job / ".hydra" / "overrides.yaml").read_text().split()
            preset = next(o for o in overrides if o.startswith("experiment=")).partition("=")[2]
            found[preset] = (job, metrics)
    assert set(found) == set(presets)
    return found


def test_every_offline_preset_runs_one_tiny_epoch(tmp_path):
    runs = run_presets(
        tmp_path, OFFLINE_PRESETS, BSLRUN_UCI_DIR=str(make_uci_tree(tmp_path / "uci"))
    )
    for _, metrics in runs.values():
        assert np.isfinite(metrics["test"]["nll"])
    job, maf = runs["lecture_maf_moons"]
    assert np.isfinite(maf["test"]["kl_to_true"])
    for plot in ("density", "samples", "base_to_data"):
        assert (job / "plots" / f"{plot}.png").is_file()
    assert (runs["bnn_moons"][0] / "plots" / "uncertainty.png").is_file()


# Slow (80 s: the lecture's convolutional VAE evaluates 10,000 test images on the CPU);
# make test still runs every family on MNIST through test_matrix and the conv VAE
# through tests/models.
@pytest.mark.slow
@needs_mnist
def test_every_mnist_preset_runs_one_tiny_epoch(tmp_path):
    runs = run_presets(
        # data=mnist too: Hydra composes the sweep's base config before applying it.
        tmp_path, MNIST_PRESETS, "data=mnist", f"data.root={MNIST_DIR}", "data.download=false",
        "data.train_subset=0.004", "data.val_size=200",
    )  # fmt: skip
    job, bnn = runs["bnn_mnist"]
    assert 0 <= bnn["test"]["error"] <= 1 and 0 <= bnn["test"]["ece"] <= 1
    assert (job / "plots" / "reliability.png").is_file()
    for name in ("lecture_vae_mnist", "vae_mnist_benchmark"):
        job, vae = runs[name]
        test = vae["test"]
        # The importance-weighted bound is at least the ELBO (up to float error).
        assert test["nll"] <= -test["elbo"] + 1e-3
        assert 0 <= test["active_units"] <= vae["config"]["model"]["latent_dim"]
        assert test["bits_per_dim"] > 0
        for plot in ("samples", "reconstructions", "latent"):
            assert (job / "plots" / f"{plot}.png").is_file()
        samples = np.load(job / "samples.npz")
        assert samples["prior_samples"].shape == (64, 784)
    assert (runs["lecture_vae_mnist"][0] / "plots" / "manifold.png").is_file()


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=-1", "optim.lr"),
        ("model.activation=swish", "model.activation"),
        ("model.foo=3", "model.foo"),
        ("data=nope", "data=nope"),
    ],
)
def test_bad_override_exits_2_with_one_line_and_writes_nothing(tmp_path, override, key):
    result = bslrun(override, out=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bslrun: error:") and key in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_divergence_exits_4_and_keeps_history_and_parameters(tmp_path):
    result = bslrun("debug=tiny", "trainer.epochs=3", "optim=sgd", "optim.lr=1e30", out=tmp_path)
    assert result.returncode == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "diverged" in lines[0] and "optim.lr" in lines[0]
    folder = next(p.parent for p in tmp_path.rglob("history.csv"))
    assert (folder / "checkpoint" / "params.msgpack").is_file()
    assert not (folder / "metrics.json").exists()
    params = artifacts.load_params(folder / "checkpoint" / "params.msgpack")
    assert all(np.all(np.isfinite(v)) for v in params.values())
    assert "diverged" in (folder / "run.log").read_text()
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "diverged" and status["exit_code"] == 4


def test_latest_points_at_the_newest_run(default_run):
    out, _ = default_run
    latest = out / "latest"
    assert latest.is_symlink() and not Path(os.readlink(latest)).is_absolute()
    assert latest.resolve() == run_folder(out).resolve()


def completions(line: str) -> list[str]:
    """What bash completion offers for the command line ``line`` (Hydra's query mode)."""
    env = dict(os.environ, COMP_LINE=line, COMP_POINT=str(len(line)))
    result = subprocess.run(
        [sys.executable, "-m", "bslrun", "-sc", "query=bash"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_completion_offers_every_enum_value_by_its_plain_name():
    from bslrun.config import Posterior

    offered = completions("bslrun model.posterior=")
    assert sorted(offered) == sorted(f"model.posterior={p.value}" for p in Posterior)
    assert completions("bslrun model.posterior=me") == ["model.posterior=mean_field"]
    assert completions("bslrun trainer.epochs=") == ["trainer.epochs=300"]  # not an enum


def test_version_is_bslrun_s(tmp_path):
    from bslrun.version import __version__

    result = bslrun("--version", out=tmp_path)
    assert result.returncode == 0 and result.stdout == f"bslrun {__version__}\n"


def test_help_and_cfg_job(tmp_path):
    help_run = bslrun("--help", out=tmp_path)
    assert help_run.returncode == 0
    assert "experiment:" in help_run.stdout and "lecture_bnn_wine" in help_run.stdout
    cfg_run = bslrun("--cfg", "job", "model.posterior=lowrank", out=tmp_path)
    assert cfg_run.returncode == 0
    assert "posterior: lowrank" in cfg_run.stdout and "hidden:" in cfg_run.stdout
