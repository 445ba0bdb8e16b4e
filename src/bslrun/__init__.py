"""bslrun: run, compare and sweep Bayesian deep learning experiments from one command."""

import time

# Taken before JAX is imported, so timing.startup_s covers the whole start-up.
PROCESS_START = time.time()
_run_start = PROCESS_START
_runs = 0


def begin_run() -> None:
    """Mark the start of a run. The first run of a process counts from the process start
    (imports included); a later one (the next job of a sweep on Hydra's basic launcher,
    which runs its jobs in one process) from its own start, not from the jobs before it."""
    global _run_start, _runs
    if _runs:
        _run_start = time.time()
    _runs += 1


def seconds_since_run_start() -> float:
    """timing.startup_s: seconds from the start of this run (see ``begin_run``)."""
    return time.time() - _run_start


__version__ = "0.1.0"


def load(run_dir, *, allow_incomplete: bool = False):
    """Reopen a run folder: ``bslrun.load("experiments/<name>/<time>")`` -> ``Run``, which
    predicts, samples and scores from the folder alone (see ``bslrun.reopen``).

    >>> run = bslrun.load("experiments/bnn_wine_white/2026-12-01_02-05-45_056218")
    >>> pred = run.predict(x_new, num_samples=200, seed=0)
    >>> pred.mean, pred.std, pred.quantiles([0.025, 0.975])
    """
    from bslrun.reopen import load as load_run  # JAX is imported here, not by ``import bslrun``

    return load_run(run_dir, allow_incomplete=allow_incomplete)
