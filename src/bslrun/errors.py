"""Errors meant for people: each message names the problem and the fix.

The CLI turns a :class:`BslrunError` into one line on stderr, the exit code below
and the run's ``status.json``; anything else is a bug: its traceback goes to run.log
(and to the terminal), the status is ``failed`` and the exit code 1.

Exit codes (docs/errors.md lists them): 0 success; 1 a bug, or a sweep with failed jobs;
2 config; 3 data; 4 divergence; 5 environment (disk, permissions, memory, a damaged
checkpoint, a run folder in use); 130 interrupted by SIGINT (Ctrl-C); 143 stopped by
SIGTERM or a cluster's preemption signal.
"""


class BslrunError(Exception):
    exit_code = 1
    status = "failed"  # what status.json records when a run ends with this error


class ConfigError(BslrunError):
    """A config value, key or option is invalid (exit 2, nothing written)."""

    exit_code = 2


class DataError(BslrunError):
    """A data file is missing, truncated, corrupt or malformed (exit 3)."""

    exit_code = 3


class DivergenceError(BslrunError):
    """Training produced NaN or inf (exit 4, history and last good parameters kept)."""

    exit_code = 4
    status = "diverged"
    result = None  # what training had (engine.Fitted: history, last finite parameters)


class ResourceError(BslrunError):
    """The machine refused: disk full, no permission, out of memory, a damaged checkpoint
    or a run folder another run holds (exit 5; nothing already written is lost)."""

    exit_code = 5


class RunInterrupted(BslrunError):
    """A signal asked the run to stop; it stopped at an epoch boundary after saving a
    checkpoint (exit 130 for SIGINT, 143 for SIGTERM or a preemption signal)."""

    status = "interrupted"
    # What training had when it stopped (engine.Fitted), and its last epoch; None when it
    # stopped before training or while saving.
    result = None
    epoch = None

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        import signal

        self.signum = signum
        self.exit_code = 130 if signum == signal.SIGINT else 143


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError that caused ``error`` (libraries such as orbax and Hydra wrap them)."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
