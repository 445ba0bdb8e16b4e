"""The output folder a command line names, checked before Hydra or bslrun writes there:
no symbolic link where files would be written (``preflight.check_output_folder``)."""

from __future__ import annotations

from pathlib import Path


def refuse_links_in_sweep(folder: Path) -> None:
    """A sweep folder given again (``hydra.sweep.dir=...``): Hydra and bslrun write into
    its entries (multirun.yaml, the job folders), never through a link."""
    from bslrun.lifecycle import link_refused, refuse_links

    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.is_symlink():
            raise link_refused(entry)
        if entry.is_dir():
            refuse_links(entry)

