"""Sweeps through Hydra's plugins: joblib (parallel here), SLURM (through submitit's local
executor: no cluster), optuna; failed jobs, unique run folders and the start-up clock.

Subprocess runs of JAX (each with debug=tiny) where a process is what is tested: an optuna
study on joblib with a crashing trial (its hook is imported by every process), a sweep
through submitit's local executor, a preempted submitit job (slow), and the vectorised
launcher's sweep (what it prints while JAX and matplotlib start); two more stop before
JAX starts. Runs checked for their files alone run in this process (conftest.bslrun_here).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import bslrun_here, sweep_job
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_cli import bslrun

from bslrun import cli, clock, runs
from bslrun.errors import ConfigError
from bslrun.registry import register

FOLDER_NAME = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}")
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def hydra_config(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(cli.CONFIG_DIR), version_base="1.3"):
        return compose("config", list(overrides), return_hydra_config=True).hydra


def jobs_of(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def metrics_of(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def log_span(job: Path) -> tuple[datetime, datetime]:
    """First and last time stamps of a job's run.log."""
    stamps = [LOG_TIME.match(line) for line in (job / "run.log").read_text().splitlines()]
    times = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in stamps if m]
    return times[0], times[-1]


# ------------------------------------------------------------- no subprocess


def test_objective_is_the_monitored_validation_metric():
    def run(monitored, **val):
        return {"val": val, "train": {"final_loss": 3.0, "monitored": monitored}}

    assert cli.objective(run("val.nll", nll=1.25, rmse=0.7)) == 1.25
    assert cli.objective(run("val.rmse", nll=1.25, rmse=0.7)) == 0.7
    assert cli.objective(run("val.neg_elbo", neg_elbo=90.5)) == 90.5  # the VAE's
    # No validation split (val.* null): the training loss, never a test metric.
    no_val = {"val": {"nll": None}, "test": {"nll": 0.1}, "train": {"final_loss": 3.0}}
    assert cli.objective(no_val) == 3.0
    # Not finite: None, which optuna records as a failed trial.
    assert cli.objective(run("val.nll", nll=math.nan)) is None
    assert cli.objective(run("val.nll", nll=math.inf)) is None


def test_the_start_up_clock_restarts_for_a_later_run_in_the_same_process(monkeypatch):
    monkeypatch.setattr(clock, "_runs", 0)
    monkeypatch.setattr(clock, "_run_start", time.time() - 100.0)  # started 100 s ago
    clock.begin_run()  # the first run counts from the process start
    assert clock.seconds_since_run_start() >= 100.0
    clock.begin_run()  # a second job of a sweep counts from its own start
    assert 0.0 <= clock.seconds_since_run_start() < 1.0


def test_run_folders_carry_microseconds_so_runs_in_one_second_differ():
    first, second = (Path(hydra_config().run.dir).name for _ in range(2))
    assert FOLDER_NAME.fullmatch(first) and FOLDER_NAME.fullmatch(second)
    assert first < second  # distinct, and sorted by start time
    assert FOLDER_NAME.fullmatch(Path(hydra_config().sweep.dir).name)


