"""Reopening finished runs (``bslrun.load``, ``bslrun-predict``, ``bslrun-sample``).

Each family is trained tiny through the command line (in this process: conftest's
``bslrun_here``); the reopened run must reproduce the run's own saved arrays bit for bit
and its test metrics with the same keys, from the run folder alone (in a process of its
own), and every bad folder or input is one line with its exit code. The VAE is trained
and scored on the first 1,000 of MNIST's 10,000 test images (``first_test_images``).
"""

from __future__ import annotations

import csv
import gc
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import bslrun_here, compose
from test_cli import MNIST_DIR, needs_mnist

import bslrun
from bslrun import artifacts, reopen_cli, seeding
from bslrun.data import load as load_data
from bslrun.errors import ConfigError, DataError, ResourceError
from bslrun.models.family import Family
from bslrun.registry import FAMILIES

MNIST = (f"data.root={MNIST_DIR}", "data.download=false", "data.train_subset=0.004")
RUNS = {
    "wine": ("debug=tiny",),
    "moons": ("debug=tiny", "experiment=bnn_moons"),
    "maf": ("debug=tiny", "experiment=lecture_maf_moons"),
    "vae": ("debug=tiny", "experiment=lecture_vae_mnist", *MNIST, "data.val_size=200"),
}


TEST_IMAGES = 1000  # of MNIST's 10,000: the VAE's bound is a conv decoder per image and sample


def train(out: Path, name: str) -> Path:
    run_dir = out / name
    result = bslrun_here(*RUNS[name], f"hydra.run.dir={run_dir}", out=out)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="module")
def first_test_images():
    """MNIST's test split cut to its first TEST_IMAGES images for this module (training
    and every reload of the split): the files are read and checked once."""
    from bslrun.data import mnist

    read = {}
    real = mnist.fetch

    def fetch(source, cfg):
        where = (source.name, cfg.root)
        if where not in read:
            read[where] = real(source, cfg)
        arrays = dict(read[where])
        for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            arrays[stem] = arrays[stem][:TEST_IMAGES]
        return arrays

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mnist, "fetch", fetch)
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory, first_test_images):
    out = tmp_path_factory.mktemp("reopen")
    names = [n for n in RUNS if n != "vae" or MNIST_DIR.is_dir()]
    return {name: train(out, name) for name in names}


def split_of(name: str, part: str = "test"):
    """The run's split, reloaded from its data set, in original units (float64)."""
    cfg = compose(*RUNS[name])
    data = load_data(cfg.data, seeding.streams(cfg.seed).data)
    split = getattr(data, part)
    return data.spec.x_scaler.inverse(split.x.astype(np.float64)), split.y


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# ----------------------------------------------------------------- reproduction


def test_a_bnn_regression_run_reproduces_its_predictions_bit_for_bit(trained):
    run = bslrun.load(trained["wine"])
    x, _ = split_of("wine")
    saved = np.load(trained["wine"] / "predictions.npz")
    pred = run.predict(x, seed=run.eval_keys.artifacts)
    for name in ("mean", "std", "epistemic_std", "aleatoric_std", "lower_95", "upper_95"):
        np.testing.assert_array_equal(getattr(pred, name), saved[name], err_msg=name)
    # The same draws give the interval again, and quantiles in order between its ends.
    q = pred.quantiles([0.025, 0.5, 0.975])
    np.testing.assert_array_equal(q[:, 0], pred.lower_95)
    np.testing.assert_array_equal(q[:, 2], pred.upper_95)
    assert np.all(q[:, 0] < q[:, 1]) and np.all(q[:, 1] < q[:, 2])
    # Total variance is epistemic plus aleatoric (law of total variance).
    np.testing.assert_allclose(
        pred.std**2, pred.epistemic_std**2 + pred.aleatoric_std**2, rtol=1e-5
    )


