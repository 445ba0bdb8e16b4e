"""Experiment loggers (the ``logger`` config group): TensorBoard, MLflow and Weights & Biases,
besides the run folder's own ``history.csv``.

Loggers are called from the host at epoch boundaries (``epoch``) and once when the run ends
(``finish``), never inside the compiled epoch. Each library is an optional extra, refused in
one line naming its ``pip install`` when missing. A logger that fails while the run trains
(a tracking server gone away) is dropped with one warning: it never costs the run.

Names match the run folder's: epoch scalars are ``history.csv``'s columns (``train_loss``,
``lr``, ``val_nll``, ...), final ones ``metrics.json``'s keys joined by dots (``test.rmse``),
parameters the resolved config's keys (``model.hidden``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bslrun.artifacts import RunFolder, output_root
from bslrun.config import LoggerConfig, as_dict, flatten
from bslrun.errors import ConfigError, ResourceError, RunInterrupted
from bslrun.runs import flatten_metrics

log = logging.getLogger(__name__)

# logger name -> (the module it needs, the extra that installs it)
EXTRAS = {
    "tensorboard": ("tensorboardX", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
# Rows handed over within this many seconds are written together.
FLUSH_S = 1.0
# The most of the time the loggers' thread spends writing while a run trains.
BUSY_FRACTION = 0.01
# The loggers' thread's nice value (Linux): it gives way to training on a busy machine.
LOGGER_NICENESS = 10
# metrics.json's sections of final numbers
FINAL_SECTIONS = ("test", "val", "train", "timing")


def chosen(cfg: LoggerConfig) -> list[str]:
    """The loggers the config turns on, in EXTRAS order."""
    return [name for name in EXTRAS if getattr(cfg, name) is not None]


def check_installed(cfg: LoggerConfig) -> None:
    """ConfigError naming the ``pip install`` for each chosen logger whose library is missing."""
    for name in chosen(cfg):
        if importlib.util.find_spec(EXTRAS[name][0]) is None:
            raise ConfigError(missing(name))


def missing(name: str) -> str:
    """The one line that refuses logger ``name`` whose library is not installed."""
    module, extra = EXTRAS[name]
    return (
        f"logger={name} needs the {module} package; install it with: "
        f"pip install 'bslrun[{extra}]' (or choose another logger)"
    )


def params_of(cfg) -> dict[str, str]:
    """The resolved config as flat string parameters (``model.hidden`` -> ``"[50, 50]"``)."""
    return {key: str(value) for key, value in flatten(as_dict(cfg)).items()}


def finite_numbers(values: dict) -> dict[str, float]:
    """The entries that are finite numbers (not flags, text or NaN), as floats."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def epoch_scalars(row: dict) -> dict[str, float]:
    """A history row's finite numbers, without the epoch (the step)."""
    return finite_numbers({key: value for key, value in row.items() if key != "epoch"})


def final_scalars(metrics: dict) -> dict[str, float]:
    """metrics.json's final numbers: ``test.rmse``, ``train.best_epoch``, ``timing.train_s``."""
    flat = flatten_metrics(metrics)
    return finite_numbers({k: v for k, v in flat.items() if k.split(".")[0] in FINAL_SECTIONS})


def _require(name: str):
    try:
        return importlib.import_module(EXTRAS[name][0])
    except ImportError:
        raise ConfigError(missing(name)) from None


# ----------------------------------------------------------------------------- the loggers


