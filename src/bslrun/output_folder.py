"""The output folder a command line names, checked before Hydra or bslrun writes there:
the setting it comes from (``BSLRUN_OUTPUT_DIR``), a name the checkpoint writer can use,
and no symbolic link where files would be written (``preflight.check_output_folder``)."""

from __future__ import annotations

import os
from pathlib import Path

from bslrun.errors import ConfigError


def refuse_links_in_sweep(folder: Path) -> None:
    """A sweep folder given again (``hydra.sweep.dir=...``): Hydra and bslrun write into
    its entries (multirun.yaml, the job folders), never through a link."""
    from bslrun.lifecycle import link_refused, refuse_links

    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.is_symlink():
            raise link_refused(entry)
        if entry.is_dir():
            refuse_links(entry)


def shown_path(path: Path) -> str:
    """A path as it can be read and typed: a byte that is not UTF-8 as ``\\xff``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def check_utf8(folder: Path) -> None:
    """The checkpoint writer (TensorStore) names files in UTF-8 only: a folder whose name
    holds other bytes is refused before anything is written there."""
    folder = folder.absolute()
    try:
        str(folder).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"the output folder {shown_path(folder)} is not UTF-8 text, and the checkpoint "
            "writer needs it to be; choose another with hydra.run.dir=... (hydra.sweep.dir=... "
            "for -m) or BSLRUN_OUTPUT_DIR"
        ) from None


def check_output_setting(value: str | None) -> None:
    """``BSLRUN_OUTPUT_DIR``, when set, is a plain folder path: config.yaml puts it before
    ``/<name>/...``, so an empty one would write the runs at the filesystem's root."""
    if value is None:
        return
    if not value.strip():
        raise ConfigError(
            "BSLRUN_OUTPUT_DIR is empty, which would put the runs at the filesystem's root; "
            "set it to a folder (BSLRUN_OUTPUT_DIR=$HOME/runs), or unset it for ./experiments"
        )
    if "${" in value:
        raise ConfigError(
            f"BSLRUN_OUTPUT_DIR={value} holds an interpolation, which bslrun does not resolve "
            "there; give a plain path (the shell expands $HOME: BSLRUN_OUTPUT_DIR=$HOME/runs)"
        )
