"""Checkpoints and resume: an interrupted run, resumed, ends with an uninterrupted run's numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_engine import run_fit, tiny_problem, trainer

from bslrun.config import OptimConfig, as_dict
from bslrun.errors import ConfigError
from bslrun.inference import checkpoint

OPTIM = OptimConfig(lr=1e-2)


# ----------------------------------------------------------------------- config check


def test_config_differences_name_each_changed_key_and_ignore_how_a_run_is_watched():
    saved = {"seed": 0, "optim": {"lr": 0.01}, "trainer": {"epochs": 5, "progress": True}}
    same_run = {"seed": 0, "optim": {"lr": 0.01}, "trainer": {"epochs": 5, "progress": False}}
    assert checkpoint.config_differences(saved, same_run) == []
    other = {"seed": 1, "optim": {"lr": 0.01}, "trainer": {"epochs": 5, "resume": "x"}}
    assert checkpoint.config_differences(saved, other) == ["seed: 0 -> 1"]


def test_check_config_refuses_another_config_in_one_line(tmp_path):
    assert checkpoint.check_config(tmp_path, {"seed": 0}) is False  # nothing to resume
    checkpoint.folder(tmp_path).mkdir(parents=True)
    (checkpoint.folder(tmp_path) / checkpoint.CONFIG_FILE).write_text('{"seed": 0}')
    assert checkpoint.check_config(tmp_path, {"seed": 0}) is True
    with pytest.raises(ConfigError) as error:
        checkpoint.check_config(tmp_path, {"seed": 3})
    message = str(error.value)
    assert "\n" not in message and "seed: 0 -> 3" in message and "overrides.yaml" in message


# ----------------------------------------------------------------------- engine resume


class Interrupted(Exception):
    pass


def test_a_fit_interrupted_after_a_checkpoint_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    family, data = tiny_problem()
    trainer_cfg = trainer(epochs=12, patience=3)  # early stopping state must survive too
    config = {"test": "resume"}
    reference = run_fit(family, data, OPTIM, trainer_cfg)

    saves = []
    original_save = checkpoint.Checkpoints.save

    def save_then_die(self, epoch, arrays, progress):
        original_save(self, epoch, arrays, progress)
        saves.append(epoch)
        if epoch == 6:
            raise Interrupted  # as if killed right after this checkpoint

    monkeypatch.setattr(checkpoint.Checkpoints, "save", save_then_die)
    with pytest.raises(Interrupted):
        run_fit(
            family,
            data,
            OPTIM,
            trainer_cfg,
            checkpoints=checkpoint.Checkpoints(tmp_path, 3, config),
        )
    monkeypatch.setattr(checkpoint.Checkpoints, "save", original_save)

    resumed = run_fit(
        family, data, OPTIM, trainer_cfg, checkpoints=checkpoint.Checkpoints(tmp_path, 3, config)
    )
    assert saves == [3, 6]
    assert resumed.timing["resumed_from_epoch"] == 6
    assert resumed.history == reference.history
    assert (resumed.best_epoch, resumed.stopped_early) == (
        reference.best_epoch,
        reference.stopped_early,
    )
    for got, want in zip(
        jax.tree.leaves(resumed.params), jax.tree.leaves(reference.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_only_the_last_checkpoint_is_kept_and_the_final_epoch_is_saved(tmp_path):
    family, data = tiny_problem()
    run_fit(
        family, data, OPTIM, trainer(epochs=7), checkpoints=checkpoint.Checkpoints(tmp_path, 3, {})
    )
    saved = sorted(p.name for p in checkpoint.folder(tmp_path).iterdir())
    assert saved == ["7", checkpoint.CONFIG_FILE]


# ----------------------------------------------------------------------- SIGKILL, end to end

RUN = [
    "debug=tiny",
    "data.train_subset=0.1",
    "trainer.epochs=300",
    "trainer.eval_every=5",
    "trainer.checkpoint_every=5",
    "trainer.patience=0",
    "eval.num_samples=4",
]


def bslrun(*overrides: str, output: Path, wait: bool = True):
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(output))
    command = [sys.executable, "-m", "bslrun", *RUN, *overrides]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def saved_epochs(run_dir: Path) -> list[int]:
    found = checkpoint.folder(run_dir)
    return [int(p.name) for p in found.iterdir() if p.name.isdigit()] if found.is_dir() else []


def test_a_run_killed_with_sigkill_resumes_to_an_uninterrupted_runs_metrics(tmp_path):
    killed = tmp_path / "killed"
    process = bslrun(f"hydra.run.dir={killed}", output=tmp_path, wait=False)
    deadline = time.monotonic() + 120
    while max(saved_epochs(killed), default=0) < 10 and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within two minutes"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()
    assert not (killed / "metrics.json").exists(), "the run ended before it was killed"

    overrides = (killed / ".hydra" / "overrides.yaml").read_text()
    refused = bslrun("seed=1", f"trainer.resume={killed}", output=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"bslrun: error: cannot resume {killed}: its checkpoint was made with another config "
        f"(seed: 0 -> 1); repeat the original overrides (see {killed}/.hydra/overrides.yaml) "
        "or start a new run without trainer.resume"
    )
    assert (killed / ".hydra" / "overrides.yaml").read_text() == overrides  # left as it was

    resumed = bslrun(f"trainer.resume={killed}", output=tmp_path)  # continues in that folder
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed"]
    assert "resuming from the last checkpoint" in (killed / "run.log").read_text()
    from conftest import compose

    from bslrun.run import run

    run(compose(*RUN), tmp_path / "uninterrupted")  # in this process: one JAX start-up less

    got, want = (
        json.loads((d / "metrics.json").read_text()) for d in (killed, tmp_path / "uninterrupted")
    )
    assert got["timing"]["resumed_from_epoch"] >= 10
    for section in ("test", "val", "train"):
        assert got[section] == want[section], section
    history = [(d / "history.csv").read_text() for d in (killed, tmp_path / "uninterrupted")]
    assert history[0] == history[1]


def test_checkpoints_record_the_config_they_were_made_with(tmp_path):
    from conftest import compose

    cfg = compose("debug=tiny")
    checkpoint.Checkpoints(tmp_path, 5, as_dict(cfg)).close()
    saved = json.loads((checkpoint.folder(tmp_path) / checkpoint.CONFIG_FILE).read_text())
    assert saved == json.loads(json.dumps(as_dict(cfg)))
