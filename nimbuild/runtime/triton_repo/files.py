"""Putting an artifact into a model repository: a relative symlink or a verified copy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import write_verified

MODES = ("link", "copy")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise NimbuildError(f"unknown file mode {mode!r}", hint=f"use one of: {', '.join(MODES)}")
    return mode


def copy_verified(src: Path, dst: Path, sha256: str | None = None, size: int | None = None) -> str:
    """Copy ``src`` to ``dst`` hashing the bytes on the way; refuse (and remove ``dst``) on a mismatch.

    The bytes hashed are exactly the bytes written (no window for the source to
    change between copy and check); benchmarks/RESULTS-render.md has its cost.
    """
    with open(src, "rb") as fin:
        digest = write_verified(fin, dst, sha256=sha256, size=size, what=str(src))
    shutil.copymode(src, dst)
    return digest


def place_file(src: Path, dst: Path, mode: str, sha256: str | None = None, size: int | None = None) -> None:
    """``dst`` becomes ``src``: a relative symlink (``link``) or a copy checked against ``sha256``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if check_mode(mode) == "link":
        os.symlink(os.path.relpath(os.path.abspath(src), os.path.abspath(dst.parent)), dst)
    else:
        copy_verified(src, dst, sha256, size)
