"""Interrupts end as interrupts: a stop signal anywhere in a run ends it as ``interrupted``
(exit 130 for Ctrl-C, 143 for SIGTERM) in one line that names what is missing, the
hints printed after it work when typed, and ``latest`` names only completed runs.

Most probes run in this process (real signals sent to it, inside ``StopSignals``); the
ones that check the process boundary (Ctrl-C during start-up) start the command.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import bslrun_here, compose, default_sigint
from test_probes import TINY, bslrun, one_line

from bslrun.errors import RunInterrupted
from bslrun.lifecycle import StopSignals


@pytest.fixture(scope="module")
def tiny_cfg():
    return compose(*TINY)


def signalled_while(monkeypatch, target: str, signum: int) -> None:
    """Make ``target`` (module.function) send this process ``signum`` as it starts, as a
    signal arriving at that moment would, then do its work."""
    module, name = target.rsplit(".", 1)
    original = getattr(__import__(module, fromlist=[name]), name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, signalled)


def test_a_signal_while_the_figures_are_drawn_ends_the_run_as_interrupted(
    tiny_cfg, monkeypatch, tmp_path
):
    """Not a run that says completed with 3 of its 4 figures missing: the numbers are
    written first, and the line names the figures that are there."""
    from bslrun.run import run

    run_dir = tmp_path / "run"
    signalled_while(monkeypatch, "bslrun.plots.predicted_vs_observed", signal.SIGTERM)
    with pytest.raises(RunInterrupted) as stopped, StopSignals() as stop:
        run(tiny_cfg, run_dir, stop)
    line = str(stopped.value)
    assert stopped.value.exit_code == 143 and "\n" not in line
    assert "stopped by SIGTERM" in line and "not all the figures" in line
    assert "learning_curves.png, weights.png)" in line, line
    assert line.endswith(f"; continue it with: bslrun trainer.resume={run_dir}"), line
    assert not (run_dir / "plots" / "predicted_vs_observed.png").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["rmse"] > 0
    assert Path(run_dir / "predictions.npz").is_file()

    monkeypatch.undo()  # resumed as the line says: evaluated again, every figure drawn
    run(compose(*TINY, f"trainer.resume={run_dir}"), run_dir)
    assert (run_dir / "plots" / "predicted_vs_observed.png").is_file()
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["test"] == metrics["test"] and again["val"] == metrics["val"]


# A bslrun whose first checkpoint save receives two Ctrl-C's in the middle (after its
# files are written, before its folder is renamed into place), as a user's would.
CTRL_C_TWICE_IN_A_SAVE = """
import os, signal, sys
from orbax.checkpoint._src.handlers import composite_checkpoint_handler as handlers

finalize = handlers.CompositeCheckpointHandler.finalize

def twice(self, directory):
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
    handlers.CompositeCheckpointHandler.finalize = finalize  # the later saves: left alone
    return finalize(self, directory)

