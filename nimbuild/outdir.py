"""Output folders (``--out`` of export, build and render): what nimbuild wrote there, one writer at a time,
and swaps that never leave a manifest naming a file that is not there.

Three rules for every folder nimbuild writes into:

1. **Ownership.** ``OUT/.nimbuild-owned.json`` (the ledger) lists every file nimbuild put there, with its
   size (and sha256 up to 1 MiB). nimbuild deletes or overwrites an entry only when every file in it is one
   it wrote and nobody changed since; anything else (a user's own Dockerfile, their ``onnx/`` folder, a
   note dropped into ``tokenizer/``) is refused with a one-line error naming it, unless the command's
   ``--force`` says to replace it. Files outside the entries a command writes are never touched. A folder
   written by a nimbuild that kept no ledger is adopted from its own records (the step cache, the
   Dockerfile's header, the repositories' ``nimbuild-repository.json``).
2. **One writer.** ``OUT/.nimbuild.lock`` is ``flock``-ed for the whole command (:mod:`nimbuild.outdir_lock`);
   a second command on the same folder waits ``NIMBUILD_LOCK_WAIT`` seconds (default 10) and then fails
   naming the holder's pid. The kernel drops the lock of a killed process, so a kill never blocks a later run.
3. **Swaps.** New entries are made in ``OUT/.nimbuild-staging/`` and put in place one by one, each in one
   atomic step (:func:`nimbuild.fsutil.replace_tree`); the ledger learns the new files before they
   arrive, and what is derived from them (``manifest.yaml``) is withdrawn first and written again last.
   A kill at any moment leaves a manifest that verifies, or none. Staging folders and temporary files of
   killed runs (recognisably nimbuild's: :func:`nimbuild.fsutil.is_temporary_name`) are removed when the
   lock is next taken: holding it, nobody else is writing them.

Light (stdlib, nimbuild.errors/fsutil/outdir_lock/export_layout): render and the build half use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import EXPORT_OUTPUTS, MANIFEST_FILE, ONNX_DIR, REPORT_FILE, TOKENIZER_DIR, TRITON_DIR
from nimbuild.fsutil import (
    atomic_write_bytes,
    crash_point,
    is_temporary_name,
    json_text,
    make_public,
    naming,
    remove_entry,
    replace_tree,
    sha256_file,
)
from nimbuild.outdir_lock import LOCK_FILE, LOCK_WAIT_ENV, acquire, lock_wait_seconds

__all__ = ["LEDGER_FILE", "LOCK_FILE", "LOCK_WAIT_ENV", "STAGING_DIR", "OutputFolder", "lock_wait_seconds", "signature"]

LEDGER_FILE = ".nimbuild-owned.json"
STAGING_DIR = ".nimbuild-staging"
LEDGER_FORMAT = 1
HASHED_UP_TO = 1 << 20  # files up to 1 MiB are recognised by sha256, larger ones by size
# Folders nimbuild makes whose insides may hold a killed run's temporary entries, written only under the
# lock. Not engines/: `nimbuild engines` writes there without it, so a staging folder there may be live.
_NIMBUILD_FOLDERS = (ONNX_DIR, TOKENIZER_DIR, TRITON_DIR, ".nimbuild-cache", "wheels", "deploy")
_RENDERED_HEADER = b"Rendered by nimbuild"
# Files render writes that carry its header (adopted from a folder written before ledgers existed).
_RENDERED_FILES = (
    "Dockerfile",
    "Dockerfile.dockerignore",
    "Dockerfile.cpu",
    "Dockerfile.cpu.dockerignore",
    ".dockerignore",
    "deploy/nimcache.yaml",
    "deploy/nimservice.yaml",
    "deploy/inferenceservice.yaml",
)
_HELD: dict[str, int] = {}  # folders this process holds the lock of (re-entrant: build -> render)

Signature = list  # [size, sha256 | None] of a file, ["link", target] of a symlink


def signature(path: Path) -> Signature:
    """What the ledger remembers of one file (or symlink)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ["link", os.readlink(path)]
    if st.st_size <= HASHED_UP_TO:
        return [st.st_size, sha256_file(path)]
    return [st.st_size, None]


def signature_of_bytes(data: bytes) -> Signature:
    return [len(data), hashlib.sha256(data).hexdigest() if len(data) <= HASHED_UP_TO else None]


def _walk(root: Path, rel: str) -> Iterator[tuple[str, Path]]:
    """(relpath, path) of every file and symlink at or under ``root/rel`` (symlinks are not followed)."""
    path = root / rel if rel else root
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # absent, or a file stands where a parent folder would
        return
    if not stat.S_ISDIR(st.st_mode):
        yield rel, path
        return
    with os.scandir(path) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        yield from _walk(root, f"{rel}/{name}" if rel else name)