def test_a_bnn_regression_run_reproduces_its_test_rmse(trained):
    run = bslrun.load(trained["wine"])
    x, y = split_of("wine")
    pred = run.predict(x, seed=run.eval_keys.test)
    y = run.spec.y_scaler.inverse(y.astype(np.float64))
    rmse = np.sqrt(np.mean((pred.mean - y) ** 2))
    np.testing.assert_allclose(rmse, metrics_of(trained["wine"])["test"]["rmse"], rtol=1e-5)


def test_a_bnn_classifier_reproduces_its_probabilities_and_test_nll(trained):
    run = bslrun.load(trained["moons"])
    x, y = split_of("moons")
    saved = np.load(trained["moons"] / "predictions.npz")
    pred = run.predict(x, seed=run.eval_keys.artifacts)
    np.testing.assert_array_equal(pred.probs, saved["probs"])
    np.testing.assert_array_equal(pred.prediction, saved["prediction"])
    scored = run.predict(x, seed=run.eval_keys.test)
    nll = -np.mean(np.log(scored.probs[np.arange(len(y)), y]))
    np.testing.assert_allclose(nll, metrics_of(trained["moons"])["test"]["nll"], rtol=1e-5)
    # 0 <= I[y; w] <= H[y] <= log C
    assert np.all(pred.mutual_information >= 0)
    assert np.all(pred.mutual_information <= pred.entropy + 1e-6)
    assert np.all(pred.entropy <= np.log(2) + 1e-6)
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, rtol=1e-6)


def test_a_flow_reproduces_its_test_nll_and_its_samples(trained):
    run = bslrun.load(trained["maf"])
    x, _ = split_of("maf")
    log_prob = run.log_prob(x, seed=run.eval_keys.test)
    np.testing.assert_allclose(
        -np.mean(log_prob), metrics_of(trained["maf"])["test"]["nll"], rtol=1e-5
    )
    saved = np.load(trained["maf"] / "samples.npz")["samples"]
    sample_key = jax.random.split(run.eval_keys.artifacts)[0]
    np.testing.assert_array_equal(run.sample(len(saved), seed=sample_key), saved)


@needs_mnist
def test_a_vae_reproduces_its_bound_samples_and_reconstructions(trained):
    run = bslrun.load(trained["vae"])
    x, _ = split_of("vae")
    bound = run.log_prob(x, seed=run.eval_keys.test)
    np.testing.assert_allclose(
        -np.mean(bound), metrics_of(trained["vae"])["test"]["nll"], rtol=1e-5
    )
    saved = np.load(trained["vae"] / "samples.npz")
    np.testing.assert_array_equal(
        run.sample(64, seed=run.eval_keys.artifacts), saved["prior_samples"]
    )
    loc, scale = run.encode(x[:16])
    assert loc.shape == scale.shape == (16, 2) and np.all(scale > 0)
    np.testing.assert_allclose(run.decode(loc), saved["reconstructions"], atol=1e-6)
    # Images may come as (n, 28, 28).
    np.testing.assert_array_equal(run.encode(x[:16].reshape(16, 28, 28))[0], loc)


def test_the_run_reads_back_as_plain_python(trained):
    run = bslrun.load(trained["wine"])
    assert run.config["model"]["family"] == "bnn" and run.status["status"] == "completed"
    assert run.metrics["test"]["rmse"] > 0
    assert run.history["epoch"].tolist() == [1.0] and np.isfinite(run.history["train_loss"]).all()
    assert run.provenance["format"] == artifacts.FORMAT
    assert run.provenance["command"].startswith("bslrun debug=tiny")
    assert run.spec.target_name == "quality" and len(run.spec.feature_names) == 11
    assert run.sample(5, seed=0).shape == (5, run.family.num_weights)


