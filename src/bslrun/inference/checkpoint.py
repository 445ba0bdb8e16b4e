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
training run under other settings would give numbers that no config describes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bslrun import artifacts
from bslrun.errors import ConfigError

CONFIG_FILE = "config.json"

# Keys that may differ between a run and its resumption: they change how a run is
# watched or where it runs, not what it computes (devices: within float rounding).
MAY_DIFFER = ("trainer.resume", "trainer.progress", "trainer.checkpoint_every", "trainer.devices")


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoint" / "train"


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every config value that differs (keys in MAY_DIFFER aside)."""
    old, new = _flatten(saved), _flatten(current)
    keys = [k for k in dict.fromkeys([*old, *new]) if k not in MAY_DIFFER]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_config(run_dir: Path, config: dict) -> bool:
    """True when ``run_dir`` holds checkpoints made with ``config``; False when it holds none.

    Raises ConfigError (one line) when the checkpoints were made with another config.
    """
    path = folder(run_dir) / CONFIG_FILE
    if not path.is_file():
        return False
    differences = config_differences(json.loads(path.read_text()), config)
    if differences:
        shown = "; ".join(differences[:3]) + (" ..." if len(differences) > 3 else "")
        raise ConfigError(
            f"cannot resume {run_dir}: its checkpoint was made with another config "
            f"({shown}); repeat the original overrides (see {run_dir}/.hydra/overrides.yaml) "
            "or start a new run without trainer.resume"
        )
    return True


class Checkpoints:
    """The checkpoints of one run folder: ``save`` every ``every`` epochs, ``latest`` to resume."""

    def __init__(self, run_dir: Path, every: int, config: dict):
        import orbax.checkpoint as ocp

        # Orbax reports every save at INFO; the run log is for the run.
        logging.getLogger("absl").setLevel(logging.WARNING)
        self._ocp = ocp
        self.every = every
        self.directory = folder(run_dir).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / CONFIG_FILE).is_file():
            artifacts.write_json(self.directory / CONFIG_FILE, config)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=False, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def due(self, epoch: int) -> bool:
        return self.every > 0 and epoch % self.every == 0

    def save(self, epoch: int, arrays, progress: dict) -> None:
        args = self._ocp.args
        self.manager.save(
            epoch,
            args=args.Composite(arrays=args.StandardSave(arrays), progress=args.JsonSave(progress)),
            force=True,
        )  # synchronous (async checkpointing is off): complete when this returns

    def latest(self, like) -> tuple[object, dict] | None:
        """(arrays shaped and placed like ``like``, progress) of the last checkpoint, or None."""
        epoch = self.manager.latest_step()
        if epoch is None:
            return None
        args = self._ocp.args
        restored = self.manager.restore(
            epoch,
            args=args.Composite(arrays=args.StandardRestore(like), progress=args.JsonRestore()),
        )
        return restored["arrays"], restored["progress"]

    def close(self) -> None:
        self.manager.close()
