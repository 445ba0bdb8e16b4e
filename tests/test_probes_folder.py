"""Files written only where they belong: never through a symbolic link in a run folder or a
report's folder, never outside the output folder a user chose, and a folder name that
cannot be used is one line before anything is written (exit codes: errors.py).

Every probe here is decided before Hydra starts, or by one writer: they run in this
process, and only ``save_params`` imports JAX.
"""

from __future__ import annotations

import errno
import logging
import sys

import numpy as np
import pytest
from test_probes import drive, one_line
from test_report import make_run

from bslrun import artifacts, cli, lifecycle, report
from bslrun.errors import ResourceError

PRECIOUS = b"a user's file: not bslrun's to change\n"


def users_file(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_bytes(PRECIOUS)
    return target


# ------------------------------------------------------- links in a run folder

# The entries bslrun or Hydra write in a run folder, each put there as a link to a file
# (or, for a folder, to a folder) of the user's.
LINKED_FILES = [".lock", "run.log", ".hydra/overrides.yaml", ".hydra/hydra.yaml",
                ".hydra/config.yaml", "status.json", "metrics.json"]  # fmt: skip
LINKED_FOLDERS = [".hydra", "plots", "checkpoint"]


@pytest.mark.parametrize("entry", LINKED_FILES)
def test_a_link_in_a_run_folder_is_refused_and_its_target_kept(
    entry, capsys, monkeypatch, tmp_path
):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / entry).symlink_to(users_file(tmp_path))
    code, line = drive([f"hydra.run.dir={run}"], capsys, monkeypatch, tmp_path)
    assert code == 5, line
    assert f"{run / entry} is a symbolic link" in line and "hydra.run.dir" in line
    assert (tmp_path / "precious.txt").read_bytes() == PRECIOUS
    assert entry == ".lock" or not (run / ".lock").exists()  # nothing written


