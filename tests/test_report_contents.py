"""bslrun-report's contents beyond the group table: the shared settings, the per-run table
and its links, which way each metric is better, reference lines, learning curves, short
labels; grouping that ignores keys which cannot change results and enum spellings.
Run folders are made by hand (fast)."""

from __future__ import annotations

import json
import math
import os
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_report import ERROR_LINE, make_run, read_csv

from bslrun import published, report, report_plots, runs, summary


def with_config(run: Path, config: dict) -> Path:
    """Give a hand-made run the config.json bslrun writes (the resolved config)."""
    (run / "config.json").write_text(json.dumps(config))
    return run


def history(run: Path, train: list, val: list) -> Path:
    lines = ["epoch,train_loss,lr,val_nll"]
    lines += [f"{e + 1},{t},0.001,{v}" for e, (t, v) in enumerate(zip(train, val, strict=True))]
    (run / "history.csv").write_text("\n".join(lines) + "\n")
    return run


# ----------------------------------------------------------------- grouping


def test_enum_spellings_are_one_group_shown_short(tmp_path, capsys):
    """OmegaConf takes model.posterior=Posterior.mean_field for mean_field; a sweep may hold both."""
    make_run(tmp_path, "0", ["model.posterior=Posterior.mean_field", "seed=0"], {"rmse": 0.6})
    make_run(tmp_path, "1", ["model.posterior=mean_field", "seed=1"], {"rmse": 0.8})
    make_run(tmp_path, "2", ["model.posterior=map", "seed=0"], {"rmse": 0.9})
    assert report.main([str(tmp_path), "--metrics", "test.rmse"]) == 0
    rows = read_csv(tmp_path / "report.csv")
    assert [(r["model.posterior"], r["n"], r["seeds"]) for r in rows] == [
        ("map", "1", "0"),
        ("mean_field", "2", "0,1"),
    ]
    assert float(rows[1]["test.rmse_mean"]) == pytest.approx(0.7, rel=1e-12)
    assert "Posterior." not in capsys.readouterr().out
    assert "Posterior." not in (tmp_path / "report.md").read_text()


def test_spellings_of_one_value():
    assert runs.plain("Posterior.mean_field") == "mean_field"
    assert runs.plain("Activation.relu") == runs.plain("relu") == "relu"
    assert runs.plain("Data.csv") == "Data.csv"  # not an enum of bslrun's config: kept
    assert runs.plain("Posterior.bogus") == "Posterior.bogus"
    assert runs.plain("False") == runs.plain(False) == "false"
    assert runs.plain("null") == runs.plain(None) == "null"
    assert runs.plain("[50,50]") == runs.plain([50, 50]) == "[50, 50]"
    assert runs.plain(0.001) == "0.001" and runs.plain(3) == "3"


@pytest.mark.parametrize(
    "override",
    [
        "trainer.progress=false",
        "trainer.checkpoint_every=5",
        "data.root=/tmp/elsewhere",
        "logger=wandb",
        "logger.wandb.mode=offline",
        "+logger.mlflow.experiment=x",
        "name=renamed",
        "hydra.job.chdir=true",
    ],
)
def test_keys_that_cannot_change_results_do_not_split_groups(tmp_path, override):
    make_run(tmp_path, "0", ["model.posterior=map", "seed=0", override], {"rmse": 0.9})
    make_run(tmp_path, "1", ["model.posterior=map", "seed=1"], {"rmse": 0.8})
    make_run(tmp_path, "2", ["model.posterior=mean_field", "seed=0", override], {"rmse": 0.7})
    assert report.main([str(tmp_path), "--metrics", "test.rmse"]) == 0
    rows = read_csv(tmp_path / "report.csv")
    assert list(rows[0])[:3] == ["model.posterior", "n", "seeds"]
    assert [(r["model.posterior"], r["n"]) for r in rows] == [("map", "2"), ("mean_field", "1")]


def test_no_effect_keys_cover_their_sub_keys_only():
    assert runs.has_no_effect("logger") and runs.has_no_effect("logger.wandb.mode")
    assert runs.has_no_effect("hydra/launcher") and runs.has_no_effect("trainer.progress")
    assert not runs.has_no_effect("trainer.epochs")
    assert not runs.has_no_effect("trainer.progress_extra")  # a prefix of a name is not enough
    assert not runs.has_no_effect("data.path")  # the data itself: it changes results


def test_an_explicit_group_key_may_still_be_one_that_cannot_change_results(tmp_path):
    make_run(tmp_path, "0", ["trainer.progress=false"], {"rmse": 0.9})
    make_run(tmp_path, "1", ["trainer.progress=true"], {"rmse": 0.8})
    assert report.main([str(tmp_path), "--group-by", "trainer.progress"]) == 0
    assert [r["trainer.progress"] for r in read_csv(tmp_path / "report.csv")] == ["false", "true"]


