"""Sweep configs (``sweep=<name>``, Hydra's ``hydra.sweeper.params``) and the UCI red-wine
preset: they compose, say what they sweep, and are validated before anything runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import bslrun_here, compose
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from test_cli import SHARED, bslrun

from bslrun import cli, preflight
from bslrun.errors import ConfigError
from bslrun.registry import register

SWEEPS = {
    "seeds": {"seed": ["0", "1", "2", "3", "4"]},
    "lr": {"optim.lr": ["0.0003", "0.001", "0.003", "0.01"]},
    "prior_scale": {"model.prior_scale": ["0.1", "0.3", "1", "3"]},
    "posteriors": {"model.posterior": ["map", "mean_field", "lowrank", "full_rank"]},
    "uci_splits": {"data.split": [str(k) for k in range(20)]},
}
# Optuna searches: {key: (low, high, log scale)} of their search spaces.
SEARCHES = {"optuna_bnn": {"optim.lr": (1e-4, 3e-2, True), "model.prior_scale": (0.03, 3.0, True)}}
UCI_DIR = SHARED / "data" / "uci_regression"
UCI_SPLITS = UCI_DIR / "wine-quality-red"


def sweeper_config(*overrides: str):
    """Hydra's own config (``cfg.hydra``) for ``overrides``."""
    register()
    with initialize_config_dir(config_dir=str(cli.CONFIG_DIR), version_base="1.3"):
        return hydra_compose("config", list(overrides), return_hydra_config=True).hydra


def sweeper_params(*overrides: str) -> dict[str, list[str]]:
    """{key: values} that Hydra's basic sweeper will run for ``overrides``."""
    params = sweeper_config(*overrides).sweeper.params
    lines = [f"{key}={value}" for key, value in params.items()]
    parsed = OverridesParser.create().parse_overrides(lines)
    return {o.get_key_element(): list(o.sweep_string_iterator()) for o in parsed}


def test_the_sweep_group_holds_exactly_these_sweeps():
    found = sorted(p.stem for p in (cli.CONFIG_DIR / "sweep").glob("*.yaml"))
    assert found == sorted([*SWEEPS, *SEARCHES])


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_each_sweep_composes_and_sweeps_what_it_says(name):
    assert sweeper_params(f"sweep={name}") == SWEEPS[name]
    compose(f"sweep={name}")  # the job config itself is unchanged and valid
    cli.prevalidate(["-m", f"sweep={name}"])  # every value composes with the default run


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_each_optuna_search_composes_and_minimises(name):
    hydra_cfg = sweeper_config(f"sweep={name}", "seed=5")
    assert hydra_cfg.sweeper._target_.endswith("OptunaSweeper")
    assert hydra_cfg.sweeper.direction == "minimize" and hydra_cfg.sweeper.n_trials > 0
    assert hydra_cfg.sweeper.sampler.seed == 5  # the study is seeded by the run's seed
    lines = [f"{key}={value}" for key, value in hydra_cfg.sweeper.params.items()]
    space = {}
    for override in OverridesParser.create().parse_overrides(lines):
        interval = override.value()
        space[override.get_key_element()] = (interval.start, interval.end, "log" in interval.tags)
    assert space == SEARCHES[name]
    cli.prevalidate(["-m", f"sweep={name}"])  # both ends of every interval are valid


def test_a_sweep_without_multirun_is_refused_in_one_line(tmp_path):
    result = bslrun("sweep=seeds", "debug=tiny", out=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "bslrun: error: sweep=seeds runs several jobs: add -m (or give seed one value for one run)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_bad_value_inside_a_sweep_file_is_refused(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    shutil.copytree(cli.CONFIG_DIR, configs)
    (configs / "sweep" / "bad.yaml").write_text(
        "# @package _global_\n# A grid with one bad value\n"
        "hydra:\n  sweeper:\n    params:\n      optim.lr: 1e-3,-1\n"
    )
    monkeypatch.setattr(preflight, "CONFIG_DIR", configs)
    with pytest.raises(ConfigError, match="optim.lr=-1"):
        cli.prevalidate(["-m", "sweep=bad"])
    # A value given on the command line replaces the file's sweep, as in Hydra's sweeper.
    cli.prevalidate(["-m", "sweep=bad", "optim.lr=0.01"])


@pytest.mark.skipif(not UCI_SPLITS.is_dir(), reason="shared UCI red-wine splits not present")
def test_uci_preset_reads_the_shared_splits(monkeypatch, tmp_path):
    monkeypatch.setenv("BSLRUN_UCI_DIR", str(UCI_DIR))
    cfg = compose("experiment=uci_wine_red")
    assert cfg.data.split_dir == str(UCI_SPLITS) and cfg.data.name == "wine_red"
    # The published protocol: every training row is used, for a fixed number of epochs.
    assert cfg.data.standardize and cfg.data.val_fraction == 0 and cfg.trainer.epochs > 0
    assert list(cfg.model.hidden) == [50] and cfg.model.activation.value == "relu"
    assert all((UCI_SPLITS / f"index_train_{k}.txt").is_file() for k in range(20))
    # Without the variable: ../shared/data/... from the working directory (a checkout's root).
    monkeypatch.delenv("BSLRUN_UCI_DIR")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "uci_regression").symlink_to(UCI_DIR)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    split_dir = Path(compose("experiment=uci_wine_red").data.split_dir)
    assert not split_dir.is_absolute() and split_dir.resolve() == UCI_SPLITS.resolve()


def test_sweep_seeds_runs_five_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    result = bslrun_here(
        "-m", "sweep=seeds", "debug=tiny", f"hydra.sweep.dir={sweep}", out=tmp_path
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == [f"{i}_seed={i},debug=tiny" for i in range(5)]
    assert result.stdout.splitlines()[-1] == (
        "bslrun: sweep finished: 5 job(s), 5 completed, 0 failed; summarise them with: "
        "bslrun-report sweep"
    )
    metrics = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert [m["seed"] for m in metrics] == [0, 1, 2, 3, 4]
    # The five jobs ran one after the other in one process; a later job's start-up time
    # counts from its own start, not from the process start: it is shorter than the time
    # since the first job started (when Hydra wrote that job's .hydra/config.yaml).
    started = [(job / ".hydra" / "config.yaml").stat().st_mtime for job in jobs]
    for k in range(1, 5):
        assert metrics[k]["timing"]["startup_s"] < started[k] - started[0], k


def test_job_folders_are_named_by_the_overrides_that_change_results():
    from bslrun.preflight import JOB_FOLDER_BYTES, job_folder

    assert job_folder(0, ["seed=1"]) == "0_seed=1"
    assert job_folder(2, []) == job_folder(2, ["trainer.progress=false"]) == "2"
    named = job_folder(3, [
        "experiment=flow_toys_benchmark/8gaussians", "trainer.progress=false",
        "data.root=/data/mnist", "model.hidden=[50,50]", "+logger.mlflow.experiment=x",
        "hydra.launcher.n_jobs=2",
    ])  # fmt: skip
    assert named == "3_experiment=flow_toys_benchmark-8gaussians,model.hidden=50,50"
    assert len(job_folder(1, [f"name_of_a_key={'9' * 300}"])) == JOB_FOLDER_BYTES
