"""A run's life in its folder: an exclusive lock, the signals that stop it, its status.

- **Lock.** One process at a time runs in a run folder: it holds an ``flock`` on
  ``.lock`` there. The kernel drops the lock when the process ends, however it ends
  (SIGKILL, out of memory), so a lock file left behind is stale by construction and
  never blocks the next run; the pid and host written inside only name the holder.
  A folder where a file bslrun or Hydra writes is a symbolic link is refused: nothing
  is written through a link.
- **Stop signals.** SIGINT (Ctrl-C), SIGTERM and the cluster's warning signals (SIGUSR1,
  SIGUSR2: SLURM's preemption notice) set a flag; the training loop looks at it at the
  next epoch boundary, saves a checkpoint and stops (``RunInterrupted``). A second
  Ctrl-C stops at once, or, during a checkpoint save, once that save is complete
  (``holding``): never with a half-written checkpoint. A handler that was there before
  (submitit's requeue on SIGUSR2) is called once the checkpoint is saved, and a signal
  that it ignores stays ignored.
- **Status.** ``status.json`` (written by ``artifacts.write_status``) says running,
  completed, failed, diverged or interrupted, with the error line and the exit code.
- **After a stop.** The line of a stopped run ends with the command that continues it,
  quoted so that it works when typed (``resume_hint``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shlex
import signal
import socket
from datetime import datetime, timezone
from pathlib import Path

from bslrun import artifacts
from bslrun.errors import ResourceError, RunInterrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def now() -> str:
    """The time as ISO 8601 in UTC, to the microsecond."""
    return datetime.now(timezone.utc).isoformat()


# ----------------------------------------------------------------------- lock


class RunLock:
    """An exclusive lock on a run folder, held until ``release`` or the process ends."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = artifacts.RunFolder(self.run_dir).lock
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (creating the folder); ResourceError naming the holder if taken."""
        if self.held:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        refuse_links(self.run_dir)
        try:  # O_NOFOLLOW: a link put there after the check fails too, unwritten
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise link_refused(self.path) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise ResourceError(
                f"{self.run_dir} is in use by another run ({holder}); wait for it to end, "
                "or give this run another folder (hydra.run.dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays, harmlessly
            self._fd = None


def link_refused(link: Path) -> ResourceError:
    return ResourceError(
        f"{link} is a symbolic link, and bslrun writes no file through a link; remove the "
        "link, or give the run another folder (hydra.run.dir=..., hydra.sweep.dir=... for -m)"
    )


def refuse_links(run_dir: Path) -> None:
    """ResourceError if a file or folder that bslrun or Hydra writes in ``run_dir`` is a
    symbolic link: writing it would change whatever the link points at."""
    link = artifacts.RunFolder(run_dir).first_link()
    if link is not None:
        raise link_refused(link)


# -------------------------------------------------------------------- signals


class StopSignals:
    """Context manager: while inside, the stop signals set ``requested`` instead of killing.

    Only the main thread can install handlers (a joblib worker thread cannot): there the
    signals keep their usual effect.
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = signals
        self.requested: int | None = None
        self.immediate: str | None = None  # once set, a signal stops at once, saying this
        self._holding: str | None = None  # while set, stopping at once waits (``holding``)
        self._held: int | None = None  # the signal that waits
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # not the main thread
            for signum in self.signals:
                previous = signal.getsignal(signum)
                if previous is signal.SIG_IGN or _is_bypass(previous):
                    continue  # a signal the process was told to ignore stays ignored
                self._previous[signum] = previous
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        # The previous handlers are kept: ``hand_on`` calls them once the run has ended.
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum, frame) -> None:
        if self.immediate or (self.requested is not None and signum == signal.SIGINT):
            # After training, or a second Ctrl-C: nothing is left to save, stop now.
            self.requested = self.requested or signum
            if self._holding:
                self._held = signum
                return
            raise RunInterrupted(self._stopped(signum, self.immediate), signum)
        self.requested = self.requested or signum

    @contextlib.contextmanager
    def holding(self, done: str):
        """While inside, a signal that would stop at once waits for the end of the block,
        then stops, saying ``done`` (e.g. "the checkpoint of epoch 3 is saved"). When the
        stop was asked before the block (the save that Ctrl-C asked for), the caller stops
        right after it, with what it has to write: the block just ends."""
        outer, self._holding = self._holding, done
        asked = self.requested is not None
        try:
            yield
        finally:
            self._holding = outer
        if self._held is not None and outer is None:
            signum, self._held = self._held, None
            if not asked:
                raise RunInterrupted(self._stopped(signum, done), signum)

    @staticmethod
    def _stopped(signum: int, where: str | None) -> str:
        return f"stopped by {signal_name(signum)}" + (f" ({where})" if where else "")

    def now_or_never(self, where: str) -> None:
        """From here on a stop signal stops at once; one already received stops now."""
        self.immediate = where
        if self.requested is not None:
            raise RunInterrupted(self._stopped(self.requested, where), self.requested)

    def pending(self) -> int | None:
        """The signal number that asked the run to stop, or None."""
        return self.requested

    def hand_on(self, signum: int) -> None:
        """Call the handler that ``signum`` had before (e.g. submitit's requeue), if any."""
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, None)


def _is_bypass(handler) -> bool:
    """submitit's job environment ignores SIGTERM (SLURM sends it after the warning)."""
    return getattr(handler, "__name__", "") == "bypass"


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


# ------------------------------------------------------------------ after a stop


def resume_hint(run_dir: Path) -> str:
    """The command that continues a stopped run, as it can be typed: ``trainer.resume``
    alone takes the folder's own overrides (``cli.resumed_argv``)."""
    saved = [p for p in artifacts.RunFolder(run_dir).checkpoints.glob("*") if p.name.isdigit()]
    if not saved:
        return "no checkpoint was saved yet: start it again"
    return f"continue it with: bslrun {typed_override('trainer.resume', str(run_dir))}"


HYDRA_PLAIN = re.compile(r"[\w/.+@~-]+")  # a value Hydra's override grammar takes unquoted
SHELL_QUOTABLE = re.compile(r'[^"$`\\!]*')  # what a shell's double quotes keep as it is


def typed_override(key: str, value: str) -> str:
    """``key=value`` as it is typed in a shell: quoted for Hydra where its grammar needs it
    (a sweep job's folder holds ``=`` and ``,``), then for the shell."""
    if not HYDRA_PLAIN.fullmatch(value):
        value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    override = f"{key}={value}"
    if HYDRA_PLAIN.fullmatch(override.replace("=", "", 1)):
        return override
    return f'"{override}"' if SHELL_QUOTABLE.fullmatch(override) else shlex.quote(override)