class TensorBoardLogger:
    """Event files in ``<run folder>/<dir>``, written by tensorboardX (no TensorFlow)."""

    name = "tensorboard"

    def __init__(self, cfg, run_dir: Path, title: str, group: str | None):
        tensorboardx = _require(self.name)
        self.writer = tensorboardx.SummaryWriter(logdir=str(run_dir / cfg.logger.tensorboard.dir))
        self.writer.add_text("config", _markdown_table(params_of(cfg)), 0)

    def epochs(self, rows: list) -> None:
        for step, scalars in rows:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)

    def finish(self, step: int, metrics: dict, plots: list[Path], status: str) -> None:
        self.epochs([(step, final_scalars(metrics))])
        for path in plots:
            self.writer.add_image(f"plots/{path.stem}", _read_png(path), step, dataformats="HWC")
        self.writer.add_text("status", status, step)
        self.writer.close()

    def abort(self, status: str) -> None:
        self.writer.add_text("status", status, 0)
        self.writer.close()


class MlflowLogger:
    """One MLflow run: parameters, per-epoch and final metrics, plots and metrics.json as
    artifacts, the run folder as a tag. Written through ``MlflowClient``, so that nothing
    global (an active run) is left behind in library use."""

    name = "mlflow"
    STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}

    def __init__(self, cfg, run_dir: Path, title: str, group: str | None):
        mlflow = _require(self.name)
        from mlflow.entities import Param

        settings = cfg.logger.mlflow
        for quiet in ("mlflow", "alembic"):  # schema migrations are announced at INFO
            logging.getLogger(quiet).setLevel(logging.WARNING)
        self.entities = importlib.import_module("mlflow.entities")
        uri = mlflow_uri(settings)
        reachable(uri)
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        sweep = f" sweep {Path(group).name}" if group else ""
        name = settings.experiment or f"{cfg.name}{sweep}"
        experiment = self._experiment(name, local_artifact_root(uri))
        tags = {"bslrun.run_dir": str(run_dir.resolve()), "bslrun.seed": str(cfg.seed)}
        if group:
            tags["bslrun.sweep"] = group
        self.run_id = self.client.create_run(experiment, run_name=title, tags=tags).info.run_id
        self.folder = RunFolder(run_dir)
        params = [Param(key, value[:6000]) for key, value in params_of(cfg).items()]
        for start in range(0, len(params), 100):  # MLflow takes 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def _experiment(self, name: str, artifact_root: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None if artifact_root is None else f"{artifact_root}/{_safe(name)}"
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # a parallel sweep job created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def epochs(self, rows: list) -> None:
        now = int(time.time() * 1000)
        Metric = self.entities.Metric
        metrics = [Metric(k, v, now, step) for step, scalars in rows for k, v in scalars.items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def finish(self, step: int, metrics: dict, plots: list[Path], status: str) -> None:
        self.epochs([(step, final_scalars(metrics))])
        for path in plots:
            self.client.log_artifact(self.run_id, str(path), "plots")
        for path in (self.folder.metrics, self.folder.config):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED"))

    def abort(self, status: str) -> None:
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED"))


class WandbLogger:
    """One W&B run, offline (files in the run folder, for ``wandb sync``) unless a key is
    configured; a sweep's jobs share its group."""

    name = "wandb"

    def __init__(self, cfg, run_dir: Path, title: str, group: str | None):
        wandb = _require(self.name)
        settings = cfg.logger.wandb
        mode = settings.mode or os.environ.get("WANDB_MODE") or _wandb_default_mode()
        self.wandb = wandb
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            mode=mode,
            dir=str(run_dir),
            name=title,
            group=f"{cfg.name} sweep {Path(group).name}" if group else None,
            config=params_of(cfg),
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )

    def epochs(self, rows: list) -> None:
        for step, scalars in rows:
            self.run.log(scalars, step=step)

    def finish(self, step: int, metrics: dict, plots: list[Path], status: str) -> None:
        self.run.summary.update(final_scalars(metrics))
        if plots:
            self.run.log({f"plots/{p.stem}": self.wandb.Image(str(p)) for p in plots}, step=step)
        self.run.finish(exit_code=0 if status == "completed" else 1)

    def abort(self, status: str) -> None:
        self.run.finish(exit_code=1)


