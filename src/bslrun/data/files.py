"""Your own table (``data=file``): a CSV file, a .npy array or a .npz archive.

Formats, chosen by the file's suffix:

* ``.csv``: comma-separated, UTF-8, the first row a header naming the columns; fields
  may be quoted (``"1,5"``) and blank lines are skipped. Rows are numbered as a
  spreadsheet shows them: the header is row 1, the first data row row 2.
* ``.npy``: a 2D array (rows, columns) of numbers (or text); a 1D array is one column.
  Columns are named by their 0-based index ("0", "1", ...), rows by their 0-based index.
* ``.npz``: an archive holding one such array, or several and ``data.key`` naming one.

Arrays are read with ``allow_pickle=False`` (``bslrun.data.arrays``): files holding Python
objects are refused.

``data.columns`` picks the inputs (null: every column but the target) and ``data.target``
the target (null: none, density estimation). A target holding text labels, or
``data.task=classification``, becomes class codes 0..K-1 in sorted order of the labels
(or of the distinct numbers); numbers otherwise give regression. Used columns must be
complete and numeric (empty, NA, nan, null, ? count as missing), finite and within
float32's range; unused columns may hold anything. Problems with the path or the file
raise DataError: one line naming the file, row and column, and the fix (problems the
config alone shows are caught by config validation); the machine refusing to read it
(permission, a disk error, too little memory) raises ResourceError.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bslrun.config import FileDataConfig
from bslrun.data import arrays, paths
from bslrun.data.splits import Dataset, assemble, split_indices, subsample
from bslrun.errors import DataError
from bslrun.registry import DataSet
from bslrun.seeding import numpy_rng

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".npy", ".npz")
MISSING = ("", "na", "n/a", "#n/a", "<na>", "nan", "-nan", "null", "?")
FLOAT32_MAX = float(np.finfo(np.float32).max)
LISTED = 20  # column names an error message lists, at most


@dataclass(frozen=True)
class Table:
    """Cells (n, m) as numbers or text, with column names and row numbers for messages."""

    path: str  # as the user wrote it (data.path)
    names: tuple
    cells: np.ndarray  # (n, m) numeric, or str ("U") for CSV and text arrays
    rows: np.ndarray  # (n,) the number each row is shown as
    row_word: str  # "row" (CSV, header is row 1) or "row index" (arrays, 0-based)

    def where(self, i: int, j: int) -> str:
        return f"{self.path}: {self.row_word} {self.rows[i]}, column {self.names[j]!r}"


# ----------------------------------------------------------------------------- loader


def load(cfg, key) -> Dataset:
    """Read ``cfg.path``, pick its columns, and split the rows with randomness from ``key``."""
    table = read(cfg.path, cfg.key)
    inputs, target = select(table, cfg.columns, cfg.target, cfg.exclude)
    x = numeric_block(table, inputs)
    if target is None:
        y, task, classes = np.zeros(len(x), np.int32), "density", ()
    else:
        task = getattr(cfg.task, "value", cfg.task)
        y, task, classes = target_column(table, target, task)
    parts = split_rows(cfg, key, table.path, len(x))
    target_name = "" if target is None else table.names[target]
    if classes:
        codes = ", ".join(f"{c}={k}" for k, c in enumerate(classes))
        log.info("data=file: target %r has classes %s", target_name, codes)
    names = tuple(table.names[j] for j in inputs)
    fields = dict(name="file", task=task, num_classes=len(classes), target_name=target_name)
    fields.update(feature_names=names, class_names=tuple(classes))
    return assemble(x, y, parts, cfg, fields, regression=task == "regression")


# The task of data=file is the config's (data.task) or the file's: None here.
DATASETS = {"file": DataSet(load, FileDataConfig, None)}


def split_rows(cfg, key, path: str, n: int):
    """Seeded (train, val, test) row indices, each split holding at least one row."""
    fractions = (cfg.train_fraction, cfg.val_fraction, cfg.test_fraction)
    n_train, n_val = (int(round(f * n)) for f in fractions[:2])
    sizes = {"train": n_train, "val": n_val, "test": n - n_train - n_val}
    for part, fraction in zip(sizes, fractions, strict=True):
        if sizes[part] < 1 and (fraction > 0 or part != "val"):
            zero = " or set it to 0" if part == "val" else ""
            raise DataError(
                f"{path} has {n} data rows: data.{part}_fraction={fraction:g} leaves the {part} "
                f"split empty; raise data.{part}_fraction (lowering another){zero}, or add rows"
            )
    rng = numpy_rng(key)
    train, val, test = split_indices(rng, n, fractions)
    return subsample(rng, train, cfg.train_subset), val, test


# ----------------------------------------------------------------------------- columns


def select(table: Table, columns, target, exclude=None) -> tuple[list[int], int | None]:
    """Column positions of the inputs (``columns``, else every column but the target, less
    ``exclude``) and of the target (None: no target)."""

    index = {name: j for j, name in enumerate(table.names)}

    def position(ref, option: str) -> int:
        ref = str(ref).strip()
        if ref not in index:
            listed = ", ".join(repr(n) for n in table.names[:LISTED])
            if len(table.names) > LISTED:
                listed += f", ... ({len(table.names)} in all)"
            hint = " (0-based indices)" if table.row_word == "row index" else ""
            raise DataError(
                f"{table.path} has no column {ref!r} ({option}); columns{hint}: {listed}"
            )
        return index[ref]

    j_target = None if target is None else position(target, "data.target")
    if columns is None:
        inputs = [j for j in range(len(table.names)) if j != j_target]
    else:
        inputs = [position(c, "data.columns") for c in columns]
    left_out = {position(c, "data.exclude") for c in exclude or []}
    inputs = [j for j in inputs if j not in left_out]
    if not inputs:
        raise DataError(
            f"{table.path} has no column left for inputs besides data.target and data.exclude"
        )
    return inputs, j_target


def check_missing(table: Table, j: int, role: str) -> np.ndarray:
    """Column j as float64 if numeric, else stripped text; a missing value is an error."""
    col = table.cells[:, j]
    if col.dtype.kind == "U":
        col = np.char.strip(col)
        missing = np.isin(np.char.lower(col), MISSING)
    else:
        col = col.astype(np.float64)
        missing = np.isnan(col)
    if missing.any():
        i = int(np.argmax(missing))
        fix = {"target": ", or choose another data.target", "input": (
            ", or choose data.columns without this column"
        )}.get(role, "")  # fmt: skip
        raise DataError(
            f"{table.where(i, j)}: missing value {str(col[i])!r}; fill in or remove that row{fix}"
        )
    return col


def parse(col: np.ndarray) -> tuple[np.ndarray | None, int]:
    """(float64 values, -1), or (None, the first row that is not a number)."""
    try:
        return col.astype(np.float64), -1
    except ValueError:
        pass
    values = np.empty(len(col))
    for i, cell in enumerate(col):
        try:
            values[i] = float(cell)
        except ValueError:
            return None, i
    return values, -1


def check_finite(table: Table, j: int, values: np.ndarray) -> np.ndarray:
    """Refuse inf, and finite values that become inf as float32 (models compute in float32)."""
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{table.where(i, j)}: {values[i]} is not a finite number; fix the value")
    big = np.abs(values) > FLOAT32_MAX
    if big.any():
        i = int(np.argmax(big))
        raise DataError(
            f"{table.where(i, j)}: {values[i]:g} is beyond float32's range (+-{FLOAT32_MAX:.3g}); "
            "rescale the column"
        )
    return values


def numeric_block(table: Table, columns: list[int], role: str = "input") -> np.ndarray:
    """The input columns as float64 (n, k), checked in one pass over the block; the first
    column holding a problem is handed to ``numeric_column`` to word it (so a table with
    100,000 columns costs one vectorised pass, not 100,000 small ones)."""
    block = table.cells[:, columns]
    if block.dtype.kind == "U":
        text = np.char.strip(block)
        missing = np.isin(np.char.lower(text), MISSING)
        values, bad = parse_block(np.where(missing, "nan", text))
    else:
        values = block.astype(np.float64)
        missing, bad = np.isnan(values), np.zeros(values.shape, bool)
    problem = missing | bad | ~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX)
    if problem.any():  # raises, naming the first such cell
        numeric_column(table, columns[int(np.argmax(problem.any(axis=0)))], role)
    return values


def parse_block(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, mask of cells that are not numbers) of a text block."""
    try:
        return text.astype(np.float64), np.zeros(text.shape, bool)
    except ValueError:
        pass
    values, bad = np.zeros(text.shape), np.zeros(text.shape, bool)
    for index, cell in np.ndenumerate(text):
        try:
            values[index] = float(cell)
        except ValueError:
            bad[index] = True
    return values, bad


