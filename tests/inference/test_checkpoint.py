"""Checkpoints and resume: an interrupted run, resumed, ends with an uninterrupted run's numbers."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import bslrun_here, default_sigint
from test_engine import run_fit, tiny_problem, trainer

from bslrun.config import OptimConfig, Schedule, as_dict
from bslrun.errors import ConfigError
from bslrun.inference import checkpoint

OPTIM = OptimConfig(lr=1e-2, schedule=Schedule.constant)


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
    assert "\n" not in message and "seed: 0 -> 3" in message and "leave out" in message


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


# ----------------------------------------------------------------------- stopped saves

FINALIZE = (
    "orbax.checkpoint._src.handlers.composite_checkpoint_handler.CompositeCheckpointHandler"
    ".finalize"
)  # called once every file of a save is written, before its folder is renamed into place


def leftovers(run_dir: Path) -> list[str]:
    return [p.name for p in checkpoint.folder(run_dir).iterdir() if "tmp" in p.name]


def test_a_save_stopped_half_way_leaves_the_last_checkpoint_and_no_temporary_folder(
    tmp_path, monkeypatch
):
    """Ctrl-C without bslrun's handlers (KeyboardInterrupt) in the middle of a save."""
    saves = checkpoint.Checkpoints(tmp_path, 1, {})
    saves.save(1, {"w": np.zeros(3)}, {"epoch": 1, "history": []})

    def interrupted(self, directory):
        raise KeyboardInterrupt

    monkeypatch.setattr(FINALIZE, interrupted)
    with pytest.raises(KeyboardInterrupt):
        saves.save(2, {"w": np.ones(3)}, {"epoch": 2, "history": []})
    saves.close()
    assert leftovers(tmp_path) == [] and saved_epochs(tmp_path) == [1]


@pytest.mark.usefixtures("ctrl_c_as_in_a_terminal")
def test_a_second_ctrl_c_during_a_save_stops_once_the_save_is_complete(tmp_path, monkeypatch):
    """The first Ctrl-C asks for the save; a second one in the middle of it waits for it to
    be complete, then stops (130), so the run resumes from that checkpoint."""
    from orbax.checkpoint._src.handlers.composite_checkpoint_handler import (
        CompositeCheckpointHandler,
    )

    from bslrun.errors import RunInterrupted
    from bslrun.lifecycle import StopSignals

    finalize = CompositeCheckpointHandler.finalize

    def twice(self, directory):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return finalize(self, directory)

    monkeypatch.setattr(FINALIZE, twice)
    with StopSignals() as stop, pytest.raises(RunInterrupted) as stopped:
        saves = checkpoint.Checkpoints(tmp_path, 1, {}, stop.holding)
        saves.save(1, {"w": np.arange(3.0)}, {"epoch": 1, "history": []})
    saves.close()
    assert stopped.value.exit_code == 130
    assert str(stopped.value) == "stopped by SIGINT (the checkpoint of epoch 1 is saved)"
    assert leftovers(tmp_path) == [] and saved_epochs(tmp_path) == [1]
    arrays, progress = checkpoint.Checkpoints(tmp_path, 1, {}).latest({"w": np.zeros(3)})
    assert np.array_equal(arrays["w"], np.arange(3.0)) and progress["epoch"] == 1


