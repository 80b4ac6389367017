"""Atomic writes: nothing half-written is ever seen under its final name.

Every temporary entry nimbuild makes is named ``.<final name>.nimbuild-<random>.tmp``
(a file) or ``.<final name>.nimbuild-<random>.partial`` (a folder), beside its final
name: :func:`is_temporary_name` recognises them, so that a later run can remove
what a killed one left (nimbuild.outdir) without touching anything else. A
failed write names the file it was writing (a full disk's OSError names none).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

TEMP_MARK = ".nimbuild-"
_TEMPORARY = re.compile(r"^\..+\.nimbuild-[A-Za-z0-9_]+\.(tmp|partial)$", re.DOTALL)
CRASH_ENV = "NIMBUILD_CRASH_AT"


def is_temporary_name(name: str) -> bool:
    """A name that only nimbuild's own temporary files and staging folders have."""
    return bool(_TEMPORARY.match(name))


def crash_point(name: str) -> None:
    """A test hook: SIGKILL this process here when ``NIMBUILD_CRASH_AT`` names this point.

    The kill tests (tests/test_outdir.py) stop a real build at each named step of a
    swap and check that what is left verifies; without the variable this is one dict
    lookup. Points: ``write:<file name>`` (before an atomic rename), ``swap:*``
    (nimbuild.outdir), ``stage:<folder name>`` (staging_dir's exchange).
    """
    wanted = os.environ.get(CRASH_ENV)
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path: str | os.PathLike, mode: int) -> None:
    """mkstemp/mkdtemp make private (0600/0700) entries; give them the usual umask-based mode.

    Artifacts are read by other users (a serving image's non-root user, CI jobs):
    a file that only root can read would fail at container start, not at build time.
    """
    os.chmod(path, mode & ~_umask())


def naming(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` with ``path`` as its file name when it has none (ENOSPC from write() names no file)."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), os.fspath(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    if path.is_dir():  # say so plainly, before os.replace fails naming the temp file
        raise IsADirectoryError(errno.EISDIR, "a folder is where a file should be written", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp", dir=path.parent)
    try:
        try:
            make_public(tmp, 0o666)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            crash_point(f"write:{path.name}")
            os.replace(tmp, path)
        except OSError as exc:
            named = naming(exc, path)
            if named is exc:
                raise
            raise named from exc
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE).

    False where the system cannot (another OS, an old kernel, a file system without
    it): the caller falls back to two renames.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def replace_tree(new: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the entry ``new`` (a folder or file) at ``final``, removing what was there.

    Atomic where the system can swap (:func:`exchange`): a kill at any moment
    leaves ``final`` whole, old or new, and at worst the old one under ``new``'s
    temporary name (removed by the next run). Elsewhere, two renames.
    """
    new, final = Path(new), Path(final)
    if not os.path.lexists(final):
        os.replace(new, final)
        return
    if exchange(new, final):
        crash_point(f"stage:{final.name}")
        remove_entry(new)
        return
    old = final.with_name(f".{final.name}{TEMP_MARK}old{os.getpid()}.partial")
    remove_entry(old)
    os.replace(final, old)
    os.replace(new, final)
    remove_entry(old)


def remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


@contextmanager
def staging_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A temp folder beside ``final``; on success it replaces ``final``, on failure it is removed.

    ``final`` must not exist or be a folder that the caller means to replace. An
    OSError that names no file (a full disk) is raised naming ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TEMP_MARK}", suffix=".partial", dir=final.parent))
    make_public(tmp, 0o777)
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        named = naming(exc, final)
        if named is exc:
            raise
        raise named from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_tree(tmp, final)
