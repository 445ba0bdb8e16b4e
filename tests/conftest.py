"""Shared helpers: small synthetic data sets wrapped in bslrun's data classes.

Nothing here touches the network; everything is built in memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from bslrun.data.splits import IDENTITY, Dataset, DataSpec, Split


def make_spec(
    input_dim: int,
    n_total: int,
    *,
    task: str = "regression",
    num_classes: int = 0,
    image_shape: tuple | None = None,
) -> DataSpec:
    """A DataSpec with identity standardisers (data given in model units)."""
    return DataSpec(
        name="synthetic",
        task=task,
        input_dim=input_dim,
        num_classes=num_classes,
        x_scaler=IDENTITY,
        y_scaler=IDENTITY,
        feature_names=tuple(f"x{i}" for i in range(input_dim)),
        target_name="y",
        n_total=n_total,
        image_shape=image_shape,
    )


def make_dataset(
    x, y, *, val=None, test=None, task: str = "regression", num_classes: int = 0
) -> Dataset:
    """Wrap arrays as a Dataset; ``val``/``test`` are (x, y) pairs or None (test defaults to train)."""
    y_dtype = np.float32 if task == "regression" else np.int32
    x, y = np.asarray(x, np.float32), np.asarray(y, y_dtype)

    def split(pair):
        return Split(np.asarray(pair[0], np.float32), np.asarray(pair[1], y_dtype))

    n_total = len(x) + (len(val[0]) if val is not None else 0)
    spec = make_spec(x.shape[1], n_total, task=task, num_classes=num_classes)
    return Dataset(
        train=Split(x, y),
        val=split(val) if val is not None else None,
        test=split(test) if test is not None else Split(x, y),
        spec=spec,
    )


def linear_regression_data(rng: np.random.Generator, n: int, d: int, sigma: float):
    """x ~ N(0, I), y = x @ w + b + sigma * eps with fixed true w, b."""
    w_true = np.linspace(1.5, -0.7, d)
    b_true = 0.3
    x = rng.normal(size=(n, d))
    y = x @ w_true + b_true + sigma * rng.normal(size=n)
    return x.astype(np.float32), y.astype(np.float32)


CHECKOUT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Every test process (each xdist worker, each ``bslrun`` a test starts) compiles into
    one cache in the checkout (``make test`` names the same folder): a test loads what an
    earlier one compiled for the same shapes (bslrun.compilation)."""
    from bslrun import compilation

    os.environ.setdefault(compilation.ENV, str(CHECKOUT / ".cache" / "jax"))
    compilation.enable(compilation.AUTO)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def compose(*overrides: str):
    """The validated Config for command-line ``overrides``, composed in-process (no JAX)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bslrun import cli
    from bslrun.registry import register

    register()
    with initialize_config_dir(config_dir=str(cli.CONFIG_DIR), version_base="1.3"):
        return cli.to_config(hydra_compose("config", overrides=list(overrides)))


def perturb(params, key, scale: float = 0.3):
    """params + scale * N(0, 1) leafwise: moves zero-initialised flow outputs off the identity."""
    import jax

    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        leaf + scale * jax.random.normal(k, leaf.shape)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, noisy)


# --------------------------------------------------------------- refusals of the OS


def fail_where(monkeypatch, method: str, hit, exc: OSError) -> None:
    """Make ``Path.<method>`` raise ``exc`` for the paths where ``hit(path)`` holds, as an
    unreadable file or folder does for a user who is not root (root passes any mode, so
    os.access and chmod tell nothing in tests run as root)."""
    original = getattr(Path, method)

    def failing(self, *args, **kwargs):
        if hit(self):
            raise exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, failing)


def fail_under(monkeypatch, method: str, folder: Path, exc: OSError) -> None:
    """``Path.<method>`` raises ``exc`` for every path inside ``folder``."""
    fail_where(monkeypatch, method, lambda path: folder in path.parents, exc)


def fail_for(monkeypatch, method: str, target: Path, exc: OSError) -> None:
    """``Path.<method>`` raises ``exc`` for ``target`` only."""
    fail_where(monkeypatch, method, lambda path: path == target, exc)


def denied(path) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


# --------------------------------------------------------------------- compilations


class CompileCounter:
    """Counts XLA backend compilations by function name while active."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.names = []

    def __call__(self, event, duration, **kwargs):
        if event == self.EVENT:
            self.names.append(kwargs.get("fun_name", "?"))

    def __enter__(self):
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        from jax import monitoring

        monitoring.unregister_event_duration_listener(self)


def sweep_job(sweep: Path, num: int) -> Path:
    """Job ``num`` of a sweep folder: its folder is named ``<num>_<overrides>``."""
    found = [p for p in sweep.iterdir() if p.is_dir() and p.name.split("_")[0] == str(num)]
    assert len(found) == 1, sorted(p.name for p in sweep.iterdir())
    return found[0]


# ------------------------------------------------------- a UCI benchmark tree of its own

UCI_FOLDER = re.compile(r"\$\{oc\.env:BSLRUN_UCI_DIR,[^}]*\}/(\S+)")


def uci_folder_names() -> set[str]:
    """The data set folders that the configs read below ``$BSLRUN_UCI_DIR``."""
    from bslrun import cli

    return {
        match
        for path in cli.CONFIG_DIR.rglob("*.yaml")
        for match in UCI_FOLDER.findall(path.read_text())
    }


