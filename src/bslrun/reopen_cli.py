"""``bslrun-predict`` and ``bslrun-sample``: use a finished run from the command line.

    bslrun-predict RUN_DIR INPUT [--out FILE] [--samples N] [--seed S]
    bslrun-sample  RUN_DIR [-n N] [--out FILE] [--seed S]

INPUT is a CSV file (columns matched to the training features by name, in any order; the
target column may be present and is ignored), or an NPY / NPZ array (rows, features).
A BNN writes its posterior predictive per row (regression: mean, std, lower_95, upper_95,
epistemic_std, aleatoric_std; classification: one probability column per class, entropy,
mutual_information, prediction); a flow or VAE writes log_prob per row. The output format
follows --out's suffix: .csv, .npy (columns in that order; text columns left out) or .npz;
bslrun-sample also writes .png (an image grid, image data) and .csv (tables). Errors are
one line with the exit codes of errors.py.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import math
import signal
import sys
from pathlib import Path

import numpy as np

from bslrun import artifacts
from bslrun.errors import BslrunError, ConfigError, DataError, ResourceError, RunInterrupted
from bslrun.models.family import Predicts

CSV_FORMAT = "%.9g"  # float32 round-trips through 9 significant digits


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def seed(text: str) -> int:
    """--seed: an integer from 0 to config.MAX_SEED, as bslrun's seed=."""
    from bslrun.config import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer from 0 to {MAX_SEED}")
    return value


def count(text: str) -> int:
    """-n, --samples: a whole number, written as digits or as 1e6."""
    try:
        return int(text)  # exact, however long
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value.is_integer()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run folder: experiments/<name>/<time>"
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of the draws (default 0)")
    parser.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="use a run that did not complete (its last saved parameters)",
    )


def predict_parser() -> Parser:
    parser = Parser(
        prog="bslrun-predict",
        description="Predict with a finished BNN run (or score rows under a flow or VAE).",
    )
    common(parser)
    parser.add_argument("input", metavar="INPUT", help="rows to predict: .csv, .npy or .npz")
    parser.add_argument("--out", help="where to write (.csv, .npy, .npz); default INPUT's "
                        "name with .predictions.csv, in the current folder")  # fmt: skip
    parser.add_argument("--samples", type=count, help="posterior draws (default: the run's eval)")
    parser.add_argument("--key", help="the array of an .npz INPUT holding several")
    return parser


def sample_parser() -> Parser:
    parser = Parser(
        prog="bslrun-sample",
        description="Draw from a finished run: points (flow), images (VAE), weights (BNN).",
    )
    common(parser)
    parser.add_argument("-n", "--num", type=count, default=1000, help="how many (default 1000)")
    parser.add_argument("--out", help="where to write (.csv, .npy, .npz, .png); default "
                        "samples.csv for tables, samples.npy otherwise")  # fmt: skip
    return parser


# ------------------------------------------------------------------ reading


def read_inputs(run, path: str, key: str | None) -> np.ndarray:
    """INPUT as float64 (rows, features) in the run's feature order."""
    from bslrun.data import files
    from bslrun.reopen_checks import feature_positions, named

    table = files.read(path, key, option="INPUT", key_option="--key")
    if table.row_word == "row":  # a CSV: its header names the columns
        positions = feature_positions(table.names, run.spec, source=path)
    else:
        positions = list(range(len(table.names)))
        if len(positions) != run.spec.input_dim:  # the width, before the values
            raise DataError(
                f"{path} has {len(positions)} columns; the run was trained on "
                f"{run.spec.input_dim}{named(run.spec)}: give an array (rows, {run.spec.input_dim})"
            )
    return files.numeric_block(table, positions, role="prediction input")


# ------------------------------------------------------------------ writing


def table_bytes(columns: dict, suffix: str) -> bytes:
    """Named columns as CSV, NPY (numeric columns side by side) or NPZ."""
    buffer = io.BytesIO()
    if suffix == ".npz":
        np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in columns.items()})
        return buffer.getvalue()
    if suffix == ".npy":
        numeric = [np.asarray(v) for v in columns.values() if np.asarray(v).dtype.kind in "biuf"]
        np.save(buffer, np.column_stack(numeric), allow_pickle=False)
        return buffer.getvalue()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    cells = [
        [CSV_FORMAT % x for x in v] if np.asarray(v).dtype.kind == "f" else [str(x) for x in v]
        for v in columns.values()
    ]
    writer.writerows(zip(*cells, strict=True))
    return text.getvalue().encode()


def write(args, path: Path, save) -> None:
    """``save(path)``, with a machine's refusal as one line naming --out; not when a stop
    signal came (``main_with``)."""
    args.before_writing()
    try:
        save(path)
    except OSError as error:
        raise ResourceError(
            f"cannot write {path} ({error.strerror or error}); choose another --out"
        ) from None