def _under(rel: str, top: str) -> bool:
    return rel == top or rel.startswith(top + "/")


class OutputFolder:
    """One output folder: its ledger, its lock, its staging area and its swaps."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._files: dict[str, list[Signature]] | None = None
        self._pending: set[str] = set()
        self._stamp: tuple[int, int, int] | None = None  # the ledger file the cache was read from

    # ------------------------------------------------------------------ ledger

    @property
    def ledger_path(self) -> Path:
        return self.path / LEDGER_FILE

    def _ledger(self) -> dict[str, list[Signature]]:
        """The ledger, read again whenever the file changed since (another OutputFolder of the same folder in
        this process wrote it: each write is atomic, a new inode), so that no instance saves a stale copy."""
        stamp = self._ledger_stamp()
        if self._files is None or stamp != self._stamp:
            self._files, self._pending = self._read_ledger()
            self._stamp = stamp
        return self._files

    def _ledger_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.ledger_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read_ledger(self) -> tuple[dict[str, list[Signature]], set[str]]:
        try:
            data = json.loads(self.ledger_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self._adopt(), set()
        except (OSError, ValueError) as exc:
            raise NimbuildError(
                f"{self.ledger_path}: unreadable ({exc})",
                hint="it lists the files nimbuild wrote there: restore it, or delete it and pass --force once",
            ) from None
        if not isinstance(data, dict):
            data = {}
        files, pending = data.get("files"), data.get("pending", [])
        well_formed = (
            isinstance(files, dict)
            and all(isinstance(v, list) and all(isinstance(sig, list) for sig in v) for v in files.values())
            and isinstance(pending, list)
        )
        if data.get("format") != LEDGER_FORMAT or not well_formed:
            raise NimbuildError(
                f"{self.ledger_path}: not a ledger this nimbuild reads (format {LEDGER_FORMAT})",
                hint="delete it and pass --force once, or write into another --out",
            )
        return {str(k): [list(s) for s in v] for k, v in files.items()}, {str(p) for p in pending}

    def _adopt(self) -> dict[str, list[Signature]]:
        """The files of a folder written before nimbuild kept ledgers, by the records it did keep."""
        files: dict[str, list[Signature]] = {}
        if not self.path.is_dir():
            return files

        def take(rel: str) -> None:
            with contextlib.suppress(OSError):
                files[rel] = [signature(self.path / rel)]

        from nimbuild.builder.cache import CACHE_DIR

        for record in sorted((self.path / CACHE_DIR).glob("*.json")):
            try:
                outputs = json.loads(record.read_text(encoding="utf-8")).get("outputs", {})
            except (OSError, ValueError, AttributeError):
                continue
            for rel, sig in outputs.items() if isinstance(outputs, dict) else ():
                try:
                    st = os.lstat(self.path / rel)
                except OSError:
                    continue
                if [st.st_size, st.st_mtime_ns] == sig:
                    take(rel)
        for rel in _RENDERED_FILES:
            try:
                with open(self.path / rel, "rb") as fh:
                    head = fh.read(512)
            except OSError:
                continue
            if _RENDERED_HEADER in head:
                take(rel)
        from nimbuild.runtime.triton_repo.layout import REPOSITORY_INFO

        for info in sorted((self.path / TRITON_DIR).glob(f"*/{REPOSITORY_INFO}")):
            top = info.parent.relative_to(self.path).as_posix()
            for rel, _ in _walk(self.path, top):
                take(rel)
        for record in sorted(self.path.glob("wheels/*/wheelhouse.json")):  # render --wheelhouse's own record
            for rel, _ in _walk(self.path, record.parent.relative_to(self.path).as_posix()):
                take(rel)
        report = self.path / REPORT_FILE
        if (self.path / CACHE_DIR).is_dir():  # a build folder: its step cache said which files are its own
            return files
        try:
            is_export = isinstance(json.loads(report.read_text(encoding="utf-8")).get("precisions"), dict)
        except (OSError, ValueError, AttributeError):
            is_export = False
        if is_export:
            for top in EXPORT_OUTPUTS:
                for rel, _ in _walk(self.path, top):
                    take(rel)
        return files

    def save(self) -> None:
        """Write the ledger (atomically); the folder is created if needed."""
        files = self._ledger()
        data = {"format": LEDGER_FORMAT, "files": {k: files[k] for k in sorted(files)}}
        if self._pending:
            data["pending"] = sorted(self._pending)
        atomic_write_bytes(self.ledger_path, (json_text(data, indent=0) + "\n").encode("utf-8"))
        self._stamp = self._ledger_stamp()

    def owns(self, rel: str, path: Path | None = None) -> bool:
        """Whether the file (or symlink) at ``rel`` is one nimbuild wrote, unchanged since."""
        files = self._ledger()
        if any(_under(rel, p) for p in self._pending):
            return True
        recorded = files.get(rel)
        if not recorded:
            return False
        try:
            return signature(path or self.path / rel) in recorded
        except OSError:
            return False

    def foreign(self, rel: str) -> str | None:
        """The first file at or under ``rel`` that nimbuild did not write (or that changed since), or None."""
        for frel, path in _walk(self.path, rel):
            if not self.owns(frel, path):
                return frel
        return None

    def check_replaceable(self, rels: Iterable[str], *, force: bool, action: str) -> list[str]:
        """Refuse (NimbuildError) to replace an entry holding a file nimbuild did not write, unless ``force``.

        Returns the foreign files found (replaced anyway under ``force``). A file (or a link to one) where an
        entry needs a parent folder is refused, ``force`` or not: replacing it would take a folder's place.
        """
        rels = list(rels)
        for rel in rels:
            parts = rel.split("/")
            for parent in ("/".join(parts[:i]) for i in range(1, len(parts))):
                if os.path.lexists(self.path / parent) and not (self.path / parent).is_dir():
                    raise NimbuildError(
                        f"{self.path / parent}: not a folder, and {action} writes {rel} in it",
                        hint="move it away or choose another --out",
                    )
        found = [f for rel in rels if (f := self.foreign(rel)) is not None]
        if found and not force:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise NimbuildError(
                f"{self.path / found[0]}{more}: not written by nimbuild (or changed since), and {action} "
                "would replace it",
                hint="move it away or choose another --out; pass --force to replace it",
            )
        return found

    def expect(self, signatures: Mapping[str, Signature]) -> None:
        """Teach the ledger files about to arrive (before they do: a kill then leaves nothing unknown)."""
        files = self._ledger()
        for rel, sig in signatures.items():
            known = files.setdefault(rel, [])
            if sig not in known:
                known.append(sig)
        self.save()

    def expect_any(self, rel: str) -> None:
        """Whatever appears at or under ``rel`` until :meth:`record` is nimbuild's (for writes made by code
        that does not report its bytes: a Triton repository, a manifest)."""
        self._ledger()
        self._pending.add(rel)
        self.save()

    def record(self, rels: Iterable[str], known: Mapping[str, Signature] | None = None) -> None:
        """The ledger's entries at or under each of ``rels`` become exactly what is there now."""
        files = self._ledger()
        for top in rels:
            for rel in [k for k in files if _under(k, top)]:
                del files[rel]
            self._pending = {p for p in self._pending if not _under(p, top)}
            for rel, path in _walk(self.path, top):
                sig = (known or {}).get(rel)
                files[rel] = [sig if sig is not None else signature(path)]
        self.save()

    def has_content(self) -> bool:
        """Anything in the folder besides nimbuild's own bookkeeping."""
        from nimbuild.builder.cache import CACHE_DIR

        bookkeeping = {LEDGER_FILE, LOCK_FILE, STAGING_DIR, CACHE_DIR}
        try:
            return any(e.name not in bookkeeping and not is_temporary_name(e.name) for e in os.scandir(self.path))
        except FileNotFoundError:
            return False

    def write_files(self, contents: Mapping[str, bytes]) -> None:
        """Write files atomically and record them (the ledger knows each before it lands)."""
        sigs = {rel: signature_of_bytes(data) for rel, data in contents.items()}
        self.expect(sigs)
        for rel, data in contents.items():
            atomic_write_bytes(self.path / rel, data)
        self.record(contents, known=sigs)

    # ------------------------------------------------------------------ lock

    @contextmanager
    def locked(self, command: str) -> Iterator[OutputFolder]:
        """Hold the folder's lock for ``command`` (created if needed; removed again if left empty).

        Re-entrant within a process (``build`` renders into the folder it holds).
        """
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield self
            finally:
                _HELD[key] -= 1
            return
        if self.path.exists() and not self.path.is_dir():
            raise NimbuildError(f"output {self.path} exists and is not a folder", hint="give a folder path with --out")
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise naming(exc, self.path) from exc
        fd, recreated = acquire(self.path, command)
        created = created or recreated
        _HELD[key] = 1
        try:
            self._files = None  # read the ledger as the previous holder left it
            self.clean_stale()
            yield self
        finally:
            del _HELD[key]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / LOCK_FILE)  # waiters re-check the inode and take a fresh file
            os.close(fd)
            if created and not self.has_content():
                self._remove_bookkeeping()

    def _remove_bookkeeping(self) -> None:
        """A folder this command created and filled with nothing but nimbuild's own files: gone again."""
        for name in (LEDGER_FILE, STAGING_DIR):
            remove_entry(self.path / name)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    # ------------------------------------------------------------------ staging and swaps

    def clean_stale(self) -> list[str]:
        """Remove what killed runs left: the staging area and nimbuild's temporary entries (lock held)."""
        removed = []
        staging = self.path / STAGING_DIR
        if staging.is_dir() and not staging.is_symlink():
            removed += [f"{STAGING_DIR}/{entry.name}" for entry in sorted(staging.iterdir())]
            remove_entry(staging)
        legacy = self.path / ".export.partial"  # where the previous nimbuild's build staged its export
        if legacy.is_dir() and not legacy.is_symlink():
            remove_entry(legacy)
            removed.append(legacy.name)

        def sweep(folder: Path, depth: int) -> None:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                return
            for entry in entries:
                path = Path(entry.path)
                if is_temporary_name(entry.name):
                    remove_entry(path)
                    removed.append(path.relative_to(self.path).as_posix())
                elif depth > 0 and entry.is_dir(follow_symlinks=False):
                    sweep(path, depth - 1)

        sweep(self.path, 0)  # the top level only: OUT may be a big folder of the user's
        for name in _NIMBUILD_FOLDERS:
            if (self.path / name).is_dir() and not (self.path / name).is_symlink():
                sweep(self.path / name, 8)
        return removed

    @contextmanager
    def staging(self, label: str) -> Iterator[Path]:
        """A fresh folder in ``OUT/.nimbuild-staging/``, removed on exit (swap what it made in before)."""
        root = self.path / STAGING_DIR
        root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root))
        make_public(stage, 0o777)
        try:
            yield stage
        except OSError as exc:
            named = naming(exc, self.path)
            if named is exc:
                raise
            raise named from exc
        finally:
            remove_entry(stage)
            with contextlib.suppress(OSError):
                root.rmdir()

    def withdraw(self, rel: str) -> Path | None:
        """Move nimbuild's ``rel`` (a derived file: the manifest) into the staging area; where it went.

        A file that is not nimbuild's is left where it is (and None returned).
        """
        path = self.path / rel
        if not os.path.lexists(path) or self.foreign(rel) is not None:
            return None
        root = self.path / STAGING_DIR
        root.mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix="withdrawn-", dir=root)) / path.name
        os.replace(path, aside)
        return aside

    def restore(self, aside: Path, rel: str) -> None:
        """Put a withdrawn file back, unchanged (nothing it was derived from changed)."""
        os.replace(aside, self.path / rel)
        self.discard(aside)

    def discard(self, aside: Path) -> None:
        """Drop a withdrawn file for good (what it was derived from changed: it is written again)."""
        remove_entry(aside.parent)
        with contextlib.suppress(OSError):
            (self.path / STAGING_DIR).rmdir()

    def swap_in(self, stage: Path, names: Sequence[str], *, derived: Sequence[str] = (MANIFEST_FILE,)) -> list[str]:
        """Put ``stage/<name>`` at ``OUT/<name>`` for each name, replacing what was there.

        In this order, so that a kill at any moment leaves no lie: the ledger learns the new
        files; the files derived from these entries (the manifest) are withdrawn; each entry
        is exchanged in atomically; the ledger forgets the old files. The caller writes the
        derived files again afterwards. Returns the derived files withdrawn.
        """
        incoming: dict[str, Signature] = {}
        for name in names:
            for rel, path in _walk(stage, name):
                incoming[rel] = signature(path)
        self.expect(incoming)
        crash_point("swap:recorded")
        withdrawn = []
        for rel in derived:
            aside = self.withdraw(rel)
            if aside is not None:
                self.discard(aside)
                withdrawn.append(rel)
        crash_point("swap:withdrawn")
        for name in names:
            if os.path.lexists(stage / name):
                replace_tree(stage / name, self.path / name)
            else:  # the new build has no such entry: the old one goes
                remove_entry(self.path / name)
            crash_point(f"swap:{name}")
        self.record(list(names) + withdrawn, known=incoming)
        crash_point("swap:done")
        return withdrawn
