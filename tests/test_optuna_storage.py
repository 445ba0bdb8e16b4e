"""A persistent optuna study (``hydra.sweeper.storage=sqlite:///...``) through the real
command, run twice: the second sweep, in a process of its own, resumes the study stored by
the first (run in this process: conftest.bslrun_here).

optuna 2.10's RDB storage fails on SQLAlchemy 2 (an AssertionError while it checks the
schema version), which is why pyproject.toml pins ``sqlalchemy>=1.4,<2``. Two sweeps of
two debug=tiny trials each: about 40 s on two idle cores (two minutes when they are
busy); a one-second in-process check of the storage comes first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import bslrun_here
from test_cli import bslrun

STUDY = "s"


@pytest.mark.filterwarnings("ignore:Deprecated API features detected")
def test_optunas_sqlite_storage_opens_with_the_installed_sqlalchemy(tmp_path):
    """The pin's reason, in a second: with SQLAlchemy 2, optuna 2.10 fails to create the
    study's tables (``assert version is not None`` in its schema check)."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="minimize")
    study.tell(study.ask(), 1.5)
    assert [t.value for t in optuna.load_study(study_name=STUDY, storage=storage).trials] == [1.5]


def sweep_command(storage: str) -> list[str]:
    return [
        "-m", "hydra/sweeper=optuna",
        f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={STUDY}",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
        "debug=tiny", "trainer.epochs=1",
        "optim.lr=tag(log, interval(1e-4, 1e-2))",
    ]  # fmt: skip


def jobs(out: Path) -> list[Path]:
    """Every job folder under ``out``, in the order they ran: sweep folders are named by
    their start time, jobs by their number within the sweep."""
    sweeps = sorted(p.parent for p in out.rglob("optimization_results.yaml"))
    return [
        job
        for sweep in sweeps
        for job in sorted(
            (p for p in sweep.iterdir() if p.is_dir() and p.name.split("_")[0].isdigit()),
            key=lambda p: int(p.name.split("_")[0]),
        )
    ]


# SQLAlchemy 1.4 warns, once, that optuna 2.10's models use its pre-2.0 API: the pin's reason.
@pytest.mark.filterwarnings("ignore:Deprecated API features detected")
def test_a_sqlite_study_is_stored_and_resumed_by_a_second_sweep(tmp_path):
    import optuna  # here, so that the warning filter above applies to its import

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # The first sweep in this process, the second in a process of its own: all it knows of
    # the first is what the storage holds.
    for attempt, command in ((1, bslrun_here), (2, bslrun)):
        result = command(*sweep_command(storage), out=tmp_path)
        assert result.returncode == 0, f"sweep {attempt}: {result.stderr[-3000:]}"
    runs = jobs(tmp_path)
    assert len(runs) == 4, runs  # two sweep folders of two jobs each

    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for trial, job in zip(trials, runs, strict=True):
        metrics = json.loads((job / "metrics.json").read_text())
        val_nll = metrics["val"]["nll"]
        assert math.isfinite(val_nll)
        assert trial.value == val_nll, (trial.number, job)
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        lr = float(next(o.split("=", 1)[1] for o in overrides if o.startswith("optim.lr=")))
        assert trial.params["optim.lr"] == lr
        assert 1e-4 <= lr <= 1e-2
    assert study.best_value == min(t.value for t in trials)
