"""Putting an artifact into a model repository: a relative symlink or a verified copy."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from nimbuild.errors import NimbuildError

MODES = ("link", "copy")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise NimbuildError(f"unknown file mode {mode!r}", hint=f"use one of: {', '.join(MODES)}")
    return mode


def copy_verified(
    src: Path, dst: Path, sha256: str | None = None, size: int | None = None, chunk: int = 1 << 22
) -> str:
    """Copy ``src`` to ``dst`` hashing the bytes on the way; refuse (and remove ``dst``) on a mismatch.

    The bytes hashed are exactly the bytes written (no window for the source to
    change between copy and check); benchmarks/RESULTS-render.md has its cost.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    written = 0
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(chunk):
                written += len(block)
                if size is not None and written > size:  # a larger file is refused without copying all of it
                    raise NimbuildError(
                        f"{src}: more than the {size} bytes the manifest says",
                        hint="the file changed after the manifest was built; rebuild it or restore the file",
                    )
                h.update(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
        digest = h.hexdigest()
        if size is not None and written != size:
            raise NimbuildError(
                f"{src}: {written} bytes, the manifest says {size}",
                hint="the file changed after the manifest was built; rebuild it or restore the file",
            )
        if sha256 is not None and digest != sha256:
            raise NimbuildError(
                f"{src}: sha256 {digest} does not match the manifest's {sha256}",
                hint="the file is corrupt or was altered; restore it or rebuild the manifest",
            )
        os.replace(tmp, dst)
        shutil.copymode(src, dst)
        return digest
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def place_file(src: Path, dst: Path, mode: str, sha256: str | None = None, size: int | None = None) -> None:
    """``dst`` becomes ``src``: a relative symlink (``link``) or a copy checked against ``sha256``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if check_mode(mode) == "link":
        os.symlink(os.path.relpath(os.path.abspath(src), os.path.abspath(dst.parent)), dst)
    else:
        copy_verified(src, dst, sha256, size)
