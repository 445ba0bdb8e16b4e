"""Splitting, sub-sampling and standardisation (bslrun.data.splits, bslrun.data.wine).

References are plain numpy on the raw shipped table (``wine.read_table``) and
on the benchmark split files; rows produced by the loader are mapped back to
raw units and matched against those tables as multisets.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import denied, fail_under

from bslrun.config import DataConfig
from bslrun.data import load, wine
from bslrun.data.splits import split_indices
from bslrun.errors import DataError, ResourceError
from bslrun.seeding import streams

# The project's shared data sits beside the repository (../shared), in CI too;
# BSLRUN_SHARED_DIR points elsewhere.
SHARED = Path(os.environ.get("BSLRUN_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
# The red-wine benchmark splits: the folder the shared README names, or the layout of
# the UCI_Datasets repository that this machine's copy keeps.
SPLIT_DIR = next(
    (
        folder
        for folder in (
            SHARED / "data" / "uci_wine_red_splits",
            SHARED / "data" / "uci_regression" / "wine-quality-red",
        )
        if folder.is_dir()
    ),
    SHARED / "data" / "uci_wine_red_splits",
)
needs_split_dir = pytest.mark.skipif(
    not SPLIT_DIR.is_dir(), reason="benchmark split folder not present"
)


# ----------------------------------------------------------------------------- helpers


class Snapper:
    """Maps approximately recovered raw values to the exact values of a raw table.

    Each column is snapped to its nearest distinct table value; the float32
    round trip of standardisation errs far less than half the gap between
    distinct values, which the snap asserts.
    """

    def __init__(self, table: np.ndarray):
        self.columns = [np.unique(col) for col in np.asarray(table, np.float64).T]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, np.float64)
        out = np.empty_like(raw)
        for j, values in enumerate(self.columns):
            pos = np.clip(np.searchsorted(values, raw[:, j]), 1, max(len(values) - 1, 1))
            lo, hi = values[pos - 1], values[np.minimum(pos, len(values) - 1)]
            nearest = np.where(np.abs(raw[:, j] - lo) <= np.abs(raw[:, j] - hi), lo, hi)
            gap = np.min(np.diff(values)) if len(values) > 1 else 1.0
            assert np.max(np.abs(nearest - raw[:, j])) < 0.1 * gap, f"column {j} does not snap"
            out[:, j] = nearest
        return out


def to_raw(a, scaler) -> np.ndarray:
    """Undo a standardiser in float64 (approximately the raw values)."""
    return np.asarray(a, np.float64) * np.asarray(scaler.std, np.float64) + np.asarray(
        scaler.mean, np.float64
    )


def raw_rows(split, spec, snap) -> np.ndarray:
    """(n, d + 1) exact raw rows [x, y] of a split."""
    x = to_raw(split.x, spec.x_scaler)
    y = to_raw(np.asarray(split.y), spec.y_scaler)
    return snap(np.concatenate([x, y[:, None]], axis=1))


def multiset(rows: np.ndarray) -> Counter:
    return Counter(map(tuple, np.round(rows, 8).tolist()))


def wine_cfg(**kw) -> DataConfig:
    base = dict(name="wine_white", train_fraction=0.75, val_fraction=0.10, test_fraction=0.15)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def white_table():
    x, y, names = wine.read_table("white")
    return x, y, Snapper(np.concatenate([x, y[:, None]], axis=1))


@pytest.fixture(scope="module")
def white_seed0():
    return load(wine_cfg(), streams(0).data)


# ----------------------------------------------------------------------------- split_indices


@pytest.mark.parametrize(
    "n, fractions",
    [
        (100, (0.75, 0.10, 0.15)),
        (4898, (0.75, 0.10, 0.15)),
        (7, (0.5, 0.25, 0.25)),
        (53, (0.8, 0.0, 0.2)),
        (1000, (0.6, 0.2, 0.2)),
        (11, (1.0, 0.0, 0.0)),
    ],
)
def test_split_indices_partition_range(n, fractions):
    parts = split_indices(np.random.default_rng(3), n, fractions)
    assert len(parts) == len(fractions)
    joined = np.concatenate(parts)
    # Disjoint and covering: every row exactly once.
    assert np.array_equal(np.sort(joined), np.arange(n))
    # Sizes follow the fractions: round(f * n) for the leading parts, the rest last.
    for part, f in zip(parts[:-1], fractions[:-1], strict=False):
        assert len(part) == int(round(f * n))
    assert len(parts[-1]) == n - sum(int(round(f * n)) for f in fractions[:-1])
    for part, f in zip(parts, fractions, strict=False):
        assert abs(len(part) - f * n) <= 1.0
        assert part.dtype.kind == "i"


def test_split_indices_seeded():
    a = split_indices(np.random.default_rng(1), 500, (0.7, 0.1, 0.2))
    b = split_indices(np.random.default_rng(1), 500, (0.7, 0.1, 0.2))
    c = split_indices(np.random.default_rng(2), 500, (0.7, 0.1, 0.2))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=False))
    assert not np.array_equal(a[0], c[0])


# ----------------------------------------------------------------------------- shipped wine


@pytest.mark.parametrize("colour, rows", [("white", 4898), ("red", 1599)])
def test_shipped_wine_shapes(colour, rows):
    x, y, names = wine.read_table(colour)
    assert x.shape == (rows, 11)
    assert y.shape == (rows,)
    assert len(names) == 11
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))
    # Quality is an integer score in 0..10.
    assert np.all(y == np.round(y)) and y.min() >= 0 and y.max() <= 10


@pytest.mark.parametrize("name, rows", [("wine_white", 4898), ("wine_red", 1599)])
def test_load_sizes(name, rows):
    data = load(wine_cfg(name=name), streams(0).data)
    n_train = int(round(0.75 * rows))
    n_val = int(round(0.10 * rows))
    assert len(data.train) == n_train
    assert len(data.val) == n_val
    assert len(data.test) == rows - n_train - n_val
    assert data.spec.input_dim == 11
    assert data.spec.n_total == rows
    assert data.spec.task == "regression"
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.float32
    assert data.train.x.shape == (n_train, 11) and data.train.y.shape == (n_train,)


def test_splits_cover_table_exactly(white_seed0, white_table):
    x, y, snap = white_table
    data = white_seed0
    rows = [raw_rows(s, data.spec, snap) for s in (data.train, data.val, data.test)]
    table = np.concatenate([x, y[:, None]], axis=1)
    # train + val + test is the raw table, row for row (as a multiset: the data has duplicates).
    assert multiset(np.concatenate(rows)) == multiset(table)


def test_same_seed_same_split_different_seed_different(white_seed0):
    again = load(wine_cfg(), streams(0).data)
    other = load(wine_cfg(), streams(1).data)
    for part in ("train", "val", "test"):
        a, b, c = getattr(white_seed0, part), getattr(again, part), getattr(other, part)
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
        assert a.x.shape == c.x.shape
        assert not np.array_equal(a.x, c.x)


def test_standardiser_fitted_on_training_rows_only(white_seed0, white_table):
    x, y, snap = white_table
    data = white_seed0
    spec = data.spec
    train_raw = raw_rows(data.train, spec, snap)
    # Reference: numpy statistics of the raw training rows (population std, ddof=0).
    np.testing.assert_allclose(spec.x_scaler.mean, train_raw[:, :-1].mean(0), rtol=1e-5)
    np.testing.assert_allclose(spec.x_scaler.std, train_raw[:, :-1].std(0), rtol=1e-5)
    np.testing.assert_allclose(spec.y_scaler.mean, train_raw[:, -1].mean(), rtol=1e-5)
    np.testing.assert_allclose(spec.y_scaler.std, train_raw[:, -1].std(), rtol=1e-5)
    # ... which differ from the statistics of the whole table.
    assert np.max(np.abs(spec.x_scaler.mean - x.mean(0)) / x.std(0)) > 1e-3
    # Standardised training data: mean 0, std 1 per column.
    np.testing.assert_allclose(data.train.x.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(data.train.x.std(0), 1.0, atol=1e-4)
    np.testing.assert_allclose(data.train.y.mean(), 0.0, atol=1e-4)
    np.testing.assert_allclose(data.train.y.std(), 1.0, atol=1e-4)
    # Validation and test rows are transformed with the training statistics, so
    # their own means are not exactly zero.
    for split in (data.val, data.test):
        assert np.max(np.abs(split.x.mean(0))) > 1e-3
        assert np.max(np.abs(split.x.std(0) - 1.0)) > 1e-3


def test_no_standardisation_keeps_raw_values(white_table):
    x, y, snap = white_table
    data = load(wine_cfg(standardize=False), streams(0).data)
    table = np.concatenate([x, y[:, None]], axis=1)
    rows = np.concatenate(
        [np.concatenate([s.x, s.y[:, None]], axis=1) for s in (data.train, data.val, data.test)]
    )
    # float32 storage of the raw values: snap to the table (no affine map involved).
    rows = snap(rows)
    assert multiset(rows) == multiset(table)


def test_val_fraction_zero_gives_no_val_split():
    data = load(wine_cfg(train_fraction=0.8, val_fraction=0.0, test_fraction=0.2), streams(0).data)
    assert data.val is None
    assert len(data.train) + len(data.test) == 4898


def test_train_subset_draws_from_full_training_split(white_seed0, white_table):
    x, y, snap = white_table
    full = white_seed0
    sub = load(wine_cfg(train_subset=0.3), streams(0).data)
    n_full = len(full.train)
    assert len(sub.train) == int(round(0.3 * n_full))
    full_train = multiset(raw_rows(full.train, full.spec, snap))
    sub_train = multiset(raw_rows(sub.train, sub.spec, snap))
    # A sub-multiset of the full training rows (never validation or test rows).
    assert all(full_train[row] >= count for row, count in sub_train.items())
    # Validation and test splits do not change with the subset.
    for part in ("val", "test"):
        a = raw_rows(getattr(full, part), full.spec, snap)
        b = raw_rows(getattr(sub, part), sub.spec, snap)
        np.testing.assert_array_equal(a, b)
    # The standardiser is refitted on the subset actually used.
    sub_raw = raw_rows(sub.train, sub.spec, snap)
    np.testing.assert_allclose(sub.spec.x_scaler.mean, sub_raw[:, :-1].mean(0), rtol=1e-5)
    np.testing.assert_allclose(sub.spec.y_scaler.std, sub_raw[:, -1].std(), rtol=1e-5)


# ----------------------------------------------------------------------------- benchmark split folder


@pytest.fixture(scope="module")
def red_split0():
    table = np.loadtxt(SPLIT_DIR / "data.txt")
    train_idx = np.loadtxt(SPLIT_DIR / "index_train_0.txt", dtype=np.int64)
    test_idx = np.loadtxt(SPLIT_DIR / "index_test_0.txt", dtype=np.int64)
    return table, train_idx, test_idx


@needs_split_dir
def test_split_dir_test_rows_are_the_benchmark_rows(red_split0):
    table, train_idx, test_idx = red_split0
    cfg = DataConfig(name="wine_red", split_dir=str(SPLIT_DIR), split=0, val_fraction=0.0)
    data = load(cfg, streams(0).data)
    assert data.val is None
    assert len(data.train) == 1439 == len(train_idx)
    assert len(data.test) == 160 == len(test_idx)
    assert data.spec.n_total == 1599
    # Test rows are exactly data.txt's rows listed in index_test_0.txt, in the file's order.
    y_test = to_raw(data.test.y, data.spec.y_scaler)
    np.testing.assert_allclose(y_test, table[test_idx, 11], rtol=0, atol=1e-4)
    x_test = to_raw(data.test.x, data.spec.x_scaler)
    np.testing.assert_allclose(x_test, table[test_idx, :11], rtol=1e-5, atol=1e-5)
    snap = Snapper(table)
    assert multiset(raw_rows(data.test, data.spec, snap)) == multiset(table[test_idx])
    # Training rows: index_train_0.txt; the standardiser is fitted on them.
    train_rows = raw_rows(data.train, data.spec, snap)
    assert multiset(train_rows) == multiset(table[train_idx])
    np.testing.assert_allclose(data.spec.x_scaler.mean, table[train_idx, :11].mean(0), rtol=1e-5)
    np.testing.assert_allclose(data.spec.y_scaler.std, table[train_idx, 11].std(), rtol=1e-5)


@needs_split_dir
def test_split_dir_validation_carved_from_training_rows(red_split0):
    table, train_idx, test_idx = red_split0
    cfg = DataConfig(name="wine_red", split_dir=str(SPLIT_DIR), split=0, val_fraction=0.1)
    data = load(cfg, streams(0).data)
    n_val = round(0.1 * 1439)
    assert len(data.val) == n_val
    assert len(data.train) == 1439 - n_val
    assert len(data.test) == 160
    snap = Snapper(table)
    carved = np.concatenate(
        [raw_rows(data.train, data.spec, snap), raw_rows(data.val, data.spec, snap)]
    )
    assert multiset(carved) == multiset(table[train_idx])
    assert multiset(raw_rows(data.test, data.spec, snap)) == multiset(table[test_idx])


def test_split_dir_missing_folder_names_file(tmp_path):
    missing = tmp_path / "nowhere"
    cfg = DataConfig(name="wine_red", split_dir=str(missing), split=0)
    with pytest.raises(DataError, match="data.txt"):
        load(cfg, streams(0).data)


@needs_split_dir
@pytest.mark.parametrize("drop", ["index_test_0.txt", "index_train_0.txt", "index_features.txt"])
def test_split_dir_missing_file_names_file(tmp_path, drop):
    for name in (
        "data.txt",
        "index_features.txt",
        "index_target.txt",
        "index_train_0.txt",
        "index_test_0.txt",
    ):
        if name != drop:
            shutil.copy(SPLIT_DIR / name, tmp_path / name)
    cfg = DataConfig(name="wine_red", split_dir=str(tmp_path), split=0)
    with pytest.raises(DataError, match=drop.replace(".", r"\.")):
        load(cfg, streams(0).data)


@needs_split_dir
def test_split_dir_unknown_split_index_names_file():
    cfg = DataConfig(name="wine_red", split_dir=str(SPLIT_DIR), split=99)
    with pytest.raises(DataError, match=r"index_train_99\.txt"):
        load(cfg, streams(0).data)


# ----------------------------------------------------------------------------- split folder faults

SMALL_TABLE = np.column_stack([np.arange(10.0), np.arange(10.0) ** 2, np.arange(10.0) % 3])


def small_split_dir(folder: Path) -> Path:
    """A 10-row benchmark folder: columns 0, 1 are inputs, 2 the target; split 0."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "data.txt", SMALL_TABLE)
    (folder / "index_features.txt").write_text("0\n1\n")
    (folder / "index_target.txt").write_text("2\n")
    (folder / "index_train_0.txt").write_text("\n".join(map(str, range(8))) + "\n")
    (folder / "index_test_0.txt").write_text("8\n9\n")
    return folder


