"""The one pipeline (``run.run``): a run alone, a job trained with its group and a NUTS run
write metrics.json in one shape; a group's training reaches each job only as an argument;
folders of run-folder format 1 still reopen.

The runs are tiny and run in this process, once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import compose

import bslrun
from bslrun import artifacts, replicas, run
from bslrun.errors import ConfigError
from bslrun.inference import methods

TINY = ["debug=tiny", "trainer.epochs=2", "trainer.checkpoint_every=0"]
NUTS = ["inference=nuts", "inference.num_warmup=20", "inference.num_samples=20",
        "inference.num_chains=2", "eval.num_samples=8"]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A run alone, the two replicas of ``trainer.replicas=2`` (each a job trained with
    its group) and a NUTS run, on the embedded default's data."""
    root = tmp_path_factory.mktemp("pipeline")
    run.run(compose(*TINY), root / "alone")
    run.run(compose(*TINY, "trainer.replicas=2"), root / "replicas")
    run.run(compose(*TINY, *NUTS), root / "nuts")
    return {
        "alone": root / "alone",
        "member": root / "replicas" / "replica_1",
        "nuts": root / "nuts",
    }


def shape(tree):
    """A JSON value's keys, nested: what metrics.json's schema fixes (``config`` and
    ``versions`` are copies of other files, and ``sites`` names the sampler's sites)."""
    if not isinstance(tree, dict):
        return None
    return {k: None if k in ("config", "versions", "sites") else shape(v) for k, v in tree.items()}


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_every_method_writes_metrics_json_in_one_shape(folders):
    alone, member, nuts = (read_metrics(folders[k]) for k in ("alone", "member", "nuts"))
    # The sections every method fills with its own values, and the sampler's diagnostics.
    for metrics in (alone, member, nuts):
        assert set(metrics) == {"name", "seed", "test", "val", "train", "mcmc", "reference",
                                "data", "timing", "config", "versions"}  # fmt: skip
    assert shape(alone["train"]) == shape(member["train"]) == shape(nuts["train"])
    assert shape(alone["timing"]) == shape(member["timing"]) == shape(nuts["timing"])
    assert shape(alone["test"]) == shape(member["test"]) == shape(nuts["test"])
    assert alone["mcmc"] is None and member["mcmc"] is None
    assert nuts["mcmc"]["chains"] == 2 and nuts["mcmc"]["draws_per_chain"] == 20


def test_a_value_a_method_does_not_have_is_null_and_one_it_has_is_a_number(folders):
    alone, member, nuts = (read_metrics(folders[k]) for k in ("alone", "member", "nuts"))
    assert nuts["train"]["epochs_run"] is None and nuts["train"]["final_loss"] is None
    assert nuts["train"]["posterior"] == "nuts" and alone["train"]["posterior"] == "mean_field"
    assert nuts["timing"]["sample_s"] > 0 and alone["timing"]["sample_s"] is None
    assert alone["timing"]["eval_compile_s"] > 0
    # A job trained with its group compiled its evaluation with the group's (in eval_s).
    assert member["timing"]["eval_compile_s"] is None and member["timing"]["replicas"] == 2
    for metrics in (alone, member, nuts):  # what NUTS runs lacked before: the phases
        for key in ("import_s", "log_s", "write_s", "eval_s"):
            assert metrics["timing"][key] >= 0, key
    assert alone["train"]["epochs_run"] == member["train"]["epochs_run"] == 2


def test_a_nuts_run_writes_its_draws_with_the_sites_it_sampled(folders):
    samples = np.load(folders["nuts"] / "posterior_samples.npz")
    # (chains, draws, weights): every weight of the network, the two chains' 20 draws.
    assert samples["w"].shape[:2] == (2, 20)
    assert not (folders["nuts"] / "history.csv").exists()
    assert (folders["nuts"] / "reference.npz").is_file()


@pytest.fixture(scope="module")
def group():
    """The two replicas of ``trainer.replicas=2``: their configs and what their group trained."""
    cfgs = run.replica_configs(compose(*TINY, "trainer.replicas=2"))
    return cfgs, replicas.train_together(cfgs)


def test_a_groups_training_reaches_each_job_as_an_argument_not_through_state(group, tmp_path):
    cfgs, trained = group
    assert [type(t) for t in trained] == [methods.Trained, methods.Trained]
    assert not [name for name in vars(replicas) if name.startswith("_trained")]
    # The job handed replica 1's training writes replica 1's numbers; handed replica 0's
    # training instead, the same config writes replica 0's: the argument decides.
    own = run.run(cfgs[1], tmp_path / "own", trained=trained[1])
    other = run.run(cfgs[1], tmp_path / "other", trained=trained[0])
    assert own["test"] == trained[1].evaluated.test
    assert other["test"] == trained[0].evaluated.test != own["test"]


def test_a_job_whose_group_training_diverged_raises_that_error_in_its_own_run(group, tmp_path):
    from bslrun.errors import DivergenceError
    from bslrun.inference import engine

    cfgs, trained = group
    last = trained[1].outcome.params
    diverged = engine.divergence(3, float("nan"), [{"epoch": 1, "train_loss": 1.0, "lr": 0.1}],
                                 last, {})  # fmt: skip
    with pytest.raises(DivergenceError, match="diverged at epoch 3"):
        run.run(cfgs[1], tmp_path / "run", trained=methods.Trained(diverged))
    # What a diverged run has is written; it has no metrics.
    assert (tmp_path / "run" / "history.csv").is_file()
    assert (tmp_path / "run" / "checkpoint" / "params.msgpack").is_file()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_folder_of_format_1_reopens_and_one_of_an_unknown_format_is_refused(folders, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(folders["alone"], old)
    manifest = json.loads((old / "run.json").read_text())
    assert manifest["format"] == artifacts.FORMAT == 2
    (old / "run.json").write_text(json.dumps({**manifest, "format": 1}))
    # run.run leaves the status to its caller (the command line records it)
    artifacts.write_status(old, "completed", started="2026-12-04T00:00:00", exit_code=0)
    reopened = bslrun.load(old)
    assert reopened.metrics == read_metrics(folders["alone"])
    predicted = reopened.predict(np.zeros((3, reopened.spec.input_dim)))
    assert predicted.mean.shape == (3,) and np.all(np.isfinite(predicted.std))
    (old / "run.json").write_text(json.dumps({**manifest, "format": 3}))
    with pytest.raises(ConfigError, match="format 3 .* reads formats 1, 2"):
        bslrun.load(old)