handlers.CompositeCheckpointHandler.finalize = twice
sys.argv[0] = "bslrun"
from bslrun.cli import main
main()
"""


def test_ctrl_c_twice_during_a_save_is_one_line_130_and_its_hint_resumes_as_typed(tmp_path):
    """Not 68 lines, exit 1, status "bug" and a temporary orbax folder; and the hint it
    prints, typed as it is (no overrides repeated), continues the run to its end."""
    out = tmp_path / "out"
    run_dir = out / "run"
    argv = [*TINY, "trainer.epochs=2", "trainer.checkpoint_every=1", f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(out), HYDRA_FULL_ERROR="0")
    stopped = subprocess.run([sys.executable, "-c", CTRL_C_TWICE_IN_A_SAVE, *argv], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             preexec_fn=default_sigint)  # fmt: skip
    line = one_line(stopped.stderr)
    assert stopped.returncode == 130, stopped.stderr
    assert line.startswith("bslrun: error: stopped by SIGINT (the checkpoint of epoch 1 is saved)")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["exit_code"] == 130
    assert not [p for p in run_dir.rglob("*") if "tmp" in p.name]
    assert not (run_dir / "metrics.json").exists()
    assert not (out / "latest").exists(), "latest names only completed runs"

    hint = shlex.split(line.split("continue it with: ", 1)[1])
    assert hint[0] == "bslrun"
    resumed = bslrun_here(*hint[1:], out=out, cwd=tmp_path)  # the typed line, in this process
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["timing"]["resumed_from_epoch"] == 1 and metrics["train"]["epochs_run"] == 2
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert (out / "latest").resolve() == run_dir.resolve()


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["bslrun.cli.prevalidate", "hydra.main"])
def test_ctrl_c_while_bslrun_starts_is_one_line_and_130(where, capsys, monkeypatch, tmp_path):
    """While the config is composed and checked, or Hydra starts: not a traceback."""
    from bslrun import cli

    monkeypatch.setenv("BSLRUN_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setattr(sys, "argv", ["bslrun", *TINY])
    monkeypatch.setattr(where, ctrl_c)
    monkeypatch.setattr(cli, "leave", sys.exit)  # not os._exit, in this process
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    line = one_line(capsys.readouterr().err)
    assert stopped.value.code == 130 and line.startswith("bslrun: error: stopped by SIGINT")


def test_ctrl_c_at_start_up_of_the_real_command_is_one_line_and_130(tmp_path):
    """SIGINT as soon as the run folder is locked (the config is checked, Hydra is starting):
    wherever it lands from there, the command ends in one line and 130."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(tmp_path / "out"), HYDRA_FULL_ERROR="0")
    process = subprocess.Popen(
        [sys.executable, "-m", "bslrun", *TINY, f"hydra.run.dir={run_dir}"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint,
    )  # fmt: skip
    while not (run_dir / ".lock").exists() and process.poll() is None:
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert one_line(err).startswith("bslrun: error: stopped by SIGINT"), err


def test_latest_stays_on_the_newest_completed_run_after_a_failed_one(tmp_path):
    """After a typo in a data path (exit 3), ``latest`` still names the run that trained,
    not the failed one."""
    out = tmp_path / "out"
    (out / "good" / "run").mkdir(parents=True)
    os.symlink(Path("good") / "run", out / "latest")  # as a completed run left it
    failed = bslrun(*TINY, "model=flow", "data=file", "data.path=missing.csv", cwd=tmp_path)
    assert failed.returncode == 3, failed.stderr
    assert os.readlink(out / "latest") == str(Path("good") / "run")
    assert [p.name for p in (out / "flow_file").iterdir()], "the failed run has a folder"


FOLDERS = {
    "plain": "/runs/bnn/2026-12-04_18-00-00_000001",
    "sweep-job": "/runs/multirun/x/0_debug=tiny,data.train_subset=0.1,seed=0",
    "quote": "/runs/it's mine",
    "space-and-dollar": "/runs/a b/$HOME",
}


@pytest.mark.parametrize("case", sorted(FOLDERS))
def test_the_resume_hint_typed_in_a_shell_gives_hydra_the_folder(case):
    """A sweep job's folder holds "=" and ",": unquoted, Hydra refused the hint (exit 2)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bslrun.lifecycle import typed_override

    typed = shlex.split(f"bslrun {typed_override('trainer.resume', FOLDERS[case])}")
    assert typed[0] == "bslrun" and len(typed) == 2, typed
    override = OverridesParser.create().parse_override(typed[1])
    assert override.key_or_group == "trainer.resume" and override.value() == FOLDERS[case]


def test_resume_alone_takes_the_folders_own_overrides_and_given_ones_replace_them(tmp_path):
    from bslrun import cli

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- debug=tiny\n- optim.lr=0.003\n- trainer.resume=/elsewhere\n"
    )
    resume = f"trainer.resume={tmp_path}"
    assert cli.resumed_argv([resume]) == ["debug=tiny", "optim.lr=0.003", resume]
    assert cli.resumed_argv(["optim.lr=0.1", resume]) == ["debug=tiny", "optim.lr=0.1", resume]
    assert cli.resumed_argv(["seed=2"]) == ["seed=2"]  # not resuming: left alone


def test_ctrl_c_in_bslrun_report_is_one_line_and_130(capsys, monkeypatch, tmp_path):
    from bslrun import report

    monkeypatch.setattr(report, "report", ctrl_c)
    assert report.main([str(tmp_path)]) == 130
    line = one_line(capsys.readouterr().err)
    assert line.startswith("bslrun-report: error: stopped by SIGINT"), line
