"""``bslrun-report``: summarise run folders (e.g. a sweep) as one table and a few plots.

Runs are read by ``bslrun.runs`` and summarised by ``bslrun.summary`` (the settings all
runs share, the group table, a table of every run linked to its folder), drawn by
``bslrun.report_plots`` (per metric, with reference lines; the learning curves) and put
on one page by ``bslrun.report_html``. The runs that did not complete are listed with
their error line and stay out of the statistics. ``--published <benchmark>`` adds the
groups beside published results (``bslrun.published``); runs made for a benchmark show
its results as lines on their plots without it.

The table is printed before any file is written, so an output folder that cannot be
written still shows it. Nothing is re-run and JAX is never imported, so the report starts
in well under a second.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from pathlib import Path

from bslrun.artifacts import RunFolder, write_bytes
from bslrun.errors import BslrunError, ConfigError, ResourceError
from bslrun.report_html import html_report
from bslrun.report_plots import learning_curves, plot_metric
from bslrun.runs import (
    MISSING,
    Run,
    find_run_dirs,
    group_value,
    load_run,
    one_line,
    read_history,
)
from bslrun.summary import (
    Page,
    better,
    cell_note,
    choose_metrics,
    csv_report,
    differing_keys,
    markdown_report,
    others_lines,
    report_title,
    runs_cells,
    shared_settings,
    summarise,
    table_cells,
)

PROG = "bslrun-report"


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like bslrun's own errors
        raise ConfigError(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run folders or folders of runs")
    parser.add_argument("--metrics", help="comma-separated, e.g. test.rmse,test.nll")
    parser.add_argument("--out", type=Path, help="output folder (default: the first PATH)")
    parser.add_argument("--group-by", help="comma-separated override keys ('' for one group)")
    parser.add_argument(
        "--published",
        metavar="BENCHMARK",
        help="also write the groups beside a benchmark's published results (e.g. uci_wine_red; "
        "uci: per data set, all nine UCI regression data sets)",
    )
    return parser.parse_args(argv)


def split_list(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def check_group_keys(runs: list[Run], keys: list[str]) -> None:
    """Each key must have a value in some of ``runs``: the runs that are then grouped."""
    unknown = [k for k in keys if all(group_value(r, k) == MISSING for r in runs)]
    if unknown:
        known = sorted({k for r in runs for k in r.overrides})
        raise ConfigError(
            f"unknown group key {', '.join(unknown)} (no completed run has it); group by an "
            f"override of theirs ({', '.join(known) or 'none'}) or a config key"
        )


def write_error(out: Path, error: OSError) -> ResourceError:
    """One line for an output folder that cannot be written (the table is printed)."""
    why = error.strerror or one_line(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space there or give another folder with --out"
    else:
        fix = "give a folder you can write with --out"
    return ResourceError(f"cannot write the report into {out} ({why}); {fix}")


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def refuse_linked_folders(out: Path, names) -> None:
    """A sub-folder of ``out`` (``plots/``) that is a symbolic link would take the report's
    files elsewhere. A link in place of a file is harmless: the rename replaces the link."""
    folders = sorted({Path(name).parent for name in names} - {Path(".")})
    linked = next((out / f for f in folders if (out / f).is_symlink()), None)
    if linked is not None:
        raise ResourceError(
            f"{linked} is a symbolic link, and {PROG} writes no file through a link; remove "
            "it, or give another folder with --out"
        )


def write_files(out: Path, files: dict) -> None:
    """Write ``{relative path: bytes}`` under ``out``, each atomically. On failure, the
    folders this call made and left empty are removed: nothing half-done stays."""
    refuse_linked_folders(out, files)
    made = missing_folders(out / "plots")
    try:
        for name, data in files.items():
            write_bytes(out / name, data)
    except OSError as error:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty one
        raise write_error(out, error) from None


def show(text: str) -> None:
    """Print to stdout; a reader gone (``bslrun-report ... | head``) does not stop the
    report from writing its files."""
    try:
        print(text, end="", flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as Python's docs do


def benchmark_references(bench: dict | None, metric: str) -> list:
    """(method, value) of ``bench``'s published rows for ``metric``, in its units."""
    if bench is None:
        return []
    from bslrun import published

    return published.references(bench, metric)


