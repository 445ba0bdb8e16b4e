"""Users' own tables (bslrun.data.files, ``data=file``): CSV, NPY and NPZ.

Small files are written to pytest's tmp_path; rows produced by the loader are
mapped back through the standardisers and matched against the numbers written.
Every error is checked to be one line naming the file, and the row and column
where one is at fault.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bslrun.config import DATA_CHECKS, FileDataConfig, FileTask
from bslrun.data import load
from bslrun.data.splits import IDENTITY
from bslrun.errors import ConfigError, DataError
from bslrun.seeding import streams

KEY = np.array([0, 7], np.uint32)


def config(path, **kw) -> FileDataConfig:
    base = dict(path=str(path), train_fraction=0.6, val_fraction=0.2, test_fraction=0.2)
    base.update(kw)
    return FileDataConfig(**base)


def table(n: int = 20) -> np.ndarray:
    """(n, 3) rows [row index, a value, a target]: the first column identifies a row."""
    rng = np.random.default_rng(0)
    return np.column_stack([np.arange(n), rng.normal(size=n).round(3), rng.normal(size=n)])


def write_csv(tmp_path, text: str, name: str = "t.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def csv_text(rows: np.ndarray, header=("i", "a", "y"), extra=None) -> str:
    lines = [",".join(header)]
    for k, row in enumerate(rows):
        cells = [repr(float(v)) for v in row] + ([extra[k]] if extra is not None else [])
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n\n"  # an empty trailing line is fine


def all_rows(data, with_y: bool = True) -> np.ndarray:
    """Every split's rows back in file units: (n, d) or (n, d + 1) with the target."""
    parts = []
    for split in (data.train, data.val, data.test):
        if split is None:
            continue
        x = np.asarray(data.spec.x_scaler.inverse(np.asarray(split.x, np.float64)))
        if with_y:
            y = np.asarray(data.spec.y_scaler.inverse(np.asarray(split.y, np.float64)))
            x = np.column_stack([x, y])
        parts.append(x)
    return np.concatenate(parts)


def by_row(rows: np.ndarray) -> np.ndarray:
    """Rows sorted by their identifying first column (rounded back to integers)."""
    order = np.argsort(np.round(rows[:, 0]))
    return rows[order]


def error_text(exc_type, cfg) -> str:
    """The one-line message: config problems are caught by validation, before loading."""
    with pytest.raises(exc_type) as info:
        DATA_CHECKS[FileDataConfig](cfg)
        load(cfg, KEY)
    text = str(info.value)
    assert "\n" not in text, text
    return text


# ----------------------------------------------------------------------------- formats


def test_csv_regression_maps_back_to_the_files_numbers(tmp_path):
    rows = table(20)
    data = load(config(write_csv(tmp_path, csv_text(rows)), target="y"), KEY)
    spec = data.spec
    assert (spec.name, spec.task, spec.num_classes) == ("file", "regression", 0)
    assert spec.feature_names == ("i", "a") and spec.target_name == "y"
    assert spec.input_dim == 2 and spec.n_total == 20
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 4)
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.float32
    np.testing.assert_allclose(by_row(all_rows(data)), rows, rtol=1e-5, atol=1e-5)
    # Standardisers are fitted on training rows only.
    np.testing.assert_allclose(data.train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.train.y.mean(), 0.0, atol=1e-5)
    assert abs(float(data.test.x[:, 0].mean())) > 1e-3 or abs(float(data.val.x.mean())) > 1e-3


def test_text_labels_become_codes_in_sorted_order(tmp_path, caplog):
    rows = table(12)[:, :2]
    labels = ["dog", "cat", "emu"] * 4
    text = csv_text(rows, header=("i", "a", "animal"), extra=[f'"{lab}"' for lab in labels])
    with caplog.at_level("INFO", logger="bslrun.data.files"):
        data = load(config(write_csv(tmp_path, text), target="animal"), KEY)
    assert "cat=0, dog=1, emu=2" in caplog.text
    spec = data.spec
    assert (spec.task, spec.num_classes, spec.target_name) == ("classification", 3, "animal")
    assert spec.y_scaler is IDENTITY and data.train.y.dtype == np.int32
    got = by_row(all_rows(data))
    expected = [{"cat": 0, "dog": 1, "emu": 2}[lab] for lab in labels]
    np.testing.assert_array_equal(got[:, 2], expected)