def make_uci_tree(root: Path, rows: int = 60, columns: int = 5, splits: int = 2) -> Path:
    """A tiny synthetic ``$BSLRUN_UCI_DIR``: every folder the presets name, in the
    benchmark's layout (data.txt, the column indices, train/test rows of ``splits``
    splits), so that the uci presets run on a clone without the shared split files."""
    rng = np.random.default_rng(0)
    for name in sorted(uci_folder_names()):
        folder = root / name
        folder.mkdir(parents=True)
        table = rng.normal(size=(rows, columns + 1))
        table[:, -1] = table[:, :-1] @ np.linspace(1, -1, columns) + 0.1 * table[:, -1]
        np.savetxt(folder / "data.txt", table)
        np.savetxt(folder / "index_features.txt", np.arange(columns), fmt="%d")
        np.savetxt(folder / "index_target.txt", [columns], fmt="%d")
        for k in range(splits):
            order = rng.permutation(rows)
            np.savetxt(folder / f"index_train_{k}.txt", order[: rows * 3 // 4], fmt="%d")
            np.savetxt(folder / f"index_test_{k}.txt", order[rows * 3 // 4 :], fmt="%d")
    return root


# ------------------------------------------------------------- the command in process


@contextlib.contextmanager
def command_state_restored(env_vars: dict[str, str]):
    """Undoes on leaving what a ``bslrun`` command run in this process changes for it:
    the environment (``env_vars`` set inside), the working folder, ``sys.argv``, logging
    (Hydra configures it for its run, bslrun sets ``logging.raiseExceptions``), signal
    handlers, cli's module state and Hydra's global config."""
    import logging

    from hydra.core.hydra_config import HydraConfig

    from bslrun import cli

    saved_env = {key: os.environ.get(key) for key in env_vars}
    saved_argv, saved_cwd = sys.argv[:], os.getcwd()
    loggers = [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]
    saved_logging = [(lg, lg.level, lg.handlers[:], lg.propagate, lg.disabled) for lg in loggers]
    raise_exceptions = logging.raiseExceptions
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    saved_signals = {signum: signal.getsignal(signum) for signum in signums}
    saved_cli = (cli.PRE_LOCK, cli.SWEEPS[:], cli.FAILED_JOBS[:], cli.leave)
    hydra_cfg = HydraConfig.instance().cfg
    # Hydra's logging.config.dictConfig flushes and closes every handler logging knows of
    # (logging._handlerList), pytest's too (its log file handler, on os.devnull): they are
    # hidden from it, and handed back afterwards.
    existing, named = logging._handlerList[:], dict(logging._handlers)
    del logging._handlerList[:]
    os.environ.update(env_vars)
    try:
        yield
    finally:
        logging._handlerList[:0] = existing
        logging._handlers.update(named)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        kept = {id(h) for _, _, handlers, _, _ in saved_logging for h in handlers}
        for handler in logging.getLogger().handlers:
            if id(handler) not in kept:
                handler.close()  # the run's run.log
        for lg, level, handlers, propagate, disabled in saved_logging:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
        logging.raiseExceptions = raise_exceptions
        for signum, handler in saved_signals.items():
            if handler is not None:  # None: a handler not set from Python
                signal.signal(signum, handler)
        cli.PRE_LOCK, cli.SWEEPS[:], cli.FAILED_JOBS[:], cli.leave = saved_cli
        HydraConfig.instance().cfg = hydra_cfg


def exit_code(exit: SystemExit) -> int:
    """The exit status the interpreter gives ``exit`` (a message: printed, status 1)."""
    if exit.code is None or isinstance(exit.code, int):
        return exit.code or 0
    print(exit.code, file=sys.stderr)
    return 1


def bslrun_here(
    *args: str, out: Path, cwd: Path | None = None, timeout: int | None = None, **env_vars
):
    """``bslrun *args`` as ``test_cli.bslrun`` runs it (``BSLRUN_OUTPUT_DIR=out``, from
    ``cwd`` or else ``out``, ``HYDRA_FULL_ERROR=0``, ``env_vars`` set) but in this process,
    through ``cli.main``: no second start of Python, Hydra and JAX (several seconds each),
    and the programs JAX compiled in this process are reused. Returns a CompletedProcess (exit
    code, stdout, stderr); what the command changed is undone (command_state_restored).
    ``cli.leave`` (after an error's line: flush, then ``os._exit``) raises SystemExit with
    its code here instead of ending pytest's process.

    Not for what only a process of its own shows: its exit through ``os._exit``, signals
    sent to it, what it prints while JAX or matplotlib start (they started here long ago)
    or any warning (pytest records them), state at import. ``timeout`` is accepted for the
    subprocess helper's signature only."""
    import io
    import subprocess

    from bslrun import cli

    def leave(code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(code)

    stdout, stderr = io.StringIO(), io.StringIO()
    env = {"BSLRUN_OUTPUT_DIR": str(out), "HYDRA_FULL_ERROR": "0", **env_vars}
    with command_state_restored(env):
        os.chdir(cwd or out)
        sys.argv = ["bslrun", *args]
        cli.PRE_LOCK, cli.leave = None, leave
        cli.SWEEPS.clear()
        cli.FAILED_JOBS.clear()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                cli.main()
                code = 0
            except SystemExit as exit:
                code = exit_code(exit)
    return subprocess.CompletedProcess(
        ["bslrun", *args], code, stdout.getvalue(), stderr.getvalue()
    )


# ------------------------------------------------------------------------- Ctrl-C


def default_sigint() -> None:
    """Ctrl-C's default disposition (a subprocess's ``preexec_fn``): a shell without job
    control starts background jobs, and so a pytest started that way and its children,
    with SIGINT ignored, and bslrun keeps an ignored signal ignored (lifecycle.StopSignals)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def ctrl_c_as_in_a_terminal():
    """Ctrl-C's Python handler for the test, whatever this process inherited (see
    ``default_sigint``), restored afterwards."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