def test_slurm_launcher_config_and_the_sbatch_script_it_makes(tmp_path, monkeypatch):
    launcher = hydra_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu").launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    documented = {
        "partition": "gpu",
        "timeout_min": 60,
        "gpus_per_node": 1,
        "cpus_per_task": 4,
        "mem_gb": 16,
        "array_parallelism": 32,
        "max_num_timeout": 3,
        "signal_delay_s": 120,
        "name": "bnn_wine_white",
    }
    assert {key: launcher[key] for key in documented} == documented
    # The sbatch script submitit writes from these values, as the plugin passes them
    # (generic keys as they are, SLURM-only keys prefixed). No cluster: a stand-in srun
    # that is never called satisfies submitit's check that one exists.
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    params = OmegaConf.to_container(launcher, resolve=True)
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(
        folder=tmp_path / "submitit", cluster="slurm", slurm_max_num_timeout=3
    )
    executor.update_parameters(
        **{
            key if key in generic else f"slurm_{key}": value
            for key, value in params.items()
            if key not in ("_target_", "submitit_folder", "max_num_timeout")
        }
    )
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    sbatch = set(re.findall(r"^#SBATCH (\S+)$", script, re.MULTILINE))
    expected = {"--partition=gpu", "--time=60", "--gpus-per-node=1", "--cpus-per-task=4"}
    expected |= {"--mem=16GB", "--signal=USR2@120", "--open-mode=append"}
    assert expected <= sbatch, sbatch
    assert executor._executor.max_num_timeout == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1"],
        ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "sweep=seeds"],
        ["-m", "sweep=optuna_bnn", "hydra/launcher=joblib", "hydra.sweeper.n_trials=4"],
        ["-m", "hydra/sweeper=optuna", "optim.lr=tag(log, interval(1e-4, 1e-1))",
         "trainer.batch_size=int(interval(16, 128))", "model.posterior=mean_field,lowrank"],
    ],
)  # fmt: skip
def test_prevalidate_accepts_launchers_and_optuna_search_spaces(argv):
    cli.prevalidate(argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        # An interval is validated by its two ends.
        (["-m", "sweep=optuna_bnn", "optim.lr=interval(-1, 0.1)"], "optim.lr=-1.0 must be"),
        # A float interval for an integer key: optuna would suggest floats.
        (["-m", "hydra/sweeper=optuna", "trainer.batch_size=interval(16, 128)"],
         "trainer.batch_size"),
        (["-m", "hydra/launcher=jobib", "seed=0,1"], "unknown option hydra/launcher=jobib"),
        (["-m", "hydra/launcher=slurm", "hydra.launcher.partion=gpu"], "partition"),
        (["hydra/sweeper=optuna", "optim.lr=interval(1e-4, 1e-1)"], "add -m"),
        (["sweep=optuna_bnn"], "sweep=optuna_bnn runs several jobs: add -m (or give"),
    ],
)  # fmt: skip
def test_prevalidate_refuses_bad_sweeps_in_one_line(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cli.prevalidate(argv)


# ---------------------------------------------------------------- subprocess


def test_a_bad_override_with_launcher_and_sweeper_is_refused_before_any_job(tmp_path):
    result = bslrun(
        "-m", "hydra/launcher=joblib", "sweep=optuna_bnn", "model.prior_scale=interval(0, 1)",
        out=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "bslrun: error: model.prior_scale=0.0 must be a positive number"
    ]
    assert list(tmp_path.iterdir()) == []


CRASH_HOOK = '''
"""Test hook, imported at start-up as sitecustomize by every Python process of the test's
command (loky workers included): the job named by $CRASH_JOB (a job number, or "run" for
a single run) raises an unexpected exception inside bslrun's task function."""
import os

if os.environ.get("CRASH_JOB"):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from bslrun import cli

    to_config = cli.to_config

    def crashing_to_config(dcfg):
        if HydraConfig.initialized():
            num = OmegaConf.select(HydraConfig.get(), "job.num")
            if str("run" if num is None else num) == os.environ["CRASH_JOB"]:
                raise RuntimeError("injected failure")
        return to_config(dcfg)

    cli.to_config = crashing_to_config
'''


def crashing_bslrun(*args: str, crash: str, out: Path) -> subprocess.CompletedProcess:
    """``bslrun *args`` in which job ``crash`` fails with an unexpected RuntimeError."""
    hook = out / "crash_hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(out), HYDRA_FULL_ERROR="0")
    env.update(PYTHONPATH=path, CRASH_JOB=crash)
    return subprocess.run(
        [sys.executable, "-m", "bslrun", *args],
        capture_output=True, text=True, cwd=out, timeout=300, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 3-trial optuna study on joblib with 2 workers: trials 0 and 1 run together, then
    trial 2 crashes as it starts (an unexpected exception, from the test hook)."""
    out = tmp_path_factory.mktemp("study")
    sweep = out / "sweep"
    result = crashing_bslrun(
        "-m", "sweep=optuna_bnn", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_trials=3", "debug=tiny", f"hydra.sweep.dir={sweep}",
        crash="2", out=out,
    )  # fmt: skip
    return sweep, result


def test_optuna_trials_run_in_parallel_with_joblib(study):
    sweep, result = study
    assert [job.name.split("_")[0] for job in jobs_of(sweep)] == ["0", "1", "2"], result.stderr
    assert metrics_of(sweep_job(sweep, 0))["seed"] == metrics_of(sweep_job(sweep, 1))["seed"] == 0
    # Trials 0 and 1 ran at the same time, in two worker processes.
    (start0, end0), (start1, end1) = log_span(sweep_job(sweep, 0)), log_span(sweep_job(sweep, 1))
    assert start0 < end1 and start1 < end0


def test_the_study_records_its_best_trial(study):
    sweep, _ = study
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    val_nll = [metrics_of(sweep_job(sweep, n))["val"]["nll"] for n in (0, 1)]
    assert math.isfinite(best["best_value"]) and best["best_value"] == min(val_nll)
    lr, prior_scale = best["best_params"]["optim.lr"], best["best_params"]["model.prior_scale"]
    assert 1e-4 <= lr <= 3e-2 and 0.03 <= prior_scale <= 3.0


def test_a_crashing_job_is_logged_and_listed_as_failed_and_the_study_goes_on(study):
    sweep, result = study
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-2:] == [
        "bslrun: 1 job(s) failed:",
        f"  sweep/{sweep_job(sweep, 2).name}: unexpected RuntimeError: injected failure "
        "(a bug: traceback in run.log)",
    ]
    log = (sweep_job(sweep, 2) / "run.log").read_text()
    assert "[ERROR] unexpected RuntimeError: injected failure" in log
    assert "Traceback (most recent call last)" in log and "crashing_to_config" in log
    assert runs.load_run(sweep_job(sweep, 2)).status == "failed"
    assert not (sweep_job(sweep, 2) / "metrics.json").exists()


def test_an_unexpected_crash_of_a_single_run_is_logged_to_run_log(tmp_path):
    result = crashing_bslrun("debug=tiny", crash="run", out=tmp_path)
    assert result.returncode == 1
    assert "RuntimeError: injected failure" in result.stderr  # Hydra's traceback, as before
    (run_dir,) = (p.parent for p in tmp_path.rglob("run.log"))
    log = (run_dir / "run.log").read_text()
    assert "[ERROR] unexpected RuntimeError: injected failure" in log
    assert "Traceback (most recent call last)" in log and "crashing_to_config" in log
    assert runs.load_run(run_dir).status == "failed"


def submit_processes(folder: Path) -> list[int]:
    """Process ids of submitit job processes working under ``folder``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in args and any(str(folder).encode() in a for a in args):
            found.append(int(proc.name))
    return found


def slurm_settings_on_the_local_executor() -> list[str]:
    """``hydra/launcher=submitit_local`` with every job setting of ``hydra/launcher=slurm``."""
    slurm = hydra_config("hydra/launcher=slurm").launcher
    local = hydra_config("hydra/launcher=submitit_local").launcher
    shared = [key for key in local if key not in ("_target_", "submitit_folder", "name")]
    return ["hydra/launcher=submitit_local", *[f"hydra.launcher.{k}={slurm[k]}" for k in shared]]


def test_a_sweep_with_the_slurm_settings_runs_through_submitits_local_executor(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "bslrun", "-m", *slurm_settings_on_the_local_executor(),
         "debug=tiny", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env=dict(os.environ, BSLRUN_OUTPUT_DIR=str(tmp_path)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [job.name.split("_")[0] for job in jobs_of(sweep)] == ["0"]
    assert metrics_of(sweep_job(sweep, 0))["seed"] == 0
    assert "Job completed successfully" in (sweep_job(sweep, 0) / "run.log").read_text()
    assert (sweep / ".submitit").is_dir()  # submitit's own job files, beside the job folders


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job through /proc")
def test_a_preempted_job_with_the_slurm_settings_is_requeued_into_its_own_folder(tmp_path):
    """submitit's local executor, with the job settings of hydra/launcher=slurm; the job is
    sent SLURM's warning signal (USR2) as a preemption would, and must run again, in the
    same job folder.

    Marked slow because it depends on where the signal lands: on a loaded machine, a
    signal handled inside JAX's compiled code was seen to requeue the job but let the
    signalled process finish its run instead of exiting (submitit's exit is swallowed).
    """
    sweep = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, "-m", "bslrun", "-m", *slurm_settings_on_the_local_executor(),
         "debug=tiny", f"hydra.sweep.dir={sweep}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=dict(os.environ, BSLRUN_OUTPUT_DIR=str(tmp_path)), start_new_session=True,
    )  # fmt: skip

    def job_log() -> str:  # the job folder appears once the job starts
        logs = list(sweep.glob("0_*/run.log"))
        return logs[0].read_text() if logs else ""

    try:
        # Once the job has loaded its data, JAX is imported: a signal that lands while a
        # compiled extension initialises aborts the process (submitit exits from its signal
        # handler) instead of requeueing it.
        deadline = time.time() + 120
        while time.time() < deadline and "] data " not in job_log():
            time.sleep(0.05)
        pids = submit_processes(sweep)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGUSR2)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr
    assert [job.name.split("_")[0] for job in jobs_of(sweep)] == ["0"]
    text = job_log()
    assert "this job is preempted" in text and "Requeued job" in text
    assert text.count("] data ") == 2, text  # two attempts, both logged in this folder
    assert text.index("Requeued job") < text.index("wrote")  # the second one finished
    assert metrics_of(sweep_job(sweep, 0))["seed"] == 0
    assert (sweep / ".submitit").is_dir()


# ------------------------------------------------------------ the vectorised launcher


def test_jobs_group_by_everything_but_the_shape_keeping_settings():
    from conftest import compose

    from bslrun.replicas import groups

    cfgs = [
        compose("seed=0"),
        compose("seed=3", "optim.lr=0.01", "model.prior_scale=0.5"),
        compose("model.hidden=[8]"),  # another architecture
        compose("seed=2", "logger=tensorboard", "trainer.progress=false"),  # only neutral keys
        compose("trainer.devices=2"),  # data-parallel runs train alone
        compose("model.hidden=[8]", "seed=5"),
        compose("model=flow", "data=moons", "model.permutation=random", "seed=0"),
        compose("model=flow", "data=moons", "model.permutation=random", "seed=1"),  # other flow
        compose("model=flow", "data=moons", "model.permutation=reverse", "seed=0"),
        compose("model=flow", "data=moons", "model.permutation=reverse", "seed=1"),
    ]
    assert groups(cfgs) == [[0, 1, 3], [2, 5], [4], [6], [7], [8, 9]]


# Lines of JAX and matplotlib that read as a crash and are none (issue 26).
NOISE = ("Unable to initialize backend", "Resetting cache at", "generated new fontManager")


def test_the_vectorised_launcher_writes_each_job_as_its_run_alone(tmp_path, monkeypatch):
    """Two jobs trained together (the grouping is tested above); each job's folder is
    complete (status, metrics, arrays, figures), its metrics equal the same job run alone
    to 1e-4, and it reopens. Neither the sweep's output nor a run.log holds JAX's search
    for a TPU, its cache's reset or matplotlib's building of its font cache (an empty one
    here, so that it is built)."""
    import numpy as np

    import bslrun as api

    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))
    common = ("debug=tiny", "trainer.epochs=3", "eval.num_samples=16", "data.train_subset=0.2")
    sweep = tmp_path / "vec"
    result = bslrun("-m", "hydra/launcher=vectorised", "seed=0,1", "model.hidden=[6]",
                    *common, f"hydra.sweep.dir={sweep}", out=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "launching 2 jobs: 2 trained together, 0 alone" in result.stdout + result.stderr
    assert (tmp_path / "matplotlib").is_dir()  # the font cache was built in this sweep
    jobs = jobs_of(sweep)
    assert len(jobs) == 2
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
        log = (job / "run.log").read_text()
        assert "trained together with the other jobs of its group (2 replicas)" in log
        for output in (result.stdout + result.stderr, log):
            assert not [line for line in NOISE if line in output], output
        assert (job / "predictions.npz").is_file() and (job / "plots").is_dir()
    single = tmp_path / "single"
    result = bslrun_here("seed=1", "model.hidden=[6]", *common, f"hydra.run.dir={single}",
                         out=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (together,) = [
        j for j in jobs
        if metrics_of(j)["seed"] == 1 and metrics_of(j)["config"]["model"]["hidden"] == [6]
    ]  # fmt: skip
    mine, theirs = metrics_of(together), metrics_of(single)
    for split in ("test", "val"):
        for name, value in theirs[split].items():
            assert mine[split][name] == pytest.approx(value, rel=1e-4, abs=1e-4), (split, name)
    assert list(runs.read_history(together / "history.csv")["epoch"]) == [1, 2, 3]
    # Reopened, the replica predicts what its folder saved (float tolerance: it was
    # evaluated in a batch of replicas).
    from conftest import compose

    from bslrun.data import load as load_data
    from bslrun.seeding import streams

    data = load_data(compose("seed=1", *common).data, streams(1).data)
    x = data.spec.x_scaler.inverse(data.test.x.astype(np.float64))  # original units
    run = api.load(together)
    saved = np.load(together / "predictions.npz")
    pred = run.predict(x, seed=run.eval_keys.artifacts)
    np.testing.assert_allclose(pred.mean, saved["mean"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred.upper_95, saved["upper_95"], rtol=1e-5, atol=1e-5)


def test_trainer_replicas_writes_each_replica_as_a_run(tmp_path):
    """trainer.replicas=2: replica_0 and replica_1 are complete runs with seeds 0 and 1,
    replicas.json holds their mean, and a report of the folder counts the two replicas."""
    import numpy as np

    run_dir = tmp_path / "ensemble"
    result = bslrun_here("trainer.replicas=2", "debug=tiny", "trainer.epochs=2",
                         "data.train_subset=0.2", "eval.num_samples=16",
                         f"hydra.run.dir={run_dir}", out=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"every metric: {run_dir / 'replicas.json'}" in result.stdout + result.stderr
    done = [metrics_of(run_dir / f"replica_{r}") for r in range(2)]
    assert [m["seed"] for m in done] == [0, 1]
    assert all(m["config"]["trainer"]["replicas"] == 1 for m in done)
    for r in range(2):
        status = json.loads((run_dir / f"replica_{r}" / "status.json").read_text())
        assert status["status"] == "completed"
    summary = json.loads((run_dir / "replicas.json").read_text())
    assert summary["replicas"] == {"replica_0": "completed", "replica_1": "completed"}
    rmse = [m["test"]["rmse"] for m in done]
    assert summary["mean"]["test"]["rmse"] == pytest.approx(np.mean(rmse))
    assert summary["stderr"]["test"]["rmse"] == pytest.approx(np.std(rmse, ddof=1) / np.sqrt(2))
    assert runs.find_run_dirs([run_dir]) == [(run_dir / f"replica_{r}").resolve() for r in (0, 1)]
    found = [runs.load_run(p) for p in runs.find_run_dirs([run_dir])]
    assert [(r.status, r.seed) for r in found] == [("completed", 0), ("completed", 1)]


def test_trainer_replicas_refuses_several_devices_in_one_line(tmp_path):
    result = bslrun("trainer.replicas=2", "trainer.devices=2", "trainer.batch_size=64",
                    out=tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "trainer.replicas=2 trains on one device from the start" in result.stderr
    assert "Traceback" not in result.stderr