def split_cfg(split_dir, split: int = 0) -> DataConfig:
    return DataConfig(name="wine_red", split_dir=split_dir, split=split, val_fraction=0.0)


def test_small_split_dir_loads_its_rows(tmp_path):
    cfg = split_cfg(str(small_split_dir(tmp_path)))
    data = load(cfg, streams(0).data)
    assert (len(data.train), len(data.test), data.spec.input_dim) == (8, 2, 2)
    x_test = to_raw(data.test.x, data.spec.x_scaler)
    np.testing.assert_allclose(x_test, SMALL_TABLE[8:, :2], atol=1e-4)
    np.testing.assert_allclose(
        to_raw(data.test.y, data.spec.y_scaler), SMALL_TABLE[8:, 2], atol=1e-5
    )


def write(name: str, text: str | bytes):
    """A setup that overwrites one file of the small folder."""

    def setup(folder, monkeypatch):
        if isinstance(text, bytes):
            (folder / name).write_bytes(text)
        else:
            (folder / name).write_text(text)
        return str(folder)

    return setup


def _loop(folder, monkeypatch):
    (folder.parent / "loop").symlink_to(folder.parent / "loop")
    return str(folder.parent / "loop")


def _broken_link(folder, monkeypatch):
    (folder.parent / "link").symlink_to(folder.parent / "gone")
    return str(folder.parent / "link")


