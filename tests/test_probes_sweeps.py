"""Probes of sweeps, replicas and loggers: each fault is one line and its exit code, and
a summary of several runs says what each of them did.

Replica runs train in this process (``run.run_replicas``), sharing one trained folder;
loggers start in this process against a closed port on 127.0.0.1 or a local SQLite file.
Two commands run in a subprocess, where the process boundary is what is tested: a sweep
whose joblib worker is killed outright, and an optuna study whose every trial fails.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import compose
from test_probes import TINY, bslrun, drive

from bslrun import cli, loggers, run, seeding
from bslrun.data import load as load_data
from bslrun.errors import ConfigError, ResourceError, RunInterrupted
from bslrun.inference import memory
from bslrun.models import build as build_family

# Early stopping after two validations without improvement: seeds 0 and 1 stop at
# different epochs (checked below, so that the test cannot pass by their agreeing).
EARLY = [*TINY, "trainer.epochs=40", "trainer.patience=2", "trainer.checkpoint_every=0",
         "optim.lr=0.03"]  # fmt: skip


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("replicas") / "run"
    returned = run.run_replicas(compose(*EARLY, "trainer.replicas=2"), run_dir)
    return run_dir, returned


def test_replicas_summarise_each_replicas_training_not_replica_0s(two_replicas):
    run_dir, returned = two_replicas
    own = [json.loads((run_dir / f"replica_{r}" / "metrics.json").read_text()) for r in (0, 1)]
    epochs = [m["train"]["epochs_run"] for m in own]
    assert epochs[0] != epochs[1], "the replicas must stop at different epochs here"
    summary = json.loads((run_dir / "replicas.json").read_text())
    for r, m in enumerate(own):
        assert summary["train"][f"replica_{r}"] == {"seed": r, **m["train"]}
    best = [m["train"]["best_epoch"] for m in own]
    assert summary["mean"]["train"]["epochs_run"] == f"{min(epochs)}-{max(epochs)}"
    assert summary["mean"]["train"]["best_epoch"] == f"{min(best)}-{max(best)}"
    losses = [m["train"]["final_loss"] for m in own]
    assert summary["mean"]["train"]["final_loss"] == pytest.approx(np.mean(losses))
    # The console table: the mean with its standard error, and the ranges.
    table = run.format_table(returned, run_dir)
    rmse = [m["test"]["rmse"] for m in own]
    se = np.std(rmse, ddof=1) / np.sqrt(2)
    assert f"{np.mean(rmse):.4f} ± {se:.4f}" in table
    assert f"{min(epochs)}-{max(epochs)}" in table


def estimate_parts(cfg) -> tuple:
    """What ``memory.check`` takes for ``cfg``'s run, and its single-run estimate."""
    keys = seeding.streams(cfg.seed)
    data = load_data(cfg.data, keys.data)
    family = build_family(cfg.model, data.spec, len(data.train), keys.structure)
    parts = (family, data, cfg.optim, cfg.trainer, family.val_samples(cfg.eval),
             family.eval_samples(cfg.eval))  # fmt: skip
    return parts, memory.estimate(*parts).total


def test_the_memory_check_scales_with_the_replicas_trained_together(tmp_path):
    cfg = compose(*TINY, "trainer.replicas=3")
    parts, need = estimate_parts(cfg)
    limit_gb = 1.5 * need / memory.GB  # one replica fits, two or three do not
    trainer = dataclasses.replace(cfg.trainer, max_memory_gb=limit_gb)
    family, data, optim, _, val_samples, test_samples = parts
    memory.check(family, data, optim, trainer, val_samples, test_samples, replicas=1)
    with pytest.raises(ConfigError) as refused:
        run.run_replicas(dataclasses.replace(cfg, trainer=trainer), tmp_path / "run")
    line = str(refused.value)
    assert "training 3 replicas together needs about" in line and "\n" not in line
    assert "trainer.replicas" in line and "raise trainer.max_memory_gb" in line
    assert not list((tmp_path / "run").glob("replica_*"))  # refused before any replica


