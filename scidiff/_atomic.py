"""Atomic writing: a file or a folder appears whole at its final path, or not at all.

Everything is first written beside its target under a hidden temporary name, flushed to
disk, and renamed into place with ``os.replace`` (atomic on POSIX and Windows within one
file system).  A folder that already exists is swapped out in two renames: the old copy
goes to ``.NAME.old-XXXXXXXX`` first and is removed after the new one is in place, so a
process killed between the renames leaves the old copy to recover (:func:`previous_copies`).

The temporary names are decided here and nowhere else: ``.NAME.tmp-PID-...`` for work in
progress (:func:`is_temporary`; PID is the writing process) and ``.NAME.old-...`` for a copy
being replaced.  A write first removes the temporaries of earlier writes to the same target
whose process no longer runs (:func:`remove_stale_temporaries`: a killed write leaves its
half file behind otherwise).  Files and folders are created with the permissions the umask
allows (0666 and 0777 less the umask), as ``open`` and ``mkdir`` would, not the 0600 / 0700 of
``tempfile``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "write_bytes",
    "fsync_dir",
    "write_file_atomically",
    "write_text_atomically",
    "atomic_directory",
    "previous_copies",
    "is_temporary",
    "remove_stale_temporaries",
]

_TMP = ".tmp-"
_OLD = ".old-"


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk (not atomic by itself)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (the renames into it) to disk, where the platform allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries beside ``path`` left by killed writes of it; returns those removed.

    A temporary ``.NAME.tmp-PID-...`` is stale when process PID no longer runs on this host;
    one without a PID (older scidiff) when it is more than a day old.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    prefix = f".{target.name}{_TMP}"
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix):].partition("-")[0]
        try:
            stale = not _alive(int(pid_text))
        except ValueError:
            try:
                stale = time.time() - entry.lstat().st_mtime > 86400
            except OSError:
                continue
        if stale:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _folder_of(target: Path) -> Path:
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {target}: folder {folder} does not exist")
    return folder


def write_file_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path``, flush it, then rename it onto ``path``.

    On any error (or interruption) the temporary file is removed and an existing ``path``
    is untouched.  The target's folder must exist.
    """
    target = Path(path)
    folder = _folder_of(target)
    remove_stale_temporaries(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}{_TMP}{os.getpid()}-", dir=folder)
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return target


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Replace the file ``path`` by ``text`` (UTF-8) in one rename."""
    return write_file_atomically(path, lambda tmp: write_bytes(tmp, text.encode()))


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on leaving without error it becomes ``path``.

    An existing ``path`` is replaced (old copy renamed aside, new one renamed in, old one
    removed).  On an error the temporary folder is removed and ``path`` is untouched.  The
    parent folder is created if needed.
    """
    target = Path(path)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{_TMP}{os.getpid()}-", dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        fsync_dir(tmp)
        if target.exists():
            old = parent / f".{target.name}{_OLD}{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def previous_copies(path: str | os.PathLike[str]) -> list[Path]:
    """Copies of ``path`` set aside by an :func:`atomic_directory` replacement that was cut short, oldest first."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    return sorted(target.parent.glob(f".{target.name}{_OLD}*"))


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the work in progress (or the set-aside copy) of an atomic write."""
    name = Path(path).name
    return name.startswith(".") and (_TMP in name or _OLD in name)
