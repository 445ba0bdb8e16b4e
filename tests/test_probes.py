"""A hostile-but-fair user's probes: every bad input or fault gives one line on stderr that
names the problem and the fix, the documented exit code (errors.py), and loses nothing
already written.

Probes decided before Hydra starts (config, overrides, output folder) drive ``cli.main``
in this process: they import no JAX and cost a fraction of a second each. Faults that
happen while a run trains or writes run the real command in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import bslrun_here, sweep_job

from bslrun import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny", "data.train_subset=0.1", "eval.num_samples=4"]


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text, text
    return lines[0]


def drive(argv: list[str], capsys, monkeypatch, tmp_path) -> tuple[int, str]:
    """Run ``bslrun argv`` in this process; (exit code, the one stderr line)."""
    monkeypatch.setenv("BSLRUN_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setattr(sys, "argv", ["bslrun", *argv])
    # Not refused before Hydra starts? Then stop there (exit 99), rather than train.
    monkeypatch.setattr("hydra.main", lambda **kw: lambda task: lambda: sys.exit(99))
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    err = capsys.readouterr().err
    return stopped.value.code, (one_line(err) if stopped.value.code != 99 else "not refused")


# (overrides, exit code, words the line must hold); every one is refused before Hydra starts.
REFUSED = {
    "unknown-key": (["foo=1"], 2, "foo"),
    "unknown-nested-key": (["model.foo=1"], 2, "model.foo"),
    "unknown-added-key": (["+trainer.foo=1"], 2, "foo"),
    "unknown-model": (["model=nope"], 2, "model=nope"),
    "unknown-data": (["data=nope"], 2, "data=nope"),
    "unknown-optim": (["optim=nope"], 2, "optim=nope"),
    "unknown-experiment": (["experiment=nope"], 2, "experiment=nope"),
    "unknown-debug": (["debug=nope"], 2, "debug=nope"),
    "epochs-text": (["trainer.epochs=abc"], 2, "trainer.epochs"),
    "epochs-zero": (["trainer.epochs=0"], 2, "trainer.epochs"),
    "epochs-negative": (["trainer.epochs=-1"], 2, "trainer.epochs"),
    "epochs-float": (["trainer.epochs=1.5"], 2, "trainer.epochs"),
    "batch-zero": (["trainer.batch_size=0"], 2, "trainer.batch_size"),
    "particles-zero": (["trainer.num_particles=0"], 2, "trainer.num_particles"),
    "eval-every-zero": (["trainer.eval_every=0"], 2, "trainer.eval_every"),
    "patience-negative": (["trainer.patience=-1"], 2, "trainer.patience"),
    "checkpoint-negative": (["trainer.checkpoint_every=-1"], 2, "trainer.checkpoint_every"),
    "devices-zero": (["trainer.devices=0"], 2, "trainer.devices"),
    "batch-not-split": (["trainer.devices=2", "trainer.batch_size=3"], 2, "trainer.batch_size"),
    "monitor-unknown": (["trainer.monitor=nope"], 2, "trainer.monitor"),
    "lr-negative": (["optim.lr=-1"], 2, "optim.lr"),
    "lr-zero": (["optim.lr=0"], 2, "optim.lr"),
    "lr-nan": (["optim.lr=nan"], 2, "optim.lr"),
    "lr-text": (["optim.lr=fast"], 2, "optim.lr"),
    "clip-zero": (["optim.clip_norm=0"], 2, "optim.clip_norm"),
    "weight-decay-negative": (["optim.weight_decay=-1"], 2, "optim.weight_decay"),
    "schedule-unknown": (["optim.schedule=nope"], 2, "optim.schedule"),
    "seed-negative": (["seed=-1"], 2, "seed"),
    "seed-too-large": (["seed=2147483648"], 2, "seed"),
    "seed-huge": (["seed=99999999999999999999"], 2, "seed"),
    "seed-float": (["seed=1.5"], 2, "seed"),
    "name-climbs-out": (["name=../../x"], 2, "name"),
    "name-has-slash": (["name=a/b"], 2, "name"),
    "name-dot-dot": (["name=.."], 2, "name"),
    "name-hidden": (["name=.hidden"], 2, "name"),
    "name-empty": (["name=''"], 2, "name"),
    "name-too-long": ([f"name={'x' * 300}"], 2, "name"),
    "hidden-zero-width": (["model.hidden=[0]"], 2, "model.hidden"),
    "hidden-negative-width": (["model.hidden=[-5]"], 2, "model.hidden"),
    "hidden-text": (["model.hidden=abc"], 2, "model.hidden"),
    "posterior-unknown": (["model.posterior=nope"], 2, "model.posterior"),
    "activation-unknown": (["model.activation=nope"], 2, "model.activation"),
    "prior-scale-zero": (["model.prior_scale=0"], 2, "model.prior_scale"),
    "prior-scale-negative": (["model.prior_scale=-1"], 2, "model.prior_scale"),
    "likelihood-mismatch": (["model.likelihood=classification"], 2, "likelihood"),
    "rank-zero": (["model.posterior=lowrank", "model.rank=0"], 2, "model.rank"),
    "fractions-sum": (["data.train_fraction=0.9"], 2, "fraction"),
    "fraction-above-one": (["data.train_fraction=2"], 2, "fraction"),
    "val-fraction-negative": (["data.val_fraction=-0.1"], 2, "fraction"),
    "subset-zero": (["data.train_subset=0"], 2, "data.train_subset"),
    "rank-negative": (["model.posterior=lowrank", "model.rank=-1"], 2, "model.rank"),
    "noise-scale-negative": (["model.noise_scale=-1"], 2, "model.noise_scale"),
    "df-not-above-two": (["model.likelihood=student_t", "model.df=1"], 2, "model.df"),
    "flow-steps-zero": (["model.posterior=iaf", "model.flow_steps=0"], 2, "model.flow_steps"),
    "warmup-negative": (["optim.warmup_epochs=-1"], 2, "optim.warmup_epochs"),
    "final-lr-above-one": (["optim.final_lr_fraction=2"], 2, "optim.final_lr_fraction"),
    "mnist-val-negative": (["data=mnist", "data.val_size=-1"], 2, "data.val_size"),
    "mnist-threshold-above-one": (["data=mnist", "data.threshold=2"], 2, "data.threshold"),
    "max-memory-zero": (["trainer.max_memory_gb=0"], 2, "trainer.max_memory_gb"),
    "eval-samples-zero": (["eval.num_samples=0"], 2, "eval.num_samples"),
    "toy-no-train": (["data=moons", "data.n_train=0"], 2, "data.n_train"),
    "toy-noise-negative": (["data=moons", "data.noise=-1"], 2, "data.noise"),
    "file-without-path": (["data=file"], 2, "data.path"),
    "flow-unknown-kind": (["model=flow", "model.flow=nope"], 2, "model.flow"),
    "flow-depth-zero": (["model=flow", "model.depth=0"], 2, "model.depth"),
    "flow-no-hidden": (["model=flow", "model.hidden=[]"], 2, "model.hidden"),
    "flow-bins-zero": (["model=flow", "model.flow=nsf", "model.bins=0"], 2, "model.bins"),
    "vae-latent-zero": (["model=vae", "data=mnist", "model.latent_dim=0"], 2, "latent_dim"),
    "vae-on-a-table": (["model=vae"], 2, "vae"),
    "flow-binarised": (["model=flow", "data=mnist", "data.binarize=static"], 2, "binarize"),
    "sweep-without-m": (["seed=1,2"], 2, "-m"),
    "sweep-config-without-m": (["sweep=seeds"], 2, "-m"),
    "lexer-less-than": (["model.hidden=[1<2]"], 2, "quote"),
    "lexer-open-paren": (["optim.lr=("], 2, "quote"),
    "lexer-stray-brace": (["name=a}b"], 2, "quote"),
    "callback-override": (["+hydra.callbacks.x._target_=os.makedirs"], 2, "hydra.callbacks"),
    "callback-replaced": (["hydra.callbacks.sweep_failures._target_=os.system"], 2, "_target_"),
    "target-in-model": (["+model._target_=os.system"], 2, "_target_"),
    "target-of-launcher": (["hydra.launcher._target_=os.system"], 2, "_target_"),
    "logging-class": (["hydra.job_logging.handlers.file.class=os.system"], 2, "class"),
    "launcher-typo": (["hydra/launcher=jobib"], 2, "hydra/launcher=jobib"),
    "resume-missing-folder": (["trainer.resume=/nonexistent/run"], 2, "trainer.resume"),
    "resume-in-a-sweep": (["-m", "trainer.resume=/tmp", "seed=1,2"], 2, "trainer.resume"),
    "output-in-proc": (["hydra.run.dir=/proc/x/y"], 5, "/proc/x/y"),
    "sweep-output-in-proc": (["-m", "seed=1,2", "hydra.sweep.dir=/proc/x/y"], 5, "/proc/x/y"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_bad_command_line_is_one_line_and_its_exit_code(case, capsys, monkeypatch, tmp_path):
    argv, code, words = REFUSED[case]
    got, line = drive(argv, capsys, monkeypatch, tmp_path)
    assert got == code, line
    assert line.startswith("bslrun: error: ") and words in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.json"))


def test_a_run_folder_that_is_a_file_is_refused(capsys, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    code, line = drive([f"hydra.run.dir={tmp_path}/file/run"], capsys, monkeypatch, tmp_path)
    assert code == 5 and "Not a directory" in line and "hydra.run.dir" in line
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_resume_folder_without_checkpoints_is_refused(capsys, monkeypatch, tmp_path):
    (tmp_path / "old").mkdir()
    code, line = drive([f"trainer.resume={tmp_path}/old"], capsys, monkeypatch, tmp_path)
    assert code == 2 and "checkpoint" in line


def test_a_folder_in_use_is_refused_before_anything_is_written(capsys, monkeypatch, tmp_path):
    from bslrun.lifecycle import RunLock

    busy = RunLock(tmp_path / "busy").acquire()
    try:
        code, line = drive([f"hydra.run.dir={tmp_path}/busy"], capsys, monkeypatch, tmp_path)
    finally:
        busy.release()
    assert code == 5 and "in use by another run" in line and f"pid {os.getpid()}" in line
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [".lock"]


USER_CONFIGS = {
    "python-tag": (
        "# @package _global_\nseed: !!python/object/apply:os.getpid []\n",
        "python tag",
    ),
    "bad-yaml": ("# @package _global_\nseed: [1, 2\n", "YAML"),
    "target": ("# @package _global_\nmodel:\n  _target_: os.system\n", "_target_"),
    "callback": (
        "# @package _global_\nhydra:\n  callbacks:\n    evil:\n      _target_: os.getpid\n",
        "hydra.callbacks",
    ),
}


@pytest.mark.parametrize("case", sorted(USER_CONFIGS))
def test_a_users_config_file_is_plain_values(case, capsys, monkeypatch, tmp_path):
    """Config files from elsewhere (--config-dir) hold values: no python tags, no code."""
    text, words = USER_CONFIGS[case]
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "evil.yaml").write_text(text)
    argv = ["--config-dir", str(tmp_path / "mine"), "experiment=evil"]
    code, line = drive(argv, capsys, monkeypatch, tmp_path)
    assert code == 2 and words in line, line


# ------------------------------------------------------------------ at run time


def bslrun(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(cwd / "out"), HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "-m", "bslrun", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
    )  # fmt: skip


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def no_temporary_files(run_dir: Path) -> bool:
    return not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp") or "-tmp" in p.name]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_missing_data_file_is_exit_3(tmp_path):
    run_dir = tmp_path / "run"
    result = bslrun(*TINY, "model=flow", "data=file", "data.path=missing.csv",
                    f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 3
    assert "missing.csv" in one_line(result.stderr)


def test_a_table_with_nan_is_exit_3(tmp_path):
    write_csv(tmp_path / "t.csv", "a,b\n" + "".join(f"{i},{i}\n" for i in range(30)) + "nan,1\n")
    result = bslrun(
        *TINY, "model=flow", "data=file", "data.path=t.csv", f"hydra.run.dir={tmp_path}/r",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "t.csv" in one_line(result.stderr)


def test_a_flow_on_one_column_draws_its_samples_beside_the_data(tmp_path):
    write_csv(tmp_path / "one.csv", "x\n" + "".join(f"{np.sin(i):.4f}\n" for i in range(40)))
    run_dir = tmp_path / "run"
    result = bslrun_here(
        *TINY, "model=flow", "data=file", "data.path=one.csv", f"hydra.run.dir={run_dir}",
        out=tmp_path / "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["test"]["nll"])
    assert "skipped" not in (run_dir / "run.log").read_text()
    assert (run_dir / "plots" / "samples.png").is_file()
    assert status_of(run_dir)["status"] == "completed"


def test_a_model_too_large_for_memory_is_refused_before_compiling(tmp_path):
    run_dir = tmp_path / "run"
    result = bslrun("model.hidden=[100000000]", "trainer.epochs=1", f"hydra.run.dir={run_dir}",
                    cwd=tmp_path, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "memory" in line and "model.hidden" in line
    assert status_of(run_dir)["status"] == "failed" and status_of(run_dir)["exit_code"] == 2


def test_a_sweep_with_a_failed_job_is_exit_1_and_names_it(tmp_path):
    write_csv(tmp_path / "good.csv", "a,b\n" + "".join(f"{i % 7},{i % 5}\n" for i in range(60)))
    result = bslrun(
        "-m", *TINY, "model=flow", "data=file", "data.path=good.csv,gone.csv",
        f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "1 job(s) failed" in result.stderr and "gone.csv" in result.stderr
    assert status_of(sweep_job(tmp_path / "sweep", 0))["status"] == "completed"
    assert status_of(sweep_job(tmp_path / "sweep", 1))["exit_code"] == 3


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A completed run with checkpoints, copied by the tests that damage it."""
    cwd = tmp_path_factory.mktemp("finished")
    run_dir = cwd / "run"
    result = bslrun(*TINY, "trainer.epochs=2", "trainer.checkpoint_every=1",
                    f"hydra.run.dir={run_dir}", cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run_dir


def damage_arrays(step: Path) -> Path:
    victim = max(
        (p for p in (step / "arrays").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


DAMAGE = {
    "arrays-truncated": (damage_arrays, "arrays"),
    "progress-garbled": (
        lambda step: (step / "progress" / "metadata").write_text("{oops"),
        "progress",
    ),
    "progress-empty": (lambda step: (step / "progress" / "metadata").write_text(""), "progress"),
    "progress-deleted": (lambda step: (step / "progress" / "metadata").unlink(), "progress"),
    "manifest-garbled": (lambda step: (step / "bslrun-manifest.json").write_text("["), "manifest"),
    "config-truncated": (
        lambda step: (step.parent / "config.json").write_text('{"seed"'),
        "config.json",
    ),
}


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(run, run_dir)
    (run_dir / ".lock").unlink(missing_ok=True)
    return run_dir


def test_a_damaged_checkpoint_is_one_line_and_keeps_the_metrics(finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    metrics = (run_dir / "metrics.json").read_bytes()
    victim = damage_arrays(run_dir / "checkpoint" / "train" / "2")
    result = bslrun(*TINY, "trainer.epochs=2", "trainer.checkpoint_every=1",
                    f"trainer.resume={run_dir}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 5, result.stderr
    line = one_line(result.stderr)
    assert f"damaged checkpoint file {victim}" in line and "start the run again" in line
    assert (run_dir / "metrics.json").read_bytes() == metrics


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_every_damage_to_a_checkpoint_is_named(case, finished_run, tmp_path):
    """The same refusal, through the checkpoint API, for every part of a checkpoint."""
    import jax.numpy as jnp

    from bslrun.errors import BslrunError
    from bslrun.inference import checkpoint

    run_dir = copy_of(finished_run, tmp_path)
    damage, words = DAMAGE[case]
    damage(run_dir / "checkpoint" / "train" / "2")
    config = json.loads((run_dir / "metrics.json").read_text())["config"]
    with pytest.raises(BslrunError) as refused:
        checkpoint.check_config(run_dir, config)
        checkpoint.Checkpoints(run_dir, 1, config).latest({"w": jnp.zeros(3)})
    line = one_line(str(refused.value))
    assert refused.value.exit_code == 5 and "damaged checkpoint file" in line and words in line


def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")


@pytest.mark.parametrize(
    "size",
    [
        "160k",
        pytest.param("48k", marks=pytest.mark.slow),
        pytest.param("400k", marks=pytest.mark.slow),
    ],
)
def test_a_full_disk_is_exit_5_and_leaves_no_temporary_files(tmp_path, size):
    """Whichever file the disk fills up on (Hydra's, a checkpoint, a figure): one line,
    exit 5, no temporary file or orbax folder left, and status.json where it fits."""
    disk = tmp_path / "disk"
    tmpfs(disk, size)
    try:
        result = bslrun(*TINY, "trainer.epochs=2", "trainer.checkpoint_every=1",
                        f"hydra.run.dir={disk}/run", cwd=tmp_path)  # fmt: skip
        assert result.returncode == 5, result.stderr
        assert "No space left on device" in one_line(result.stderr)
        assert no_temporary_files(disk)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_read_only_output_folder_is_exit_5(tmp_path):
    ro = tmp_path / "ro"
    tmpfs(ro, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        result = bslrun(*TINY, f"hydra.run.dir={ro}/run", cwd=tmp_path)
        assert result.returncode == 5
        assert "Read-only file system" in one_line(result.stderr)
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_printing_the_config_touches_no_folder(tmp_path):
    from bslrun import preflight

    plan = preflight.prevalidate(["--cfg", "job", f"hydra.run.dir={tmp_path}/x"])
    assert preflight.check_output_folder(plan) is None
    assert not (tmp_path / "x").exists()


def wrapped(inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as cause:
            raise RuntimeError("while saving") from cause
    except RuntimeError as outer:
        return outer


FAULTS = {
    "disk-full": (OSError(28, "No space left on device", "/x/metrics.json"), 5, "metrics.json"),
    "no-permission": (PermissionError(13, "Permission denied", "/x/run.log"), 5, "run.log"),
    "read-only": (OSError(30, "Read-only file system", "/x/a.png"), 5, "Read-only"),
    "wrapped-disk-full": (wrapped(OSError(28, "No space left on device", "/x/c")), 5, "/x/c"),
    "tensorstore-disk-full": (
        ValueError("RESOURCE_EXHAUSTED: Failed to write: No space left on device [28]"),
        5,
        "No space left",
    ),
    "xla-out-of-memory": (
        RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating"),
        5,
        "memory",
    ),
    "python-out-of-memory": (MemoryError(), 5, "memory"),
    "ctrl-c": (KeyboardInterrupt(), 130, "SIGINT"),
}


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_faults_of_the_machine_become_one_line_and_their_exit_code(case):
    error, code, words = FAULTS[case]
    mapped = cli.as_bslrun_error(error)
    assert mapped.exit_code == code and words in str(mapped) and "\n" not in str(mapped)


def test_a_bug_stays_a_bug():
    assert cli.as_bslrun_error(ValueError("index out of range")) is None
    assert cli.as_bslrun_error(OSError(2, "No such file or directory", "x")) is None


def test_stop_signals_wait_for_the_boundary_and_hand_on_to_the_handler_before():
    """A first signal only asks; after training a signal stops at once; the handler that
    was there before (submitit's requeue) is called once the run has ended."""
    import signal

    from bslrun.errors import RunInterrupted
    from bslrun.lifecycle import StopSignals

    seen = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    ignored = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)  # ignored before: stays ignored
            assert stop.pending() is None
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.pending() == signal.SIGUSR1 and seen == []
            with pytest.raises(RunInterrupted) as stopped:
                stop.now_or_never("training finished")
            assert stopped.value.exit_code == 143
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
        stop.hand_on(signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, before)
        signal.signal(signal.SIGUSR2, ignored)
