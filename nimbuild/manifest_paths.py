"""Paths in a manifest: relative, '/'-separated, inside the manifest's folder; or a remote URL.

A manifest is data from elsewhere (a CI artifact, another writer): every path in
it is checked before it is joined to a folder, so that no manifest can make
nimbuild read or write outside the folder it lives in. A remote file's bytes,
once downloaded, are at :func:`remote_cache_relpath` under ``NIM_CACHE_PATH``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from nimbuild.errors import NimbuildError
from nimbuild.safe_text import path_part_problem

URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
REMOTE_SCHEMES = ("https", "http", "hf", "ngc", "s3", "gs")


def check_relpath(relpath: object, where: str = "") -> str:
    """A manifest path must be relative, use '/', and never climb out with '..'.

    Returns it normalised ('./a//b' -> 'a/b'); raises NimbuildError otherwise.
    """
    at = f"{where}: " if where else ""
    if not isinstance(relpath, str) or not relpath.strip():
        raise NimbuildError(
            f"{at}path {relpath!r} is not a non-empty string", hint="list files by their path relative to the manifest"
        )
    if "\\" in relpath or "\x00" in relpath:
        raise NimbuildError(
            f"{at}path {relpath!r} contains a backslash or NUL", hint="use '/' separated paths relative to the manifest"
        )
    pure = PurePosixPath(relpath)
    if pure.is_absolute() or re.match(r"^[a-zA-Z]:", relpath):
        raise NimbuildError(
            f"{at}path {relpath!r} is absolute and would leave the manifest's folder",
            hint="use a path relative to the manifest's folder",
        )
    if ".." in pure.parts:
        raise NimbuildError(
            f"{at}path {relpath!r} contains '..' and would leave the manifest's folder",
            hint="keep every artifact inside the manifest's folder",
        )
    norm = str(pure)
    if norm in ("", "."):
        raise NimbuildError(
            f"{at}path {relpath!r} names the manifest's folder itself, not a file", hint="list files, not folders"
        )
    for part in pure.parts:  # safe_text's rule for every path part: no control characters, <= 255 bytes
        problem = path_part_problem(part)
        if problem is not None:
            raise NimbuildError(f"{at}path {relpath!r}: part {part!r}: {problem}", hint="rename the file")
    return norm


def safe_join(root: str | os.PathLike[str], relpath: str, where: str = "") -> Path:
    """``root/relpath``, refusing absolute paths, '..' and symlinks that lead out of ``root``."""
    norm = check_relpath(relpath, where)
    root = Path(root)
    path = root / norm
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        at = f"{where}: " if where else ""
        raise NimbuildError(
            f"{at}path {relpath!r} is a symlink to {real}, outside {real_root}",
            hint="copy the artifact into the manifest's folder instead of linking to it",
        )
    return path


def is_remote_uri(uri: str) -> bool:
    """A URL of a remote scheme (https://, ngc://, hf://, ...): fetched, not read from the manifest's folder."""
    m = URI_SCHEME.match(uri)
    return bool(m) and uri.split("://", 1)[0].lower() in REMOTE_SCHEMES


REMOTE_CACHE_DIR = "remote"  # NIM_CACHE_PATH/remote/<scheme>/<host>/<path>: where a remote file is cached


def remote_cache_relpath(uri: str) -> str:
    """The path under ``NIM_CACHE_PATH`` of a remote file: ``remote/<scheme>/<host>/<path>[/<query>]``.

    Percent-encoded part by part, so distinct URLs never share a path, and no part is '.' or '..'
    (a remote URL cannot name a path outside the cache). Two profiles that list one URL share its copy.
    """
    from urllib.parse import quote, urlsplit

    parts = urlsplit(uri)
    pieces = [parts.scheme.lower(), parts.netloc] + [p for p in parts.path.split("/") if p]
    if parts.query:
        pieces.append("?" + parts.query)
    encoded = [quote(piece, safe="@:+=,-_~") or "_" for piece in pieces]
    return "/".join([REMOTE_CACHE_DIR] + [p if p not in (".", "..") else p.replace(".", "%2E") for p in encoded])


def relocate(old_root: str | os.PathLike[str], rel: str, new_root: str | os.PathLike[str], label: str) -> str:
    """``rel`` (relative to ``old_root``) re-expressed relative to ``new_root``, which must contain it.

    ``label`` names the profile in the error when the file would be outside ``new_root``.
    """
    target = os.path.abspath(os.path.join(old_root, rel))
    new_rel = os.path.relpath(target, os.path.abspath(new_root)).replace(os.sep, "/")
    if new_rel.startswith("../") or new_rel == ".." or os.path.isabs(new_rel):
        raise NimbuildError(
            f"profile {label!r}: file {target} is outside {os.path.abspath(new_root)}",
            hint="write the manifest in a folder that contains every artifact (e.g. the export dir)",
        )
    return new_rel
