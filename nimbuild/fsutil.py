"""Files: atomic writes (nothing half-written is ever seen under its final name), their bytes' digests,
and JSON as nimbuild writes it everywhere (one style: sorted keys, indent 2, UTF-8, a final newline).

Light (stdlib only): the runtime uses it as much as the build half.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

CHUNK = 1 << 20  # bytes read at a time when hashing or copying


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public(path: str | os.PathLike[str], mode: int) -> None:
    """mkstemp/mkdtemp make private (0600/0700) entries; give them the usual umask-based mode.

    Artifacts are read by other users (a serving image's non-root user, CI jobs):
    a file that only root can read would fail at container start, not at build time.
    """
    os.chmod(path, mode & ~_umask())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


IN_PROGRESS = ".nimbuild-in-progress"  # in a folder being filled in place (staging_dir(fill_in_place=True))


def _renamable(folder: Path) -> bool:
    """Can ``folder`` be swapped for another by a rename: not a mount point, and its parent writable?"""
    return not os.path.ismount(folder) and os.access(folder.parent, os.W_OK | os.X_OK)


@contextmanager
def staging_dir(final: str | os.PathLike[str], *, fill_in_place: bool = False) -> Iterator[Path]:
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
    tmp = dst.with_name(f".{dst.name}.partial")
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
