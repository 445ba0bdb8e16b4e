"""Users' own tables (bslrun.data.files, ``data=file``): CSV, NPY and NPZ.

Small files are written to pytest's tmp_path; rows produced by the loader are
mapped back through the standardisers and matched against the numbers written.
Every error is checked to be one line naming the file, and the row and column
where one is at fault.
"""

from __future__ import annotations

import errno
import os
from collections import Counter

import numpy as np
import pytest
from conftest import denied, fail_for
from numpy.lib import format as npy_format

from bslrun.config import DATA_CHECKS, FileDataConfig, FileTask
from bslrun.data import load
from bslrun.data.splits import IDENTITY
from bslrun.errors import ConfigError, DataError, ResourceError
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


def write_csv(tmp_path, text: str | bytes, name: str = "t.csv") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
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


def test_a_text_column_that_is_not_the_target_is_left_out_as_the_error_says(tmp_path):
    rows = table(20)
    colours = ["red", "blue"] * 10
    path = write_csv(tmp_path, csv_text(rows, ("i", "a", "y", "colour"), colours))
    hint = error_text(DataError, config(path, target="y"))
    assert "'red' is not a number" in hint and "data.exclude=[colour]" in hint
    data = load(config(path, target="y", exclude=["colour"]), KEY)
    assert data.spec.feature_names == ("i", "a") and data.spec.input_dim == 2
    np.testing.assert_allclose(by_row(all_rows(data)), rows, rtol=1e-5, atol=1e-5)
    # Excluding by name from an explicit list too; an unknown name lists the columns.
    only_a = load(config(path, target="y", columns=["i", "a"], exclude=["i"]), KEY)
    assert only_a.spec.feature_names == ("a",)
    assert "no column 'nope' (data.exclude)" in error_text(
        DataError, config(path, target="y", exclude=["nope"])
    )


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
    "blank lines only": ("\n  \n,,\n", {}, DataError, ["empty", "header"]),
    "not UTF-8": (b"i,a,y\n1,caf\xe9,3\n", {}, DataError, ["not UTF-8", "UTF-8 encoding"]),
    "UTF-16": ("i,a,y\n1,2,3\n".encode("utf-16"), {}, DataError, ["not UTF-8"]),
    "NUL byte in a field": (HEADER + "1,2\x003,3\n", {}, DataError, ["'2\\x003'", "not a number"]),
    "field over the csv limit": (
        HEADER + "1," + "9" * 200_000 + ",3\n",
        {},
        DataError,
        ["not a readable CSV", "field limit"],
    ),
    "beyond float32": (HEADER + GOOD + "1,1e39,3\n", {}, DataError, ["row 7", "'a'", "float32"]),
    "huge target": (
        HEADER + GOOD + "1,2,-1e300\n",
        {"target": "y"},
        DataError,
        ["row 7", "'y'", "float32"],
    ),
    "infinite target": (HEADER + GOOD + "1,2,-inf\n", {"target": "y"}, DataError, ["finite"]),
    "one class with a line break": (
        HEADER + '1,2,"c\nat"\n4,5,"c\nat"\n',
        {"target": "y"},
        DataError,
        ["single class", "'c\\nat'"],
    ),
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
    "byte strings": (np.array([[b"1", b"2"]] * 5), ["byte strings", "str"]),
    "text inputs": (np.array([["1", "x"]] * 5), ["row index 0", "column '1'", "not a number"]),
    "infinite input": (np.array([[1.0, 2.0], [np.inf, 3.0]] * 3), ["row index 1", "finite"]),
    "nan input": (np.array([[1.0, 2.0], [3.0, np.nan]] * 3), ["row index 1", "missing"]),
    "beyond float32": (np.array([[1.0, 2.0], [3.0, 1e300]] * 3), ["row index 1", "float32"]),
    "datetimes": (np.array(["2024-01-01"] * 5, dtype="datetime64[D]"), ["datetime64"]),
    "0-d": (np.array(3.0), ["shape ()", "2D"]),
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
    assert "cut.npy" in message and "truncated" in message  # told before allocating


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


def npy_header_only(shape) -> bytes:
    """An .npy file whose header declares ``shape`` of float64 but which holds 8 bytes."""
    import io

    buffer = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    npy_format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + b"\0" * 8


DECLARED = {"npy-columns": (4, 10**12), "npy-rows": (10**13, 3), "npy-fits-not": (2, 3)}


@pytest.mark.parametrize("case", sorted(DECLARED))
@pytest.mark.parametrize("container", ["npy", "npz"])
def test_array_declaring_more_than_the_file_holds_is_refused_before_allocation(
    tmp_path, case, container
):
    blob = npy_header_only(DECLARED[case])
    if container == "npy":
        path = tmp_path / "a.npy"
        path.write_bytes(blob)
    else:
        import zipfile

        path = tmp_path / "a.npz"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", blob)
    message = error_text(DataError, config(path))
    assert path.name in message and "truncated or damaged" in message
    assert str(DECLARED[case]) in message


def test_npz_without_arrays(tmp_path):
    np.savez(tmp_path / "none.npz")
    message = error_text(DataError, config(tmp_path / "none.npz"))
    assert "none.npz" in message and "no arrays" in message


def test_csv_too_large_for_memory_is_a_resource_error(tmp_path, monkeypatch):
    from bslrun.data import files

    def exhausted(*args, **kwargs):
        raise MemoryError

    path = write_csv(tmp_path, HEADER + GOOD)
    monkeypatch.setattr(files.csv, "reader", exhausted)
    message = error_text(ResourceError, config(path))
    assert "t.csv" in message and "memory" in message