def _wandb_default_mode() -> str:
    """online when a key is configured (WANDB_API_KEY, or ``wandb login``'s netrc entry)."""
    import netrc

    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        found = netrc.netrc().authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        found = None
    return "online" if found else "offline"


KINDS = {logger.name: logger for logger in (TensorBoardLogger, MlflowLogger, WandbLogger)}


def mlflow_uri(settings) -> str:
    """The configured tracking URI, or the local store beside the experiments' folders: an
    SQLite database (MLflow 3 keeps its file store only for old data). A relative SQLite
    path (``sqlite:///mlflow.db``) is the working folder's, made absolute here."""
    uri = settings.tracking_uri
    if uri and uri.startswith(SQLITE) and not Path(uri.removeprefix(SQLITE)).is_absolute():
        return f"{SQLITE}{Path.cwd() / uri.removeprefix(SQLITE)}"
    if uri:
        return uri
    root = output_root()
    root.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE}{root / 'mlflow.db'}"


SQLITE = "sqlite:///"
# MLflow's retries of a tracking server (its own defaults add up to about 250 s for one
# that does not answer): a few seconds unless the environment says otherwise.
MLFLOW_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def reachable(uri: str) -> None:
    """Before MLflow tries (and retries, printing each attempt) a store: an SQLite
    database that cannot be opened is one line; a server's retries are bounded and said."""
    if uri.startswith(SQLITE):
        import sqlite3

        path = Path(uri.removeprefix(SQLITE))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            sqlite3.connect(path).close()
        except (OSError, sqlite3.Error) as error:
            raise ResourceError(
                f"logger.mlflow.tracking_uri={uri}: cannot open the database {path} ({error}); "
                "choose a folder you can write, or another logger"
            ) from None
    elif uri.startswith(("http://", "https://")):
        for name, value in MLFLOW_RETRIES.items():
            os.environ.setdefault(name, value)  # the process's setting, as MLflow reads it
        log.info(
            "logger=mlflow: connecting to %s (%s retries of up to %s s each; Ctrl-C stops)",
            uri, os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"],
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"],
        )  # fmt: skip


def local_artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside its database (MLflow would otherwise put
    them in the working folder); a server's store decides for itself (None)."""
    if not uri.startswith(SQLITE):
        return None
    return (Path(uri.removeprefix(SQLITE)).parent / "mlartifacts").as_uri()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _read_png(path: Path):
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    return (image[..., :3] * 255).astype("uint8") if image.dtype.kind == "f" else image[..., :3]


def _markdown_table(params: dict) -> str:
    rows = [f"| {key} | {value} |" for key, value in sorted(params.items())]
    return "\n".join(["| key | value |", "|---|---|", *rows])


# ----------------------------------------------------------------------------- together


