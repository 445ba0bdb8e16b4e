"""bslrun-report: run folders built by hand (fast), and one real pair of debug=tiny runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bslrun import published, report

ERROR_LINE = (
    "[2025-01-01 10:00:00,000][ERROR] training diverged at epoch 3 (loss nan); lower optim.lr"
)


def make_run(
    root: Path,
    job: str,
    overrides: list[str],
    test: dict | None = None,
    log: str = "[2025-01-01 10:00:00,000][INFO] data wine_white: 10 train\n",
    history: bool = False,
) -> Path:
    """A run folder as bslrun writes it; ``test=None`` leaves out metrics.json."""
    run = root / job
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\nmodel:\n  posterior: mean_field\n")
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / "run.log").write_text(log)
    if history:
        (run / "history.csv").write_text("epoch,train_loss\n1,nan\n")
    if test is not None:
        seed = int(next((o.split("=")[1] for o in overrides if o.startswith("seed=")), 0))
        metrics = {"name": "x", "seed": seed, "test": test, "val": {"nll": None}, "config": {}}
        metrics["timing"] = {"train_s": 1.0 + seed}
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


RMSE = {"map": [0.9, 0.8, 1.0], "mean_field": [0.7, 0.75, 0.65]}
NLL = {"map": [1.5, 1.2, 1.3], "mean_field": [1.1, 1.0, 1.05]}


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A 2 posteriors x 3 seeds sweep plus one failed and one running job."""
    root = tmp_path / "experiments" / "bnn" / "multirun" / "2025-01-01_10-00-00"
    job = 0
    for posterior in ("mean_field", "map"):
        for seed in range(3):
            test = {"rmse": RMSE[posterior][seed], "nll": NLL[posterior][seed], "ok": True}
            make_run(root, str(job), [f"model.posterior={posterior}", f"seed={seed}"], test)
            job += 1
    make_run(root, "6", ["model.posterior=map", "seed=3"], log=ERROR_LINE + "\n", history=True)
    make_run(root, "7", ["model.posterior=map", "seed=4"])
    return tmp_path / "experiments" / "bnn"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_groups_by_differing_overrides_with_mean_and_standard_error(sweep, capsys):
    assert report.main([str(sweep)]) == 0
    rows = read_csv(sweep / "report.csv")
    assert [r["model.posterior"] for r in rows] == ["map", "mean_field"]
    assert list(rows[0]) == [
        "model.posterior",
        "n",
        "seeds",
        "test.nll_mean",
        "test.nll_se",
        "test.rmse_mean",
        "test.rmse_se",
    ]
    for row in rows:
        for metric, table in (("rmse", RMSE), ("nll", NLL)):
            x = np.array(table[row["model.posterior"]])
            se = np.sqrt(np.sum((x - x.mean()) ** 2) / (len(x) - 1)) / np.sqrt(len(x))
            assert float(row[f"test.{metric}_mean"]) == pytest.approx(x.mean(), rel=1e-12)
            assert float(row[f"test.{metric}_se"]) == pytest.approx(se, rel=1e-12)
        assert row["n"] == "3"  # the failed and the running map jobs are not counted
        assert row["seeds"] == "0,1,2"
    out = capsys.readouterr().out
    assert "| model.posterior | n | seeds | test.nll | test.rmse |" in out
    assert "| map | 3 | 0,1,2 | 1.333 ± 0.088 | 0.900 ± 0.058 |" in out


def test_failed_and_running_runs_are_listed_and_excluded(sweep, capsys):
    assert report.main([str(sweep), "--metrics", "test.rmse"]) == 0
    out = capsys.readouterr().out
    assert "failed: `multirun/2025-01-01_10-00-00/6`: " + ERROR_LINE in out
    assert "running: `multirun/2025-01-01_10-00-00/7`" in out
    html = (sweep / "report.html").read_text()
    assert "training diverged at epoch 3" in html and "2025-01-01_10-00-00/7" in html


def test_divergence_without_error_line_is_failed(tmp_path):
    run = make_run(tmp_path, "0", ["seed=0"], log="training diverged at epoch 2\n", history=True)
    assert report.classify(run)[0] == "failed"
    assert report.classify(make_run(tmp_path, "1", ["seed=1"]))[0] == "running"


