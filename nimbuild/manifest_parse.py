"""Checking a manifest's shape: every profile, tag, file entry and ID, by nimbuild's rules or NIM's.

A manifest with the ``nimbuild:`` header is nimbuild's own: 64-hex IDs recomputed from
the tags, string tag values, a sha256 and a size on every file. One without it
was written by another tool (NIM's v2, or NIM v1's map keyed by ID, converted by
:mod:`nimbuild.manifest_nim`): opaque IDs, names derived from the tags where
missing, scalar tag values read as text, files that may lack sha256 and size.
Either way every path is checked (:mod:`nimbuild.manifest_paths`) and every
problem is one NimbuildError naming the file, the profile and the field.
:func:`nimbuild.manifest.load_manifest` reads the file; this checks the data.
Light: stdlib and nimbuild.errors/profiles/manifest/manifest_paths/manifest_nim.
"""

from __future__ import annotations

import re
from pathlib import Path

from nimbuild import manifest_nim
from nimbuild.errors import NimbuildError
from nimbuild.manifest import (
    HEADER_KEY,
    PROFILE_KEYS,
    SCHEMA_VERSION,
    SELECTION_CRITERIA,
    TOP_KEYS,
    FileEntry,
    Manifest,
    Profile,
)
from nimbuild.manifest_paths import REMOTE_SCHEMES, URI_SCHEME, check_relpath, is_remote_uri, safe_join
from nimbuild.profiles import profile_id
from nimbuild.safe_text import check_name

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _err(src: str, where: str, message: str, hint: str) -> NimbuildError:
    return NimbuildError(f"{src}: {where}: {message}" if where else f"{src}: {message}", hint=hint)


