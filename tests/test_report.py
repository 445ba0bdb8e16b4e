"""bslrun-report: run folders built by hand (fast), and one real pair of debug=tiny runs."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import bslrun_here

from bslrun import artifacts, published, report, runs, summary

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
        *[f"test.nll_{s}" for s in ("mean", "se", "n", "nan")],
        *[f"test.rmse_{s}" for s in ("mean", "se", "n", "nan")],
    ]
    for row in rows:
        for metric, table in (("rmse", RMSE), ("nll", NLL)):
            x = np.array(table[row["model.posterior"]])
            se = np.sqrt(np.sum((x - x.mean()) ** 2) / (len(x) - 1)) / np.sqrt(len(x))
            assert float(row[f"test.{metric}_mean"]) == pytest.approx(x.mean(), rel=1e-12)
            assert float(row[f"test.{metric}_se"]) == pytest.approx(se, rel=1e-12)
        assert row["n"] == "3"  # the failed and the running map jobs are not counted
        assert (row["test.rmse_n"], row["test.rmse_nan"]) == ("3", "0")
        assert row["seeds"] == "0,1,2"
    out = capsys.readouterr().out
    assert "| model.posterior | n | seeds | test.nll ↓ | test.rmse ↓ |" in out
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
    assert runs.classify(run)[0] == "failed"
    assert runs.classify(make_run(tmp_path, "1", ["seed=1"]))[0] == "running"


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
    assert runs.parse_overrides(["+a.b=1", "seed=2", "hydra.job.num=3", "~x"]) == {
        "a.b": "1",
        "seed": "2",
    }
    assert summary.mean_se([2.0])[:1] == (2.0,) and np.isnan(summary.mean_se([2.0])[1])
    assert summary.format_cell(2.0, float("nan"), 1) == "2"
    assert summary.format_cell(1.23456, 0.0123, 3) == "1.235 ± 0.012"
    assert summary.format_cell(float("nan"), float("nan"), 0) == "–"
    assert sorted(["10", "2", "b", "a"], key=summary.sort_key) == ["2", "10", "a", "b"]
    assert summary.compact([3, 0, 1, 2, 2]) == "0-3" and summary.compact([0, 1, 2]) == "0,1,2"
    assert summary.compact(["0", "2", "3", "4", "5"]) == "0,2,3,4,5"
    assert summary.compact(["b", "a", "a"]) == "a,b"


def test_default_metrics_shortlist():
    test = {k: 1.0 for k in ("a", "b", "c", "d", "e", "f", "g", "nll", "rmse")}
    done = [runs.Run(Path("x"), {}, "completed", runs.flatten_metrics({"test": test}))]
    assert summary.default_metrics(done) == ["test.nll", "test.rmse"]


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
    """Two debug=tiny runs written by bslrun itself (in this process), reported: catches
    format drift."""
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"  # separate roots: runs started in the same second collide
        out.mkdir()
        result = bslrun_here("debug=tiny", f"seed={seed}", out=out)
        assert result.returncode == 0, result.stderr
    assert report.main([str(tmp_path), "--metrics", "test.rmse,test.nll"]) == 0
    rows = read_csv(tmp_path / "report.csv")
    assert len(rows) == 1  # seed is not a group key
    assert rows[0]["n"] == "2" and rows[0]["seeds"] == "0,1"
    assert float(rows[0]["test.rmse_se"]) >= 0
    assert summary.default_metrics([runs.load_run(p) for p in runs.find_run_dirs([tmp_path])])


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
        "MC dropout (2018 re-run)",
        "Deep ensembles",
    ]
    ours, vi, pbp, dropout, rerun, ensembles = table
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
        ("20", "0.6218", "-0.928"),
        ("20", "0.64", "-0.94"),
    ]
    assert vi["source"] == pbp["source"] == "Hernández-Lobato & Adams 2015"
    assert dropout["source"] == "Gal & Ghahramani 2016" and dropout["test_rmse_se"] == ""
    assert (rerun["test_rmse_se"], ensembles["test_rmse_se"]) == ("0.0082", "")
    out = capsys.readouterr().out
    assert "| method | splits | test RMSE ↓ | test log-likelihood ↑ | source |" in out
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


# ------------------------------------------------------------ status.json


def write_status(
    run: Path,
    state: str,
    *,
    pid: int | None = None,
    host: str | None = None,
    error: str | None = None,
    exit_code: int | None = None,
) -> Path:
    """status.json as artifacts.write_status writes it, with the pid and host chosen."""
    status = {
        "format": 1, "status": state, "error": error, "exit_code": exit_code,
        "started": "2025-01-01T10:00:00+00:00",
        "ended": None if state == "running" else "2025-01-01T10:01:00+00:00",
        "pid": os.getpid() if pid is None else pid,
        "host": socket.gethostname() if host is None else host,
    }  # fmt: skip
    (run / artifacts.STATUS_FILE).write_text(json.dumps(status))
    return run


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_state_comes_from_status_json_not_from_the_log(tmp_path, capsys):
    ok = {"rmse": 0.5}
    # The log's wording no longer decides: an "error:" line in a completed run's log.
    write_status(make_run(tmp_path, "0", ["seed=0"], ok, log="error: a warning\n"), "completed")
    diverged = "training diverged at epoch 3 (loss nan); lower optim.lr"
    write_status(make_run(tmp_path, "1", ["seed=1"]), "diverged", error=diverged, exit_code=4)
    write_status(make_run(tmp_path, "2", ["seed=2"]), "interrupted", error="stopped by SIGTERM")
    write_status(make_run(tmp_path, "3", ["seed=3"]), "failed", exit_code=3)
    write_status(make_run(tmp_path, "4", ["seed=4"]), "running")  # this very process: alive
    pid = dead_pid()
    write_status(make_run(tmp_path, "5", ["seed=5"]), "running", pid=pid)
    write_status(make_run(tmp_path, "6", ["seed=6"]), "running", pid=pid, host="elsewhere")
    write_status(make_run(tmp_path, "7", ["seed=7"]), "completed")  # no metrics.json
    damaged = make_run(tmp_path, "8", ["seed=8"], ok)
    write_status(damaged, "completed")
    (damaged / "metrics.json").write_text('{"test": {"rmse": 0.')
    write_status(make_run(tmp_path, "9", ["seed=9"], ok), "running", pid=pid)
    # A folder from before status.json: still judged by metrics.json and run.log.
    make_run(tmp_path, "10", ["seed=10"], {"rmse": 0.7})
    make_run(tmp_path, "11", ["seed=11"], log=ERROR_LINE + "\n")

    states = {p.name: runs.load_run(p) for p in runs.find_run_dirs([tmp_path])}
    assert {name: run.status for name, run in states.items()} == {
        "0": "completed", "1": "diverged", "2": "interrupted", "3": "failed",
        "4": "running", "5": "killed", "6": "running", "7": "failed", "8": "failed",
        "9": "killed", "10": "completed", "11": "failed",
    }  # fmt: skip
    assert states["1"].message == diverged
    assert states["3"].message == "no error recorded (exit code 3); see run.log"
    assert states["4"].message == (
        f"running since 2025-01-01T10:00:00+00:00 (process {os.getpid()} on {socket.gethostname()})"
    )
    killed = f"process {pid} ended without recording an end (out of memory, SIGKILL or power loss)"
    assert states["5"].message == killed
    assert states["6"].message.endswith(f"(process {pid} on elsewhere)")  # cannot look there
    assert states["7"].message == "recorded as completed but metrics.json is missing; rerun it"
    assert (
        states["8"].message.startswith("unreadable metrics.json (")
        and "rerun it" in states["8"].message
    )
    assert states["9"].message == killed + "; its metrics.json is left out: rerun it"

    assert report.main([str(tmp_path), "--metrics", "test.rmse"]) == 0
    rows = read_csv(tmp_path / "report.csv")
    assert [(r["n"], r["seeds"]) for r in rows] == [("2", "0,10")]  # only completed runs
    out = capsys.readouterr().out
    assert f"- diverged: `1`: {diverged}" in out
    assert "- interrupted: `2`: stopped by SIGTERM" in out
    assert f"- killed: `5`: {killed}" in out
    html = (tmp_path / "report.html").read_text()
    assert "killed" in html and "stopped by SIGTERM" in html


# ------------------------------------------------- grouping over completed runs


def test_a_failed_run_with_an_extra_override_does_not_stop_the_report(tmp_path, capsys):
    """Was: 'unknown group key data.path, ...' and no report, because the keys that differ
    were taken over every run, the failed one included, and checked over the completed."""
    make_run(tmp_path, "0", ["model.posterior=map", "seed=0"], {"rmse": 0.9})
    make_run(tmp_path, "1", ["model.posterior=mean_field", "seed=0"], {"rmse": 0.7})
    failed = make_run(tmp_path, "2", ["model.posterior=map", "data.path=x.csv"], log=ERROR_LINE)
    write_status(failed, "failed", error="data file x.csv not found; check data.path", exit_code=3)
    assert report.main([str(tmp_path)]) == 0, capsys.readouterr().err
    rows = read_csv(tmp_path / "report.csv")
    assert [(r["model.posterior"], r["n"]) for r in rows] == [("map", "1"), ("mean_field", "1")]
    assert "data.path" not in rows[0]
    assert "- failed: `2`: data file x.csv not found; check data.path" in capsys.readouterr().out
    # A group key that only the failed run has is checked against the completed runs.
    assert report.main([str(tmp_path), "--group-by", "data.path"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "bslrun-report: error: unknown group key data.path (no completed run has it); group "
        "by an override of theirs (model.posterior, seed) or a config key\n"
    )


# ------------------------------------------------------------ values not finite


def test_values_not_finite_are_counted_and_shown(tmp_path, capsys):
    # bslrun writes NaN and infinities as null; a metrics.json may also hold NaN/Infinity.
    for seed, rmse in enumerate([0.7, 0.72, 0.74, 0.70, None]):
        make_run(tmp_path, str(seed), ["model.posterior=map", f"seed={seed}"], {"rmse": rmse})
    (tmp_path / "0" / "metrics.json").write_text(
        (tmp_path / "0" / "metrics.json").read_text().replace("0.7", "Infinity")
    )
    for seed in range(2):
        make_run(
            tmp_path, f"b{seed}", ["model.posterior=mean_field", f"seed={seed}"], {"rmse": 0.5}
        )
    assert report.main([str(tmp_path), "--metrics", "test.rmse"]) == 0
    finite = np.array([0.72, 0.74, 0.70])
    se = finite.std(ddof=1) / np.sqrt(3)
    cell = f"{finite.mean():.3f} ± {se:.3f} (n=3, 2 nan)"
    out = capsys.readouterr().out
    assert f"| map | 5 | 0-4 | {cell} |" in out
    assert "| mean_field | 2 | 0,1 | 0.5 |" in out  # no suffix where nothing is left out
    assert summary.LEFT_OUT_NOTE in out
    rows = {r["model.posterior"]: r for r in read_csv(tmp_path / "report.csv")}
    assert (rows["map"]["n"], rows["map"]["test.rmse_n"], rows["map"]["test.rmse_nan"]) == (
        "5", "3", "2",
    )  # fmt: skip
    assert float(rows["map"]["test.rmse_mean"]) == pytest.approx(finite.mean(), rel=1e-12)
    assert float(rows["map"]["test.rmse_se"]) == pytest.approx(se, rel=1e-12)
    assert (rows["mean_field"]["test.rmse_n"], rows["mean_field"]["test.rmse_nan"]) == ("2", "0")
    html = (tmp_path / "report.html").read_text()
    assert f"<td>{cell}</td>" in html and "j nan" in html


def test_a_metric_some_runs_lack_is_counted_as_missing(tmp_path, capsys):
    make_run(tmp_path, "0", ["seed=0"], {"rmse": 0.7, "nll": 1.0})
    make_run(tmp_path, "1", ["seed=1"], {"rmse": None, "nll": 1.2})
    make_run(tmp_path, "2", ["seed=2"], {"nll": 1.1})
    assert report.main([str(tmp_path), "--metrics", "test.rmse"]) == 0
    assert "| 3 | 0,1,2 | 0.7 (n=1, 1 nan, 1 missing) |" in capsys.readouterr().out
    assert summary.mean_se([1.0, None, math.nan, math.inf, 3.0]) == (2.0, 1.0, 2, 2, 1)
    assert summary.format_cell(math.nan, math.nan, 0, 3) == "– (n=0, 3 nan)"


def test_published_cells_count_values_not_finite(split_sweep, capsys):
    metrics = split_sweep / "4" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"nll": 0.95', '"nll": null'))
    assert report.main([str(split_sweep), "--published", "uci_wine_red"]) == 0
    nll = np.array(SPLIT_NLL[:4])
    cell = f"{-nll.mean():.3f} ± {nll.std(ddof=1) / 2:.3f} (n=4, 1 nan)"
    assert f"| bslrun (posterior=mean_field) | 5 | 0.630 ± 0.010 | {cell} | these runs |" in (
        capsys.readouterr().out
    )


# ------------------------------------------------------ an unwritable output folder


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_an_unwritable_out_still_prints_the_table_then_one_line_exit_5(
    sweep, tmp_path, capsys, monkeypatch, code
):
    out = tmp_path / "out"
    real_write_bytes = Path.write_bytes

    def refusing(self, data):
        if out in self.parents:
            raise OSError(code, os.strerror(code), str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", refusing)
    assert report.main([str(sweep), "--out", str(out)]) == 5
    captured = capsys.readouterr()
    assert "| map | 3 | 0,1,2 | 1.333 ± 0.088 | 0.900 ± 0.058 |" in captured.out
    fix = (
        "free disk space there or give another folder with --out"
        if code == errno.ENOSPC
        else "give a folder you can write with --out"
    )
    assert captured.err == (
        f"bslrun-report: error: cannot write the report into {out} ({os.strerror(code)}); {fix}\n"
    )
    assert not out.exists()  # no temporary file, nor the folders made for the files


def test_an_out_folder_in_proc_is_refused_after_the_table(sweep, capsys):
    assert report.main([str(sweep), "--out", "/proc/x"]) == 5
    captured = capsys.readouterr()
    assert captured.out.startswith("# bslrun report\n\n| model.posterior |")
    assert captured.err == (
        "bslrun-report: error: cannot write the report into /proc/x (No such file or "
        "directory); give a folder you can write with --out\n"
    )


def test_a_full_disk_midway_leaves_no_temporary_file(sweep, capsys, monkeypatch):
    real_write_bytes = Path.write_bytes

    def full_for_html(self, data):
        if self.name.startswith(".report.html."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_html)
    assert report.main([str(sweep)]) == 5
    assert "No space left on device" in capsys.readouterr().err
    assert (sweep / "report.md").is_file() and not (sweep / "report.html").exists()
    assert not [p for p in sweep.rglob("*.tmp")]


# ----------------------------------------------------------------- bad input


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("bslrun-report: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("metrics.json", "{not json", "unreadable metrics.json (Expecting property name"),
        ("metrics.json", "[1, 2]", "metrics.json is not an object of metric sections"),
        ("metrics.json", '{"test": 5}', "metrics.json is not an object of metric sections"),
        ("metrics.json", b"\xff\xfe", "unreadable metrics.json ("),
        ("status.json", "{", "unreadable status.json (not a JSON object with a known status)"),
        ("status.json", '{"status": "exploded"}', "unreadable status.json"),
        (".hydra/overrides.yaml", "seed: 1", "unreadable .hydra/overrides.yaml (a mapping, not"),
        (".hydra/overrides.yaml", "7", "unreadable .hydra/overrides.yaml (a single value, not"),
        (".hydra/overrides.yaml", "- [unclosed", "unreadable .hydra/overrides.yaml ("),
    ],
    ids=["json", "list", "section", "utf8", "status-json", "status-value", "ov-dict",
         "ov-int", "ov-yaml"],
)  # fmt: skip
def test_a_damaged_file_lists_its_run_and_the_report_goes_on(
    tmp_path, capsys, file, content, message
):
    make_run(tmp_path, "0", ["seed=0"], {"rmse": 0.7})
    bad = make_run(tmp_path, "1", ["seed=1"], {"rmse": 0.9})
    write_status(bad, "completed")
    data = content if isinstance(content, bytes) else content.encode()
    (bad / file).write_bytes(data)
    assert report.main([str(tmp_path)]) == 0, capsys.readouterr().err
    listed = [line for line in capsys.readouterr().out.splitlines() if "`1`" in line]
    assert len(listed) == 1 and message in listed[0], listed
    assert read_csv(tmp_path / "report.csv")[0]["n"] == "1"


def test_a_damaged_file_in_the_only_run_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path, "0", ["seed=0"], {"rmse": 0.7})
    (run / ".hydra" / "overrides.yaml").write_text("7\n")
    (run / ".hydra" / "hydra.yaml").write_text("- a list\n")
    assert report.main([str(tmp_path)]) == 1
    assert "no completed runs among 1 run folders (listed above); fix or rerun them" in (
        one_error_line(capsys)
    )


def test_a_damaged_hydra_yaml_is_no_group_value(tmp_path, capsys):
    for seed in range(2):
        run = make_run(tmp_path, str(seed), [f"seed={seed}"], {"rmse": 0.7})
        (run / ".hydra" / "hydra.yaml").write_text(["- a list\n", "hydra: 3\n"][seed])
    assert report.main([str(tmp_path), "--group-by", "model.posterior"]) == 0
    assert read_csv(tmp_path / "report.csv")[0]["model.posterior"] == "mean_field"


@pytest.mark.parametrize(
    ("setup", "args", "code", "message"),
    [
        ("none", ["nope"], 2, "nope does not exist; give a run folder or a folder of runs"),
        ("empty", [], 2, "no run folders (with .hydra/config.yaml) under"),
        ("one", ["--published", "nope"], 2, "unknown benchmark --published nope; choose one of"),
        ("failed", ["--published", "nope"], 2, "unknown benchmark --published nope"),
        ("one", ["--metrics", "test.bogus"], 2, "unknown metric test.bogus; available: test.rmse"),
        ("one", ["--metrics", "val.nope,x"], 2, "unknown metric val.nope, x; available:"),
        ("one", ["--group-by", "a.b"], 2, "unknown group key a.b (no completed run has it)"),
        ("one", ["--bogus"], 2, "unrecognized arguments: --bogus"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(tmp_path, capsys, setup, args, code, message):
    root = tmp_path / "runs"
    if setup != "none":
        root.mkdir()
    if setup == "one":
        make_run(root, "0", ["seed=0"], {"rmse": 0.7})
    if setup == "failed":
        make_run(root, "0", ["seed=0"], log=ERROR_LINE)
    path = [str(tmp_path / "nope")] if setup == "none" else [str(root)]
    assert report.main(path + [a for a in args if a != "nope" or setup != "none"]) == code
    assert message in one_error_line(capsys)
    assert setup == "none" or not (root / "report.md").exists()


def test_a_bug_is_one_line_exit_1(sweep, capsys, monkeypatch):
    def broken(*args):
        raise RuntimeError("broken\nsecond line")

    monkeypatch.setattr(report, "csv_report", broken)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert report.main([str(sweep)]) == 1
    assert one_error_line(capsys) == (
        "bslrun-report: error: unexpected RuntimeError: broken; a bug in bslrun-report: "
        "please report it (HYDRA_FULL_ERROR=1 shows the traceback)\n"
    )
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(RuntimeError):
        report.main([str(sweep)])


def test_a_closed_stdout_still_writes_the_files(sweep):
    """``bslrun-report ... | head -1``: the table is printed first; the reader going away
    must not stop the files (nor print a traceback)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the report prints
    result = subprocess.run(
        [sys.executable, "-m", "bslrun.report", str(sweep)],
        stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
    )  # fmt: skip
    os.close(write_end)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert (sweep / "report.md").is_file() and (sweep / "report.html").is_file()