def test_the_run_folder_alone_is_enough(trained, tmp_path):
    """A copy of the folder, in a process that cannot import Hydra, the configs' reader or
    the data loaders, with no data cache: load, predict, and get the same numbers."""
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(trained["wine"], copy)
    x, _ = split_of("wine")
    np.save(tmp_path / "x.npy", x)
    expected = bslrun.load(trained["wine"]).predict(x, num_samples=16, seed=3).mean
    script = f"""
import sys
BLOCKED = ("hydra", "bslrun.preflight", "bslrun.cli", "bslrun.data.wine", "bslrun.data.mnist")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(BLOCKED):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np, bslrun
run = bslrun.load({str(copy)!r})
np.save({str(tmp_path / "mean.npy")!r}, run.predict(np.load({str(tmp_path / "x.npy")!r}), num_samples=16, seed=3).mean)
"""
    env = dict(
        os.environ, BSLRUN_DATA_DIR=str(tmp_path / "no-cache"), BSLRUN_CONFIG_DIR="/nonexistent"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "mean.npy"), expected)


def test_named_columns_are_matched_by_name_in_any_order(trained):
    run = bslrun.load(trained["wine"])
    x, _ = split_of("wine")
    names = run.spec.feature_names
    shuffled = {n: x[:, j] for j, n in reversed(list(enumerate(names)))}
    shuffled["quality"] = np.zeros(len(x))  # the target column is allowed and ignored
    np.testing.assert_array_equal(
        run.predict(shuffled, num_samples=8).mean, run.predict(x, num_samples=8).mean
    )


# ----------------------------------------------------------------- refusals


def refused(error_type, call, *words):
    with pytest.raises(error_type) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def test_bad_inputs_are_one_line_each(trained):
    run = bslrun.load(trained["wine"])
    x, _ = split_of("wine")
    names = run.spec.feature_names
    refused(DataError, lambda: run.predict(x[:, :10]), "(734, 10)", "11 input columns")
    with_nan = x.copy()
    with_nan[3, 2] = np.nan
    refused(DataError, lambda: run.predict(with_nan), "row 3", repr(names[2]), "nan")
    columns = {n: x[:, j] for j, n in enumerate(names)}
    refused(DataError, lambda: run.predict({**columns, "colour": x[:, 0]}), "'colour'", "drop")
    del columns["alcohol"]
    refused(DataError, lambda: run.predict(columns), "missing", "'alcohol'")
    refused(DataError, lambda: run.predict([["a"] * 11]), "numbers")
    refused(ConfigError, lambda: run.predict(x, num_samples=0), "positive integer")
    refused(ConfigError, lambda: run.predict(x[:2]).quantiles([0.5, 1.0]), "between 0 and 1")


def test_a_family_refuses_what_it_cannot_do_in_one_line(trained):
    flow = bslrun.load(trained["maf"])
    refused(ConfigError, lambda: flow.predict(np.zeros((2, 2))), "flow", "no predictions", "sample")
    refused(ConfigError, lambda: flow.encode(np.zeros((2, 2))), "no encoder")
    bnn = bslrun.load(trained["wine"])
    refused(ConfigError, lambda: bnn.log_prob(np.zeros((2, 11))), "bnn", "no density", "predict")
    refused(ConfigError, lambda: bnn.decode(np.zeros((2, 2))), "no decoder")


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def test_folders_that_cannot_be_reopened_are_one_line_each(trained, tmp_path):
    folder = copy_of(trained["wine"], tmp_path)
    refused(ConfigError, lambda: bslrun.load(tmp_path / "nowhere"), "not a folder")
    refused(ConfigError, lambda: bslrun.load(tmp_path), "not a run folder")
    manifest = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**manifest, "format": 99}))
    refused(ConfigError, lambda: bslrun.load(folder), "format 99", "reads formats 1, 2")
    (folder / "run.json").unlink()
    refused(ConfigError, lambda: bslrun.load(folder), "older", "train it again")


def test_an_unfinished_run_is_refused_unless_allowed(trained, tmp_path):
    folder = copy_of(trained["wine"], tmp_path)
    artifacts.write_status(folder, "diverged", started="t", exit_code=4, error="training diverged")
    refused(
        ConfigError, lambda: bslrun.load(folder), "did not complete", "diverged", "allow_incomplete"
    )
    assert bslrun.load(folder, allow_incomplete=True).predict(np.ones((1, 11))).mean.shape == (1,)


