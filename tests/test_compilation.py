"""The persistent compilation cache (bslrun.compilation): where it lives, that it is keyed
by machine, that a run loads what an earlier run compiled, and that loading changes no
number a run reports."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import jaxlib
import pytest
from conftest import compose, denied, fail_under

from bslrun import compilation, run
from bslrun.config import changes_results
from bslrun.errors import ConfigError
from bslrun.inference.checkpoint import config_differences

TINY = ("debug=tiny", "trainer.epochs=2", "data.train_subset=0.05", "trainer.progress=false")
PHASES = ("import_s", "init_s", "compile_s", "train_s", "eval_compile_s", "eval_s", "write_s")


@pytest.fixture
def restore_cache():
    """Tests that point the cache elsewhere give the session's cache back (conftest)."""
    yield
    compilation.enable(compilation.AUTO)


def entries(folder: Path) -> set[str]:
    """The programs a cache folder holds, by file name."""
    return {p.name for p in folder.rglob("*-cache")}


def scores(metrics: dict) -> dict:
    return {section: metrics[section] for section in ("test", "val")}


def triple_plus_one(x):
    return x * 3.0 + 1.0


def five_times_plus_one(x):
    return x * 5.0 + 1.0


def compiles_into(folder: Path, program=triple_plus_one, at_2: float = 7.0) -> dict[str, bytes]:
    """The entries (name: bytes) that ``program`` (which gives ``at_2`` at 2), compiled or
    loaded after ``enable(folder)``, adds to the folder's machine subfolder."""
    import jax

    machine = compilation.machine_folder(folder)
    before = entries(machine)
    jax.clear_caches()  # the program is looked up on disk, not in this process's memory
    assert float(jax.jit(program)(2.0)) == at_2
    return {name: (machine / name).read_bytes() for name in entries(machine) - before}


# ------------------------------------------------------------------------ where it lives


def test_auto_is_the_environment_variable_else_the_per_user_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(compilation.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation.root("auto") == tmp_path / "xdg" / "bslrun" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation.root("auto") == tmp_path / "home" / ".cache" / "bslrun" / "jax"
    monkeypatch.setenv(compilation.ENV, str(tmp_path / "env"))
    assert compilation.root("auto") == tmp_path / "env"
    monkeypatch.setenv(compilation.ENV, "off")
    assert compilation.root("auto") is None


@pytest.mark.parametrize("setting", ["off", "OFF", "none", "false", "", None])
def test_off_in_any_spelling_turns_it_off(setting, monkeypatch, tmp_path):
    monkeypatch.setenv(compilation.ENV, str(tmp_path))
    assert compilation.root(setting) is None


def test_a_folder_given_in_the_config_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compilation.ENV, str(tmp_path / "env"))
    assert compilation.root(str(tmp_path / "mine")) == tmp_path / "mine"
    assert compilation.root("~/cache") == Path.home() / "cache"


def test_entries_are_kept_apart_by_jaxlib_backend_and_cpu(tmp_path):
    """JAX's key names jaxlib and the backend but not which CPU compiled the code: another
    CPU's instruction set must not be handed this machine's programs."""
    folder = compilation.machine_folder(tmp_path)
    assert folder.parent == tmp_path
    assert folder.name.startswith(f"jaxlib-{jaxlib.__version__}-cpu-")
    assert folder.name.endswith(compilation.cpu_fingerprint())

    def cpuinfo(flags: str) -> str:
        path = tmp_path / f"cpuinfo_{len(flags)}"
        path.write_text(
            f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\n"
            f"processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n"
        )
        return str(path)

    avx2, avx512 = cpuinfo("sse4_2 avx2"), cpuinfo("sse4_2 avx2 avx512f")
    assert compilation.cpu_fingerprint(avx2) != compilation.cpu_fingerprint(avx512)
    assert compilation.cpu_fingerprint(avx2) == compilation.cpu_fingerprint(avx2)
    # Unreadable /proc/cpuinfo (not Linux): still a fingerprint, from the platform alone.
    assert len(compilation.cpu_fingerprint(str(tmp_path / "absent"))) == 12


