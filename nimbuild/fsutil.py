"""Files: atomic writes (nothing half-written is ever seen under its final name), their bytes' digests,
and JSON as nimbuild writes it everywhere (one style: sorted keys, indent 2, UTF-8, a final newline).

Every temporary entry nimbuild makes is named ``.<final name>.nimbuild-<random>.tmp``
(a file) or ``.<final name>.nimbuild-<random>.partial`` (a folder), beside its final
name: :func:`is_temporary_name` recognises them, so that a later run can remove
what a killed one left (nimbuild.outdir) without touching anything else. A
failed write names the file it was writing (a full disk's OSError names none).

Light (stdlib only): the runtime uses it as much as the build half.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

CHUNK = 1 << 20  # bytes read at a time when hashing or copying

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


def make_public(path: str | os.PathLike[str], mode: int) -> None:
    """mkstemp/mkdtemp make private (0600/0700) entries; give them the usual umask-based mode.

    Artifacts are read by other users (a serving image's non-root user, CI jobs):
    a file that only root can read would fail at container start, not at build time.
    """
    os.chmod(path, mode & ~_umask())


def naming(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` with ``path`` as its file name when it has none (ENOSPC from write() names no file)."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), os.fspath(path))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


IN_PROGRESS = ".nimbuild-in-progress"  # in a folder being filled in place (staging_dir(fill_in_place=True))


def _renamable(folder: Path) -> bool:
    """Can ``folder`` be swapped for another by a rename: not a mount point, and its parent writable?"""
    return not os.path.ismount(folder) and os.access(folder.parent, os.W_OK | os.X_OK)


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
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


def replace_tree(new: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
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
    """Remove a file, a symlink (not what it points at) or a folder tree; nothing there is no error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


@contextmanager
def staging_dir(final: str | os.PathLike[str], *, fill_in_place: bool = False) -> Iterator[Path]:
    """A temp folder beside ``final``; on success it replaces ``final``, on failure it is removed.

    ``final`` must not exist or be a folder that the caller means to replace. ``fill_in_place``: where
    ``final`` is an existing folder that no rename can replace (a volume's mount point, such as the NIM
    Operator's ``/model-store``, or a folder in a parent this user cannot write), stage inside it instead
    and, on success, swap its entries for the staged ones; ``final/.nimbuild-in-progress`` marks it
    meanwhile (left behind only by a crash in the swap, so that a retry knows the folder is nimbuild's).
    An OSError that names no file (a full disk) is raised naming ``final``.
    """
    final = Path(final)
    if fill_in_place and final.is_dir() and not final.is_symlink() and not _renamable(final):
        with _staging_inside(final) as tmp:
            yield tmp
        return
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


@contextmanager
def _staging_inside(final: Path) -> Iterator[Path]:
    marker = final / IN_PROGRESS
    had_marker = marker.exists()
    marker.touch()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TEMP_MARK}", suffix=".partial", dir=final))
    make_public(tmp, 0o777)
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


def link_or_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """``dest`` as a hard link to ``src`` (no second copy of a large graph), or a copy where links fail
    (another filesystem, one without links). Only for files nimbuild never rewrites in place."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


# --------------------------------------------------------------------------- digests


def file_digest(path: str | os.PathLike[str], digest: Any = None) -> Any:
    """``digest`` (a new sha256 when None) updated with the bytes of ``path``, read in chunks."""
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex of a file's bytes: what a manifest lists, what every cache key of a file is."""
    return str(file_digest(path).hexdigest())


def json_digest(payload: Any) -> str:
    """sha256 hex of the canonical JSON of ``payload`` (sorted keys, no spaces, UTF-8): cache and check keys."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Readable(Protocol):
    """What :func:`write_verified` reads from: a file, an HTTP response, a capped reader."""

    def read(self, size: int, /) -> bytes: ...


def write_verified(
    source: Readable,
    dst: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    what: str = "",
) -> str:
    """Stream ``source`` into ``dst`` (a temp file, fsync'd, renamed) hashing the bytes written; returns the sha256.

    A byte count or sha256 other than the expected one is a NimbuildError naming
    ``what`` (the file or URL) and leaves nothing at ``dst``: the bytes hashed are
    exactly the bytes written, with no window between copy and check.
    """
    from nimbuild.errors import NimbuildError

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    tmp = dst.with_name(f".{dst.name}{TEMP_MARK}download.partial")  # is_temporary_name: a killed run's is swept
    try:
        with open(tmp, "wb") as out:
            while block := source.read(CHUNK * 4):
                written += len(block)
                if size is not None and written > size:  # a larger source is refused without copying all of it
                    raise NimbuildError(
                        f"{what or dst}: more than the {size} bytes the manifest says",
                        hint="the file changed after the manifest was built; rebuild the manifest or restore the file",
                    )
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if size is not None and written != size:
            raise NimbuildError(
                f"{what or dst}: {written} bytes, the manifest says {size}",
                hint="the file changed after the manifest was built; rebuild the manifest or restore the file",
            )
        if sha256 is not None and got != sha256:
            raise NimbuildError(
                f"{what or dst}: sha256 {got} does not match the manifest's {sha256}",
                hint="the file is corrupt or was altered; restore it or rebuild the manifest",
            )
        os.replace(tmp, dst)
        return got
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- JSON


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_text(data: Any, *, indent: int | None = 2) -> str:
    """JSON as nimbuild writes it everywhere: UTF-8 text, sorted keys (objects with ``to_dict`` and paths too)."""
    return json.dumps(data, indent=indent, sort_keys=True, ensure_ascii=False, default=_jsonable)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """``data`` as :func:`json_text` plus a newline, written atomically."""
    atomic_write_text(path, json_text(data) + "\n")