def test_damaged_or_missing_files_are_named(trained, tmp_path):
    folder = copy_of(trained["wine"], tmp_path)
    params = folder / "checkpoint" / "params.msgpack"
    params.write_bytes(params.read_bytes()[:40])
    refused(ResourceError, lambda: bslrun.load(folder), "params.msgpack", "restore")
    params.unlink()
    refused(ConfigError, lambda: bslrun.load(folder), "params.msgpack", "missing")
    spec = json.loads((folder / "data.json").read_text())
    del spec["x_scaler"]
    (folder / "data.json").write_text(json.dumps(spec))
    refused(ResourceError, lambda: bslrun.load(folder), "data.json", "x_scaler")
    (folder / "data.json").write_text("{")
    refused(ResourceError, lambda: bslrun.load(folder), "data.json")


# ----------------------------------------------------------------- commands


def command(main, argv, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["bslrun-x", *map(str, argv)])
    code = 0
    try:
        main()
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_csv(path: Path, names, rows) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(rows)
    return path


def test_predict_command_on_a_csv_with_shuffled_columns(trained, tmp_path):
    run = bslrun.load(trained["wine"])
    x, _ = split_of("wine")
    x = x[:40]
    order = np.random.default_rng(0).permutation(x.shape[1])
    names = [run.spec.feature_names[j] for j in order]
    source = write_csv(tmp_path / "new wines.csv", names, x[:, order].tolist())
    out = tmp_path / "out.csv"
    tool = Path(sys.executable).parent / "bslrun-predict"
    result = subprocess.run(
        [str(tool), str(trained["wine"]), str(source), "--out", str(out), "--samples", "32", "--seed", "5"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "wrote 40 rows" in result.stdout
    with out.open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == [
        "mean",
        "std",
        "lower_95",
        "upper_95",
        "epistemic_std",
        "aleatoric_std",
    ]
    expected = run.predict(x, num_samples=32, seed=5)
    for column in ("mean", "std", "lower_95", "upper_95"):
        got = np.array([float(r[column]) for r in table], np.float32)
        np.testing.assert_array_equal(got, getattr(expected, column), err_msg=column)


def test_predict_command_on_arrays_and_a_classifier(trained, tmp_path, monkeypatch, capsys):
    x, _ = split_of("moons")
    np.save(tmp_path / "points.npy", x[:10])
    out = tmp_path / "p.npz"
    code, stdout, _ = command(
        reopen_cli.predict_main, [trained["moons"], tmp_path / "points.npy", "--out", out],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0 and "predicted classes" in stdout
    saved = np.load(out)
    assert {"p_0", "p_1", "entropy", "mutual_information", "prediction"} <= set(saved.files)
    np.testing.assert_allclose(saved["p_0"] + saved["p_1"], 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "case, code, words",
    [
        ("regression file for a classifier", 3, ["missing input column", "'x1'"]),
        ("wrong width", 3, ["has 3 columns", "trained on 2"]),
        ("nan", 3, ["missing value", "nan"]),
        ("no such file", 3, ["no such file"]),
        ("bad suffix", 2, ["--out", ".txt"]),
        ("not a run", 2, ["not a run folder"]),
        ("flow given to predict as a bnn", 0, ["log p(x)"]),
    ],
)
def test_predict_command_refusals_are_one_line(
    trained, tmp_path, monkeypatch, capsys, case, code, words
):
    run_dir = trained["moons"]
    args = []
    if case == "regression file for a classifier":
        source = write_csv(tmp_path / "wine.csv", ["alcohol", "quality"], [[9.5, 6], [10.1, 5]])
    elif case == "wrong width":
        np.save(tmp_path / "x.npy", np.zeros((4, 3)))
        source = tmp_path / "x.npy"
    elif case == "nan":
        source = write_csv(tmp_path / "x.csv", ["x1", "x2"], [[0.1, 0.2], [float("nan"), 1.0]])
    elif case == "no such file":
        source = tmp_path / "absent.csv"
    elif case == "bad suffix":
        source = write_csv(tmp_path / "x.csv", ["x1", "x2"], [[0.1, 0.2]])
        args = ["--out", tmp_path / "out.txt"]
    elif case == "not a run":
        source = write_csv(tmp_path / "x.csv", ["x1", "x2"], [[0.1, 0.2]])
        run_dir = tmp_path
    else:
        source = write_csv(tmp_path / "x.csv", ["x2", "x1"], [[0.1, 0.2], [0.3, -0.1]])
        run_dir = trained["maf"]
        args = ["--out", tmp_path / "lp.csv"]
    got, stdout, stderr = command(
        reopen_cli.predict_main, [run_dir, source, *args], monkeypatch, capsys
    )
    assert got == code, stderr
    text = stderr if code else stdout
    assert text.count("\n") == 1 and all(w in text for w in words), text
    if code:
        assert text.startswith("bslrun-predict: error:")


def test_sample_command_writes_points_images_and_weights(trained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.csv"
    code, stdout, _ = command(
        reopen_cli.sample_main,
        [trained["maf"], "-n", 7, "--out", out, "--seed", 2],
        monkeypatch,
        capsys,
    )
    assert code == 0 and "wrote 7 points" in stdout
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["x1", "x2"] and len(rows) == 8
    np.testing.assert_allclose(
        np.array(rows[1:], float), bslrun.load(trained["maf"]).sample(7, seed=2), rtol=1e-6
    )
    code, _, stderr = command(
        reopen_cli.sample_main, [trained["wine"], "--out", tmp_path / "w.png"], monkeypatch, capsys
    )
    assert code == 2 and "'.png'" in stderr
    code, _, _ = command(
        reopen_cli.sample_main,
        [trained["wine"], "-n", 3, "--out", tmp_path / "w.npy"],
        monkeypatch,
        capsys,
    )
    assert code == 0 and np.load(tmp_path / "w.npy").shape[0] == 3
    code, _, stderr = command(
        reopen_cli.sample_main, [trained["maf"], "-n", 0], monkeypatch, capsys
    )
    assert code == 2 and "positive integer" in stderr and stderr.count("\n") == 1


# ----------------------------------------------------------------- the protocol


def test_every_family_follows_the_protocol():
    for name, entry in FAMILIES.items():
        module, cls = entry.family.split(":")
        family = getattr(importlib.import_module(module), cls)
        assert issubclass(family, Family) and family.info.name == name
        assert family.info.saves in artifacts.ARRAY_FILES


def test_each_family_offers_exactly_the_capabilities_it_names_and_refuses_the_rest():
    from bslrun.models.family import Encodes, Predicts, Samples, Scores, require

    offered = {"bnn": {Predicts, Samples}, "vae": {Samples, Scores, Encodes},
               "flow": {Samples, Scores}}  # fmt: skip
    for name, entry in FAMILIES.items():
        module, cls = entry.family.split(":")
        family = getattr(importlib.import_module(module), cls)
        for capability in (Predicts, Samples, Scores, Encodes):
            has = issubclass(family, capability)
            assert has == (capability in offered[name]), (name, capability.__name__)
    base = Family(cfg=None, spec=None, n_train=1)
    for capability in (Predicts, Samples, Scores, Encodes):
        assert not isinstance(base, capability)
        refused(ConfigError, lambda c=capability: require(base, c, "such thing"), "has no such",
                "offers nothing")  # fmt: skip


def test_the_data_spec_round_trips_through_json(trained):
    for name in ("wine", "maf"):
        cfg = compose(*RUNS[name])
        spec = load_data(cfg.data, seeding.streams(cfg.seed).data).spec
        back = json.loads(json.dumps(spec.to_json()))
        from bslrun.data import spec_from_json

        again = spec_from_json(back)
        np.testing.assert_array_equal(again.x_scaler.mean, spec.x_scaler.mean)
        np.testing.assert_array_equal(again.y_scaler.std, spec.y_scaler.std)
        assert again.feature_names == spec.feature_names and again.task == spec.task
        if spec.log_density is not None:
            points = np.random.default_rng(0).normal(size=(50, 2))
            np.testing.assert_array_equal(again.log_density(points), spec.log_density(points))


# ----------------------------------------------------------------- folders checked, not trusted


def edit_json(path: Path, change) -> None:
    tree = json.loads(path.read_text())
    change(tree)
    path.write_text(json.dumps(tree))


def set_model(**values):
    return lambda folder: edit_json(folder / "config.json", lambda c: c["model"].update(values))


def set_x_std(folder: Path) -> None:
    def zero(spec):
        spec["x_scaler"]["std"][0] = 0.0

    edit_json(folder / "data.json", zero)


DEEP = "[" * 100_000 + "]" * 100_000
# (how the wine run's folder is damaged, exit code, words of the one line); the run was
# trained with model.hidden=[50, 50] and posterior=mean_field.
DAMAGE = {
    "params of a wider network": (set_model(hidden=[20, 20]), 5, ["params.msgpack", "w_loc"]),
    "params of a narrower network": (set_model(hidden=[100, 100]), 5, ["params.msgpack"]),
    "config edited to another posterior": (set_model(posterior="lowrank"), 5, ["w_cov_factor"]),
    "absurd sizes": (set_model(hidden=[10**9, 10**9]), 5, ["params.msgpack", "w_loc"]),
    "impossible sizes": (set_model(hidden=[0]), 2, ["config.json", "model.hidden"]),
    "a standardiser with std 0": (set_x_std, 5, ["data.json", "x_scaler.std", "positive"]),
    "data.json that is a list": (lambda f: (f / "data.json").write_text("[]"), 5, ["data.json"]),
    "deeply nested data.json": (lambda f: (f / "data.json").write_text(DEEP), 5, ["data.json"]),
    "deeply nested config.json": (lambda f: (f / "config.json").write_text(DEEP), 5, ["config"]),
    "a history.csv field over 128 kB": (
        lambda f: (f / "history.csv").write_text("epoch,train_loss\n1," + "1" * 200_000 + "\n"),
        5,
        ["history.csv", "field larger"],
    ),
    "a seed no key takes": (
        lambda f: edit_json(f / "config.json", lambda c: c.update(seed=10**30)),
        2,
        ["config.json", "seed"],
    ),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_or_mismatched_folder_is_one_line(trained, tmp_path, monkeypatch, capsys, case):
    """Nothing is predicted from a folder whose files do not fit together: without the
    checks, a wider network's weights were sliced to fit (exit 0, wrong numbers), a std of
    0 wrote NaN, and the others were tracebacks."""
    damage, code, words = DAMAGE[case]
    folder = copy_of(trained["wine"], tmp_path)
    damage(folder)
    np.save(tmp_path / "x.npy", np.ones((3, 11)))
    out = tmp_path / "out.csv"
    got, _, stderr = command(
        reopen_cli.predict_main, [folder, tmp_path / "x.npy", "--out", out], monkeypatch, capsys
    )
    assert got == code and stderr.count("\n") == 1, stderr
    assert stderr.startswith("bslrun-predict: error:") and all(w in stderr for w in words), stderr
    assert not out.exists()


def test_a_flows_parameters_in_a_bnn_folder_are_refused(trained, tmp_path):
    folder = copy_of(trained["wine"], tmp_path)
    shutil.copy(trained["maf"] / "checkpoint" / "params.msgpack", folder / "checkpoint")
    refused(ResourceError, lambda: bslrun.load(folder), "params.msgpack", "lacks", "w_loc")


@needs_mnist
def test_a_vae_names_the_binary_images_it_expects(trained):
    """Bernoulli pixels: any value but 0 or 1 has probability 0 (log p = -inf for every
    row, as it was). The line says how the run binarised (data.threshold=0.5)."""
    run = bslrun.load(trained["vae"])
    x, _ = split_of("vae")
    intensities = np.clip(x[:4] * 0.8 + 0.1, 0, 1)
    refused(DataError, lambda: run.log_prob(intensities), "binary", "(x > 0.5)", "data.threshold")
    refused(DataError, lambda: run.log_prob(intensities * 255), "(x / 255 > 0.5)")
    binary = (intensities > 0.5).astype(np.float32)
    assert np.isfinite(run.log_prob(binary)).all()
    # More importance samples than a program can index: one line, not an OverflowError.
    refused(ConfigError, lambda: run.log_prob(binary, num_samples=4_000_000_000), "fewer")


def test_a_sample_too_large_for_memory_is_refused_before_compiling(trained, monkeypatch, capsys):
    """-n 4e9 aborted the process inside XLA (SIGABRT); now refused as training's memory
    check refuses a model too large, from shapes alone. So are more posterior draws than
    the run's own (which fitted when it ran)."""
    run = bslrun.load(trained["wine"])
    refused(ConfigError, lambda: run.sample(4_000_000_000), "memory", "fewer")
    refused(ConfigError, lambda: run.sample(12345678901234567890), "can index", "fewer")
    x = np.ones((2, 11))
    refused(ConfigError, lambda: run.predict(x, num_samples=4_000_000_000), "memory", "fewer")
    code, _, stderr = command(
        reopen_cli.sample_main, [trained["maf"], "-n", "4e9"], monkeypatch, capsys
    )
    assert code == 2 and stderr.count("\n") == 1 and "TB of memory" in stderr, stderr


def test_a_seed_out_of_range_is_one_line(trained, monkeypatch, capsys):
    run = bslrun.load(trained["maf"])
    refused(ConfigError, lambda: run.sample(3, seed=10**30), "seed", "2147483647")
    refused(ConfigError, lambda: run.sample(3, seed=1e30), "seed", "PRNG key")
    for main, argv in [
        (reopen_cli.sample_main, [trained["maf"]]),
        (reopen_cli.predict_main, [trained["maf"], "x.csv"]),
    ]:
        code, _, stderr = command(main, [*argv, "--seed", 10**30], monkeypatch, capsys)
        assert code == 2 and stderr.count("\n") == 1 and "--seed" in stderr, stderr


def interrupt_in_garbage_collection(monkeypatch) -> None:
    """Ctrl-C at the moment Python runs a garbage-collection callback (JAX's, while it
    imports): Python ignores exceptions raised there, so the KeyboardInterrupt was lost
    and the command went on to write its file and exit 0."""
    from bslrun import reopen

    real = reopen.load

    def callback(phase, info):
        if phase == "start":
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # Python code, where the signal's handler runs

    def load(*args, **kwargs):
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        return real(*args, **kwargs)

    monkeypatch.setattr(reopen, "load", load)


@pytest.mark.usefixtures("ctrl_c_as_in_a_terminal")
@pytest.mark.parametrize("main", ["predict", "sample"])
def test_ctrl_c_that_python_ignores_still_stops_with_130(
    trained, tmp_path, monkeypatch, capsys, main
):
    interrupt_in_garbage_collection(monkeypatch)
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    out = tmp_path / "out.npy"
    inputs = [tmp_path / "x.npy"] if main == "predict" else ["-n", 3]
    code, stdout, stderr = command(
        getattr(reopen_cli, f"{main}_main"), [trained["maf"], *inputs, "--out", out],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 130 and not out.exists() and stdout == "", stdout
    assert stderr == f"bslrun-{main}: stopped by SIGINT (nothing was written)\n", stderr


def test_a_missing_history_column_names_the_ones_there(trained):
    run = bslrun.load(trained["maf"])
    with pytest.raises(KeyError) as raised:
        run.history["val_rmse"]
    assert "train_loss" in str(raised.value) and "\n" not in str(raised.value)