def test_a_folder_that_cannot_be_written_turns_the_cache_off_with_one_warning(
    monkeypatch, tmp_path, caplog, restore_cache
):
    fail_under(monkeypatch, "mkdir", tmp_path, denied(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="bslrun"):
        assert compilation.enable(str(tmp_path / "cache")) is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"compilation cache off: cannot write {tmp_path / 'cache'}")
    assert "set trainer.compilation_cache to a writable folder, or off" in message


def test_jax_is_pointed_at_the_machines_folder_which_is_private(tmp_path, restore_cache):
    import jax

    folder = compilation.enable(str(tmp_path))
    assert jax.config.jax_compilation_cache_dir == str(folder)
    assert jax.config.jax_enable_compilation_cache
    assert folder.stat().st_mode & 0o077 == 0  # the cache is trusted: others may not write
    compilation.enable("off")
    assert not jax.config.jax_enable_compilation_cache


def test_jax_reads_and_writes_through_bslruns_entries(tmp_path, caplog, restore_cache):
    """JAX offers no public way to hand it a cache object (compilation._install): this pins
    that the private one used works. Entries are sealed with their keys, and JAX loads
    through bslrun: the entry of x * 5 + 1 copied over that of x * 3 + 1 (the same shapes)
    is deleted with one warning, and x * 3 + 1 is compiled again, not run as x * 5 + 1."""
    compilation.enable(str(tmp_path))
    ((name, entry),) = compiles_into(tmp_path, triple_plus_one, 7.0).items()
    ((other, _),) = compiles_into(tmp_path, five_times_plus_one, 11.0).items()
    assert name.startswith("jit_triple_plus_one-")
    assert compilation.unseal(name.removesuffix("-cache"), entry)
    assert compiles_into(tmp_path, triple_plus_one, 7.0) == {}  # loaded: nothing added
    machine = compilation.machine_folder(tmp_path)
    (machine / name).write_bytes((machine / other).read_bytes())
    with caplog.at_level(logging.WARNING, logger="bslrun"):
        assert compiles_into(tmp_path, triple_plus_one, 7.0) == {}  # written again
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"compilation cache: deleted {machine / name}: it holds another")
    assert compilation.unseal(name.removesuffix("-cache"), (machine / name).read_bytes())


