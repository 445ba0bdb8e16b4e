"""The run folder: the one module that knows its file names (``RunFolder``), and the
atomic writers. Every file is written to a temporary name in the same folder and renamed
into place, so a reader (or a crash) never sees half a file.

Layout of one run folder (format ``FORMAT``; docs/run-folder.md is the contract)::

    .hydra/                config.yaml, overrides.yaml, hydra.yaml (by Hydra)
    run.json               format, bslrun version, command line, git commit, JAX backend, versions
    config.json            the resolved config (plain JSON)
    data.json              the data spec: feature and target names, scalers, task, shapes
    status.json            running / completed / failed / diverged / interrupted (see write_status)
    .lock                  held (flock) by the process running in the folder
    run.log                the run's log
    metrics.json           nested metrics (test, val, train, timing, seed, versions)
    history.csv            one row per epoch
    predictions.npz        BNN: test-set predictions (samples.npz for VAEs and flows)
    posterior_samples.npz  inference=nuts: the posterior draws, (chains, draws, ...) per site
    reference.npz          inference=nuts: the test predictive that eval.reference compares with
    checkpoint/params.msgpack   parameters and mutable state (flax msgpack; never pickle)
    checkpoint/train/      the last training checkpoint (orbax) and config.json, for resuming
    plots/*.png
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# The run-folder format (docs/run-folder.md); bslrun.load reads READABLE_FORMATS, refuses
# others. 2: metrics.json has one shape for every method (null where a value does not apply).
FORMAT = 2
READABLE_FORMATS = (1, 2)
STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
ARRAY_FILES = {"predictions": "predictions.npz", "samples": "samples.npz"}
LATEST_LINK = "latest"  # <output folder>/latest: the newest completed run


def output_root() -> Path:
    """The folder that holds the experiments (the root of config.yaml's hydra.run.dir)."""
    return Path(os.environ.get("BSLRUN_OUTPUT_DIR", "experiments")).resolve()


def copy_hydra_files(run_dir: Path, replica_dir: Path, seed: int) -> None:
    """Give a replica of ``run_dir`` (``trainer.replicas``) Hydra's record of its config:
    the run's, with the replica's seed and ``trainer.replicas=1``, so that it reads (and
    reports) as the run it is. Nothing when the run has no such record (library use)."""
    import yaml

    source, target = RunFolder(run_dir), RunFolder(replica_dir)
    if not source.hydra_config.is_file():
        return
    config = yaml.safe_load(source.hydra_config.read_text())
    config["seed"] = seed
    config.setdefault("trainer", {})["replicas"] = 1
    write_bytes(target.hydra_config, yaml.safe_dump(config, sort_keys=False).encode())
    overrides = yaml.safe_load(source.hydra_overrides.read_text()) or []
    own = [o for o in overrides if not o.lstrip("+~").startswith(("seed=", "trainer.replicas="))]
    write_bytes(target.hydra_overrides, yaml.safe_dump([*own, f"seed={seed}"]).encode())
    if source.hydra_settings.is_file():
        write_bytes(target.hydra_settings, source.hydra_settings.read_bytes())


def point_latest(run_dir: Path) -> None:
    """Point ``<output folder>/latest`` at ``run_dir`` (a relative link, replaced atomically)
    once it has completed: a failed or interrupted run never takes the place of the last
    good one. Skipped for a run outside the output folder, or where links cannot be made."""
    root = output_root()
    try:
        target = Path(run_dir).resolve().relative_to(root)
    except ValueError:
        return
    staged = root / f".{LATEST_LINK}-{os.getpid()}"
    with contextlib.suppress(OSError):  # a convenience: never a reason to fail a run
        staged.unlink(missing_ok=True)
        os.symlink(target, staged, target_is_directory=True)
        os.replace(staged, root / LATEST_LINK)


class RunFolder:
    """Paths of the files of one run folder (nothing is written here)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    @property
    def hydra(self) -> Path:
        return self.root / ".hydra"

    @property
    def hydra_config(self) -> Path:
        return self.hydra / "config.yaml"

    @property
    def hydra_overrides(self) -> Path:
        return self.hydra / "overrides.yaml"

    @property
    def hydra_settings(self) -> Path:
        return self.hydra / "hydra.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "run.json"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def data_spec(self) -> Path:
        return self.root / "data.json"

    @property
    def replicas(self) -> Path:
        """A run of ``trainer.replicas`` replicas: which completed, their mean and error."""
        return self.root / "replicas.json"

    def replica(self, r: int) -> Path:
        """The run folder of replica ``r``."""
        return self.root / f"replica_{r}"

    @property
    def status(self) -> Path:
        return self.root / STATUS_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def params(self) -> Path:
        return self.root / "checkpoint" / "params.msgpack"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoint" / "train"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def posterior_samples(self) -> Path:
        """inference=nuts: the posterior draws of each site, grouped by chain."""
        return self.root / "posterior_samples.npz"

    @property
    def reference(self) -> Path:
        """inference=nuts: the test predictive (quantiles or class probabilities) that a
        variational run's ``eval.reference`` is compared with."""
        return self.root / "reference.npz"

    def arrays(self, kind: str) -> Path:
        """The family's saved arrays: ``predictions`` (BNN) or ``samples`` (VAE, flow)."""
        return self.root / ARRAY_FILES[kind]

    def written(self) -> list[Path]:
        """What bslrun or Hydra writes here, folders before the files in them."""
        return [
            self.hydra, self.hydra_config, self.hydra_overrides, self.hydra_settings,
            self.lock, self.log, self.status, self.manifest, self.config, self.data_spec,
            self.replicas, self.metrics, self.history, self.params.parent, self.params,
            self.checkpoints, self.plots, self.posterior_samples, self.reference,
            *(self.arrays(kind) for kind in ARRAY_FILES),
        ]  # fmt: skip

    def first_link(self) -> Path | None:
        """The first of ``written`` that is a symbolic link: a file bslrun would write
        through it would land somewhere else (another folder, a user's file)."""
        return next((path for path in self.written() if path.is_symlink()), None)


CURRENT_UMASK = os.umask(0)  # os.umask can only be read by setting it: restore at once
os.umask(CURRENT_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the permissions of any new file,
        # so that collaborators on a shared cluster can read the run folder.
        os.chmod(tmp, 0o666 & ~CURRENT_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class RunLogHandler(logging.FileHandler):
    """run.log's handler (config.yaml's ``hydra.job_logging``): it appends as
    ``logging.FileHandler`` does, but never through a symbolic link (``O_NOFOLLOW``)."""

    def _open(self):
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.baseFilename, flags, 0o666)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def write_bytes(path: Path, data: bytes) -> Path:
    """``data`` into ``path`` atomically. A link at ``path`` is replaced, never written
    through: ``os.replace`` renames over the link itself."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null reads as "not available"
    return value


def write_json(path: Path, obj) -> Path:
    text = json.dumps(_json_ready(obj), indent=2, sort_keys=False)
    return write_bytes(path, (text + "\n").encode())


def write_history(path: Path, history: list) -> Path:
    """CSV with one row per epoch; columns are the union of keys, in first-seen order."""
    columns: list = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return write_bytes(path, buffer.getvalue().encode())


def write_npz(path: Path, arrays: dict) -> Path:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_bytes(path, buffer.getvalue())


def save_params(path: Path, params: dict) -> Path:
    """A pytree of parameters (nested dicts of arrays) as flax msgpack (no code runs on load)."""
    import jax
    from flax import serialization

    host = jax.tree.map(np.asarray, params)
    return write_bytes(path, serialization.msgpack_serialize(host))


def load_params(path: Path) -> dict:
    from flax import serialization

    return serialization.msgpack_restore(Path(path).read_bytes())


# ------------------------------------------------------------------- run state

STATUS_FORMAT = 1
STATES = ("running", "completed", "failed", "diverged", "interrupted")


def write_status(
    run_dir: Path,
    state: str,
    *,
    started: str,
    ended: str | None = None,
    exit_code: int | None = None,
    error: str | None = None,
) -> Path:
    """``status.json``: the run's state, its error line, start and end (ISO 8601, UTC), exit
    code, and the process (pid, host) that a ``running`` state belongs to."""
    import socket

    assert state in STATES, state
    return write_json(RunFolder(run_dir).status, {
        "format": STATUS_FORMAT,
        "status": state,
        "error": error,
        "exit_code": exit_code,
        "started": started,
        "ended": ended,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    })  # fmt: skip


def read_status(run_dir: Path) -> dict | None:
    """The run's ``status.json`` as a dict; None when absent or unreadable."""
    try:
        status = json.loads(RunFolder(run_dir).status.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    return status if isinstance(status, dict) and status.get("status") in STATES else None