def _data_as_folder(folder, monkeypatch):
    (folder / "data.txt").unlink()
    (folder / "data.txt").mkdir()
    return str(folder)


def _unreadable(folder, monkeypatch):
    fail_under(monkeypatch, "open", folder, denied(folder / "data.txt"))
    return str(folder)


def _unsearchable(folder, monkeypatch):
    fail_under(monkeypatch, "stat", folder, denied(folder / "data.txt"))
    return str(folder)


# case -> (setup(valid folder, monkeypatch) -> data.split_dir, error type, words)
SPLIT_FAULTS = {
    "no such folder": (lambda f, m: str(f / "nowhere"), DataError, ["no such folder", "data.txt"]),
    "a file as the folder": (
        lambda f, m: str(f / "data.txt"),
        DataError,
        ["is a file, not a folder", "index_features.txt"],
    ),
    "symlink loop": (_loop, DataError, ["data.split_dir=", "symlink loop"]),
    "broken symlink": (_broken_link, DataError, ["broken symlink", "gone"]),
    "NUL byte": (lambda f, m: f"{f}\0x", DataError, ["data.split_dir=", "NUL byte"]),
    "name too long": (lambda f, m: str(f / ("s" * 300)), DataError, ["too long"]),
    "unknown user": (lambda f, m: "~no-such-bslrun-user/s", DataError, ["home folder"]),
    "data.txt a folder": (_data_as_folder, DataError, ["data.txt", "is a folder, not a file"]),
    "data.txt unreadable": (_unreadable, ResourceError, ["data.txt", "permission denied"]),
    "folder unsearchable": (_unsearchable, ResourceError, ["data.txt", "permission denied"]),
    "data.txt empty": (write("data.txt", ""), DataError, ["data.txt", "is empty"]),
    "index file empty": (write("index_test_0.txt", "\n"), DataError, ["index_test_0.txt", "empty"]),
    "not UTF-8": (write("data.txt", b"1 2 \xe9\n"), DataError, ["data.txt", "not a numeric table"]),
    "text in data.txt": (write("data.txt", "1 2 x\n"), DataError, ["not a numeric table"]),
    "ragged data.txt": (write("data.txt", "1 2 3\n4 5\n"), DataError, ["not a numeric table"]),
    "row beyond the table": (
        write("index_test_0.txt", "8\n10\n"),
        DataError,
        ["index_test_0.txt", "row 10", "10 rows"],
    ),
    "negative row": (write("index_train_0.txt", "0\n-1\n"), DataError, ["row -1"]),
    "column beyond the table": (
        write("index_features.txt", "0\n5\n"),
        DataError,
        ["index_features.txt", "column 5", "3 columns"],
    ),
    "fractional index": (write("index_train_0.txt", "1.5\n"), DataError, ["not a numeric table"]),
    "nan in data.txt": (
        write("data.txt", "\n".join(["1 2 3"] * 2 + ["1 nan 3"] + ["1 2 3"] * 7)),
        DataError,
        ["data.txt", "row 3, column 1", "nan"],
    ),
    "inf target": (
        write("data.txt", "\n".join(["1 2 inf"] + ["1 2 3"] * 9)),
        DataError,
        ["row 1, column 2", "inf"],
    ),
}


