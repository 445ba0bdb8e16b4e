"""Training checkpoints: save the whole training state every few epochs, resume from the last.

A checkpoint holds two things:

- ``arrays``: a pytree of arrays (the SVI state, i.e. parameters, optimiser state and
  random key, and the best-so-far state), written by orbax;
- ``progress``: the loop's bookkeeping as JSON (epoch, history, early-stopping counters).

Orbax writes each checkpoint into a temporary folder and renames it into place when
complete, so a run killed at any moment (SIGKILL, preemption) leaves the previous
checkpoint intact and never a half-written one. Nothing is pickled.

The config a run was started with is saved beside the checkpoints (``config.json``):
resuming compares it with the config of the resuming run, because continuing a
training run under other settings would give numbers that no config describes (the keys
that ``config.KEY_POLICY`` lets change on resume aside).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path

from bslrun import artifacts
from bslrun.config import flatten, may_change_on_resume
from bslrun.errors import ConfigError, ResourceError, os_error_in

CONFIG_FILE = "config.json"
SAVE_MARGIN = 256 * 1024  # orbax's metadata files, beside the arrays
MANIFEST = "bslrun-manifest.json"  # SHA-256 of every file of a step, written after it
log = logging.getLogger("bslrun")


def folder(run_dir: Path) -> Path:
    return artifacts.RunFolder(run_dir).checkpoints


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every config value that differs, the keys that may
    change on resume aside (``config.KEY_POLICY``)."""
    old, new = flatten(saved), flatten(current)
    keys = [k for k in dict.fromkeys([*old, *new]) if not may_change_on_resume(k)]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_config(run_dir: Path, config: dict) -> bool:
    """True when ``run_dir`` holds checkpoints made with ``config``; False when it holds none.

    Raises ConfigError (one line) when the checkpoints were made with another config.
    """
    path = folder(run_dir) / CONFIG_FILE
    if not path.is_file():
        return False
    differences = config_differences(read_json(path, "config"), config)
    if differences:
        shown = "; ".join(differences[:3]) + (" ..." if len(differences) > 3 else "")
        raise ConfigError(
            f"cannot resume {run_dir}: its checkpoint was made with another config "
            f"({shown}); trainer.resume alone continues it as it was started: leave out "
            "the overrides that change these keys, or start a new run without trainer.resume"
        )
    return True


