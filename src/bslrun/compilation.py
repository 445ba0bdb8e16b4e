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

Entries are native code this process runs, so bslrun reads and writes them itself
(``EntryCache``) rather than through JAX's own file cache, which loads whatever file lies
under a key: each entry carries a digest of the key it was written for and of its
executable, and one that is another program's, cut short or not bslrun's is dropped (and
compiled afresh), never run. A folder another user can write is not used at all.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import stat
import threading
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


# ------------------------------------------------------------------------- entries

MAGIC = b"bslrun compiled program 1\n"
DIGEST = 32  # bytes of a SHA-256 digest


class BadEntry(ValueError):
    """A cache entry that is not the program asked for; its message says why."""


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def seal(key: str, executable: bytes) -> bytes:
    """An entry as written: a header, a digest of JAX's key for the program (a hash of the
    lowered program, the compile options and the backend) and one of the executable, then
    the executable."""
    return MAGIC + _digest(key.encode()) + _digest(executable) + executable


def unseal(key: str, entry: bytes) -> bytes:
    """The executable an entry written by ``seal(key, ...)`` holds; ``BadEntry`` when it was
    written for another key, is cut short or altered, or was not written by bslrun."""
    head = len(MAGIC)
    if not entry.startswith(MAGIC):
        raise BadEntry("it was not written by this version of bslrun")
    if len(entry) < head + 2 * DIGEST:
        raise BadEntry("it is cut short (a full disk?)")
    if entry[head : head + DIGEST] != _digest(key.encode()):
        raise BadEntry("it holds another program (an entry copied or renamed over it)")
    executable = entry[head + 2 * DIGEST :]
    if entry[head + DIGEST : head + 2 * DIGEST] != _digest(executable):
        raise BadEntry("it is cut short or altered (a full disk?)")
    return executable


class EntryCache:
    """The entries of one machine folder, ``<key>-cache`` each (``seal``), read and written
    for JAX: the two methods of JAX's ``CacheInterface``, which JAX calls by name (the class
    is not derived from it, so that this module imports without JAX). An entry that is not
    the program asked for is deleted with one warning, and JAX compiles the program and
    writes it again; an entry is written to a temporary name and renamed into place, so a
    reader, a crash or a full disk never leaves half of one."""

    def __init__(self, folder: Path):
        self._path = Path(folder)

    def entry(self, key: str) -> Path:
        return self._path / f"{key}-cache"

    def get(self, key: str) -> bytes | None:
        path = self.entry(key)
        try:
            entry = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return unseal(key, entry)
        except BadEntry as bad:
            path.unlink(missing_ok=True)
            old = not entry.startswith(MAGIC)  # an earlier bslrun's: expected, not alarming
            log.log(
                logging.DEBUG if old else logging.WARNING,
                "compilation cache: deleted %s: %s; compiling the program afresh", path, bad,
            )  # fmt: skip
            return None

    def put(self, key: str, value: bytes) -> None:
        path = self.entry(key)
        # A name of this process and thread alone, and never a ``*-cache`` one.
        temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            temporary.write_bytes(seal(key, value))
            os.replace(temporary, path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            log.warning(
                "compilation cache: could not keep %s (%s); the run goes on, and a later one "
                "compiles the program again", path.name, error.strerror or error,
            )  # fmt: skip


def _install(cache: EntryCache | None) -> None:
    """Make ``cache`` the object JAX reads and writes entries through (None: none).

    JAX 0.10 offers no public way to hand it a cache object: ``set_cache_dir`` names a
    folder, which JAX opens as its own file cache, and that loads any file under a key. So
    this one function sets the private ``jax._src.compilation_cache._cache`` after the
    public ``reset_cache`` (which JAX then leaves alone: it opens a cache only while that is
    None); tests/test_compilation.py pins that JAX reads and writes through it."""
    from jax._src import compilation_cache as jax_cache
    from jax.experimental.compilation_cache import compilation_cache

    announcer = logging.getLogger(jax_cache.__name__)
    level = announcer.level
    announcer.setLevel(logging.WARNING)  # "Resetting cache at <empty>." at INFO is noise
    try:
        compilation_cache.reset_cache()
    finally:
        announcer.setLevel(level)
    jax_cache._cache = cache


# -------------------------------------------------------------------------- folders


def not_yours_alone(folder: Path) -> str | None:
    """Why a user other than this process's could change what ``folder`` holds, and what to
    do about it; None when only this user can."""
    info = folder.stat()
    if info.st_uid != os.geteuid():
        return (
            f"{folder} belongs to another user (uid {info.st_uid}); set "
            "trainer.compilation_cache to a folder of your own, or off"
        )
    if info.st_mode & 0o022:
        return (
            f"{folder} can be written by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run: chmod go-w {folder}, or set trainer.compilation_cache to a folder of your own"
        )
    return None


def usable(folder: Path, max_bytes: int) -> Path | None:
    """The machine subfolder of ``folder``, created private, checked to be this user's
    alone and pruned to ``max_bytes``; None, with one warning, when it cannot be written or
    others could write it: its entries are code the run would execute."""
    machine = machine_folder(folder)
    try:
        for path in (folder, machine):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not os.access(path, os.W_OK):
                raise PermissionError(f"{path} is not writable")
        for path in (folder, machine):
            if problem := not_yours_alone(path):
                log.warning("compilation cache off: %s", problem)
                return None
        if (str(machine), max_bytes) != _active:
            prune(machine, max_bytes)
    except OSError as error:
        log.warning(
            "compilation cache off: cannot write %s (%s); set trainer.compilation_cache "
            "to a writable folder, or off", machine, getattr(error, "strerror", None) or error,
        )  # fmt: skip
        return None
    return machine


def enable(setting: str | None, max_gb: float = 1.0) -> Path | None:
    """Point JAX's persistent cache at the folder ``setting`` names (None: turn it off);
    returns the machine's subfolder in use. Called before a run compiles anything; calling
    it again with the same setting costs nothing. A folder that cannot be written, or that
    another user could write, turns the cache off with one warning: compiling is slower,
    never wrong."""
    global _active
    import jax

    folder = root(setting)
    max_bytes = max(int(max_gb * 2**30), 1)
    if folder is not None:
        folder = usable(folder, max_bytes)
    wanted = None if folder is None else (str(folder), max_bytes)
    if wanted == _active:
        return folder
    if wanted is None:
        jax.config.update("jax_enable_compilation_cache", False)
        _install(None)
    else:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", wanted[0])
        # Every program is kept: a small one loads in milliseconds but compiles in tens.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        _install(EntryCache(folder))
    _active = wanted
    log.debug("compilation cache: %s", folder or "off")
    return folder
