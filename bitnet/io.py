"""Atomic file and directory writes: nothing already written is lost if a write is interrupted.

Every checkpoint and export goes through these: data is written under a temporary name in the
destination's folder and renamed into place only when complete. ``tempfile`` creates its files
0600 and folders 0700 whatever the umask; they are given the modes a plain ``open`` / ``mkdir``
would (0644 / 0755 under the usual umask 022) before they are renamed into place, so another
account can read an export when the umask lets it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_file", "atomic_path", "atomic_dir", "current_umask"]


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status).

    Elsewhere it is read with ``os.umask`` set-and-restore, which is not thread-safe but brief.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mkstemp(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` with the mode ``open(path, "w")`` would create (0666 & ~umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name next to ``path`` for a writer that opens files by name.

    The file exists (empty, with the umask's mode) when yielded; on success it is renamed over
    ``path``, on an exception removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = _mkstemp(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``path``; on success fsync and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask_modes(root: Path) -> None:
    """Give ``root`` and every folder and file under it the mode ``mkdir`` / ``open`` would give
    (0777 / 0666 & ~umask): some writers create private files whatever the umask (safetensors'
    ``save_file`` writes 0600), and a checkpoint or export is meant to be read by whoever the umask allows."""
    mask = current_umask()
    root.chmod(0o777 & ~mask)
    for p in root.rglob("*"):
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` (a directory) whole.

    The directory and everything written into it get the modes ``mkdir`` / ``open`` would give
    them (0777 / 0666 & ~umask), set just before the rename.

    An existing ``path`` is moved aside, the new one renamed in, then the old one deleted, so at
    every instant either the old or the new complete directory exists under ``path`` (or, after a
    crash between the two renames, under ``path`` + ``.old``). On an exception the temporary
    directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _umask_modes(tmp)
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