def test_a_full_disk_leaves_no_half_entry_and_one_warning(
    tmp_path, monkeypatch, caplog, recwarn, restore_cache
):
    """The disk fills halfway through an entry: nothing is left in the folder (a half
    entry would be read by every later run), the program still runs, and one line says so."""
    machine = compilation.enable(str(tmp_path))
    write_bytes = Path.write_bytes

    def half_then_full(path, data):
        if machine in path.parents:
            write_bytes(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with caplog.at_level(logging.WARNING, logger="bslrun"):
        assert compiles_into(tmp_path) == {}
    assert list(machine.iterdir()) == []
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("compilation cache: could not keep jit_triple_plus_one-")
    assert "(No space left on device); the run goes on" in line
    assert not [w for w in recwarn if "compilation cache" in str(w.message)]


def test_an_entry_is_refused_unless_whole_its_keys_and_bslruns():
    entry = compilation.seal("jit_f-00", b"executable")
    assert compilation.unseal("jit_f-00", entry) == b"executable"
    cases = {
        "another program": ("jit_f-01", entry),
        "cut short or altered": ("jit_f-00", entry[:-1]),
        "cut short \\(a full disk": ("jit_f-00", entry[: len(compilation.MAGIC) + 10]),
        "not written by this version": ("jit_f-00", b"\x28\xb5\x2f\xfd" + b"executable"),
        "not written by": ("jit_f-00", b""),
    }
    for words, (key, damaged) in cases.items():
        with pytest.raises(compilation.BadEntry, match=words):
            compilation.unseal(key, damaged)


def test_a_cache_over_its_bound_loses_its_least_recently_used_entries(tmp_path, restore_cache):
    folder = compilation.machine_folder(tmp_path)
    folder.mkdir(parents=True)
    for age in range(10):  # entry 0 used most recently, entry 9 longest ago
        entry = folder / f"jit_p{age}-{age:064x}-cache"
        entry.write_bytes(bytes(1000))
        os.utime(entry, (1e9 - 3600 * age, 1e9 - 3600 * age))
    (folder / "unrelated.txt").write_text("kept")
    # Within the bound: nothing goes.
    assert compilation.prune(folder, 10_000) == 0
    assert len(entries(folder)) == 10
    # Over it (10 kB in a bound of 8 kB): the oldest go until 3/4 of the bound (6 kB) is left.
    compilation.enable(str(tmp_path), max_gb=8000 / 2**30)
    assert sorted(entries(folder)) == [f"jit_p{a}-{a:064x}-cache" for a in range(6)]
    assert (folder / "unrelated.txt").read_text() == "kept"


# ----------------------------------------------------------------------------- settings


def test_the_settings_change_no_result_and_may_differ_on_resume():
    cfg = compose("trainer.compilation_cache=off", "trainer.compilation_cache_gb=2")
    assert cfg.trainer.compilation_cache == "off" and cfg.trainer.compilation_cache_gb == 2
    assert compose().trainer.compilation_cache == "auto"
    assert compose("trainer.compilation_cache=null").trainer.compilation_cache is None
    for key in ("trainer.compilation_cache", "trainer.compilation_cache_gb"):
        assert not changes_results(key)
    saved = {"trainer": {"compilation_cache": "auto", "compilation_cache_gb": 1.0}}
    now = {"trainer": {"compilation_cache": "off", "compilation_cache_gb": 3.0}}
    assert config_differences(saved, now) == []


def test_a_bound_that_is_not_positive_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^trainer.compilation_cache_gb=0.0 must be a posi"):
        compose("trainer.compilation_cache_gb=0")


# ----------------------------------------------------------------------------- runs


def test_a_run_loads_what_the_last_compiled_and_reports_the_same_numbers(tmp_path, restore_cache):
    """Off, cold (compiling into an empty cache) and warm (loading every program): the
    same metrics to the last bit; and a run of another seed, whose split and standardisers
    differ, compiles nothing the first run compiled (they are arguments, not constants)."""
    cache = tmp_path / "cache"
    runs = {}
    for name, setting in (("off", "off"), ("cold", str(cache)), ("warm", str(cache))):
        cfg = compose(*TINY, f"trainer.compilation_cache={setting}")
        before = entries(cache)
        runs[name] = run.run(cfg, tmp_path / name)
        if name == "cold":
            compiled = entries(cache) - before
            names = {entry.split("-")[0] for entry in compiled}
            assert {"jit_init", "jit_epoch", "jit_score", "jit_final"} <= names, names
        if name == "warm":
            assert entries(cache) == before  # every program came from the cache
    assert scores(runs["cold"]) == scores(runs["off"])
    assert scores(runs["warm"]) == scores(runs["off"])
    before = entries(cache)
    other = run.run(compose(*TINY, "seed=7", f"trainer.compilation_cache={cache}"),
                    tmp_path / "seed7")  # fmt: skip
    assert scores(other) != scores(runs["off"])
    new = {entry.split("-")[0] for entry in entries(cache) - before}
    assert not new & {"jit_init", "jit_epoch", "jit_score", "jit_final"}, new


def test_metrics_json_times_each_phase(tmp_path):
    run.run(compose(*TINY), tmp_path)
    timing = json.loads((tmp_path / "metrics.json").read_text())["timing"]
    for phase in PHASES:
        assert timing[phase] >= 0, phase
    assert timing["write_s"] > 0 and timing["eval_compile_s"] > 0
    # The time to the first step counts the imports and the initialisation before it.
    assert timing["startup_s"] >= timing["import_s"] + timing["init_s"]


def test_the_test_session_compiles_into_the_checkouts_cache():
    import jax

    folder = Path(os.environ[compilation.ENV])
    assert jax.config.jax_compilation_cache_dir.startswith(str(folder))
    assert entries(folder)
