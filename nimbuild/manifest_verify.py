"""Verifying a manifest: every ID against its tags, every file against its sha256 and size.

``nimbuild manifest verify`` lists every problem; ``render`` refuses a manifest
with any; ``serve`` verifies the selected profile before it starts it. What
cannot be checked (the opaque IDs and sha256-less files of a manifest nimbuild
did not write, a remote file not downloaded yet) is a *note*, not a problem.
"""

from __future__ import annotations

import stat
from pathlib import Path

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import sha256_file
from nimbuild.manifest import HEADER_KEY, Manifest, Profile
from nimbuild.manifest_paths import check_relpath, safe_join
from nimbuild.profiles import profile_id


def verify_profile(
    manifest: Manifest,
    profile: Profile,
    check_files: bool = True,
    _hashes: dict[str, str] | None = None,
    *,
    notes: list[str] | None = None,
    absent_remote_ok: bool = False,
    _paths: dict[str, Path] | None = None,
) -> list[str]:
    """Problems of one profile: its ID against its tags, and each file's size and sha256.

    What cannot be checked is not a problem: it goes to ``notes`` when given (a file without
    sha256, a remote file not downloaded when ``absent_remote_ok``). ``absent_remote_ok=False`` (what
    ``serve`` and ``create-model-store`` need) makes a remote file that is not here a problem.
    """
    problems = []
    label = f"profile {profile.name!r}"
    if not manifest.opaque_ids:
        try:
            expected = profile_id(profile.tags)
        except NimbuildError as exc:
            problems.append(f"{label}: tags: {exc.message}")
        else:
            if expected != profile.id:
                problems.append(f"{label}: id {profile.id} does not match its tags (expected {expected})")
    if not check_files:
        for rel in profile.files:
            try:
                check_relpath(rel)
            except NimbuildError as exc:
                problems.append(f"{label}: {exc.message}")
        return problems
    if manifest.root is None:
        return problems + [f"{label}: no folder to check its files against"]
    hashes = _hashes if _hashes is not None else {}
    paths = _paths if _paths is not None else {}
    for rel in sorted(profile.files):
        entry = profile.files[rel]
        where = rel if rel == entry.uri else f"{rel} ({entry.uri})"
        stored = entry.bytes_path
        try:
            if stored not in paths:
                paths[stored] = safe_join(manifest.root, stored)
            path = paths[stored]
            st = path.stat()
        except NimbuildError as exc:
            problems.append(f"{label}: {exc.message}")
            continue
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            if st is None and entry.remote and absent_remote_ok:
                if notes is not None:
                    notes.append(f"{label}: {where}: remote, not downloaded here: not checked")
                continue
            what = "missing" if st is None else "not a regular file"
            fix = "; run download-to-cache" if entry.remote else ""
            problems.append(f"{label}: {where}: {what} ({path}){fix}")
            continue
        if entry.size is not None and st.st_size != entry.size:
            problems.append(f"{label}: {where}: size {st.st_size} bytes, manifest says {entry.size}")
            continue
        if entry.sha256 is None:
            if notes is not None:
                notes.append(f"{label}: {where}: no sha256 in the manifest: unverified")
            continue
        if stored not in hashes:
            hashes[stored] = sha256_file(path)
        if hashes[stored] != entry.sha256:
            problems.append(
                f"{label}: {where}: sha256 {hashes[stored]} does not match the manifest's {entry.sha256} (file altered)"
            )
    return problems


def verify_manifest(
    manifest: Manifest, check_files: bool = True, *, notes: list[str] | None = None, absent_remote_ok: bool = False
) -> list[str]:
    """Every problem, one line each: wrong IDs, duplicate IDs/names, missing or altered files. [] when good.

    ``notes`` (when given) receives what could not be checked: opaque IDs, files without sha256,
    remote files not downloaded (with ``absent_remote_ok``). Linear in profiles and files: a file
    shared by many profiles is resolved and hashed once.
    """
    problems: list[str] = []
    seen_ids: set[str] = set()
    seen_names: set[str] = set()
    hashes: dict[str, str] = {}
    paths: dict[str, Path] = {}
    if manifest.opaque_ids and notes is not None:
        notes.append(
            f"{len(manifest.profiles)} profile IDs not recomputed: the manifest has no `{HEADER_KEY}:` header "
            f"(written by another tool, {manifest.source_format}), so its IDs are opaque"
        )
    for p in manifest.profiles:
        if p.id in seen_ids:
            problems.append(f"profile {p.name!r}: duplicate id {p.id}")
        if p.name in seen_names:
            problems.append(f"profile {p.name!r}: duplicate name")
        seen_ids.add(p.id)
        seen_names.add(p.name)
        problems += verify_profile(
            manifest,
            p,
            check_files=check_files,
            _hashes=hashes,
            notes=notes,
            absent_remote_ok=absent_remote_ok,
            _paths=paths,
        )
    return problems