def references(metric: str, bench: dict | None) -> list:
    """The lines a metric's plot shows: its target (0.95 for coverage_95), then the
    published results of the runs' benchmark."""
    way = better(metric)
    target = [("target", way.target)] if way and way.sign == 0 else []
    return target + benchmark_references(bench, metric)


def histories(runs: list[Run]) -> list[dict]:
    """The runs' history.csv tables; an unreadable one is empty (left out of the curves)."""
    tables = []
    for run in runs:
        try:
            tables.append(read_history(RunFolder(run.path).history))
        except ResourceError:
            tables.append({})
    return tables


def plot_files(rows: list, keys: list[str], metrics: list[str], bench: dict | None) -> dict:
    """{heading: PNG} for the HTML page, in order: each metric, then the learning curves."""
    plots = {m: plot_metric(rows, keys, m, references(m, bench)) for m in metrics}
    curves = learning_curves(rows, keys, [histories(row.runs) for row in rows])
    return {**plots, **({"learning curves": curves} if curves else {})}


def read_runs(args: argparse.Namespace) -> tuple[list[Run], list[Run], Path]:
    """(the completed runs, the others, the output folder); an error when none completed."""
    run_dirs = find_run_dirs(args.paths)
    if not run_dirs:
        raise ConfigError(
            f"no run folders (with .hydra/config.yaml) under {args.paths[0]}; give a run "
            "folder or a folder of runs (e.g. experiments/<name>)"
        )
    runs = [load_run(d) for d in run_dirs]
    done = [r for r in runs if r.status == "completed"]
    others = [r for r in runs if r.status != "completed"]
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent)
    if not done:
        show("\n".join(others_lines(others, out)) + "\n")
        raise BslrunError(
            f"no completed runs among {len(runs)} run folders (listed above); "
            "fix or rerun them, or wait for the running ones"
        )
    return done, others, out


def add_published(page: Page, done: list[Run], keys: list[str], name: str) -> dict:
    """Put the groups beside benchmark ``name``'s published results on ``page``; the
    files published.md and published.csv."""
    from bslrun import published

    bench, ours = published.compare(done, keys, name)
    page.extra = published.markdown(bench, ours)
    page.sections = (
        (published.title(bench), published.cells(bench, ours), published.notes(bench)),
    )
    return {
        "published.md": page.extra.encode(),
        "published.csv": published.csv_text(bench, ours).encode(),
    }


def report(args: argparse.Namespace) -> int:
    from bslrun import published

    bench = published.load(args.published) if args.published else None
    done, others, out = read_runs(args)
    metrics = choose_metrics(done, split_list(args.metrics))
    keys = split_list(args.group_by)
    keys = differing_keys(done) if keys is None else keys
    check_group_keys(done, keys)
    rows = summarise(done, keys, metrics)
    page = Page(
        report_title(done), shared_settings(done, keys), table_cells(rows, keys, metrics),
        cell_note(rows, metrics), out, len(done), others,
        runs_cells(rows, others, keys, metrics, out),
    )  # fmt: skip
    extra = add_published(page, done, keys, args.published) if bench else {}
    show(markdown_report(page, with_runs=False))  # first: an unwritable --out still shows it
    # Runs made for a benchmark show its published results as lines, even without --published.
    page.plots = plot_files(rows, keys, metrics, published.plotted(bench, done))
    files = {
        "report.md": markdown_report(page).encode(),
        "report.csv": csv_report(rows, keys, metrics).encode(),
        "report.html": html_report(page).encode(),
        **extra,
        **{
            f"plots/report_{h.replace('.', '_').replace(' ', '_')}.png": png
            for h, png in page.plots.items()
        },
    }
    write_files(out, files)
    also = ", published.md, published.csv" if extra else ""
    print(f"\nwrote {out / 'report.md'}, report.csv, report.html{also} and plots/", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit 0, or one line on stderr: 2 usage, 5 an unwritable output folder, 1 no
    completed run or a bug (HYDRA_FULL_ERROR=1 shows a bug's traceback), 130 Ctrl-C."""
    try:
        return report(parse_args(argv))
    except BslrunError as error:
        sys.stdout.flush()
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(f"{PROG}: error: stopped by SIGINT; no file was left half-written", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.stdout.flush()
        print(
            f"{PROG}: error: unexpected {type(error).__name__}: {one_line(error)}; a bug in "
            f"{PROG}: please report it (HYDRA_FULL_ERROR=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