# ----------------------------------------------------------------- settings

CONFIG = {
    "name": "bnn_wine_red",
    "seed": 0,
    "data": {"name": "wine_red", "split": 0, "root": None, "split_dir": None},
    "model": {"family": "bnn", "posterior": "map", "hidden": [50, 50], "df": None},
    "optim": {"lr": 0.001},
    "trainer": {"epochs": 3, "progress": True, "checkpoint_every": 10},
    "logger": {"wandb": {"mode": "offline"}},
}


def config_of(posterior: str, seed: int, lr: float, progress: bool) -> dict:
    config = json.loads(json.dumps(CONFIG))
    config["model"]["posterior"], config["seed"] = posterior, seed
    config["optim"]["lr"], config["trainer"]["progress"] = lr, progress
    return config


@pytest.fixture
def configured(tmp_path) -> Path:
    """Four runs with config.json: two posteriors, two seeds, lr the same except in one
    failed run (not summarised), progress differing (cannot change results)."""
    root = tmp_path / "sweep"
    for job, (posterior, seed) in enumerate([("map", 0), ("map", 1), ("mean_field", 0)]):
        run = make_run(root, str(job), [f"model.posterior={posterior}", f"seed={seed}"],
                       {"rmse": 0.5 + job / 10, "coverage_95": 0.9})  # fmt: skip
        with_config(run, config_of(posterior, seed, 0.001, job == 1))
    failed = make_run(root, "3", ["model.posterior=map", "optim.lr=0.1"], log=ERROR_LINE)
    with_config(failed, config_of("map", 0, 0.1, True))
    return root


def test_the_header_lists_exactly_the_settings_all_completed_runs_share(configured, capsys):
    assert report.main([str(configured)]) == 0
    done = [runs.load_run(p) for p in runs.find_run_dirs([configured])][:3]
    # Left out: the group key (posterior), the seed, nulls, and keys that cannot change
    # results (name, data.root, trainer.progress, trainer.checkpoint_every, logger.*).
    expected = {
        "data.name": "wine_red",
        "data.split": "0",
        "model.family": "bnn",
        "model.hidden": "[50, 50]",
        "optim.lr": "0.001",
        "trainer.epochs": "3",
    }
    assert summary.shared_settings(done, ["model.posterior"]) == expected
    out = capsys.readouterr().out
    assert out.startswith(
        "# bslrun report: bnn_wine_red\n\n"
        "Settings shared by all 3 completed runs:\n\n"
        "- **data**: name=wine_red, split=0\n"
        "- **model**: family=bnn, hidden=[50, 50]\n"
        "- **optim**: lr=0.001\n"
        "- **trainer**: epochs=3\n\n"
        "| model.posterior | n | seeds |"
    )
    page = (configured / "report.html").read_text()
    assert "<h1>bslrun report: bnn_wine_red</h1>" in page
    assert "<tr><th>model</th><td>family=bnn, hidden=[50, 50]</td></tr>" in page


# --------------------------------------------------------------- runs table


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.images, self.tables = [], 0, 0

    def handle_starttag(self, tag, attrs):
        self.hrefs += [v for k, v in attrs if tag == "a" and k == "href"]
        self.images += tag == "img"
        self.tables += tag == "table"


@pytest.mark.parametrize("where", ["inside", "elsewhere"])
def test_every_run_is_listed_with_a_link_to_its_folder(configured, tmp_path, where):
    odd = make_run(configured, "4_model.posterior=map,x=[1 2]", ["seed=7"], {"rmse": 0.4})
    out = configured if where == "inside" else tmp_path / "reports" / "a"
    assert report.main([str(configured), "--out", str(out), "--metrics", "test.rmse"]) == 0
    parser = Links()
    parser.feed((out / "report.html").read_text())
    targets = [(out / urllib.parse.unquote(h)).resolve() for h in parser.hrefs]
    assert sorted(targets) == sorted(p.resolve() for p in runs.find_run_dirs([configured]))
    assert all(h.endswith("/") and not os.path.isabs(h) for h in parser.hrefs)
    assert odd.resolve() in targets
    text = (out / "report.md").read_text()
    runs_table = text[text.index("## Runs") :]
    assert runs_table.count("](") == 5  # a Markdown link per run
    assert "| completed | map | 0 | 0.5 |" in runs_table
    assert "| failed | map | 0 |  |" in runs_table  # its seed from config.json; no metrics
    assert "## Runs" not in (out / "report.csv").read_text()