# ----------------------------------------------------------------------------- path faults


def _loop(tmp_path, monkeypatch):
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    return tmp_path / "loop.csv"


def _two_link_loop(tmp_path, monkeypatch):
    (tmp_path / "a.csv").symlink_to(tmp_path / "b.csv")
    (tmp_path / "b.csv").symlink_to(tmp_path / "a.csv")
    return tmp_path / "a.csv"


def _folder(tmp_path, monkeypatch):
    (tmp_path / "folder.csv").mkdir()
    return tmp_path / "folder.csv"


def _broken_link(tmp_path, monkeypatch):
    (tmp_path / "link.csv").symlink_to(tmp_path / "gone.csv")
    return tmp_path / "link.csv"


def _through_a_file(tmp_path, monkeypatch):
    write_csv(tmp_path, HEADER + GOOD, "plain.csv")
    return tmp_path / "plain.csv" / "t.csv"


def _fifo(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "pipe.csv")
    return tmp_path / "pipe.csv"


def _unreadable(suffix):
    def setup(tmp_path, monkeypatch):
        path = tmp_path / f"locked{suffix}"
        if suffix == ".csv":
            write_csv(tmp_path, HEADER + GOOD, path.name)
        else:
            np.save(path, table(10))
        fail_for(monkeypatch, "open", path, denied(path))
        return path

    return setup


def _unsearchable(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    write_csv(tmp_path, HEADER + GOOD)
    fail_for(monkeypatch, "stat", path, denied(path))
    return path


def _disk_error(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    write_csv(tmp_path, HEADER + GOOD)
    fail_for(monkeypatch, "open", path, OSError(errno.EIO, os.strerror(errno.EIO), str(path)))
    return path


# case -> (setup(tmp_path, monkeypatch) -> path or text, error type, words in the message)
PATH_FAULTS = {
    "symlink loop": (_loop, DataError, ["loop.csv", "symlink loop", "name the real file"]),
    "two-link loop": (_two_link_loop, DataError, ["a.csv", "symlink loop"]),
    "folder": (_folder, DataError, ["folder.csv", "is a folder, not a file", "inside it"]),
    "broken symlink": (_broken_link, DataError, ["link.csv", "broken symlink", "gone.csv"]),
    "through a file": (_through_a_file, DataError, ["plain.csv", "runs through a file"]),
    "fifo": (_fifo, DataError, ["pipe.csv", "not a regular file"]),
    "NUL byte": (lambda t, m: f"{t}/a\0b.csv", DataError, ["a\\x00b.csv", "NUL byte"]),
    "line break": (lambda t, m: f"{t}/a\nb.csv", DataError, ["a\\nb.csv", "no such file"]),
    "name too long": (lambda t, m: t / ("x" * 300 + ".csv"), DataError, ["too long"]),
    "unknown user": (
        lambda t, m: "~no-such-bslrun-user/t.csv",
        DataError,
        ["~no-such-bslrun-user", "home folder", "full path"],
    ),
    "no read permission csv": (
        _unreadable(".csv"),
        ResourceError,
        ["locked.csv", "permission denied", "read access"],
    ),
    "no read permission npy": (
        _unreadable(".npy"),
        ResourceError,
        ["locked.npy", "permission denied", "read access"],
    ),
    "no search permission": (_unsearchable, ResourceError, ["t.csv", "permission denied"]),
    "disk error": (_disk_error, ResourceError, ["t.csv", os.strerror(errno.EIO)]),
}


@pytest.mark.parametrize("case", sorted(PATH_FAULTS))
def test_path_faults_are_one_line(tmp_path, monkeypatch, case):
    setup, exc_type, words = PATH_FAULTS[case]
    path = setup(tmp_path, monkeypatch)
    with pytest.raises(exc_type) as info:
        load(config(path), KEY)
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.path="), message
    exc = info.value  # nothing chained: no OSError traceback is shown above the line
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    for word in words:
        assert word in message, message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_read_permission_for_real(tmp_path):
    path = tmp_path / "locked.csv"
    write_csv(tmp_path, HEADER + GOOD, path.name)
    path.chmod(0)
    try:
        message = error_text(ResourceError, config(path))
    finally:
        path.chmod(0o644)
    assert "locked.csv" in message and "permission denied" in message


def test_a_wide_table_loads_and_its_errors_stay_short(tmp_path):
    m = 20_000
    header = ",".join(f"c{j}" for j in range(m))
    rows = [",".join(str(i + j) for j in range(m)) for i in range(5)]
    path = write_csv(tmp_path, "\n".join([header, *rows]) + "\n", "wide.csv")
    assert load(config(path), KEY).spec.input_dim == m
    message = error_text(DataError, config(path, columns=["nope"]))
    assert "'c19', ... (20000 in all)" in message and len(message) < 500
    rows[1] = rows[1][: rows[1].rindex(",")] + ",x"
    path = write_csv(tmp_path, "\n".join([header, *rows]) + "\n", "wide.csv")
    message = error_text(DataError, config(path))
    assert all(word in message for word in ("row 3", f"'c{m - 1}'", "'x'", "not a number"))
    twice = header[: header.rindex(",")] + ",c7"
    path = write_csv(tmp_path, "\n".join([twice, *rows]) + "\n", "wide.csv")
    message = error_text(DataError, config(path))
    assert f"column 8 and column {m} both 'c7'" in message
