"""NumPy files a user names (``data=file``): .npy arrays and .npz archives, read safely.

Arrays are loaded with ``allow_pickle=False`` (files holding Python objects are
refused), and an array's declared size is checked against the bytes the file holds
before NumPy allocates it, so a damaged header cannot ask for terabytes. Every fault
is one line: DataError for the file, ResourceError where the machine refused.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from bslrun.data import paths
from bslrun.errors import DataError


def read_array(
    path: Path, shown: str, key: str | None, option: str = "data.path", key_option="data.key"
) -> np.ndarray:
    """The array in an .npy file, or the chosen one in an .npz archive (never unpickling);
    ``option`` and ``key_option`` name the settings that chose them, in messages."""
    label = f"{option}={shown}"
    with paths.open_file(path, label) as handle:
        try:
            return load_array(handle, shown, key, key_option)
        except MemoryError:
            raise paths.too_large(label) from None
        except OSError as exc:
            if exc.errno is not None:  # the disk, not the format
                raise paths.fault(exc, label) from None
            raise DataError(f"{shown} {_unreadable(str(exc))}") from None
        except (ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{shown} {_unreadable(str(exc))}") from None


def load_array(handle, shown: str, key: str | None, key_option: str = "data.key") -> np.ndarray:
    """np.load on an open file, each array's declared size checked before it is allocated."""
    check_declared(handle, os.fstat(handle.fileno()).st_size, shown)
    loaded = np.load(handle, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        if not names:
            raise DataError(f"{shown} holds no arrays; save one with np.savez(path, x=array)")
        if key is not None and key not in names:
            raise DataError(f"{shown} has no array {key!r} ({key_option}); it holds: {names}")
        if key is None and len(names) != 1:
            raise DataError(f"{shown} holds arrays {names}; choose one with {key_option}=<name>")
        name = key if key is not None else names[0]
        member = f"{name}.npy" if f"{name}.npy" in loaded.zip.namelist() else name
        with loaded.zip.open(member) as stream:
            check_declared(stream, loaded.zip.getinfo(member).file_size, shown)
        return loaded[name]


def check_declared(stream, size: int, shown: str) -> None:
    """Refuse an .npy header declaring more bytes than the ``size``-byte file holds, before
    NumPy tries to allocate them (a damaged header could ask for terabytes)."""
    start = stream.tell()
    try:
        version = npy_format.read_magic(stream)
        read_header = npy_format.read_array_header_1_0
        if version != (1, 0):
            read_header = npy_format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
        body = size - (stream.tell() - start)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return  # not an .npy header: np.load words the fault
    finally:
        stream.seek(start)
    need = math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and need > body:
        raise DataError(
            f"{shown} declares an array of shape {shape} ({need:,} bytes of {dtype}) but holds "
            f"{max(body, 0):,} bytes; the file is truncated or damaged: save it again"
        )


def _unreadable(reason: str) -> str:
    if "Object arrays" in reason:
        return "holds Python objects (an object array); save numbers, e.g. x.astype(float)"
    if "pickle" in reason:
        return "is not in NumPy's format (or holds pickled objects, never loaded); use np.save"
    return f"is not a readable NumPy file ({reason.splitlines()[0] if reason else 'truncated'})"