def _parse_profile(raw: object, index: int, src: str, own: bool) -> Profile:
    """One profile's shape. ``own``: the manifest is nimbuild's (IDs are sha256, files carry sha256 and size)."""
    where = f"profiles[{index}]"
    if not isinstance(raw, dict):
        raise _err(
            src, where, f"expected a mapping, got {type(raw).__name__}", "each profile is {id, name, tags, workspace}"
        )
    label = raw.get("name") if isinstance(raw.get("name"), str) else None
    if label:
        where = f"profile {label!r} ({where})"
    pid = raw.get("id")
    if own and (not isinstance(pid, str) or not _HEX64.match(pid)):
        raise _err(
            src,
            f"{where}.id",
            f"expected 64 lower-case hex characters (a sha256), got {pid!r}",
            "the id is sha256 of the profile's canonical JSON tags",
        )
    if not own and (not isinstance(pid, str) or not manifest_nim.OPAQUE_ID.match(pid)):
        raise _err(
            src,
            f"{where}.id",
            f"expected an ID of letters, digits and . _ : - (at most 128), got {pid!r}",
            "give every profile its ID",
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _err(
            src,
            f"{where}.name",
            f"expected a non-empty string, got {name!r}",
            "give every profile a unique human-readable name",
        )
    check_name(name, f"{src}: {where}.name")  # it becomes a folder (OUT/triton/<name>/): never a path
    tags = raw.get("tags")
    if not isinstance(tags, dict) or not tags:
        raise _err(
            src,
            f"{where}.tags",
            f"expected a non-empty mapping, got {tags!r}",
            "tags identify the profile (model, backend, precision, ...)",
        )
    clean_tags: dict[str, str] = {}
    for key, value in tags.items():
        # NIM's Go parser reads `tp: 8` as "8"; nimbuild writes strings
        text = value if own else manifest_nim.tag_text(value)
        if not isinstance(key, str) or not isinstance(text, str):
            raise _err(
                src,
                f"{where}.tags.{key}",
                f"every tag value must be a string, got {type(value).__name__} {value!r}",
                f'quote it in the YAML: {key}: "{value}"',
            )
        clean_tags[key] = text
    workspace = raw.get("workspace", {})
    if workspace is None:
        workspace = {}
    if not isinstance(workspace, dict):
        raise _err(
            src,
            f"{where}.workspace",
            f"expected a mapping, got {type(workspace).__name__}",
            "workspace: {files: {key: {uri, sha256, size}}}",
        )
    raw_files = workspace.get("files", {}) or {}
    if not isinstance(raw_files, dict):
        raise _err(
            src,
            f"{where}.workspace.files",
            f"expected a mapping of key -> entry, got {type(raw_files).__name__}",
            "files: {key: {uri, sha256, size}}",
        )
    files: dict[str, FileEntry] = {}
    for rel, entry in raw_files.items():
        fwhere = f"{where}.workspace.files[{rel!r}]"
        norm = check_relpath(rel, f"{src}: {fwhere}")  # the key names a file in the workspace: a relative path too
        if norm in files:
            raise _err(src, fwhere, f"path {norm!r} is listed twice", "list each file once")
        if not isinstance(entry, dict):
            raise _err(
                src, fwhere, f"expected a mapping {{uri, sha256, size}}, got {entry!r}", "give uri, sha256 and size"
            )
        uri = entry.get("uri", norm)
        if not isinstance(uri, str) or not uri:
            raise _err(
                src,
                f"{fwhere}.uri",
                f"expected a string, got {uri!r}",
                "a path relative to the manifest or an https:// URL",
            )
        if not is_remote_uri(uri):
            if URI_SCHEME.match(uri) or uri.lower().startswith("file:"):
                raise _err(
                    src,
                    f"{fwhere}.uri",
                    f"{uri!r} is neither a relative path nor a remote URL",
                    f"use a path relative to the manifest, or one of {', '.join(s + '://' for s in REMOTE_SCHEMES)}",
                )
            uri = check_relpath(uri, f"{src}: {fwhere}.uri")
        elif any(ord(c) < 0x20 or c in " \x7f" for c in uri):
            raise _err(src, f"{fwhere}.uri", f"{uri!r} holds spaces or control characters", "percent-encode them")
        sha = entry.get("sha256")
        if (own or sha is not None) and (not isinstance(sha, str) or not _HEX64.match(sha)):
            raise _err(
                src,
                f"{fwhere}.sha256",
                f"expected 64 lower-case hex characters, got {sha!r}",
                "run `nimbuild manifest build` to fill in checksums",
            )
        size = entry.get("size")
        if (own or size is not None) and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise _err(
                src,
                f"{fwhere}.size",
                f"expected a byte count (integer >= 0), got {size!r}",
                "run `nimbuild manifest build` to fill in sizes",
            )
        files[norm] = FileEntry(uri=uri, sha256=sha, size=size)
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise _err(
            src, f"{where}.metrics", f"expected a mapping, got {type(metrics).__name__}", "metrics: {name: value}"
        )
    extra = {k: v for k, v in raw.items() if k not in PROFILE_KEYS}
    assert isinstance(pid, str)  # checked above, for both kinds
    return Profile(id=pid, name=name, tags=clean_tags, files=files, metrics=dict(metrics), extra=extra)


def parse_manifest(
    data: object, src: str = "<manifest>", root: Path | None = None, *, check_ids: bool = True
) -> Manifest:
    """A Manifest from already-loaded YAML/JSON data; the checks of :func:`load_manifest`."""
    source_format = "nimbuild"
    if manifest_nim.is_v1(data):
        data = manifest_nim.v1_to_v2(data, src)  # type: ignore[arg-type]
        source_format = "nim-v1"
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise NimbuildError(
            f"{src}: the manifest is {kind}, not a mapping",
            hint="a manifest is a mapping with schema_version, profile_selection_criteria and profiles",
        )
    version = data.get("schema_version")
    if manifest_nim.schema_major(version) != "2" or not isinstance(version, str):
        raise NimbuildError(
            f"{src}: schema_version: unknown version {version!r}",
            hint=f"this nimbuild reads schema_version: {SCHEMA_VERSION} (quoted or not), and NIM v1's map keyed by ID",
        )
    criteria = data.get("profile_selection_criteria", SELECTION_CRITERIA)
    if not isinstance(criteria, str):
        raise NimbuildError(
            f"{src}: profile_selection_criteria: expected a string, got {criteria!r}",
            hint=f"use {SELECTION_CRITERIA!r}",
        )
    header = data.get(HEADER_KEY) or {}
    if not isinstance(header, dict):
        raise NimbuildError(
            f"{src}: {HEADER_KEY}: expected a mapping, got {type(header).__name__}",
            hint="nimbuild: {model, recipe_sha256, version}",
        )
    own = HEADER_KEY in data
    if not own and source_format == "nimbuild":
        source_format = "nim-v2"
    raw_profiles = data.get("profiles")
    if raw_profiles is None:
        raw_profiles = []
    if not isinstance(raw_profiles, list):
        raise NimbuildError(
            f"{src}: profiles: expected a list, got {type(raw_profiles).__name__}",
            hint="profiles: [{id, name, tags, workspace}, ...]",
        )
    if not own:
        manifest_nim.name_profiles([p for p in raw_profiles if isinstance(p, dict)])
    profiles = [_parse_profile(raw, i, src, own) for i, raw in enumerate(raw_profiles)]

    seen_ids: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    checked: set[str] = set()  # bytes paths whose safety is known: a 20,000-profile manifest shares its files
    for i, p in enumerate(profiles):
        if p.id in seen_ids:
            raise NimbuildError(
                f"{src}: profiles[{i}] ({p.name!r}).id: duplicate id {p.id}, also profiles[{seen_ids[p.id]}]",
                hint="each profile appears once; merge fragments with `nimbuild manifest merge`",
            )
        if p.name in seen_names:
            raise NimbuildError(
                f"{src}: profiles[{i}].name: duplicate name {p.name!r}, also profiles[{seen_names[p.name]}]",
                hint="profile names must be unique in a manifest",
            )
        seen_ids[p.id] = i
        seen_names[p.name] = i
        if check_ids and own:
            expected = profile_id(p.tags)
            if expected != p.id:
                raise NimbuildError(
                    f"{src}: profile {p.name!r} (profiles[{i}]).id: {p.id} does not match its tags "
                    f"(sha256 of their canonical JSON is {expected})",
                    hint="the tags or the id were edited; rebuild the manifest with `nimbuild manifest build`",
                )
        if root is not None:
            for entry in p.files.values():
                if entry.remote or entry.uri in checked:
                    continue
                safe_join(root, entry.uri, f"{src}: profile {p.name!r}.workspace.files")
                checked.add(entry.uri)
    extra = {k: v for k, v in data.items() if k not in TOP_KEYS}
    return Manifest(
        profiles=profiles,
        header=dict(header),
        root=root,
        source=Path(src) if src else None,
        selection_criteria=criteria,
        extra=extra,
        # A manifest without the header whose every ID is the sha256 of its tags (a hand-written fragment,
        # another tool following docs/design.md) is as good as nimbuild's for IDs; otherwise they are opaque.
        opaque_ids=not own and not all(_id_matches(p) for p in profiles),
        source_format=source_format,
    )


def _id_matches(p: Profile) -> bool:
    try:
        return profile_id(p.tags) == p.id
    except NimbuildError:
        return False
