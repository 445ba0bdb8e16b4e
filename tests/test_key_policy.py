"""config.KEY_POLICY, the one table of keys that cannot change results or may change on
resume: it names keys that exist, resuming reads it (checkpoint.config_differences), and
a run resumes through the command line with those keys changed, but not with others."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import compose
from test_probes import TINY, bslrun, copy_of, one_line

from bslrun import cli
from bslrun.config import (
    KEY_POLICY,
    BnnConfig,
    Config,
    DataConfig,
    FileDataConfig,
    FlowConfig,
    ImageDataConfig,
    ToyDataConfig,
    VaeConfig,
    as_dict,
    changes_results,
    flatten,
    key_policy,
    may_change_on_resume,
)
from bslrun.errors import ConfigError
from bslrun.inference import checkpoint

SHARED = Path(os.environ.get("BSLRUN_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
MNIST_DIR = SHARED / "data" / "mnist"
MNIST_FILES = [
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
]  # fmt: skip


# ----------------------------------------------------------------------------- the table


def schema_keys() -> set[str]:
    """Every dotted key of a run's config.json, whatever its data and model groups."""
    keys = set()
    for data in (DataConfig, ImageDataConfig, ToyDataConfig, FileDataConfig):
        for model in (BnnConfig, VaeConfig, FlowConfig):
            keys |= set(flatten(as_dict(Config(data=data(), model=model()))))
    return keys


def test_every_row_names_a_key_of_the_schema_or_a_config_group():
    """So that the table cannot rot: a renamed key fails here, not silently in a resume."""
    keys = schema_keys()
    groups = {p.name for p in Path(cli.CONFIG_DIR).iterdir() if p.is_dir()}
    rows = [row.key for row in KEY_POLICY]
    assert len(rows) == len(set(rows)), "a key listed twice"
    for key in rows:
        in_schema = any(k == key or k.startswith(f"{key}.") for k in keys)
        assert in_schema or key in groups, f"{key} is neither a config key nor a config group"
    assert {"hydra", "sweep"} <= groups  # the two rows that are groups only


def test_a_key_that_cannot_change_results_may_change_on_resume():
    for row in KEY_POLICY:
        assert row.changes_results or row.may_change_on_resume, row.key
        assert row.why and "\n" not in row.why, row.key
    # The one key that changes results (within float rounding) but may change on resume.
    devices = key_policy("trainer.devices")
    assert devices.changes_results and devices.may_change_on_resume


@pytest.mark.parametrize(
    "key, changes, may_change",
    [
        ("seed", True, False),
        ("optim.lr", True, False),
        ("trainer.epochs", True, False),
        ("trainer.replicas", True, False),
        ("data.path", True, False),
        ("experiment", True, False),
        ("logger", False, True),
        ("logger.tensorboard.dir", False, True),  # a key covers its sub-keys
        ("+logger.wandb.mode", False, True),  # an override's + or ~ is ignored
        ("~name", False, True),
        ("hydra/launcher", False, True),  # and its config group
        ("hydra.sweep.dir", False, True),
        ("data.root", False, True),
        ("trainer.max_memory_gb", False, True),
        ("trainer.devices", True, True),
        ("names", True, False),  # a prefix of the name is not the key
        ("trainer.progressive", True, False),
    ],
)
def test_a_key_covers_its_sub_keys_and_its_group(key, changes, may_change):
    assert changes_results(key) is changes
    assert may_change_on_resume(key) is may_change


# ----------------------------------------------------------------------------- resuming

