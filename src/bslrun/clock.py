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


def duration(seconds: float) -> str:
    """``42 s``, ``4 min 50 s``, ``2 h 05 min``: a time a person reads at a glance."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressLines:
    """The progress bar's news as a log line every ``every_s`` seconds, for a run whose
    console is not a terminal (a cluster job, a file), where the bar is not shown:
    ``bnn: epoch 120/1000, loss=0.4321; 35 s so far, about 4 min 17 s left``. It goes
    to run.log and the console, like every phase. ``every_s`` 0: never.

    Wraps the bar (``tqdm``) that it stands in for: ``set_postfix``, ``update``, ``close``.
    """

    def __init__(self, bar, desc: str, total: int, done: int, every_s: float):
        self.bar, self.desc, self.total = bar, desc, total
        self.every_s = every_s if getattr(bar, "disable", False) else 0.0  # the bar shows it
        self.epoch = self._first = done + 1  # the first epoch finished when it was made
        self._start = self._last = time.perf_counter()
        self._postfix: dict = {}

    def set_postfix(self, postfix: dict, refresh: bool = True) -> None:
        self._postfix = dict(postfix)
        self.bar.set_postfix(postfix, refresh=refresh)

    def update(self) -> None:
        self.bar.update()
        now = time.perf_counter()
        if self.every_s and now - self._last >= self.every_s and self.epoch > self._first:
            self._last = now
            _log.info("%s", self.line(now - self._start))
        self.epoch += 1

    def line(self, elapsed: float) -> str:
        """The line after ``self.epoch``, ``elapsed`` seconds after the first epoch ended."""
        left = elapsed / (self.epoch - self._first) * (self.total - self.epoch)
        shown = "".join(f", {k}={v}" for k, v in self._postfix.items())
        return (
            f"{self.desc}: epoch {self.epoch}/{self.total}{shown}; "
            f"{duration(elapsed)} so far, about {duration(left)} left"
        )

    def close(self) -> None:
        self.bar.close()
