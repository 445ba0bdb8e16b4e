"""Run the benchmarks: ``python -m benchmarks.run [--only NAME] [--epochs N] [--reps N]``.

Each benchmark is a module exposing ``NAME``, ``run(opts) -> dict`` and
``summarise(result) -> str``; it is registered below by module path, so adding
one (a VAE, a flow) is one module plus one line. Each writes
benchmarks/results/<name>.json. The exit status is non-zero when a
benchmark's sanity check fails (a missed speed target is reported, not fatal).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, Options, write

# name -> module defining NAME, run and summarise
BENCHMARKS = {
    "bnn_epoch": "benchmarks.bnn_epoch",
    "vae_epoch": "benchmarks.vae_epoch",
    "maf_epoch": "benchmarks.maf_epoch",
    "matmul_peak": "benchmarks.matmul_peak",
    "joblib_sweep": "benchmarks.joblib_sweep",
    "reopen": "benchmarks.reopen",
    "logging_overhead": "benchmarks.logging_overhead",
    "conv_transpose": "benchmarks.conv_transpose",
    "uci_sweep": "benchmarks.uci_sweep",
    "peers": "benchmarks.peers",
    "startup": "benchmarks.startup",
}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(sorted(BENCHMARKS))}",
    )
    parser.add_argument(
        "--epochs", type=int, help="timed epochs per repetition (default: each benchmark's)"
    )
    parser.add_argument(
        "--reps", type=int, help="timed repetitions per method (default: each benchmark's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    for key in ("epochs", "reps"):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key}={value} must be a positive integer")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    opts = Options(epochs=args.epochs, reps=args.reps, seed=args.seed, results_dir=args.results_dir)
    failed = []
    for name in args.only or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        tick = time.perf_counter()
        result = module.run(opts)
        result["wall_s"] = time.perf_counter() - tick
        path = write(name, result, args.results_dir)
        print(module.summarise(result))
        print(f"  wrote {path} ({result['wall_s']:.0f} s)")
        if not result.get("sanity", {}).get("passed", True):
            failed.append(name)
    if failed:
        print(f"sanity check failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