def test_numbers_give_regression_unless_the_task_says_classification(tmp_path):
    rows = table(10)
    rows[:, 2] = [1, 3, 3, 1, 1, 3, 1, 3, 3, 1]
    path = write_csv(tmp_path, csv_text(rows))
    assert load(config(path, target="y"), KEY).spec.task == "regression"
    data = load(config(path, target="y", task=FileTask.classification), KEY)
    assert (data.spec.task, data.spec.num_classes) == ("classification", 2)
    np.testing.assert_array_equal(by_row(all_rows(data))[:, 2], (rows[:, 2] == 3).astype(int))


def test_columns_by_name_keep_their_order_and_unused_text_is_ignored(tmp_path):
    rows = table(10)
    notes = ["free text, with a comma" if k % 2 else "n/a" for k in range(10)]
    text = csv_text(rows, header=("i", "a", "y", "note"), extra=[f'"{n}"' for n in notes])
    data = load(config(write_csv(tmp_path, text), columns=["a", "i"], target="y"), KEY)
    assert data.spec.feature_names == ("a", "i")
    got = all_rows(data, with_y=False)[:, ::-1]
    np.testing.assert_allclose(by_row(got), rows[:, :2], atol=1e-5)


def test_npy_by_index_strings(tmp_path):
    rows = table(15)
    np.save(tmp_path / "t.npy", rows)
    data = load(config(tmp_path / "t.npy", columns=["0", "1"], target="2"), KEY)
    assert data.spec.feature_names == ("0", "1") and data.spec.target_name == "2"
    np.testing.assert_allclose(by_row(all_rows(data)), rows, rtol=1e-5, atol=1e-5)


def test_text_array_labels(tmp_path):
    cells = np.array([[str(k), str(k % 5), "yes" if k % 2 else "no"] for k in range(10)])
    np.save(tmp_path / "t.npy", cells)
    data = load(config(tmp_path / "t.npy", target="2"), KEY)
    assert (data.spec.task, data.spec.num_classes) == ("classification", 2)
    np.testing.assert_array_equal(by_row(all_rows(data))[:, 2], np.arange(10) % 2)


def test_infinite_target_is_refused(tmp_path):
    rows = table(10)
    rows[3, 2] = np.inf
    np.save(tmp_path / "t.npy", rows)
    for task in (None, FileTask.classification):
        message = error_text(DataError, config(tmp_path / "t.npy", target="2", task=task))
        assert all(word in message for word in ("t.npy", "row index 3", "column '2'", "finite"))


def test_one_dimensional_npy_is_one_column_for_density(tmp_path):
    values = np.arange(10.0)
    np.save(tmp_path / "v.npy", values)
    data = load(config(tmp_path / "v.npy"), KEY)
    spec = data.spec
    assert (spec.task, spec.num_classes, spec.input_dim, spec.target_name) == ("density", 0, 1, "")
    assert spec.y_scaler is IDENTITY
    assert all(s.y.dtype == np.int32 and not s.y.any() for s in (data.train, data.val, data.test))
    np.testing.assert_allclose(np.sort(all_rows(data, with_y=False)[:, 0]), values, atol=1e-5)


def test_npz_single_array_and_key(tmp_path):
    rows = table(10)
    np.savez(tmp_path / "one.npz", points=rows)
    np.savez(tmp_path / "two.npz", points=rows, other=rows[:, :1])
    one = load(config(tmp_path / "one.npz", standardize=False), KEY)
    assert one.spec.task == "density" and one.spec.feature_names == ("0", "1", "2")
    # Without standardisation the splits hold the file's numbers.
    np.testing.assert_allclose(by_row(all_rows(one, with_y=False)), rows, rtol=1e-6)
    two = load(config(tmp_path / "two.npz", key="other"), KEY)
    assert two.spec.input_dim == 1


def test_density_csv_uses_every_column(tmp_path):
    rows = table(10)
    data = load(config(write_csv(tmp_path, csv_text(rows))), KEY)
    assert data.spec.task == "density" and data.spec.feature_names == ("i", "a", "y")
    np.testing.assert_allclose(by_row(all_rows(data, with_y=False)), rows, rtol=1e-5, atol=1e-5)


