"""Hints and examples that must work when followed (issue: "every hint works when typed"):
a refusal's suggestion, typed as printed, is accepted; a sweep whose every job fails alike
says so once; the UCI presets name the one variable they read; the report orders numbered
jobs as numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_probes import drive

from bslrun.runs import find_run_dirs, natural_order


def test_a_list_key_given_one_value_suggests_the_list_and_the_suggestion_is_accepted(
    capsys, monkeypatch, tmp_path
):
    code, line = drive(["model.hidden=50"], capsys, monkeypatch, tmp_path)
    assert code == 2 and "write model.hidden=[50]" in line
    suggested = line.split("write ", 1)[1].split(" ")[0]
    assert drive([suggested], capsys, monkeypatch, tmp_path) == (99, "not refused")


def test_a_sweep_whose_jobs_all_fail_alike_says_it_once_and_names_the_variable(tmp_path):
    env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(tmp_path), BSLRUN_UCI_DIR=str(tmp_path / "no"))
    env.pop("BSLRUN_UCI_SPLITS", None)
    result = subprocess.run(
        [sys.executable, "-m", "bslrun", "-m", "experiment=uci_wine_red", "data.split=0,1,2",
         "trainer.progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    said = [line for line in result.stderr.splitlines() if "no such folder" in line]
    # The first job's line as it fails, then one summary line for the three jobs.
    assert len(said) == 2, result.stderr
    assert all("set BSLRUN_UCI_DIR" in line for line in said)
    assert said[1].lstrip().startswith("3 jobs (")
    assert "3 job(s) failed" in result.stderr
    assert "0 completed, 3 failed" in result.stdout


def test_a_missing_split_folder_names_the_old_variable_as_no_longer_read(monkeypatch, tmp_path):
    from bslrun.data.splits import read_split_dir
    from bslrun.errors import DataError

    monkeypatch.setenv("BSLRUN_UCI_SPLITS", str(tmp_path))
    with pytest.raises(DataError, match="BSLRUN_UCI_SPLITS is no longer read"):
        read_split_dir(str(tmp_path / "absent"), 0)


def test_numbered_jobs_and_replicas_are_ordered_as_numbers(tmp_path):
    names = ["10_seed=10", "2_seed=2", "1_seed=1", "0_seed=0", "replica_10", "replica_9"]
    for name in names:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("seed: 0\n")
    found = [path.name for path in find_run_dirs([tmp_path])]
    assert found == ["0_seed=0", "1_seed=1", "2_seed=2", "10_seed=10", "replica_9", "replica_10"]
    assert sorted([Path("a/split 10"), Path("a/split 2")], key=natural_order) == [
        Path("a/split 2"),
        Path("a/split 10"),
    ]