def numeric_column(table: Table, j: int, role: str) -> np.ndarray:
    """Column j as float64; missing, text or infinite values are errors."""
    values, bad = parse(check_missing(table, j, role))
    if values is None:
        name = table.names[j] if re.fullmatch(r"[\w.-]+", table.names[j]) else repr(table.names[j])
        leave_out = (
            f", or leave the column out with data.exclude=[{name}]" if role == "input" else ""
        )
        raise DataError(
            f"{table.where(bad, j)}: {str(table.cells[bad, j]).strip()!r} is not a number; "
            f"fix the value{leave_out}"
        )
    return check_finite(table, j, values)


def target_column(table: Table, j: int, task: str | None) -> tuple[np.ndarray, str, tuple]:
    """(y, task, class names): floats for regression, codes 0..K-1 for classification."""
    col = check_missing(table, j, "target")
    values, bad = parse(col)
    text = values is None
    if not text:
        check_finite(table, j, values)
    if text and task == "regression":
        raise DataError(
            f"{table.where(bad, j)}: target {str(col[bad])!r} is not a number but "
            "data.task=regression; use data.task=classification or another data.target"
        )
    if task is None and text:
        task = "classification"
    if task != "classification":
        _hint_classes(table, j, values)
        return values, "regression", ()
    if not text and not np.all(values == np.round(values)):
        i = int(np.argmax(values != np.round(values)))
        raise DataError(
            f"{table.where(i, j)}: class label {values[i]:g} is not a whole number; "
            "use data.task=regression, or integer labels"
        )
    classes, codes = np.unique(col if text else values, return_inverse=True)
    names = tuple(str(c) if text else f"{c:g}" for c in classes)
    if len(names) < 2:
        raise DataError(
            f"{table.path}: target column {table.names[j]!r} holds a single class "
            f"({names[0]!r}); classification needs at least two"
        )
    return codes.astype(np.int32), "classification", names