def test_the_printed_report_leaves_the_runs_table_to_the_files(configured, capsys):
    assert report.main([str(configured)]) == 0
    assert "## Runs" not in capsys.readouterr().out
    assert "## Runs" in (configured / "report.md").read_text()


# -------------------------------------------------------- which way is better


def test_which_way_each_metric_is_better():
    assert summary.better("test.rmse") == summary.Better(-1)
    assert summary.better("val.accuracy") == summary.Better(1)
    assert summary.better("test.nll", sign=-1) == summary.Better(1)  # a log-likelihood
    assert summary.better("test.coverage_95") == summary.Better(0, 0.95)
    assert summary.better("test.coverage_50").target == 0.5
    assert summary.better("test.predictive_std") is None
    assert summary.marked("test.rmse", "test.rmse") == "test.rmse ↓"
    assert summary.marked("test.accuracy", "test.accuracy") == "test.accuracy ↑"
    assert summary.marked("test.coverage_95", "test.coverage_95") == "test.coverage_95 →0.95"
    assert summary.marks_note(["test.rmse", "test.nll", "test.coverage_95", "test.x"]) == (
        "↓ lower is better; →0.95 closer to 0.95 is better"
    )


def test_the_columns_carry_the_marks(configured, capsys):
    assert report.main([str(configured)]) == 0
    out = capsys.readouterr().out
    assert "| model.posterior | n | seeds | test.coverage_95 →0.95 | test.rmse ↓ |" in out
    assert "Columns: →0.95 closer to 0.95 is better; ↓ lower is better." in out
    header = read_csv(configured / "report.csv")[0]
    assert "test.rmse_mean" in header  # the CSV's names stay plain


# --------------------------------------------------------------- reference lines


def lines_of(fig) -> dict:
    """{legend label: y} of a figure's horizontal lines."""
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    return {line.get_label(): line.get_ydata()[0] for line in lines}


def test_coverage_plots_show_their_target_and_benchmarks_their_published_results(tmp_path):
    done = []
    for seed in range(2):
        run = make_run(tmp_path, str(seed), [f"seed={seed}"], {"rmse": 0.6, "coverage_95": 0.9})
        done.append(runs.load_run(with_config(run, {**CONFIG, "name": "uci_wine_red"})))
    rows = summary.summarise(done, [], ["test.rmse", "test.nll", "test.coverage_95"])
    bench = published.benchmark_of(done)
    assert bench == published.load("uci_wine_red")
    coverage = report_plots.metric_figure(
        rows, [], "test.coverage_95", report.references("test.coverage_95", bench)
    )
    assert lines_of(coverage) == {"target: 0.95": 0.95}
    rmse = report_plots.metric_figure(rows, [], "test.rmse", report.references("test.rmse", bench))
    assert lines_of(rmse) == {
        "VI (Graves 2011): 0.646": 0.646,
        "PBP: 0.635": 0.635,
        "MC dropout: 0.62": 0.62,
        "MC dropout (2018 re-run): 0.6218": 0.6218,
        "Deep ensembles: 0.64": 0.64,
    }
    # A published log-likelihood is drawn where test.nll is: its negative.
    lines = sorted(v for _, v in report.references("test.nll", bench))
    assert lines == [0.928, 0.93, 0.94, 0.97, 0.98]
    assert report.references("test.rmse", None) == []
    assert published.benchmark_of(done[:1] + [runs.Run(Path("x"), {}, "completed")]) is None


# ------------------------------------------------------------ learning curves


