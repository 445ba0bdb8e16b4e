"""Experiment loggers (bslrun.loggers): what TensorBoard, MLflow and W&B hold, read back with
their own readers, equals the run folder's history.csv, metrics.json and config.json."""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path

import pytest
from conftest import compose

from bslrun import cli, loggers, run
from bslrun.errors import ConfigError, DataError

ALL = "logger=[csv,tensorboard,mlflow,wandb]"
TINY = ("debug=tiny", "trainer.epochs=3", "data.train_subset=0.05")


def tracking(root: Path) -> str:
    return f"logger.mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Path:
    """One tiny BNN run with every logger; its run folder."""
    root = tmp_path_factory.mktemp("logged")
    cfg = compose(*TINY, ALL, tracking(root), "logger.wandb.mode=offline")
    run.run(cfg, root / "run")
    return root / "run"


def history(run_dir: Path) -> list[dict]:
    with (run_dir / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def final(run_dir: Path) -> dict:
    return loggers.final_scalars(json.loads((run_dir / "metrics.json").read_text()))


def mlflow_run(root: Path, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id])


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_event_file_holds_the_history_the_metrics_and_the_plots(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    rows = history(logged)
    got = [(e.step, e.value) for e in events.Scalars("train_loss")]
    want = [(int(r["epoch"]), float(r["train_loss"])) for r in rows]
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert [e.value for e in events.Scalars("val_nll")] == pytest.approx(
        [float(r["val_nll"]) for r in rows], rel=1e-6
    )
    for key, value in final(logged).items():
        assert events.Scalars(key)[-1].value == pytest.approx(value, rel=1e-6), key
    plots = {f"plots/{p.stem}" for p in (logged / "plots").glob("*.png")}
    assert plots and plots <= set(events.Tags()["images"])


# ----------------------------------------------------------------------------- MLflow


def test_mlflow_run_holds_parameters_metrics_history_and_artifacts(logged):
    client, runs = mlflow_run(logged.parent, "bnn_wine_white")
    assert len(runs) == 1
    found = runs[0]
    assert found.info.status == "FINISHED"
    assert found.data.tags["bslrun.run_dir"] == str(logged.resolve())
    config = loggers.flatten(json.loads((logged / "config.json").read_text()))
    assert found.data.params == {key: str(value) for key, value in config.items()}
    for key, value in final(logged).items():
        assert found.data.metrics[key] == pytest.approx(value, rel=1e-6), key
    steps = client.get_metric_history(found.info.run_id, "train_loss")
    rows = history(logged)
    assert {m.step: m.value for m in steps} == pytest.approx(
        {int(r["epoch"]): float(r["train_loss"]) for r in rows}, rel=1e-6
    )
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.json", "config.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(found.info.run_id, "plots")}
    assert plots == {f"plots/{p.name}" for p in (logged / "plots").glob("*.png")}
    # A local store keeps its artifacts beside its database, not in the working folder.
    assert list((logged.parent / "mlartifacts").rglob("metrics.json"))
    assert not Path("mlruns").exists()


def test_mlflow_groups_a_sweeps_jobs_in_one_experiment(tmp_path):
    sweep = tmp_path / "multirun" / "2026-12-01_00-00-00_000000"
    for seed in (0, 1):
        cfg = compose(
            *TINY, "trainer.epochs=1", "logger=mlflow", tracking(tmp_path), f"seed={seed}"
        )
        run.run(cfg, sweep / str(seed), sweep_dir=sweep)
    _, runs = mlflow_run(tmp_path, f"bnn_wine_white sweep {sweep.name}")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert {r.data.tags["bslrun.sweep"] for r in runs} == {str(sweep)}
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_run_that_fails_is_marked_failed(tmp_path):
    cfg = compose(*TINY, "logger=mlflow", tracking(tmp_path))
    with pytest.raises(DataError):
        with loggers.opened(cfg, tmp_path / "run"):
            raise DataError("the data went away")
    _, runs = mlflow_run(tmp_path, "bnn_wine_white")
    assert [r.info.status for r in runs] == ["FAILED"]


# ----------------------------------------------------------------------------- W&B


def wandb_records(path: Path):
    """The protobuf records of an offline W&B run file: a LevelDB-style log (7-byte header,
    32 KiB blocks of records with a 7-byte header each: CRC, length, kind)."""
    from wandb.proto import wandb_internal_pb2

    raw, block, pos, pending = path.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_holds_the_history_config_and_summary(logged):
    (path,) = (logged / "wandb").glob("offline-run-*/run-*.wandb")
    losses, summary, config = {}, {}, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {
                "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                for i in record.history.item
            }
            if "train_loss" in items:
                losses[int(items["_step"])] = items["train_loss"]
        elif kind == "summary":
            summary.update(
                {i.key: json.loads(i.value_json) for i in record.summary.update if i.key}
            )
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
    rows = history(logged)
    assert losses == pytest.approx({int(r["epoch"]): float(r["train_loss"]) for r in rows})
    for key, value in final(logged).items():
        assert summary[key] == pytest.approx(value, rel=1e-6), key
    assert config["model.hidden"] == str(
        json.loads((logged / "config.json").read_text())["model"]["hidden"]
    )


# ----------------------------------------------------------------------------- refusals


def test_a_missing_extra_is_refused_in_one_line_naming_the_install(monkeypatch):
    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(
        loggers.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name)
    )
    with pytest.raises(ConfigError) as info:
        cli.prevalidate(["logger=[csv,mlflow]"])
    assert str(info.value) == (
        "logger=mlflow needs the mlflow package; install it with: "
        "pip install 'bslrun[mlflow]' (or choose another logger)"
    )


def test_a_logger_that_fails_while_training_is_dropped_and_the_run_goes_on(
    tmp_path, monkeypatch, caplog
):
    def broken(self, rows):
        raise OSError("the event file's disk went away")

    monkeypatch.setattr(loggers.TensorBoardLogger, "epochs", broken)
    cfg = compose(*TINY, "logger=tensorboard")
    metrics = run.run(cfg, tmp_path / "run")
    assert math.isfinite(metrics["test"]["rmse"])
    assert "logger=tensorboard failed and is switched off: the event file's disk went away" in (
        caplog.text
    )


def test_epoch_scalars_keep_finite_numbers_and_drop_the_step():
    row = {"epoch": 3, "train_loss": 1.5, "lr": 0.01, "val_nll": math.nan, "note": "x"}
    assert loggers.epoch_scalars(row) == {"train_loss": 1.5, "lr": 0.01}
