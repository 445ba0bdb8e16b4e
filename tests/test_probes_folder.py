"""Files written only where they belong: never through a symbolic link in a run folder
(exit codes: errors.py).

Every probe here is decided before Hydra starts, or by one writer: they run in this
process and import no JAX.
"""

from __future__ import annotations

import errno
import logging

import numpy as np
import pytest
from test_probes import drive

from bslrun import artifacts, cli, lifecycle
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
    monkeypatch.setattr(lifecycle, "refuse_links", lambda run_dir: None)
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