def test_splits_are_seeded_by_the_key_only(tmp_path):
    path = write_csv(tmp_path, csv_text(table(40)))

    def ids(key, **kw):
        data = load(config(path, target="y", **kw), key)
        return [tuple(np.round(all_rows_of(s, data)).astype(int)) for s in (data.train, data.test)]

    def all_rows_of(split, data):
        return np.asarray(data.spec.x_scaler.inverse(np.asarray(split.x, np.float64)))[:, 0]

    assert ids(KEY) == ids(KEY.copy())
    assert ids(KEY) != ids(np.array([0, 8], np.uint32))
    assert ids(streams(3).data) == ids(streams(3).data)
    subset = ids(KEY, train_subset=0.5)
    assert len(subset[0]) == 12 and set(subset[0]) <= set(ids(KEY)[0])


def test_val_fraction_zero_gives_no_validation_split(tmp_path):
    path = write_csv(tmp_path, csv_text(table(10)))
    data = load(config(path, target="y", train_fraction=0.8, val_fraction=0.0), KEY)
    assert data.val is None and (len(data.train), len(data.test)) == (8, 2)


# ----------------------------------------------------------------------------- errors

HEADER = "i,a,y\n"
GOOD = "1,2,3\n4,5,6\n7,8,9\n10,11,12\n13,14,15\n"

# (file text, config fields, error type, words the message must hold)
CSV_ERRORS = {
    "empty": ("", {}, DataError, ["empty", "header"]),
    "header only": (HEADER, {}, DataError, ["no data rows"]),
    "no header": (GOOD, {}, DataError, ["row 1", "header"]),
    "semicolons": ("i;a;y\n1;2;3\n", {}, DataError, ["comma"]),
    "ragged": (HEADER + "1,2,3\n4,5\n", {}, DataError, ["row 3", "2 fields", "has 3"]),
    "blank lines keep numbers": (HEADER + "1,2,3\n\n4,x,6\n", {}, DataError, ["row 4", "'a'"]),
    "empty field": (HEADER + GOOD + "1,,3\n", {}, DataError, ["row 7", "'a'", "missing"]),
    "NA": (HEADER + "1,2,3\n4,NA,6\n", {}, DataError, ["row 3", "'a'", "missing", "columns"]),
    "nan": (HEADER + "1,NaN,3\n4,5,6\n", {}, DataError, ["row 2", "'a'", "missing"]),
    "text in a number column": (
        HEADER + GOOD + "1,abc,3\n",
        {},
        DataError,
        ["row 7", "'a'", "'abc'", "not a number"],
    ),
    "infinite": (HEADER + "1,inf,3\n4,5,6\n", {}, DataError, ["row 2", "'a'", "finite"]),
    "missing target": (
        HEADER + GOOD + "1,2,\n",
        {"target": "y"},
        DataError,
        ["row 7", "'y'", "missing", "data.target"],
    ),
    "unknown column": (HEADER + GOOD, {"columns": ["zz"]}, DataError, ["'zz'", "'i', 'a', 'y'"]),
    "unknown target": (HEADER + GOOD, {"target": "q"}, DataError, ["'q'", "'i', 'a', 'y'"]),
    "duplicate header": ("i,a,i\n" + GOOD, {}, DataError, ["'i'", "column 1", "column 3"]),
    "text target for regression": (
        HEADER + "1,2,3\n4,5,six\n7,8,9\n",
        {"target": "y", "task": FileTask.regression},
        DataError,
        ["row 3", "'y'", "'six'", "data.task=regression"],
    ),
    "fractional classes": (
        HEADER + "1,2,3\n4,5,2.5\n7,8,9\n",
        {"target": "y", "task": FileTask.classification},
        DataError,
        ["row 3", "'y'", "2.5", "whole number"],
    ),
    "one class": (
        HEADER + "1,2,cat\n4,5,cat\n7,8,cat\n",
        {"target": "y"},
        DataError,
        ["'y'", "single class", "cat"],
    ),
    "too few rows": (
        HEADER + "1,2,3\n4,5,6\n3,4,5\n",
        {"target": "y"},
        DataError,
        ["3 data rows", "data.test_fraction=0.2", "test split"],
    ),
    "target among inputs": (
        HEADER + GOOD,
        {"target": "y", "columns": ["a", "y"]},
        ConfigError,
        ["data.target=y", "data.columns"],
    ),
    "repeated input": (HEADER + GOOD, {"columns": ["a", "a"]}, ConfigError, ["data.columns", "a"]),
    "no inputs": (HEADER + GOOD, {"columns": []}, ConfigError, ["data.columns"]),
    "key for a csv": (HEADER + GOOD, {"key": "x"}, ConfigError, ["data.key"]),
}