@pytest.mark.parametrize("case", list(SPLIT_FAULTS), ids=list(SPLIT_FAULTS))
def test_split_dir_faults_are_one_line(tmp_path, monkeypatch, case):
    setup, exc_type, words = SPLIT_FAULTS[case]
    split_dir = setup(small_split_dir(tmp_path / "splits"), monkeypatch)
    with pytest.raises(exc_type) as excinfo:
        load(split_cfg(split_dir), streams(0).data)
    message = str(excinfo.value)
    assert "\n" not in message and all(word in message for word in words), message
    exc = excinfo.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def test_split_dir_unknown_split_index_in_a_small_folder(tmp_path):
    with pytest.raises(DataError, match=r"index_train_3\.txt is missing") as excinfo:
        load(split_cfg(str(small_split_dir(tmp_path)), split=3), streams(0).data)
    assert "\n" not in str(excinfo.value)


def test_unreadable_shipped_wine_is_a_resource_error(monkeypatch):
    from importlib import resources

    folder = Path(str(resources.files("bslrun.data") / "resources"))
    fail_under(monkeypatch, "open", folder, denied(folder))
    with pytest.raises(ResourceError, match="winequality-red.csv cannot be read .*reinstall"):
        wine.read_table("red")


def test_fit_standardiser_matches_numpy(rng):
    from bslrun.data.splits import fit_standardiser

    a = rng.normal(3.0, 2.0, size=(50, 3))
    a[:, 1] = 7.0  # a constant column keeps scale 1 (no division by zero)
    s = fit_standardiser(a)
    np.testing.assert_allclose(s.mean, a.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.std, [a[:, 0].std(), 1.0, a[:, 2].std()], rtol=1e-6)
    z = s.forward(a)
    assert z.dtype == np.float32 and np.all(np.isfinite(z))
    np.testing.assert_allclose(z[:, 1], 0.0)
    np.testing.assert_allclose(s.inverse(z), a, rtol=1e-5, atol=1e-5)
    # constant but for rounding (one ulp apart) is constant; a small but real spread is not
    b = np.stack([np.full(50, 0.1) + np.arange(50) % 2 * np.spacing(0.1), 1e-12 * a[:, 0]], 1)
    np.testing.assert_allclose(fit_standardiser(b).std, [1.0, 1e-12 * a[:, 0].std()], rtol=1e-6)
