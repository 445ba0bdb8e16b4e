"""JAX's persistent compilation cache: compiled programs kept on disk between processes.

A run, a sweep job, a resumed run, ``bslrun-predict`` and the tests load a program that an
earlier process compiled for the same shapes instead of compiling it again (seconds per
program on a CPU). Loading an executable gives the same machine code, so no number a run
reports changes (tests/test_compilation.py checks it).

Where: ``trainer.compilation_cache`` (a folder, ``auto`` or ``off``). ``auto`` is
``$BSLRUN_COMPILATION_CACHE`` when set (a folder or ``off``), else
``$XDG_CACHE_HOME/bslrun/jax`` (``~/.cache/bslrun/jax``). Entries go in a subfolder named
for the jaxlib version, the backend and this CPU's model and instruction-set flags: JAX's own
key names the jaxlib version and the backend but, on CPU, not which CPU compiled the code,
so a cache on a home folder shared by machines of different CPUs must not hand one machine
the other's code. Each subfolder is bounded (``trainer.compilation_cache_gb``): a run that
finds it over the bound first deletes the least recently used entries. Clearing it is
deleting the folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path

log = logging.getLogger("bslrun")

ENV = "BSLRUN_COMPILATION_CACHE"
OFF = ("off", "none", "null", "false", "no", "0", "")
AUTO = "auto"

_active: tuple | None = None  # (folder, bytes) this process has set, or None


def default_root() -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/bslrun/jax`` or ``~/.cache/bslrun/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bslrun" / "jax"


def root(setting: str | None) -> Path | None:
    """The cache folder a setting names (None: no cache): a folder, ``off``, or ``auto``
    (``$BSLRUN_COMPILATION_CACHE``, else ``default_root()``)."""
    text = "off" if setting is None else str(setting).strip()
    if text.lower() == AUTO:
        text = os.environ.get(ENV, "").strip() or str(default_root())
    if text.lower() in OFF:
        return None
    return Path(text).expanduser()


def cpu_fingerprint(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """12 hex digits naming this CPU's model and instruction-set flags (x86 ``flags``, Arm
    ``Features``), which decide what compiled code can run here."""
    lines = []
    try:
        with open(cpuinfo_path) as cpuinfo:
            for line in cpuinfo:
                name = line.split(":", 1)[0].strip()
                if name in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
                    lines.append(line.strip())
                elif not line.strip() and lines:  # the first processor's block is enough
                    break
    except OSError:
        pass
    lines += [platform.machine(), platform.processor()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def machine_folder(folder: Path) -> Path:
    """The subfolder of ``folder`` for this jaxlib, backend and CPU."""
    import jax
    import jaxlib

    return folder / f"jaxlib-{jaxlib.__version__}-{jax.default_backend()}-{cpu_fingerprint()}"


def prune(folder: Path, max_bytes: int) -> int:
    """When ``folder`` holds more than ``max_bytes`` of entries, delete the least recently
    used (last read or written, as the file system's access and modification times tell)
    until it holds three quarters of that; returns the bytes deleted. One pass over the
    folder, once per process: JAX's own bound rescans the folder at every entry it writes,
    which made a test session of thousands of programs quadratic."""
    entries = []
    for path in folder.glob("*-cache"):
        try:
            info = path.stat()
        except OSError:  # deleted meanwhile by another process
            continue
        entries.append((max(info.st_atime, info.st_mtime), info.st_size, path))
    total = sum(size for _, size, _ in entries)
    if total <= max_bytes:
        return 0
    freed = 0
    for _, size, path in sorted(entries, key=lambda entry: entry[0]):
        if total - freed <= max_bytes * 3 // 4:
            break
        path.unlink(missing_ok=True)
        freed += size
    return freed


def enable(setting: str | None, max_gb: float = 1.0) -> Path | None:
    """Point JAX's persistent cache at the folder ``setting`` names (None: turn it off);
    returns the machine's subfolder in use. Called before a run compiles anything; calling
    it again with the same setting costs nothing. A folder that cannot be written turns the
    cache off with one warning: compiling is slower, never wrong."""
    global _active
    import jax

    folder = root(setting)
    max_bytes = max(int(max_gb * 2**30), 1)
    if folder is not None:
        folder = machine_folder(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not os.access(folder, os.W_OK):
                raise PermissionError(f"{folder} is not writable")
            if (str(folder), max_bytes) != _active:
                prune(folder, max_bytes)
        except OSError as error:
            log.warning(
                "compilation cache off: cannot write %s (%s); set trainer.compilation_cache "
                "to a writable folder, or off", folder, getattr(error, "strerror", None) or error,
            )  # fmt: skip
            folder = None
    wanted = None if folder is None else (str(folder), max_bytes)
    if wanted == _active:
        return folder
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()  # JAX opens its cache once per process; reopen it here
    if wanted is None:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", wanted[0])
        jax.config.update("jax_compilation_cache_max_size", -1)  # bounded by ``prune``
        # Every program is kept: a small one loads in milliseconds but compiles in tens.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    _active = wanted
    log.debug("compilation cache: %s", folder or "off")
    return folder