def test_learning_curves_overlay_the_groups_means_with_a_legend(tmp_path):
    train = {"a": [[3.0, 2.0, 1.0], [5.0, 4.0]], "b": [[1.0, 0.5, 0.25]]}
    val = {"a": [[2.0, 1.5, 1.0], [4.0, 3.0]], "b": [[1.0, 0.8, math.nan]]}
    for posterior in ("a", "b"):
        for seed, (t, v) in enumerate(zip(train[posterior], val[posterior], strict=True)):
            run = make_run(tmp_path, f"{posterior}{seed}", [f"model.posterior={posterior}",
                           f"seed={seed}"], {"rmse": 0.5})  # fmt: skip
            history(run, t, v)
    done = [runs.load_run(p) for p in runs.find_run_dirs([tmp_path])]
    rows = summary.summarise(done, ["model.posterior"], ["test.rmse"])
    fig = report_plots.learning_figure(
        rows, ["model.posterior"], [report.histories(r.runs) for r in rows]
    )
    train_ax, val_ax = fig.axes
    strong = {
        line.get_label(): line
        for line in val_ax.get_lines()
        if not line.get_label().startswith("_")
    }
    assert list(strong) == ["posterior=a", "posterior=b"]
    assert [t.get_text() for t in val_ax.get_legend().get_texts()] == list(strong)
    # Group a's mean: over both runs while both ran, then over the longer one.
    assert list(strong["posterior=a"].get_ydata()) == [3.0, 2.25, 1.0]
    assert list(strong["posterior=b"].get_xdata()) == [1.0, 2.0]  # NaN left out
    means = {line.get_label(): list(line.get_ydata()) for line in train_ax.get_lines()}
    assert means["posterior=a"] == [4.0, 3.0, 1.0]
    assert val_ax.get_title() == "validation NLL (lower is better)"
    assert report.main([str(tmp_path), "--metrics", "test.rmse"]) == 0
    png = (tmp_path / "plots" / "report_learning_curves.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 2


def test_one_group_shows_each_run_and_no_history_no_figure(tmp_path):
    for seed in range(2):
        history(make_run(tmp_path, str(seed), [f"seed={seed}"], {"rmse": 0.5}), [2, 1], [3, 2])
    make_run(tmp_path, "2", ["seed=2"], {"rmse": 0.5})  # no history.csv
    done = [runs.load_run(p) for p in runs.find_run_dirs([tmp_path])]
    rows = summary.summarise(done, [], ["test.rmse"])
    fig = report_plots.learning_figure(rows, [], [report.histories(r.runs) for r in rows])
    labels = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert labels == ["seed 0", "seed 1"]
    assert report_plots.learning_figure(rows, [], [[{}, {}, {}]]) is None


# ----------------------------------------------------------------- short labels


def test_tick_labels_are_short():
    def rows_of(*values):
        return [summary.Row(v, [], {}) for v in values]

    keys = ["model.posterior", "optim.lr"]
    rows = rows_of(("map", "0.003"), ("map", "0.01"), ("mean_field", "0.003"))
    assert report_plots.tick_labels(rows, keys) == (
        ["map\n0.003", "map\n0.01", "mean_field\n0.003"],
        "posterior / lr",
    )
    assert report_plots.legend_labels(rows, keys)[2] == "posterior=mean_field, lr=0.003"
    # A key every row shares is left out; one key left: just its values.
    rows = rows_of(("map", "0.003"), ("mean_field", "0.003"))
    assert report_plots.tick_labels(rows, keys) == (["map", "mean_field"], "posterior")
    # Shared folders are dropped, never part of a number or a word; long values shortened.
    paths = rows_of(("data/uci/a.csv",), ("data/uci/b.csv",))
    assert report_plots.tick_labels(paths, ["data.path"])[0] == ["a.csv", "b.csv"]
    assert report_plots.drop_shared_prefix(["0.003", "0.01"]) == ["0.003", "0.01"]
    assert report_plots.drop_shared_prefix(["mean_field", "mean_field_x"]) == [
        "mean_field",
        "mean_field_x",
    ]
    long = rows_of(("a_very_long_value_of_thirty_chars",), ("b",))
    assert report_plots.tick_labels(long, ["x"])[0][0] == "a_very_l…rty_chars"
    assert len(summary.shorten("x" * 50, 18)) == 18
    # Keys ending alike keep their full names.
    assert report_plots.short_key("model.hidden", ["model.hidden", "model.flow_hidden"]) == (
        "hidden"
    )
    assert report_plots.short_key("a.lr", ["a.lr", "b.lr"]) == "a.lr"


def test_many_groups_rotate_their_labels_within_a_bounded_width():
    rows = [summary.Row((f"value_{k}",), [], {"m": summary.Stat(1.0, 0.1, 2)}) for k in range(30)]
    fig = report_plots.metric_figure(rows, ["k"], "m")
    assert fig.get_size_inches()[0] <= report_plots.MAX_WIDTH
    assert fig.axes[0].get_xticklabels()[0].get_rotation() == 30
    assert np.isfinite(fig.get_size_inches()).all()


def test_runs_of_one_group_are_labelled_by_the_replicates_that_differ(tmp_path):
    for k in range(2):
        make_run(tmp_path / "splits", str(k), [f"data.split={k}", "seed=3"], {"rmse": 0.5})
        make_run(tmp_path / "same", str(k), ["seed=3"], {"rmse": 0.5})
    splits, same = ([runs.load_run(p) for p in runs.find_run_dirs([tmp_path / d])]
                    for d in ("splits", "same"))  # fmt: skip
    assert report_plots.run_labels(splits) == ["split 0", "split 1"]
    assert report_plots.run_labels(same) == ["0", "1"]  # nothing differs: the folders
