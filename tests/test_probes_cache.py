"""Probes of the compilation cache (issue 26): an entry is run only when it is the program
asked for, and a folder another user could write is not used.

In process: a cache is filled with two programs of the same shapes (the training epoch at
two learning rates) and damaged; the run must still report its own numbers.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
import pytest
from conftest import compose
from test_compilation import TINY, compiles_into, restore_cache, scores  # noqa: F401

from bslrun import compilation, run

ASKED, OTHER = "optim.lr=0.003", "optim.lr=0.03"  # one shape, two programs


def epoch_entries(machine: Path) -> set[Path]:
    return set(machine.glob("jit_epoch-*-cache"))


def run_from(cache: Path | str, lr: str, folder: Path) -> dict:
    """A tiny run that compiles into, or loads from, ``cache``; this process's in-memory
    caches are cleared first, so that every program is looked up on disk."""
    jax.clear_caches()
    return run.run(compose(*TINY, lr, f"trainer.compilation_cache={cache}"), folder)


def damage(machine: Path, epochs: dict) -> tuple[Path, Path]:
    """The issue's probes on a filled cache: the other learning rate's epoch copied over the
    asked one's (the same shapes: a valid executable under the wrong key), and the final
    evaluation (one program for both rates) cut to half its length, as a full disk leaves
    it. Returns the two damaged entries."""
    shutil.copyfile(epochs[OTHER], epochs[ASKED])
    (final,) = machine.glob("jit_final-*-cache")
    whole = final.read_bytes()
    final.write_bytes(whole[: len(whole) // 2])
    return epochs[ASKED], final


def key_of(entry: Path) -> str:
    return entry.name.removesuffix("-cache")


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.usefixtures("restore_cache")
def test_an_entry_that_is_not_the_program_asked_for_is_dropped_not_run(tmp_path, caplog, recwarn):
    """A valid executable under another program's key, and an entry cut short: the run
    reports its own numbers (those of the run that compiled its programs, which are those
    of the cache off: test_compilation.py), with one warning line for each entry, no JAX
    warning, and each entry written again whole, holding its own program."""
    cache = tmp_path / "cache"
    machine = compilation.machine_folder(cache)
    # One folder for the three runs, not a copy: JAX's key holds the folder's path (through
    # the GPU autotuning cache it names in the compile options, on a CPU too).
    epochs: dict[str, Path] = {}
    got = {}
    for lr in (OTHER, ASKED):
        got[lr] = scores(run_from(cache, lr, tmp_path / lr))
        (epochs[lr],) = epoch_entries(machine) - set(epochs.values())  # lr is in it
    wrong, cut = damage(machine, epochs)
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        got["probe"] = scores(run_from(cache, ASKED, tmp_path / "probe"))
    assert got["probe"] == got[ASKED] != got[OTHER]
    assert warnings_of(caplog) == [
        f"compilation cache: deleted {wrong}: it holds another program (an entry copied or "
        "renamed over it); compiling the program afresh",
        f"compilation cache: deleted {cut}: it is cut short or altered (a full disk?); "
        "compiling the program afresh",
    ]
    for entry in (wrong, cut):
        assert compilation.unseal(key_of(entry), entry.read_bytes())  # whole, its own
    assert wrong.read_bytes() != epochs[OTHER].read_bytes()
    assert not [w for w in recwarn if "compilation cache" in str(w.message)]


@pytest.mark.parametrize("owner", ["another user", "group-writable", "world-writable"])
@pytest.mark.usefixtures("restore_cache")
def test_a_folder_another_user_could_write_is_not_used(owner, monkeypatch, tmp_path, caplog):
    """Its entries would be code this process runs: one warning, and the run compiles."""
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o700)
    if owner == "another user":  # the tests run as root, who owns every folder they make
        monkeypatch.setattr("os.geteuid", lambda: folder.stat().st_uid + 1)
        words = f"{folder} belongs to another user (uid {folder.stat().st_uid})"
    else:
        mode = 0o770 if owner == "group-writable" else 0o777
        folder.chmod(mode)
        words = f"{folder} can be written by other users (mode {mode:o}); run: chmod go-w"
    with caplog.at_level(logging.WARNING, logger="bslrun"):
        assert compilation.enable(str(folder)) is None
    (line,) = warnings_of(caplog)
    assert line.startswith(f"compilation cache off: {words}"), line
    assert not jax.config.jax_enable_compilation_cache
    assert compiles_into(folder) == {}