@pytest.mark.usefixtures("ctrl_c_as_in_a_terminal")
def test_ctrl_c_during_the_save_that_ctrl_c_asked_for_lets_the_loop_stop_after_it(
    tmp_path, monkeypatch
):
    """The first Ctrl-C asked for this save, so the loop stops right after it (writing its
    history): the second one, in the middle of the save, neither cuts it nor raises."""
    from orbax.checkpoint._src.handlers.composite_checkpoint_handler import (
        CompositeCheckpointHandler,
    )

    from bslrun.lifecycle import StopSignals

    finalize = CompositeCheckpointHandler.finalize

    def again(self, directory):
        os.kill(os.getpid(), signal.SIGINT)
        return finalize(self, directory)

    monkeypatch.setattr(FINALIZE, again)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first: the loop saves, then stops
        saves = checkpoint.Checkpoints(tmp_path, 1, {}, stop.holding)
        saves.save(1, {"w": np.arange(3.0)}, {"epoch": 1, "history": []})
        saves.close()
    assert stop.pending() == signal.SIGINT
    assert leftovers(tmp_path) == [] and saved_epochs(tmp_path) == [1]


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
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=default_sigint)  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def saved_epochs(run_dir: Path) -> list[int]:
    found = checkpoint.folder(run_dir)
    return [int(p.name) for p in found.iterdir() if p.name.isdigit()] if found.is_dir() else []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: RUN trained without interruption (in this process: one JAX start-up less)."""
    from conftest import compose

    from bslrun.run import run

    folder = tmp_path_factory.mktemp("uninterrupted")
    run(compose(*RUN), folder)
    return folder


def assert_same_run(resumed: Path, reference: Path, min_epoch: int) -> None:
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (resumed, reference))
    assert got["timing"]["resumed_from_epoch"] >= min_epoch
    for section in ("test", "val", "train"):
        assert got[section] == want[section], section
    history = [(d / "history.csv").read_text() for d in (resumed, reference)]
    assert history[0] == history[1]


def test_a_run_killed_with_sigkill_resumes_to_an_uninterrupted_runs_metrics(
    tmp_path, uninterrupted
):
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
    # Killed without a word: status.json still says running, from a process that is gone.
    status = json.loads((killed / "status.json").read_text())
    assert status["status"] == "running" and status["pid"] == process.pid

    overrides = (killed / ".hydra" / "overrides.yaml").read_text()
    refused = bslrun("seed=1", f"trainer.resume={killed}", output=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"bslrun: error: cannot resume {killed}: its checkpoint was made with another config "
        "(seed: 0 -> 1); trainer.resume alone continues it as it was started: leave out the "
        "overrides that change these keys, or start a new run without trainer.resume"
    )
    assert (killed / ".hydra" / "overrides.yaml").read_text() == overrides  # left as it was

    # Continues in that folder (in this process: what is checked is the folder it writes).
    resumed = bslrun_here(*RUN, f"trainer.resume={killed}", out=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    # No new run folder: ``latest`` points at the resumed one.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "latest"]
    assert (tmp_path / "latest").resolve() == killed.resolve()
    assert "resuming from the last checkpoint" in (killed / "run.log").read_text()
    assert json.loads((killed / "status.json").read_text())["status"] == "completed"
    assert_same_run(killed, uninterrupted, 10)


@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR2], ids=lambda s: s.name
)
def test_a_run_stopped_by_a_signal_saves_exits_in_one_line_and_resumes(
    tmp_path, uninterrupted, stop
):
    """Ctrl-C, SIGTERM or a preemption notice: the run stops at the next epoch boundary,
    saves a checkpoint even with periodic checkpoints off, records ``interrupted`` and
    exits 130 (SIGINT) or 143; resumed, it ends with an uninterrupted run's numbers."""
    stopped = tmp_path / "stopped"
    process = bslrun(
        f"hydra.run.dir={stopped}", "trainer.checkpoint_every=0", output=tmp_path, wait=False
    )
    deadline = time.monotonic() + 120
    log = stopped / "run.log"
    while "] data " not in (log.read_text() if log.exists() else "") and process.poll() is None:
        assert time.monotonic() < deadline, "the run did not start within two minutes"
        time.sleep(0.02)
    time.sleep(0.5)  # into compilation or training: the signal waits for the epoch boundary
    process.send_signal(stop)
    process.wait(timeout=120)
    stderr = process.stderr.read().decode()
    assert process.returncode == (130 if stop == signal.SIGINT else 143), stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert f"stopped by {signal.Signals(stop).name} after epoch" in stderr
    assert f"bslrun trainer.resume={stopped}" in stderr
    status = json.loads((stopped / "status.json").read_text())
    assert status["status"] == "interrupted" and status["exit_code"] == process.returncode
    assert status["ended"] and not (stopped / "metrics.json").exists()
    assert saved_epochs(stopped), "no checkpoint was saved on the way out"
    assert (stopped / "history.csv").is_file()
    if stop != signal.SIGINT:
        return  # how the run resumes does not depend on which signal stopped it

    # The hint, typed as printed: the run's overrides (RUN) are not repeated (run in this
    # process: the command line is what is checked).
    hint = shlex.split(stderr.strip().split("continue it with: ", 1)[1])
    assert hint[0] == "bslrun"
    resumed = bslrun_here(*hint[1:], out=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(stopped, uninterrupted, 1)


def test_a_second_run_into_a_folder_in_use_refuses_and_writes_nothing(tmp_path):
    from bslrun.lifecycle import RunLock

    folder = tmp_path / "busy"
    lock = RunLock(folder).acquire()  # as a running run holds it
    try:
        before = sorted(p.name for p in folder.iterdir())
        refused = bslrun(f"hydra.run.dir={folder}", "seed=6", output=tmp_path)
        assert refused.returncode == 5
        assert refused.stderr.strip().startswith(
            f"bslrun: error: {folder} is in use by another run"
        )
        assert sorted(p.name for p in folder.iterdir()) == before  # nothing written there
    finally:
        lock.release()
    # The holder gone, its lock file left behind blocks nothing.
    assert RunLock(folder).acquire().held


def test_checkpoints_record_the_config_they_were_made_with(tmp_path):
    from conftest import compose

    cfg = compose("debug=tiny")
    checkpoint.Checkpoints(tmp_path, 5, as_dict(cfg)).close()
    assert not checkpoint.folder(tmp_path / "off").exists()
    checkpoint.Checkpoints(tmp_path / "off", 0, as_dict(cfg)).close()  # saves only when stopped
    assert not checkpoint.folder(tmp_path / "off").exists()
    saved = json.loads((checkpoint.folder(tmp_path) / checkpoint.CONFIG_FILE).read_text())
    assert saved == json.loads(json.dumps(as_dict(cfg)))