@pytest.mark.parametrize("entry", LINKED_FOLDERS)
def test_a_linked_folder_in_a_run_folder_is_refused(entry, capsys, monkeypatch, tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run.mkdir()
    (run / entry).symlink_to(elsewhere, target_is_directory=True)
    code, line = drive([f"hydra.run.dir={run}"], capsys, monkeypatch, tmp_path)
    assert code == 5 and f"{run / entry} is a symbolic link" in line, line
    assert list(elsewhere.iterdir()) == []


def test_a_link_in_a_run_folder_to_resume_is_refused(capsys, monkeypatch, tmp_path):
    """trainer.resume continues in the run's own folder: a link there is refused first
    (its checkpoint stands checked: that is test_probes' concern)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.log").symlink_to(users_file(tmp_path))
    monkeypatch.setattr("bslrun.preflight.check_resume", lambda cfg, multirun: str(run))
    code, line = drive([f"trainer.resume={run}"], capsys, monkeypatch, tmp_path)
    assert code == 5 and f"{run / 'run.log'} is a symbolic link" in line, line
    assert (tmp_path / "precious.txt").read_bytes() == PRECIOUS


def test_a_link_in_a_sweep_folder_given_again_is_refused(capsys, monkeypatch, tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0_seed=1").mkdir(parents=True)
    (sweep / "0_seed=1" / "run.log").symlink_to(users_file(tmp_path))
    argv = ["-m", "seed=1,2", f"hydra.sweep.dir={sweep}"]
    code, line = drive(argv, capsys, monkeypatch, tmp_path)
    assert code == 5 and "0_seed=1/run.log is a symbolic link" in line, line
    assert (tmp_path / "precious.txt").read_bytes() == PRECIOUS


def test_the_lock_is_opened_without_following_a_link(monkeypatch, tmp_path):
    """A link made after the folder was checked (a race): the open itself refuses it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(users_file(tmp_path))
    monkeypatch.setattr(lifecycle, "refuse_links", lambda run_dir: None, raising=False)
    with pytest.raises(ResourceError, match="is a symbolic link"):
        lifecycle.RunLock(run).acquire()
    assert (tmp_path / "precious.txt").read_bytes() == PRECIOUS


def test_run_log_appends_but_never_through_a_link(tmp_path):
    log = tmp_path / "run.log"
    for message in ("first", "second"):
        handler = artifacts.RunLogHandler(log)
        handler.handle(logging.makeLogRecord({"msg": message, "levelno": logging.INFO}))
        handler.close()
    assert log.read_text() == "first\nsecond\n"
    linked = tmp_path / "linked.log"
    linked.symlink_to(users_file(tmp_path))
    with pytest.raises(OSError) as refused:
        artifacts.RunLogHandler(linked)
    assert refused.value.errno == errno.ELOOP
    assert (tmp_path / "precious.txt").read_bytes() == PRECIOUS


def test_run_log_is_written_by_that_handler():
    """config.yaml names it for run.log, and preflight lets bslrun's own handler through."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from bslrun import preflight
    from bslrun.registry import register

    register()
    with initialize_config_dir(config_dir=str(cli.CONFIG_DIR), version_base="1.3"):
        composed = compose("config", return_hydra_config=True)
    logging_tree = OmegaConf.to_container(composed.hydra.job_logging, resolve=False)
    handler = logging_tree["handlers"]["file"]
    assert handler["class"] == "bslrun.artifacts.RunLogHandler"
    assert handler["filename"].endswith("/run.log")
    preflight.refuse_foreign_code(composed)  # no ConfigError


WRITERS = {
    "write_bytes": lambda path: artifacts.write_bytes(path, b"new"),
    "write_json": lambda path: artifacts.write_json(path, {"a": 1}),
    "write_history": lambda path: artifacts.write_history(path, [{"epoch": 1}]),
    "write_npz": lambda path: artifacts.write_npz(path, {"a": np.zeros(2)}),
    "save_params": lambda path: artifacts.save_params(path, {"w": np.ones(2)}),
    "write_status": lambda path: artifacts.write_status(path.parent, "running", started="now"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_the_atomic_writers_replace_a_link_and_leave_its_target(writer, tmp_path):
    """os.replace renames over the link itself: the file is new, the link's target kept."""
    path = tmp_path / "run" / ("status.json" if writer == "write_status" else "file")
    path.parent.mkdir()
    path.symlink_to(users_file(tmp_path))
    WRITERS[writer](path)
    assert not path.is_symlink() and path.stat().st_size > 0
    assert (tmp_path / "precious.txt").read_bytes() == PRECIOUS


# ------------------------------------------------------------ bslrun-report


@pytest.fixture
def two_runs(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path / "runs", str(seed), [f"seed={seed}"], {"rmse": 0.5 + seed})
    return tmp_path / "runs"


def test_the_report_writes_no_plot_through_a_linked_plots_folder(two_runs, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (two_runs / "plots").symlink_to(elsewhere, target_is_directory=True)
    assert report.main([str(two_runs)]) == 5
    line = one_line(capsys.readouterr().err)
    assert f"{two_runs / 'plots'} is a symbolic link" in line and "--out" in line
    assert list(elsewhere.iterdir()) == []


def test_the_report_replaces_a_linked_report_file(two_runs, tmp_path):
    (two_runs / "report.md").symlink_to(users_file(tmp_path))
    assert report.main([str(two_runs)]) == 0
    assert not (two_runs / "report.md").is_symlink()
    assert (two_runs / "report.md").read_text().startswith("# bslrun report")
    assert (tmp_path / "precious.txt").read_bytes() == PRECIOUS


HOSTILE = "<script>alert(1)</script>&lt;|x"


def test_report_md_shows_names_and_values_as_text(tmp_path):
    """A run name and an override value holding a tag and ``|`` are text in report.md:
    no HTML gets through, and the tables keep their columns."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        run = make_run(runs, str(seed), [f"seed={seed}", f"data.path={HOSTILE}{seed}"],
                       {"rmse": 0.5 + seed})  # fmt: skip
        (run / ".hydra" / "config.yaml").write_text(f"seed: 0\nname: '{HOSTILE}'\n")
    make_run(runs, "2", ["seed=2"], log=f"[t][ERROR] {HOSTILE} failed\n", history=True)
    assert report.main([str(runs)]) == 0
    text = (runs / "report.md").read_text()
    assert "<" not in text and ">" not in text, text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;lt;" in text  # an entity shown too
    table = [line for line in text.splitlines() if line.startswith("| ")]
    columns = {line.replace("\\|", "").count("|") for line in table}
    assert len(columns) == 2 and "\\|x0" in text, table  # the group table, the runs' table


def test_a_backtick_in_a_folder_name_cannot_end_its_code_span():
    from bslrun.summary import code_span

    assert code_span("a`<b>") == "``a`<b>``"
    assert code_span("`x") == "`` `x ``"
    assert code_span("plain") == "`plain`"


# ------------------------------------------------------------- the output setting


def refused_with_output_dir(value: str, capsys, monkeypatch, tmp_path) -> tuple[int, str]:
    """``bslrun`` with ``BSLRUN_OUTPUT_DIR=value``, from ``tmp_path``; (code, the line)."""
    monkeypatch.chdir(tmp_path)  # a relative folder made by mistake lands in tmp_path
    monkeypatch.setenv("BSLRUN_OUTPUT_DIR", value)
    monkeypatch.setattr(sys, "argv", ["bslrun"])
    monkeypatch.setattr("hydra.main", lambda **kw: lambda task: lambda: sys.exit(99))
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    err = capsys.readouterr().err
    return stopped.value.code, (one_line(err) if stopped.value.code != 99 else "not refused")


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_output_setting_is_refused(value, capsys, monkeypatch, tmp_path):
    """config.yaml's ``${oc.env:BSLRUN_OUTPUT_DIR,experiments}/<name>``: empty, it is the
    filesystem's root."""
    code, line = refused_with_output_dir(value, capsys, monkeypatch, tmp_path)
    assert code == 2 and "BSLRUN_OUTPUT_DIR is empty" in line, line
    assert list(tmp_path.iterdir()) == []


def test_an_interpolation_in_the_output_setting_is_refused(capsys, monkeypatch, tmp_path):
    code, line = refused_with_output_dir("${oc.env:HOME}/runs", capsys, monkeypatch, tmp_path)
    assert code == 2 and "BSLRUN_OUTPUT_DIR=${oc.env:HOME}/runs" in line, line
    assert "$HOME/runs" in line and list(tmp_path.iterdir()) == []


# A byte that is not UTF-8 (0xff), as Python hands it over from the command line.
NOT_UTF8 = "r\udcffun"


def test_a_run_folder_that_is_not_utf8_is_refused_before_it_is_made(capsys, monkeypatch, tmp_path):
    argv = [f"hydra.run.dir='{tmp_path}/{NOT_UTF8}'"]
    code, line = drive(argv, capsys, monkeypatch, tmp_path)
    assert code == 2 and f"{tmp_path}/r\\xffun is not UTF-8" in line, line
    assert "hydra.run.dir" in line and list(tmp_path.iterdir()) == []


def test_an_output_setting_that_is_not_utf8_is_refused(capsys, monkeypatch, tmp_path):
    code, line = refused_with_output_dir(str(tmp_path / NOT_UTF8), capsys, monkeypatch, tmp_path)
    assert code == 2 and "r\\xffun" in line and "BSLRUN_OUTPUT_DIR" in line, line
    assert list(tmp_path.iterdir()) == []