@pytest.mark.parametrize("case", sorted(CSV_ERRORS))
def test_csv_errors_name_file_row_and_column(tmp_path, case):
    text, fields, exc_type, words = CSV_ERRORS[case]
    path = write_csv(tmp_path, text, name="points.csv")
    message = error_text(exc_type, config(path, **fields))
    for word in words:
        assert word in message, message
    if exc_type is DataError:
        assert "points.csv" in message


def test_missing_file_and_unknown_suffix(tmp_path):
    message = error_text(DataError, config(tmp_path / "nope.csv"))
    assert "nope.csv" in message and "no such file" in message
    message = error_text(DataError, config(write_csv(tmp_path, HEADER + GOOD, "t.txt")))
    assert all(word in message for word in ("t.txt", ".csv", ".npy", ".npz"))


ARRAY_ERRORS = {
    "object": (np.array([[1, "a"], [None, 2.0]], dtype=object), ["Python objects"]),
    "not numpy": (None, ["NumPy's format"]),
    "structured": (np.zeros(4, dtype=[("u", "f8"), ("v", "f8")]), ["structured", "u, v"]),
    "3D": (np.zeros((2, 3, 4)), ["(2, 3, 4)", "2D"]),
    "empty": (np.zeros((0, 3)), ["empty"]),
    "complex": (np.zeros((4, 2), complex), ["complex"]),
}


@pytest.mark.parametrize("case", sorted(ARRAY_ERRORS))
def test_array_errors(tmp_path, case):
    array, words = ARRAY_ERRORS[case]
    if array is None:
        (tmp_path / "a.npy").write_text("i,a\n1,2\n")  # a CSV under the wrong suffix
    else:
        np.save(tmp_path / "a.npy", array, allow_pickle=True)
    message = error_text(DataError, config(tmp_path / "a.npy"))
    assert "a.npy" in message and all(word in message for word in words), message


def test_array_missing_value_names_row_index_and_column(tmp_path):
    rows = table(10)
    rows[4, 1] = np.nan
    np.save(tmp_path / "a.npy", rows)
    message = error_text(DataError, config(tmp_path / "a.npy", target="2"))
    assert all(word in message for word in ("a.npy", "row index 4", "column '1'", "missing"))


def test_npz_keys_are_listed(tmp_path):
    np.savez(tmp_path / "two.npz", points=table(5), other=table(5))
    message = error_text(DataError, config(tmp_path / "two.npz"))
    assert all(word in message for word in ("two.npz", "points", "other", "data.key"))
    message = error_text(DataError, config(tmp_path / "two.npz", key="nope"))
    assert all(word in message for word in ("'nope'", "points", "other"))


def test_corrupt_array_files(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip after all")
    message = error_text(DataError, config(tmp_path / "bad.npz"))
    assert "bad.npz" in message and "readable" in message
    np.save(tmp_path / "cut.npy", table(50))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:300])
    message = error_text(DataError, config(tmp_path / "cut.npy"))
    assert "cut.npy" in message and "readable" in message


def test_unused_columns_may_hold_anything_and_errors_count_rows_like_a_spreadsheet(tmp_path):
    # A quoted field spanning two lines is one row, as a spreadsheet shows it.
    text = 'i,a,note\n1,2,"two\nlines"\n3,4,ok\n5,x,ok\n'
    path = write_csv(tmp_path, text)
    message = error_text(DataError, config(path, columns=["i", "a"]))
    assert "row 4" in message and "'x'" in message
    fixed = write_csv(tmp_path, text.replace(",x,", ",6,"))
    data = load(config(fixed, columns=["i", "a"], val_fraction=0.0, test_fraction=0.4), KEY)
    assert data.spec.input_dim == 2 and data.spec.n_total == 3


def test_counter_of_splits_covers_every_row_once(tmp_path):
    rows = table(33)
    data = load(config(write_csv(tmp_path, csv_text(rows)), target="y"), KEY)
    ids = Counter(np.round(all_rows(data)[:, 0]).astype(int).tolist())
    assert ids == Counter(range(33))
