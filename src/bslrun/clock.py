"""When the process and the current run started (``timing.startup_s`` in metrics.json).

Imported first by the package (``bslrun/__init__.py``), so ``PROCESS_START`` is taken
before JAX is imported and the start-up time includes every import.
"""

import logging
import time

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


_log = logging.getLogger("bslrun")


class Phase:
    """A phase the console announces: ``compiling the training epoch ...`` when it starts
    and ``... compiled in 1.37 s`` when it ends, so a long silent wait has a name.

        with Phase("compiling the training epoch", "compiled") as phase:
            ...
        phase.seconds
    """

    def __init__(self, doing: str, done: str):
        self.doing, self.done, self.seconds = doing, done, 0.0

    def __enter__(self) -> "Phase":
        _log.info("%s ...", self.doing)
        self._tick = time.perf_counter()
        return self

    def __exit__(self, kind, *_) -> None:
        self.seconds = time.perf_counter() - self._tick
        if kind is None:
            _log.info("... %s in %.2f s", self.done, self.seconds)
