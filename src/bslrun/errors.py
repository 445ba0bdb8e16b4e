"""Errors meant for people: each message names the problem and the fix.

The CLI turns a :class:`BslrunError` into one line on stderr and the exit
code below; anything else is a bug and keeps its traceback.
"""


class BslrunError(Exception):
    exit_code = 1


class ConfigError(BslrunError):
    """A config value, key or option is invalid (exit 2, nothing written)."""

    exit_code = 2


class DataError(BslrunError):
    """A data file is missing, truncated, corrupt or malformed (exit 3)."""

    exit_code = 3


class DivergenceError(BslrunError):
    """Training produced NaN or inf (exit 4, history and last good parameters kept)."""

    exit_code = 4
