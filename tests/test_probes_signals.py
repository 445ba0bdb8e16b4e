"""Interrupts end as interrupts: a stop signal anywhere in a run ends it as ``interrupted``
(exit 130 for Ctrl-C, 143 for SIGTERM) in one line that names what is missing, and the
hints printed after it work when typed.

Most probes run in this process (real signals sent to it, inside ``StopSignals``); the
ones that check the process boundary (Ctrl-C during start-up) start the command.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import compose
from test_probes import TINY

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
    assert "learning_curves.png, weights.png" in line, line
    assert not (run_dir / "plots" / "predicted_vs_observed.png").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["rmse"] > 0
    assert Path(run_dir / "predictions.npz").is_file()