class Loggers:
    """The chosen loggers of one run, called together on one background thread that owns
    them: the training loop only hands each epoch's row over, so that a slow tracking store
    does not slow training. A logger that fails is dropped with a warning: the run goes on."""

    def __init__(self, opener=None, stop_requested=lambda: None, what: str = "the loggers"):
        self.loggers: list = []
        self.step = 0
        self.seconds = 0.0  # the training loop's time on the loggers (timing.log_s)
        self.error: BaseException | None = None
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = None
        if opener is not None:
            started = threading.Event()
            self.thread = threading.Thread(
                target=self._work, args=(opener, started), name="bslrun-loggers", daemon=True
            )
            self.thread.start()
            while not started.wait(0.1):  # a tracking server may keep it waiting
                signum = stop_requested()
                if signum:
                    raise RunInterrupted(
                        f"stopped by {signal.Signals(signum).name} while {what} started; "
                        "nothing was trained", signum
                    )  # fmt: skip
            if self.error is not None:
                raise self.error

    def _work(self, opener, started: threading.Event) -> None:
        _lower_priority()
        try:
            self.loggers = opener()
        except BaseException as error:  # handed to the run's thread, which raises it
            self.error = error
            return
        finally:
            started.set()
        not_before = 0.0
        while True:
            batch = self._next_batch(not_before)
            tick = time.monotonic()
            rows = [item for kind, item in batch if kind == "epoch"]
            if rows:
                self._each(lambda logger, rows=rows: logger.epochs(rows))
            kind, call = batch[-1]
            if kind == "close":
                self._each(call)
                return
            # This thread holds the GIL while it writes, which the training loop then waits
            # for: writing is spaced so that it is busy at most BUSY_FRACTION of the time.
            busy = time.monotonic() - tick
            not_before = time.monotonic() + max(FLUSH_S, busy / BUSY_FRACTION)

    def _next_batch(self, not_before: float) -> list:
        """The rows handed over until FLUSH_S after the first and ``not_before`` (or up to a
        close, which is never kept waiting)."""
        batch = [self.queue.get()]
        deadline = max(time.monotonic() + FLUSH_S, not_before)
        while batch[-1][0] == "epoch":
            try:
                batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def epoch(self, row: dict) -> None:
        if self.thread is None:
            return
        tick = time.perf_counter()
        self.step = step = int(row.get("epoch", self.step + 1))
        self.queue.put(("epoch", (step, epoch_scalars(row))))
        self.seconds += time.perf_counter() - tick

    def finish(self, metrics: dict, plots: list[Path], status: str = "completed") -> None:
        step = self.step
        self._close(lambda logger: logger.finish(step, metrics, plots, status))

    def abort(self, status: str) -> None:
        self._close(lambda logger: logger.abort(status))

    def _close(self, call) -> None:
        """Run ``call`` on every logger after the rows before it, and stop the thread."""
        if self.thread is None:
            return
        self.queue.put(("close", call))
        self.thread.join()
        self.thread = None

    def _each(self, call) -> None:
        kept = []
        for logger in self.loggers:
            try:
                call(logger)
                kept.append(logger)
            except Exception as error:  # a logger must never cost the run
                log.warning("logger=%s failed and is switched off: %s", logger.name, error)
        self.loggers = kept


def _lower_priority() -> None:
    """Let training have the cores first: on Linux a thread has its own nice value."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOGGER_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: logging still works
        pass


def open_loggers(cfg, run_dir: Path, group: str | None) -> list:
    """Start each chosen logger; ResourceError (one line) for one that cannot start."""
    title = run_dir.name if group is None else f"{cfg.name} {run_dir.name}"
    loggers = []
    for name in chosen(cfg.logger):
        try:
            loggers.append(KINDS[name](cfg, run_dir, title, group))
        except (ConfigError, ResourceError):
            for started in loggers:
                started.abort("failed")
            raise
        except Exception as error:
            for started in loggers:
                started.abort("failed")
            said = (str(error).strip() or type(error).__name__).splitlines()[0]  # one line
            raise ResourceError(
                f"logger={name} could not start: {said}; check logger.{name}'s settings "
                f"or choose another logger"
            ) from None
    return loggers


@contextmanager
def opened(cfg, run_dir: Path, group: str | None = None, stop_requested=None
           ) -> Iterator[Loggers]:  # fmt: skip
    """The chosen loggers for a run in ``run_dir`` (``group``: the sweep folder of a sweep
    job). A run that ends by an exception closes them as failed or interrupted; a stop
    signal (``stop_requested``) while they start stops at once."""
    check_installed(cfg.logger)
    run_dir = Path(run_dir)
    wanted = chosen(cfg.logger)
    what = " and ".join(f"logger={name}" for name in wanted)
    opener = (lambda: open_loggers(cfg, run_dir, group)) if wanted else None
    together = Loggers(opener, stop_requested or (lambda: None), what)
    try:
        yield together
    except BaseException as error:
        interrupted = isinstance(error, RunInterrupted | KeyboardInterrupt)
        together.abort("interrupted" if interrupted else "failed")
        raise