def read_json(path: Path, what: str):
    """A checkpoint's JSON file; ResourceError naming it when it is damaged."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise damaged(path, f"its {what} cannot be read: {_reason(error)}") from None


def damaged(path: Path, why: str) -> ResourceError:
    checkpoints = artifacts.RunFolder(".").checkpoints.parent.name
    parents = [p.parent for p in Path(path).resolve().parents if p.name == checkpoints]
    run_dir = parents[0] if parents else Path(path).parent
    return ResourceError(
        f"damaged checkpoint file {path} ({why}); to resume, delete {folder(run_dir)} "
        "and start the run again (metrics.json and the other results are kept), or restore "
        "the file from a backup"
    )


def _reason(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def file_digests(step: Path) -> dict:
    return {
        str(path.relative_to(step)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(step.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def write_manifest(step: Path) -> None:
    """Record what a complete checkpoint holds, so that damage is found (and named)
    before orbax reads it: TensorStore reports a damaged file from worker threads."""
    artifacts.write_json(step / MANIFEST, file_digests(step))


def check_manifest(step: Path) -> None:
    """ResourceError naming the first file of ``step`` that differs from its manifest."""
    manifest = step / MANIFEST
    if not manifest.is_file():
        return  # a checkpoint from before manifests: orbax's own checks apply
    want = read_json(manifest, "list of files")
    got = file_digests(step)
    for name, digest in want.items():
        if got.get(name) != digest:
            why = "missing" if name not in got else "its content changed since it was saved"
            raise damaged(step / name, why)


class Checkpoints:
    """The checkpoints of one run folder: ``save`` every ``every`` epochs, ``latest`` to resume.

    With ``every`` 0 nothing is saved periodically, but ``save`` still works: a run
    stopped by a signal saves once before it exits. Orbax is imported on first use.
    ``hold(done)`` (``StopSignals.holding``) makes a stop signal that arrives during a
    save wait until the save is complete.
    """

    def __init__(self, run_dir: Path, every: int, config: dict, hold=None):
        self.every = every
        self.config = config
        self.hold = hold or (lambda done: contextlib.nullcontext())
        self.directory = folder(run_dir).resolve()
        self._manager = None
        if every > 0:  # the config is recorded once, by whichever comes first
            self._record_config()

    def _record_config(self) -> None:
        if not (self.directory / CONFIG_FILE).is_file():
            artifacts.write_json(self.directory / CONFIG_FILE, self.config)

    @property
    def manager(self):
        if self._manager is None:
            import orbax.checkpoint as ocp

            # Orbax reports every save at INFO; the run log is for the run.
            logging.getLogger("absl").setLevel(logging.WARNING)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=1, enable_async_checkpointing=False, create=True
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def due(self, epoch: int) -> bool:
        return self.every > 0 and epoch % self.every == 0

    def save(self, epoch: int, arrays, progress: dict) -> None:
        """Save synchronously (async checkpointing is off): complete when this returns.

        A failed save (a full disk) leaves the previous checkpoint, no temporary folder,
        and raises ResourceError; so does a save stopped half-way (KeyboardInterrupt).
        """
        self.check_space(epoch, arrays, progress)
        with self.hold(f"the checkpoint of epoch {epoch} is saved"):
            try:
                self._write(epoch, arrays, progress)
            except BaseException as error:
                self.remove_temporary()
                refusal = self._refusal(epoch, error)
                if refusal is None:
                    raise
                raise refusal from None

    def _write(self, epoch: int, arrays, progress: dict) -> None:
        from orbax.checkpoint import args

        self._record_config()
        self.manager.save(
            epoch,
            args=args.Composite(arrays=args.StandardSave(arrays), progress=args.JsonSave(progress)),
            force=True,
        )
        write_manifest(self.directory / str(epoch))

    def _refusal(self, epoch: int, error: BaseException) -> ResourceError | None:
        """The ResourceError of a save the disk refused; None for anything else."""
        cause = os_error_in(error)
        # TensorStore reports a full disk as a ValueError that only its text tells.
        full = "No space left on device" in str(error)
        if not isinstance(error, Exception) or (cause is None and not full):
            return None
        why = "No space left on device" if full or cause is None else cause.strerror
        return ResourceError(
            f"cannot save the checkpoint of epoch {epoch} in {self.directory}: "
            f"{why or _reason(cause)}; free space there (or set "
            "trainer.checkpoint_every=0) and resume with trainer.resume=<run folder>"
        )

    def check_space(self, epoch: int, arrays, progress: dict) -> None:
        """Refuse a save the disk cannot hold, before orbax starts it: a save that runs out
        of space half-way fails in TensorStore's worker threads, which print tracebacks."""
        import jax

        size = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(arrays))
        need = int(1.25 * (size + len(json.dumps(progress)))) + SAVE_MARGIN
        existing = next((p for p in [self.directory, *self.directory.parents] if p.exists()))
        free = shutil.disk_usage(existing).free
        if free < need:
            raise ResourceError(
                f"cannot save the checkpoint of epoch {epoch} in {self.directory}: No space "
                f"left on device ({free / 2**20:.1f} MiB free, about {need / 2**20:.1f} MiB "
                "needed); free space there (or set trainer.checkpoint_every=0) and resume "
                "with trainer.resume=<run folder>"
            )

    def remove_temporary(self) -> None:
        """Orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames when complete."""
        for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def latest(self, like) -> tuple[object, dict] | None:
        """(arrays shaped and placed like ``like``, progress) of the last checkpoint, or None.

        A damaged checkpoint (truncated arrays, unreadable progress) is ResourceError.
        """
        if not self.directory.is_dir():
            return None
        from orbax.checkpoint import args

        epoch = self.manager.latest_step()
        if epoch is None:
            return None
        step = self.directory / str(epoch)
        check_manifest(step)
        progress_file = step / "progress" / "metadata"
        progress = read_json(progress_file, "training progress")
        if not (isinstance(progress, dict) and {"epoch", "history"} <= set(progress)):
            raise damaged(progress_file, "it holds no training progress")
        try:
            restored = self.manager.restore(
                epoch,
                args=args.Composite(arrays=args.StandardRestore(like), progress=args.JsonRestore()),
            )
        except Exception as error:
            log.debug("restoring %s failed: %s", step, error)
            # Orbax refuses arrays whose tree or shapes differ from ``like`` here too.
            why = "truncated or corrupt arrays, or arrays of another model than the config's"
            raise damaged(step / "arrays", why) from None
        return restored["arrays"], restored["progress"]

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