def _hint_classes(table: Table, j: int, values: np.ndarray) -> None:
    distinct = np.unique(values)
    if len(distinct) <= 10 and np.all(distinct == np.round(distinct)):
        log.info(
            "data=file: target %r holds %d distinct whole numbers and is fitted by regression; "
            "add data.task=classification to treat them as classes",
            table.names[j],
            len(distinct),
        )


# ----------------------------------------------------------------------------- reading


def read(
    path_text: str, key: str | None, option: str = "data.path", key_option: str = "data.key"
) -> Table:
    """The table in ``path_text`` (.csv, .npy or .npz, by suffix); ``option`` and
    ``key_option`` name the settings that chose the file and the array, in messages."""
    path = paths.regular_file(path_text, option)
    shown = paths.shown(path_text)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{option}={shown}: unknown file type {suffix or '(no suffix)'!r}; bslrun "
            "reads .csv (with a header row), .npy and .npz"
        )
    if suffix == ".csv":
        return read_csv(path, shown, option)
    return array_table(arrays.read_array(path, shown, key, option, key_option), shown)


def read_csv(path: Path, shown: str, option: str = "data.path") -> Table:
    """A CSV file with a header row; wholly blank rows are skipped but keep their numbers."""
    label = f"{option}={shown}"
    try:
        with paths.open_file(path, label, "r", newline="", encoding="utf-8-sig") as handle:
            records = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise DataError(f"{shown} is not UTF-8 text; save the CSV with UTF-8 encoding") from None
    except csv.Error as exc:
        raise DataError(f"{shown} is not a readable CSV file ({exc}); save it as CSV") from None
    except MemoryError:
        raise paths.too_large(label) from None
    except OSError as exc:  # the disk failed while reading
        raise paths.fault(exc, label) from None
    numbered = [(i + 1, r) for i, r in enumerate(records) if any(f.strip() for f in r)]
    if not numbered:
        raise DataError(f"{shown} is empty; write a header row naming the columns, then the data")
    names = tuple(f.strip() for f in numbered[0][1])
    check_header(names, shown)
    body = numbered[1:]
    if not body:
        raise DataError(f"{shown} has a header row but no data rows; add the data below it")
    for number, record in body:
        if len(record) != len(names):
            raise DataError(
                f"{shown}: row {number} has {len(record)} fields but the header has "
                f"{len(names)}; check for missing or extra commas (quote fields holding commas)"
            )
    cells = np.array([r for _, r in body], dtype=str).reshape(len(body), len(names))
    return Table(shown, names, cells, np.array([n for n, _ in body]), "row")


def check_header(names: tuple, shown: str) -> None:
    if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
        raise DataError(f"{shown} does not seem to use commas between fields; save it as CSV")
    if parse(np.array(names))[0] is not None:
        raise DataError(f"{shown}: row 1 holds numbers, not column names; add a header row")
    first = {}
    for j, name in enumerate(names):
        if name in first:
            raise DataError(
                f"{shown}: header names column {first[name] + 1} and column {j + 1} both "
                f"{name!r}; give every column a distinct name"
            )
        first[name] = j


def array_table(array: np.ndarray, shown: str) -> Table:
    """A 2D numeric (or text) array as a table with columns named "0", "1", ..."""
    if array.dtype.names:
        fields = ", ".join(array.dtype.names)
        raise DataError(f"{shown} holds a structured array (fields {fields}); save a 2D array")
    if array.dtype.kind == "S":
        raise DataError(f"{shown} holds byte strings ({array.dtype}); save numbers, or text as str")
    if array.dtype.kind not in "biufU":
        raise DataError(f"{shown} holds {array.dtype} values; save a 2D array of numbers")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise DataError(
            f"{shown} holds an array of shape {array.shape}; save a 2D (rows, columns) one"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{shown} holds an empty array {array.shape}; it has no data")
    names = tuple(str(j) for j in range(array.shape[1]))
    return Table(shown, names, array, np.arange(array.shape[0]), "row index")
