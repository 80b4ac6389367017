"""Atomic writes: nothing half-written is ever seen under its final name."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public(path: str | os.PathLike, mode: int) -> None:
    """mkstemp/mkdtemp make private (0600/0700) entries; give them the usual umask-based mode.

    Artifacts are read by other users (a serving image's non-root user, CI jobs):
    a file that only root can read would fail at container start, not at build time.
    """
    os.chmod(path, mode & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    if path.is_dir():  # say so plainly, before os.replace fails naming the temp file
        raise IsADirectoryError(errno.EISDIR, "a folder is where a file should be written", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _public(tmp, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


IN_PROGRESS = ".nimbuild-in-progress"  # in a folder being filled in place (staging_dir(fill_in_place=True))


def _renamable(folder: Path) -> bool:
    """Can ``folder`` be swapped for another by a rename: not a mount point, and its parent writable?"""
    return not os.path.ismount(folder) and os.access(folder.parent, os.W_OK | os.X_OK)


@contextmanager
def staging_dir(final: str | os.PathLike, *, fill_in_place: bool = False) -> Iterator[Path]:
    """A temp folder beside ``final``; on success it replaces ``final``, on failure it is removed.

    ``final`` must not exist or be a folder that the caller means to replace. ``fill_in_place``: where
    ``final`` is an existing folder that no rename can replace (a volume's mount point, such as the NIM
    Operator's ``/model-store``, or a folder in a parent this user cannot write), stage inside it instead
    and, on success, swap its entries for the staged ones; ``final/.nimbuild-in-progress`` marks it
    meanwhile (left behind only by a crash in the swap, so that a retry knows the folder is nimbuild's).
    """
    final = Path(final)
    if fill_in_place and final.is_dir() and not final.is_symlink() and not _renamable(final):
        with _staging_inside(final) as tmp:
            yield tmp
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    _public(tmp, 0o777)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def _staging_inside(final: Path) -> Iterator[Path]:
    marker = final / IN_PROGRESS
    had_marker = marker.exists()
    marker.touch()
    tmp = Path(tempfile.mkdtemp(prefix=".nimbuild.", suffix=".partial", dir=final))
    _public(tmp, 0o777)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not had_marker:  # nothing of final was touched
            marker.unlink(missing_ok=True)
        raise
    for old in final.iterdir():
        if old in (tmp, marker):
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for entry in sorted(tmp.iterdir()):
        os.replace(entry, final / entry.name)
    tmp.rmdir()
    marker.unlink()


def link_or_copy(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """``dest`` as a hard link to ``src`` (no second copy of a large graph), or a copy where links fail
    (another filesystem, one without links). Only for files nimbuild never rewrites in place."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