def suffix_of(out: Path, allowed: tuple) -> str:
    suffix = out.suffix.lower()
    if suffix not in allowed:
        raise ConfigError(
            f"--out={out}: unknown file type {suffix or '(none)'!r}; use {', '.join(allowed)}"
        )
    return suffix


# ------------------------------------------------------------------ commands


def predict(args) -> str:
    from bslrun.reopen import load

    out = (
        Path(args.out) if args.out else Path(Path(args.input).name).with_suffix(".predictions.csv")
    )
    suffix = suffix_of(out, (".csv", ".npy", ".npz"))
    run = load(args.run_dir, allow_incomplete=args.allow_incomplete)
    x = read_inputs(run, args.input, args.key)
    if isinstance(run.family, Predicts):
        prediction = run.predict(x, num_samples=args.samples, seed=args.seed)
        columns = prediction.columns()
        summary = describe_prediction(run, prediction)
    else:
        log_prob = run.log_prob(x, num_samples=args.samples, seed=args.seed)
        columns = {"log_prob": log_prob}
        bound = "" if run.family.info.exact_log_prob else " (importance-weighted bound)"
        summary = f"mean log p(x) {np.mean(log_prob):.4f} nats{bound}"
    write(args, out, lambda path: artifacts.write_bytes(path, table_bytes(columns, suffix)))
    return f"wrote {len(x)} rows to {out}: {summary}"


def describe_prediction(run, prediction) -> str:
    if run.spec.task == "classification":
        names, counts = np.unique(prediction.columns()["prediction"], return_counts=True)
        shares = ", ".join(f"{n}: {c}" for n, c in zip(names, counts, strict=True))
        return f"predicted classes {shares}; mean entropy {np.mean(prediction.entropy):.3f} nats"
    target = run.spec.target_name or "y"
    return (
        f"mean predicted {target} {np.mean(prediction.mean):.4g}, mean predictive std "
        f"{np.mean(prediction.std):.4g}"
    )


def sample(args) -> str:
    from bslrun import plots
    from bslrun.reopen import load

    run = load(args.run_dir, allow_incomplete=args.allow_incomplete)
    images = run.spec.image_shape is not None and run.family.info.samples_data
    tabular = run.family.info.samples_data and not images
    default = "samples.csv" if tabular else "samples.npy"
    out = Path(args.out or default)
    allowed = (".npy", ".npz") + ((".csv",) if tabular else ()) + ((".png",) if images else ())
    suffix = suffix_of(out, allowed)
    draws = run.sample(args.num, seed=args.seed)
    if suffix == ".png":
        grid = draws.reshape(-1, *run.spec.image_shape[:2])
        write(
            args,
            out,
            lambda path: plots.image_grid(grid, min(len(grid), 16), path, f"{len(grid)} samples"),
        )
    else:
        names = run.spec.feature_names if tabular else tuple(str(j) for j in range(draws.shape[1]))
        columns = dict(zip(names, draws.T, strict=True))
        write(args, out, lambda path: artifacts.write_bytes(path, table_bytes(columns, suffix)))
    return f"wrote {len(draws)} {run.family.info.samples_are} of shape {draws.shape[1:]} to {out}"


NOTHING_WRITTEN = "nothing was written"


def main_with(parser: Parser, command) -> None:
    from bslrun.lifecycle import StopSignals

    # From the start: a Ctrl-C while JAX imports lands in its garbage-collection callback,
    # where Python ignores exceptions; StopSignals still records it, and ``write`` refuses.
    with StopSignals((signal.SIGINT, signal.SIGTERM)) as stop, quiet_stops():
        stop.now_or_never(NOTHING_WRITTEN)
        try:
            args = parser.parse_args()
            args.before_writing = functools.partial(stop.now_or_never, NOTHING_WRITTEN)
            from bslrun import compilation

            compilation.enable(compilation.AUTO)  # the programs the run (or a last call) compiled
            print(f"{parser.prog}: {command(args)}")
        except BslrunError as error:
            fail(parser.prog, error)
        except KeyboardInterrupt:  # where no handler could be installed (not the main thread)
            stopped = f"stopped by SIGINT ({NOTHING_WRITTEN})"
            fail(parser.prog, RunInterrupted(stopped, signal.SIGINT))


def fail(prog: str, error: BslrunError) -> None:
    label = "" if isinstance(error, RunInterrupted) else "error: "
    print(f"{prog}: {label}{error}", file=sys.stderr)
    sys.exit(error.exit_code)


@contextlib.contextmanager
def quiet_stops():
    """A stop raised where Python ignores exceptions (a garbage-collection callback) is
    acted on later (``StopSignals`` recorded it): its "Exception ignored" traceback is not
    shown. Any other such exception still is."""
    before = sys.unraisablehook

    def hook(unraisable):
        if not isinstance(unraisable.exc_value, RunInterrupted):
            before(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = before


def predict_main() -> None:
    main_with(predict_parser(), predict)


def sample_main() -> None:
    main_with(sample_parser(), sample)
