"""Paths the user names (data.path, data.root, data.split_dir): every fault one line.

What the user named wrongly (nothing there, a folder for a file, a symlink loop, a
name too long, a NUL byte) raises DataError; what the machine refuses (permission,
an I/O error, a full disk) raises ResourceError. Faults are told by ``errno``, never
by Python's wording, and nothing here resolves symlinks (``Path.resolve`` raises on
a loop). Messages show a path escaped when it holds control characters, so they stay
on one line.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from bslrun.errors import BslrunError, DataError, ResourceError

# The machine refused, the path is fine: exit 5 (ResourceError), not 3.
MACHINE = {
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.EROFS,
    errno.ENOSPC,
    errno.ENOMEM,
    errno.EMFILE,
    errno.ENFILE,
    getattr(errno, "EDQUOT", errno.ENOSPC),
}
# errno -> (what is wrong with the path, how to fix it); "{want}" is "file" or "folder".
NAMED_WRONGLY = {
    errno.ENOENT: ("does not exist", "check the path"),
    errno.ELOOP: ("is a symlink loop (its links lead back to themselves)", "name the real {want}"),
    errno.ENAMETOOLONG: ("has a name too long for the file system", "shorten the path"),
    errno.ENOTDIR: ("runs through a file as if it were a folder", "check the path"),
    errno.EISDIR: ("is a folder, not a file", "name a file inside it"),
}


def shown(path) -> str:
    """``path`` as text that stays on one line (control characters escaped)."""
    text = os.fspath(path)
    return text if text.isprintable() else repr(text)[1:-1]


def expand(text: str, option: str) -> Path:
    """``text`` with a leading ``~`` or ``~user`` expanded."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~name/..." where no user "name" is known
        head = text.split("/", 1)[0]
        raise DataError(
            f"{option}={shown(text)}: {shown(head)} names no known user's home folder; "
            "write the full path"
        ) from None


def fault(exc: OSError | ValueError, label: str, want: str = "file") -> BslrunError:
    """A one-line error for ``label`` (such as "data.path=x.csv") from a failed stat,
    open or read."""
    if isinstance(exc, ValueError):  # the os module refuses an embedded NUL
        return DataError(f"{label} holds a NUL byte (\\x00); remove it from the path")
    if exc.errno in NAMED_WRONGLY:
        return named_wrongly(exc.errno, label, want)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ResourceError(
            f"{label} cannot be read: permission denied; give your user read access to it "
            "(and search access to its folders), or copy it somewhere readable"
        )
    reason = exc.strerror or type(exc).__name__
    if exc.errno in MACHINE or exc.errno is None:
        return ResourceError(f"{label} cannot be read: {reason}; check the disk, or copy it")
    return DataError(f"{label} cannot be read: {reason}; check the path")


def named_wrongly(code: int, label: str, want: str = "file") -> DataError:
    problem, fix = NAMED_WRONGLY[code]
    return DataError(f"{label} {problem}; {fix.format(want=want)}")


def probe(path: Path, label: str, want: str = "file", absent=(errno.ENOENT,)):
    """``path``'s stat (links followed), or None where nothing is there (an errno in
    ``absent``); any other fault raises its one-line error."""
    try:
        return path.stat()
    except OSError as exc:
        if exc.errno in absent:
            return None
        raise fault(exc, label, want) from None
    except ValueError as exc:
        raise fault(exc, label, want) from None


def no_such(path: Path, label: str, want: str = "file", fix: str = "check the path") -> DataError:
    """The error for a path that leads nowhere: a broken symlink, or nothing there."""
    try:
        target = os.readlink(path) if path.is_symlink() else None
    except OSError:
        target = None
    if target is not None:
        return DataError(
            f"{label} is a broken symlink (to {shown(target)}, which does not exist); "
            f"repair the link, or name the real {want}"
        )
    where = Path(os.path.abspath(path)).parent
    return DataError(f"{label}: no such {want} (looked in {shown(where)}); {fix}")


def regular_file(text: str, option: str) -> Path:
    """The file a user named in ``option`` (``~`` expanded), checked to be a regular file."""
    path = expand(text, option)
    label = f"{option}={shown(text)}"
    info = probe(path, label)
    if info is None:
        raise no_such(path, label)
    if stat.S_ISDIR(info.st_mode):
        raise named_wrongly(errno.EISDIR, label)
    if not stat.S_ISREG(info.st_mode):
        raise DataError(
            f"{label} is not a regular file (a device, pipe or socket); save the data to a "
            "file and name that"
        )
    return path


def folder(path: Path, label: str, fix: str) -> bool:
    """Whether the folder ``path`` exists; a file there, a loop or a fault raises."""
    info = probe(path, label, "folder")
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise DataError(f"{label} is a file, not a folder; {fix}")
    return info is not None


def open_file(path: Path, label: str, mode: str = "rb", **kwargs):
    """``path.open(mode, ...)`` with a failure as its one-line error."""
    try:
        return path.open(mode, **kwargs)
    except (OSError, ValueError) as exc:
        raise fault(exc, label) from None


def too_large(label: str) -> ResourceError:
    return ResourceError(
        f"{label} does not fit in this machine's memory; use a smaller file "
        "(data.columns does not shrink what is read) or a machine with more memory"
    )