MNIST = [f"data.root={MNIST_DIR}", "model=bnn", "data=mnist", "data.download=false"]
ALLOWED = {
    "a logger added": ([], ["logger=tensorboard"]),
    "several loggers": (["logger=tensorboard"], ["logger=[csv,mlflow,wandb]"]),
    "the data moved": (MNIST, [*MNIST, "data.root=/elsewhere/mnist"]),
    "download allowed": (MNIST, [*MNIST, "data.download=true"]),
    "a memory cap": ([], ["trainer.max_memory_gb=4"]),
    "another name": ([], ["name=renamed"]),
    "two devices": ([], ["trainer.devices=2", "trainer.batch_size=32"]),
    "the progress bar": ([], ["trainer.progress=true", "trainer.progress_every_s=5"]),
    "checkpoints": ([], ["trainer.checkpoint_every=3", "trainer.resume=/a/run"]),
    "the compilation cache": ([], ["trainer.compilation_cache=off"]),
}


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_a_checkpoint_resumes_with_a_key_that_may_change(case):
    before, after = ALLOWED[case]
    start = [*TINY, "trainer.batch_size=32"]
    saved, now = as_dict(compose(*start, *before)), as_dict(compose(*start, *after))
    assert flatten(saved) != flatten(now)  # the override did change the config
    assert checkpoint.config_differences(saved, now) == []


def test_a_checkpoint_refuses_another_learning_rate_in_one_line_naming_it(tmp_path):
    saved = as_dict(compose(*TINY))
    checkpoint.folder(tmp_path).mkdir(parents=True)
    (checkpoint.folder(tmp_path) / checkpoint.CONFIG_FILE).write_text(json.dumps(saved))
    now = as_dict(compose(*TINY, "optim.lr=0.5", "logger=tensorboard", "trainer.devices=2"))
    with pytest.raises(ConfigError) as refused:
        checkpoint.check_config(tmp_path, now)
    assert str(refused.value) == (
        f"cannot resume {tmp_path}: its checkpoint was made with another config "
        f"(optim.lr: {saved['optim']['lr']!r} -> 0.5); trainer.resume alone continues it "
        "as it was started: leave out the overrides that change these keys, or start a new "
        "run without trainer.resume"
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A completed run with checkpoints, copied by the tests that resume it."""
    cwd = tmp_path_factory.mktemp("trained")
    result = bslrun(*TINY, "trainer.epochs=2", "trainer.checkpoint_every=1",
                    f"hydra.run.dir={cwd / 'run'}", cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return cwd / "run"


def test_a_run_resumes_through_the_command_line_with_a_logger_a_cap_and_a_name_added(
    trained, tmp_path
):
    """Each of them was refused as "another config" before the table; optim.lr still is."""
    run_dir = copy_of(trained, tmp_path)
    first = json.loads((run_dir / "metrics.json").read_text())
    resume = f"trainer.resume={run_dir}"
    refused = bslrun("optim.lr=0.5", "logger=tensorboard", resume, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    line = one_line(refused.stderr)
    assert line.startswith(f"bslrun: error: cannot resume {run_dir}: its checkpoint was made")
    lr = first["config"]["optim"]["lr"]
    assert f"(optim.lr: {lr!r} -> 0.5);" in line and "logger" not in line.split(";")[0]

    resumed = bslrun("logger=tensorboard", "trainer.max_memory_gb=64", "name=renamed", resume,
                     cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["timing"]["resumed_from_epoch"] == 2  # restored, not trained again
    assert again["test"] == first["test"] and again["val"] == first["val"]
    assert again["config"]["name"] == "renamed"
    assert any((run_dir / "tensorboard").iterdir()), "the added logger wrote nothing"


@pytest.mark.skipif(
    not all((MNIST_DIR / f"{stem}.gz").is_file() for stem in MNIST_FILES),
    reason="shared MNIST copy not present",
)
def test_an_mnist_run_resumes_with_its_data_root_moved(tmp_path):
    run_dir, moved = tmp_path / "run", tmp_path / "moved"
    moved.mkdir()
    for stem in MNIST_FILES:  # the same files, found in another folder
        (moved / f"{stem}.gz").symlink_to(MNIST_DIR / f"{stem}.gz")
    args = [*MNIST, "debug=tiny", "model.hidden=[8]", "data.train_subset=0.002",
            "data.val_size=64", "eval.num_samples=4", "trainer.checkpoint_every=1"]  # fmt: skip
    trained = bslrun(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    first = json.loads((run_dir / "metrics.json").read_text())

    resumed = bslrun(f"data.root={moved}", f"trainer.resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["config"]["data"]["root"] == str(moved)
    assert again["timing"]["resumed_from_epoch"] == 1
    assert again["test"] == first["test"] and again["val"] == first["val"]