def test_writes_markdown_csv_html_and_plots(sweep, tmp_path):
    out = tmp_path / "out"
    assert (
        report.main([str(sweep), "--out", str(out), "--metrics", "test.rmse,timing.train_s"]) == 0
    )
    assert (out / "report.md").read_text().startswith("# bslrun report")
    assert len(read_csv(out / "report.csv")) == 2
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["report_test_rmse.png", "report_timing_train_s.png"]
    assert all((out / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "http" not in html and "<table>" in html
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_unknown_metric_is_one_line_exit_2(sweep, capsys):
    assert report.main([str(sweep), "--metrics", "test.rmse,test.bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("bslrun-report: error: unknown metric test.bogus; available: ")
    assert "test.rmse" in err and "timing.train_s" in err
    assert not (sweep / "report.md").exists()


@pytest.mark.parametrize("make", ["empty", "missing", "unknown_group"])
def test_usage_errors_exit_2(tmp_path, capsys, make):
    path = tmp_path / "runs"
    args = [str(path)]
    if make == "empty":
        path.mkdir()
    if make == "unknown_group":
        make_run(path, "0", ["seed=0"], {"rmse": 1.0})
        args += ["--group-by", "optim.bogus"]
    assert report.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("bslrun-report: error: ") and err.count("\n") == 1


def test_no_completed_runs_exits_1(tmp_path, capsys):
    make_run(tmp_path, "0", ["seed=0"], log=ERROR_LINE)
    assert report.main([str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "no completed runs" in captured.err and "failed" in captured.out


def test_group_by_override_and_missing_keys_from_config(sweep, capsys):
    # an extra run without the posterior override: its value comes from .hydra/config.yaml
    extra = sweep / "2025-01-02_09-00-00"
    make_run(extra.parent, extra.name, ["seed=9"], {"rmse": 0.7, "nll": 1.0})
    assert report.main([str(sweep), "--group-by", "model.posterior", "--metrics", "test.rmse"]) == 0
    rows = read_csv(sweep / "report.csv")
    assert [(r["model.posterior"], r["n"], r["seeds"]) for r in rows] == [
        ("map", "3", "0,1,2"),
        ("mean_field", "4", "0,1,2,9"),
    ]
    assert report.main([str(sweep), "--group-by", "", "--metrics", "test.rmse"]) == 0
    rows = read_csv(sweep / "report.csv")
    assert len(rows) == 1 and rows[0]["n"] == "7"
    expected = np.mean(RMSE["map"] + RMSE["mean_field"] + [0.7])
    assert float(rows[0]["test.rmse_mean"]) == pytest.approx(expected, rel=1e-12)


def test_pure_helpers():
    assert report.parse_overrides(["+a.b=1", "seed=2", "hydra.job.num=3", "~x"]) == {
        "a.b": "1",
        "seed": "2",
    }
    assert report.mean_se([2.0])[:1] == (2.0,) and np.isnan(report.mean_se([2.0])[1])
    assert report.format_cell(2.0, float("nan"), 1) == "2"
    assert report.format_cell(1.23456, 0.0123, 3) == "1.235 ± 0.012"
    assert report.format_cell(float("nan"), float("nan"), 0) == "–"
    assert sorted(["10", "2", "b", "a"], key=report.sort_key) == ["2", "10", "a", "b"]
    assert report.compact([3, 0, 1, 2, 2]) == "0-3" and report.compact([0, 1, 2]) == "0,1,2"
    assert report.compact(["0", "2", "3", "4", "5"]) == "0,2,3,4,5"
    assert report.compact(["b", "a", "a"]) == "a,b"


def test_default_metrics_shortlist():
    test = {k: 1.0 for k in ("a", "b", "c", "d", "e", "f", "g", "nll", "rmse")}
    runs = [report.Run(Path("x"), {}, "completed", report.flatten_metrics({"test": test}))]
    assert report.default_metrics(runs) == ["test.nll", "test.rmse"]


def test_subprocess_entry_point_does_not_import_jax(sweep):
    code = (
        "import sys; from bslrun import report; rc = report.main(sys.argv[1:]); "
        "assert 'jax' not in sys.modules, 'jax imported'; sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "bslrun.report", str(sweep / "nope")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == f"bslrun-report: error: {sweep / 'nope'} does not exist; give a run folder or a folder of runs\n"
    )


def test_real_runs(tmp_path):
    """Two debug=tiny runs written by bslrun itself, reported: catches format drift."""
    procs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"  # separate roots: runs started in the same second collide
        out.mkdir()
        env = dict(os.environ, BSLRUN_OUTPUT_DIR=str(out), HYDRA_FULL_ERROR="0")
        cmd = [sys.executable, "-m", "bslrun", "debug=tiny", f"seed={seed}"]
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert report.main([str(tmp_path), "--metrics", "test.rmse,test.nll"]) == 0
    rows = read_csv(tmp_path / "report.csv")
    assert len(rows) == 1  # seed is not a group key
    assert rows[0]["n"] == "2" and rows[0]["seeds"] == "0,1"
    assert float(rows[0]["test.rmse_se"]) >= 0
    assert report.default_metrics([report.load_run(p) for p in report.find_run_dirs([tmp_path])])


SPLIT_RMSE = [0.60, 0.64, 0.62, 0.66, 0.63]
SPLIT_NLL = [0.90, 0.97, 0.93, 1.01, 0.95]


@pytest.fixture
def split_sweep(tmp_path) -> Path:
    """``bslrun -m sweep=uci_splits experiment=uci_wine_red 'data.split=range(5)'``, faked."""
    root = tmp_path / "uci_wine_red" / "multirun" / "2025-01-01_10-00-00"
    for k, (rmse, nll) in enumerate(zip(SPLIT_RMSE, SPLIT_NLL, strict=True)):
        overrides = ["sweep=uci_splits", "experiment=uci_wine_red", f"data.split={k}"]
        make_run(root, str(k), overrides, {"rmse": rmse, "nll": nll, "coverage_95": 0.95})
    return root


def test_published_table_beside_a_split_sweep(split_sweep, capsys):
    assert report.main([str(split_sweep), "--published", "uci_wine_red"]) == 0
    # Splits are replicates: one group, with the splits listed.
    rows = read_csv(split_sweep / "report.csv")
    assert len(rows) == 1 and (rows[0]["n"], rows[0]["seeds"], rows[0]["splits"]) == (
        "5",
        "0",
        "0-4",
    )
    table = read_csv(split_sweep / "published.csv")
    assert [r["method"] for r in table] == [
        "bslrun (posterior=mean_field)",  # from .hydra/config.yaml; likelihood unset is left out
        "VI (Graves 2011)",
        "PBP",
        "MC dropout",
    ]
    ours, vi, pbp, dropout = table
    n = len(SPLIT_RMSE)
    for column, values, sign in (
        ("test_rmse", SPLIT_RMSE, 1),
        ("test_log_likelihood", SPLIT_NLL, -1),
    ):
        x = np.array(values)
        assert float(ours[f"{column}_mean"]) == pytest.approx(sign * x.mean(), rel=1e-12)
        assert float(ours[f"{column}_se"]) == pytest.approx(x.std(ddof=1) / np.sqrt(n), rel=1e-12)
    published_values = [
        (r["n"], r["test_rmse_mean"], r["test_log_likelihood_mean"]) for r in table[1:]
    ]
    assert published_values == [
        ("20", "0.646", "-0.98"),
        ("20", "0.635", "-0.97"),
        ("20", "0.62", "-0.93"),
    ]
    assert vi["source"] == pbp["source"] == "Hernández-Lobato & Adams 2015"
    assert dropout["source"] == "Gal & Ghahramani 2016" and dropout["test_rmse_se"] == ""
    out = capsys.readouterr().out
    assert "| method | splits | test RMSE | test log-likelihood | source |" in out
    assert (
        "| bslrun (posterior=mean_field) | 5 | 0.630 ± 0.010 | -0.952 ± 0.019 | these runs |" in out
    )
    assert "| MC dropout | 20 | 0.62 | -0.93 | Gal & Ghahramani 2016 |" in out
    section = (split_sweep / "published.md").read_text()
    assert section.startswith("## Beside the published results: UCI red wine")
    assert section in (split_sweep / "report.md").read_text()
    assert "MC dropout" in (split_sweep / "report.html").read_text()


def test_published_groups_by_the_swept_keys(split_sweep):
    for k in range(2):
        overrides = ["sweep=uci_splits", "experiment=uci_wine_red", f"data.split={k}"]
        overrides.append("model.posterior=lowrank")
        make_run(split_sweep.parent / "b", str(k), overrides, {"rmse": 0.6, "nll": 0.9})
    assert report.main([str(split_sweep.parent), "--published", "uci_wine_red"]) == 0
    methods = [r["method"] for r in read_csv(split_sweep.parent / "published.csv")][:2]
    assert methods == ["bslrun (posterior=lowrank)", "bslrun (posterior=mean_field)"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--published", "nope"],
            "unknown benchmark --published nope; choose one of: uci_wine_red",
        ),
        (["--published", "uci_wine_red"], "the runs' metrics.json lack test.nll"),
    ],
)
def test_published_errors_exit_2(tmp_path, capsys, args, message):
    make_run(tmp_path, "0", ["data.split=0"], {"rmse": 0.6})
    assert report.main([str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "published.md").exists() and not (tmp_path / "report.md").exists()


def test_published_data_file_is_complete():
    for name, bench in published.benchmarks().items():
        names = {c["name"] for c in bench["columns"]}
        assert bench["rows"] and all(names <= set(row) for row in bench["rows"]), name
        assert {row["source"] for row in bench["rows"]} <= set(bench["references"]), name
