"""Probes of reading run folders that need no trained run: bslrun-report over damaged
folders, history.csv's columns, the parameter-tree comparison and FlatView's length check,
and bslrun-predict / bslrun-sample's option values. The checks that need a trained run
(bslrun.load's refusals of mismatched folders, Ctrl-C, memory) are in test_reopen.py,
beside its trained runs.
"""

from __future__ import annotations

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_report import make_run

from bslrun import reopen_cli, report
from bslrun.errors import ResourceError
from bslrun.nets import FlatView, tree_mismatch
from bslrun.runs import read_history

DEEP = "[" * 100_000 + "]" * 100_000
OK = {"rmse": 0.7, "nll": 1.0}

# A file of one run damaged as a user's editor or a failing disk may leave it.
DAMAGE = {
    "metrics.json nested too deep": ("metrics.json", DEEP),
    "config.json nested too deep": ("config.json", DEEP),
    "status.json nested too deep": ("status.json", DEEP),
    "history.csv with a field over 128 kB": (
        "history.csv",
        "epoch,train_loss\n1," + "1" * 200_000 + "\n",
    ),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_one_damaged_folder_does_not_stop_the_report(case, tmp_path, capsys):
    """It aborted the whole report as "a bug" (exit 1). Now a run whose metrics or status
    cannot be read is left out, named on one line with why; one whose config.json or
    history.csv cannot be read is still reported (from .hydra/config.yaml; without its
    learning curve)."""
    for seed in range(3):
        make_run(tmp_path, f"run_{seed}", [f"seed={seed}"], OK)
    name, text = DAMAGE[case]
    (tmp_path / "run_1" / name).write_text(text)
    assert report.main([str(tmp_path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    with open(tmp_path / "report.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    left_out = name in ("metrics.json", "status.json")
    assert row["n"] == ("2" if left_out else "3"), row
    named = [line for line in out.splitlines() if "`run_1`" in line]
    assert len(named) == (1 if left_out else 0), out
    if left_out:
        assert f"unreadable {name}" in named[0], named


def test_a_history_field_over_csvs_limit_is_one_line(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,train_loss\n1," + "1" * 200_000 + "\n")
    with pytest.raises(ResourceError) as raised:
        read_history(path)
    assert "history.csv" in str(raised.value) and "\n" not in str(raised.value)


def test_a_missing_history_column_is_a_key_error_naming_the_columns(tmp_path):
    """README's ``run.history["val_nll"]``, for a preset without a validation split."""
    path = tmp_path / "history.csv"
    path.write_text("epoch,train_loss,lr\n1,0.5,0.001\n2,0.25,0.001\n")
    history = read_history(path)
    np.testing.assert_array_equal(history["train_loss"], [0.5, 0.25])
    with pytest.raises(KeyError) as raised:
        history["val_nll"]
    message = str(raised.value)
    assert "'val_nll'" in message and "epoch, train_loss, lr" in message
    assert "validation split" in message and "\n" not in message


def test_a_tree_differs_by_its_entries_or_by_an_arrays_shape_or_dtype():
    like = {"w": jax.ShapeDtypeStruct((3201,), jnp.float32), "s": jnp.zeros((), jnp.float32)}
    same = {"w": np.zeros(3201, np.float32), "s": np.float32(1.0)}
    assert tree_mismatch(same, like) == ""
    wider = {**same, "w": np.zeros(681, np.float32)}
    assert tree_mismatch(wider, like) == "w is float32 (681,), the model needs float32 (3201,)"
    doubled = {**same, "w": np.zeros(3201, np.float64)}
    assert "float64" in tree_mismatch(doubled, like)
    other = {"layer_0": {"kernel": np.zeros((2, 3), np.float32)}}
    assert tree_mismatch(other, like) == "it lacks s, w and has the extra layer_0/kernel"


def test_flat_view_refuses_a_vector_of_another_length():
    """unravel sliced whatever it was given: a longer vector predicted with part of it."""
    view = FlatView({"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)})
    w = jnp.arange(10.0)
    tree = view.unravel(w)
    np.testing.assert_array_equal(tree["a"], w[:6].reshape(2, 3))
    np.testing.assert_array_equal(view.ravel(tree), w)
    for length in (9, 11):
        with pytest.raises(ValueError, match=f"{length} values for 10 weights"):
            view.unravel(jnp.zeros(length))


def run_main(main, argv, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["bslrun-x", *map(str, argv)])
    with pytest.raises(SystemExit) as stopped:
        main()
    return stopped.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--seed", 10**30], ["--seed", "from 0 to 2147483647"]),
        (["--seed", "1e30"], ["--seed", "from 0 to 2147483647"]),
        (["--seed", -1], ["--seed"]),
        (["-n", "2.5"], ["-n/--num", "whole number"]),
    ],
)
def test_option_values_are_one_line_and_exit_2(argv, words, tmp_path, monkeypatch, capsys):
    """Refused while the options are read: a seed no PRNG key takes was an OverflowError
    traceback."""
    code, err = run_main(reopen_cli.sample_main, [tmp_path, *argv], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and all(w in err for w in words), err


def test_a_count_may_be_written_as_a_power_of_ten():
    args = reopen_cli.sample_parser().parse_args(["run", "-n", "1e3"])
    assert args.num == 1000 and isinstance(args.num, int)


def test_resuming_from_arrays_of_another_model_says_so(tmp_path):
    """A checkpoint step copied from another run (its config.json the same) is refused
    in one line that says the arrays may be another model's, not only damaged ones."""
    from bslrun.inference.checkpoint import Checkpoints

    saved = Checkpoints(tmp_path, 1, {"seed": 0})
    saved.save(1, {"w": jnp.zeros(5)}, {"epoch": 1, "history": []})
    saved.close()
    again = Checkpoints(tmp_path, 1, {"seed": 0})
    assert again.latest({"w": jnp.ones(5)})[0]["w"].shape == (5,)
    with pytest.raises(ResourceError) as raised:
        again.latest({"w": jnp.ones(7)})
    again.close()
    message = str(raised.value)
    assert "another model" in message and "\n" not in message and "arrays" in message