@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath"])
def test_a_harmless_config_from_elsewhere_reaches_the_task(how, monkeypatch, tmp_path):
    """A user's experiment from --config-dir or hydra.searchpath passes the checks before
    Hydra starts, and Hydra hands the task the config composed with it."""
    mine = tmp_path / "mine"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "plain.yaml").write_text(
        "# @package _global_\nseed: 3\ntrainer:\n  patience: 7\n"
    )
    where = ["--config-dir", str(mine)] if how == "--config-dir" else [
        f"hydra.searchpath=[file://{mine}]"]  # fmt: skip
    started = []
    monkeypatch.setenv("BSLRUN_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setattr(sys, "argv", ["bslrun", *where, "experiment=plain", *TINY])
    monkeypatch.setattr(cli, "PRE_LOCK", None)
    monkeypatch.setattr(cli, "task", lambda dcfg: started.append(cli.to_config(dcfg)))
    root = logging.getLogger()  # Hydra configures logging for its run: undone afterwards
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    cli.main()
    assert [(cfg.seed, cfg.trainer.patience) for cfg in started] == [(3, 7)]


# optuna settings that cannot run a study: refused before the first trial.
OPTUNA_REFUSED = {
    "no-trials": (["hydra.sweeper.n_trials=-1"], "hydra.sweeper.n_trials=-1"),
    "zero-trials": (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
    "sideways": (["hydra.sweeper.direction=sideways"], "choose minimize"),
    "reversed": (["optim.lr=interval(0.1,0.001)"], "interval(0.001, 0.1)"),
    "log-from-zero": (["optim.lr=tag(log,interval(0,0.1))"], "log interval starts above 0"),
}


@pytest.mark.parametrize("case", sorted(OPTUNA_REFUSED))
def test_optuna_settings_that_cannot_run_are_one_line_exit_2(case, capsys, monkeypatch, tmp_path):
    overrides, words = OPTUNA_REFUSED[case]
    argv = ["-m", "sweep=optuna_bnn", *overrides]
    code, line = drive(argv, capsys, monkeypatch, tmp_path)
    assert code == 2 and words in line, line
    assert not (tmp_path / "out").exists()  # before any trial


def test_a_study_in_which_every_trial_fails_ends_with_the_summary(tmp_path):
    """No trial completes (each refused by the memory check): optuna has no best trial,
    and the sweep ends as any other, listing its failed jobs, with exit 1."""
    result = bslrun("-m", "sweep=optuna_bnn", "trainer.max_memory_gb=1e-9",
                    "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", *TINY,
                    f"hydra.sweep.dir={tmp_path / 'study'}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "No trials are completed" not in result.stderr
    assert "sweep finished: 2 job(s), 0 completed, 2 failed" in result.stdout
    listed = result.stderr.split("bslrun: 2 job(s) failed:\n")[1].splitlines()
    # The two trials failed alike: one line names both (cli.failed_jobs).
    assert len(listed) == 1 and listed[0].lstrip().startswith("2 jobs ("), result.stderr
    assert "memory" in listed[0], result.stderr


def test_a_sound_optuna_study_is_not_refused(capsys, monkeypatch, tmp_path):
    argv = ["-m", "hydra/sweeper=optuna", "optim.lr=tag(log,interval(1e-3,0.1))"]
    assert drive(argv, capsys, monkeypatch, tmp_path) == (99, "not refused")


# ------------------------------------------------------------------------------- loggers

LOGGERS_REFUSED = {
    "wandb-mode": (["logger=wandb", "logger.wandb.mode=bogus"], "logger.wandb.mode=bogus"),
    "tensorboard-climbs-out": (
        ["logger=tensorboard", "logger.tensorboard.dir=../../x"],
        "leaves the run folder",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(LOGGERS_REFUSED))
def test_a_loggers_bad_setting_is_one_line_exit_2(case, capsys, monkeypatch, tmp_path):
    overrides, words = LOGGERS_REFUSED[case]
    code, line = drive(overrides, capsys, monkeypatch, tmp_path)
    assert code == 2 and words in line, line


def test_an_absolute_tensorboard_folder_is_the_users_choice(capsys, monkeypatch, tmp_path):
    argv = ["logger=tensorboard", f"logger.tensorboard.dir={tmp_path / 'events'}"]
    assert drive(argv, capsys, monkeypatch, tmp_path) == (99, "not refused")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mlflow_cfg(uri: str):
    return compose(*TINY, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}")


@pytest.fixture
def mlflow_env(monkeypatch):
    """MLflow's retry settings as bslrun leaves them (unset by the user), restored after."""
    for name in loggers.MLFLOW_RETRIES:
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    return monkeypatch


def test_an_unreachable_mlflow_server_is_one_line_after_bounded_retries(mlflow_env, tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    tick = time.monotonic()
    with pytest.raises(ResourceError) as refused:
        with loggers.opened(mlflow_cfg(uri), tmp_path / "run"):
            pass
    assert time.monotonic() - tick < 30  # MLflow's own defaults wait about 250 s
    assert "logger=mlflow could not start" in str(refused.value) and uri in str(refused.value)
    assert "\n" not in str(refused.value)


def test_ctrl_c_while_waiting_for_an_mlflow_server_stops_at_once(mlflow_env, tmp_path):
    mlflow_env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")  # a long wait: minutes
    mlflow_env.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "4")
    uri = f"http://127.0.0.1:{closed_port()}"
    pressed = time.monotonic() + 1.0  # Ctrl-C, one second in

    def stop_requested():
        return signal.SIGINT if time.monotonic() > pressed else None

    with pytest.raises(RunInterrupted) as stopped:
        with loggers.opened(mlflow_cfg(uri), tmp_path / "run", stop_requested=stop_requested):
            pass
    assert time.monotonic() - pressed < 2.0
    assert stopped.value.exit_code == 130 and "logger=mlflow" in str(stopped.value)


def test_an_sqlite_store_that_cannot_be_opened_is_one_line(mlflow_env, tmp_path):
    tick = time.monotonic()
    with pytest.raises(ResourceError) as refused:
        with loggers.opened(mlflow_cfg("sqlite:////proc/x.db"), tmp_path / "run"):
            pass
    assert time.monotonic() - tick < 10  # MLflow retries for about 100 s
    assert "cannot open the database /proc/x.db" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_relative_sqlite_store_is_the_working_folders(mlflow_env, tmp_path):
    import mlflow

    mlflow_env.chdir(tmp_path)
    with loggers.opened(mlflow_cfg("sqlite:///mlflow.db"), tmp_path / "run") as tracked:
        tracked.finish({"test": {"rmse": 0.5}}, [])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bnn_wine_white")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.data.metrics["test.rmse"] == 0.5
    assert experiment.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())


# ------------------------------------------------------------------ a worker killed outright


def running_pid(sweep: Path, within: float, jobs: int) -> int:
    """The process of the first job of ``sweep`` once ``jobs`` of its status.json files say
    running: every worker has its job, as when the out-of-memory killer strikes mid-sweep
    (killed sooner, a job not yet started has no folder to report)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        running = []
        for status in sorted(sweep.glob("*/status.json")):
            try:
                found = json.loads(status.read_text())
            except ValueError:  # being written
                continue
            if found["status"] == "running":
                running.append(found["pid"])
        if len(running) >= jobs:
            return running[0]
        time.sleep(0.2)
    raise AssertionError(f"{jobs} jobs of {sweep} did not start within {within} s")


def test_a_joblib_worker_killed_outright_is_reported_and_the_sweep_summarised(tmp_path):
    """What the out-of-memory killer does: SIGKILL to one worker. Each lost job is one line
    of the failed-jobs list, no job is left running, and the sweep's summary is printed."""
    sweep = tmp_path / "sweep"
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(tmp_path / "out"), HYDRA_FULL_ERROR="0")
    command = [sys.executable, "-m", "bslrun", "-m", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", "seed=0,1", *TINY,
               "trainer.epochs=100000", "trainer.patience=0",
               "trainer.checkpoint_every=0"]  # fmt: skip
    with subprocess.Popen(command, env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as sweeping:  # fmt: skip
        try:
            os.kill(running_pid(sweep, within=120, jobs=2), signal.SIGKILL)
            out, err = sweeping.communicate(timeout=120)
        finally:
            sweeping.kill()
    assert sweeping.returncode == 1, err
    assert "Traceback" not in err and "TerminatedWorkerError" not in err, err
    assert "sweep finished: 2 job(s), 0 completed, 2 failed" in out
    lines = err.strip().splitlines()
    assert lines[0] == "bslrun: 2 job(s) failed:", err
    # Both jobs were lost alike: one line names them (cli.failed_jobs).
    assert len(lines) == 2 and lines[1].lstrip().startswith("2 jobs ("), err
    assert "lost: a worker process" in lines[1], err
    states = [json.loads(p.read_text())["status"] for p in sorted(sweep.glob("*/status.json"))]
    assert states == ["failed", "failed"]
