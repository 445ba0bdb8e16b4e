"""bslrun: run, compare and sweep Bayesian deep learning experiments from one command."""

from bslrun import clock  # noqa: F401 -- first, so the process clock starts before JAX loads
from bslrun.version import __version__

__all__ = ["__version__", "load"]


def load(run_dir, *, allow_incomplete: bool = False):
    """Reopen a run folder: ``bslrun.load("experiments/<name>/<time>")`` -> ``Run``, which
    predicts, samples and scores from the folder alone (see ``bslrun.reopen``).

    >>> run = bslrun.load("experiments/bnn_wine_white/2026-12-01_02-05-45_056218")
    >>> pred = run.predict(x_new, num_samples=200, seed=0)
    >>> pred.mean, pred.std, pred.quantiles([0.025, 0.975])
    """
    from bslrun.reopen import load as load_run  # JAX is imported here, not by ``import bslrun``

    return load_run(run_dir, allow_incomplete=allow_incomplete)
