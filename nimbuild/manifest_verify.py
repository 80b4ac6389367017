"""Verifying a manifest: every ID against its tags, every file against its sha256 and size.

``nimbuild manifest verify`` lists every problem; ``render`` refuses a manifest
with any; ``serve`` verifies the selected profile before it starts it.
"""

from __future__ import annotations

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import sha256_file
from nimbuild.manifest import Manifest, Profile
from nimbuild.manifest_paths import check_relpath, safe_join
from nimbuild.profiles import profile_id


def verify_profile(
    manifest: Manifest, profile: Profile, check_files: bool = True, _hashes: dict[str, str] | None = None
) -> list[str]:
    """Problems of one profile: its ID against its tags, and each file's sha256 and size."""
    problems = []
    label = f"profile {profile.name!r}"
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
    for rel in sorted(profile.files):
        entry = profile.files[rel]
        try:
            path = safe_join(manifest.root, rel)
        except NimbuildError as exc:
            problems.append(f"{label}: {exc.message}")
            continue
        if not path.is_file():
            problems.append(f"{label}: {rel}: missing ({path})")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(f"{label}: {rel}: size {size} bytes, manifest says {entry.size}")
            continue
        if rel not in hashes:
            hashes[rel] = sha256_file(path)
        if hashes[rel] != entry.sha256:
            problems.append(
                f"{label}: {rel}: sha256 {hashes[rel]} does not match the manifest's {entry.sha256} (file altered)"
            )
    return problems


def verify_manifest(manifest: Manifest, check_files: bool = True) -> list[str]:
    """Every problem, one line each: wrong IDs, duplicate IDs/names, missing or altered files. [] when good."""
    problems: list[str] = []
    seen_ids: set[str] = set()
    seen_names: set[str] = set()
    hashes: dict[str, str] = {}
    for p in manifest.profiles:
        if p.id in seen_ids:
            problems.append(f"profile {p.name!r}: duplicate id {p.id}")
        if p.name in seen_names:
            problems.append(f"profile {p.name!r}: duplicate name")
        seen_ids.add(p.id)
        seen_names.add(p.name)
        problems += verify_profile(manifest, p, check_files=check_files, _hashes=hashes)
    return problems
