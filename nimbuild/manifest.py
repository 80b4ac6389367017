"""manifest.yaml: the data model, read and written atomically and path-safely.

The shape is NIM's v2 manifest (``schema_version: 2.0.0``,
``profile_selection_criteria``, ``profiles: [{id, name, tags, workspace: {files:
{key: {uri, sha256, size}}}}]``) plus nimbuild's ``metrics`` per profile and
a ``nimbuild:`` header (model, recipe_sha256, version). In a manifest nimbuild
wrote (it has the header) every ID is recomputed from its tags when read and
every file has a sha256 and a size. A manifest nimbuild did not write (NIM's v2,
or NIM v1's map keyed by ID: :mod:`nimbuild.manifest_nim`) keeps its opaque IDs,
may leave out names, sha256 and size (its files are then *unverified*, not
refused). A file's key is its name in the profile's workspace; its ``uri`` is
where its bytes are: a path relative to the manifest's folder (which it may not
leave: ``..``, absolute, or a symlink out: :mod:`nimbuild.manifest_paths`) or a
remote URL. The YAML is read by :mod:`nimbuild.safeload` (duplicate keys, alias
bombs, size, depth, tags). Merging fragments is :mod:`nimbuild.manifest_merge`,
verifying :mod:`nimbuild.manifest_verify`. Part of the light runtime: stdlib, yaml
and nimbuild.errors/fsutil/profiles/safeload/manifest_paths/manifest_nim only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import sha256_file
from nimbuild.manifest_paths import (
    REMOTE_SCHEMES,
    URI_SCHEME,
    check_relpath,
    is_remote_uri,
    relocate,
    remote_cache_relpath,
    safe_join,
)
from nimbuild.profiles import profile_id

SCHEMA_VERSION = "2.0.0"
SELECTION_CRITERIA = "default"
HEADER_KEY = "nimbuild"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PROFILE_KEYS = ("id", "name", "tags", "workspace", "metrics")
_TOP_KEYS = ("schema_version", "profile_selection_criteria", HEADER_KEY, "profiles")


@dataclass
class FileEntry:
    """One artifact of a profile: where its bytes are (``uri``) and, when known, what they must be.

    ``sha256``/``size`` are None only in manifests nimbuild did not write (NIM's own leave them out):
    such a file is *unverified*.
    """

    uri: str
    sha256: str | None
    size: int | None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"uri": self.uri}
        if self.sha256 is not None:
            data["sha256"] = self.sha256
        if self.size is not None:
            data["size"] = self.size
        return data

    @property
    def remote(self) -> bool:
        return is_remote_uri(self.uri)

    @property
    def bytes_path(self) -> str:
        """Where the bytes are, relative to a folder that holds them: the manifest's folder (local uris)
        or ``NIM_CACHE_PATH`` (which mirrors it, and keeps a remote file at ``remote/<scheme>/<host>/<path>``)."""
        return remote_cache_relpath(self.uri) if self.remote else self.uri


@dataclass
class Profile:
    """One runnable artifact set, identified by the hash of its tags."""

    id: str
    name: str
    tags: dict[str, str]
    files: dict[str, FileEntry] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of other v2 writers, kept as they were

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "tags": {k: self.tags[k] for k in sorted(self.tags)},
            "workspace": {"files": {k: self.files[k].to_dict() for k in sorted(self.files)}},
        }
        if self.metrics:
            data["metrics"] = sorted_data(self.metrics)
        for key in sorted(self.extra):
            data[key] = sorted_data(self.extra[key])
        return data


@dataclass
class Manifest:
    """A set of profiles, the folder their paths are relative to, and nimbuild's header."""

    profiles: list[Profile]
    header: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None
    source: Path | None = None  # the file it was read from (for messages)
    selection_criteria: str = SELECTION_CRITERIA
    extra: dict[str, Any] = field(default_factory=dict)
    opaque_ids: bool = False  # read from a manifest nimbuild did not write: IDs are not sha256 of the tags
    source_format: str = "nimbuild"  # "nimbuild", "nim-v2" or "nim-v1": what the file was

    @property
    def folder(self) -> Path:
        """The folder its paths are relative to; a manifest built in memory and never written has none."""
        if self.root is None:
            raise NimbuildError(
                f"{self.source or 'manifest'}: has no folder for its files' paths",
                hint="read it with nimbuild.manifest.load_manifest, or write it first",
            )
        return self.root

    def by_id(self, pid: str) -> Profile | None:
        return next((p for p in self.profiles if p.id == pid), None)

    def by_name(self, name: str) -> Profile | None:
        return next((p for p in self.profiles if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "profile_selection_criteria": self.selection_criteria,
        }
        if self.header:
            data[HEADER_KEY] = sorted_data(self.header)
        for key in sorted(self.extra):
            data[key] = sorted_data(self.extra[key])
        data["profiles"] = [p.to_dict() for p in sorted(self.profiles, key=lambda p: p.id)]
        return data


def sorted_data(obj: Any) -> Any:
    """Mappings with sorted keys, all the way down: the same data, the same bytes."""
    if isinstance(obj, dict):
        return {str(k): sorted_data(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [sorted_data(v) for v in obj]
    return obj


def file_entry(root: str | os.PathLike[str], relpath: str) -> FileEntry:
    """The entry for an artifact under ``root``: its sha256 and size (path-safety checked)."""
    norm = check_relpath(relpath)
    path = safe_join(root, norm)
    if not path.is_file():
        raise NimbuildError(
            f"{path}: no such file to list in the manifest", hint="build the artifact first, or fix its path"
        )
    return FileEntry(uri=norm, sha256=sha256_file(path), size=path.stat().st_size)


def file_in(root: str | os.PathLike[str], profile: Profile, key: str, where: str = "") -> Path:
    """The path of workspace file ``key`` of ``profile`` in ``root`` (the manifest's folder, or a cache
    mirroring it): its bytes' path (the uri, not the key), path-safety checked."""
    return safe_join(root, profile.files[key].bytes_path, where)


# --------------------------------------------------------------------------- reading


def _err(src: str, where: str, message: str, hint: str) -> NimbuildError:
    return NimbuildError(f"{src}: {where}: {message}" if where else f"{src}: {message}", hint=hint)


def _parse_profile(raw: object, index: int, src: str, own: bool) -> Profile:
    """One profile's shape. ``own``: the manifest is nimbuild's (IDs are sha256, files carry sha256 and size)."""
    from nimbuild.manifest_nim import OPAQUE_ID, tag_text

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
    if not own and (not isinstance(pid, str) or not OPAQUE_ID.match(pid)):
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
        text = value if own else tag_text(value)  # NIM's Go parser reads `tp: 8` as "8"; nimbuild writes strings
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
    extra = {k: v for k, v in raw.items() if k not in _PROFILE_KEYS}
    assert isinstance(pid, str)  # checked above, for both kinds
    return Profile(id=pid, name=name, tags=clean_tags, files=files, metrics=dict(metrics), extra=extra)


def parse_manifest(
    data: object, src: str = "<manifest>", root: Path | None = None, *, check_ids: bool = True
) -> Manifest:
    """A Manifest from already-loaded YAML/JSON data; the checks of :func:`load_manifest`."""
    from nimbuild import manifest_nim

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
    extra = {k: v for k, v in data.items() if k not in _TOP_KEYS}
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


def load_manifest(path: str | os.PathLike[str], *, check_ids: bool = True) -> Manifest:
    """Read and check a manifest: safe bounded YAML (:mod:`nimbuild.safeload`), its shape, every ID, every path.

    Any problem is a NimbuildError naming the file, the profile and the field.
    ``check_ids=False`` leaves wrong IDs to :func:`verify_manifest` (which lists them all).
    Paths are relative to the manifest's real folder: a symlinked manifest
    (``/opt/nim/etc/default/model_manifest.yaml`` -> the image's own) reads its files beside its target.
    """
    from nimbuild.manifest_nim import LOCAL_TAGS
    from nimbuild.safeload import MANIFEST_LIMITS, load_yaml

    path = Path(path)
    data, _ = load_yaml(
        path,
        what="manifest",
        limits=MANIFEST_LIMITS,
        local_tags=LOCAL_TAGS,
        hint="build one with `nimbuild manifest build` or `nimbuild build`",
    )
    return parse_manifest(data, str(path), root=Path(os.path.realpath(path)).parent, check_ids=check_ids)


# --------------------------------------------------------------------------- writing


def dump_manifest(manifest: Manifest) -> bytes:
    """The deterministic bytes of a manifest: fixed key order, profiles sorted by id."""
    import yaml

    text = yaml.safe_dump(
        manifest.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16
    )
    return text.encode("utf-8")


def rebase_profiles(manifest: Manifest, new_root: Path) -> list[Profile]:
    """The profiles with their local paths re-expressed relative to ``new_root``."""
    old_root = manifest.root
    if old_root is None or Path(os.path.abspath(old_root)) == Path(os.path.abspath(new_root)):
        return manifest.profiles
    out = []
    for p in manifest.profiles:
        files = {}
        for rel, entry in p.files.items():
            # nimbuild's own keys are paths beside the manifest (key == uri): both move. A key that
            # differs from its uri is a name in the profile's workspace (NIM's meaning): only the uri moves.
            new_rel = relocate(old_root, rel, new_root, p.name) if rel == entry.uri else rel
            uri = entry.uri if entry.remote else relocate(old_root, entry.uri, new_root, p.name)
            files[new_rel] = FileEntry(uri=uri, sha256=entry.sha256, size=entry.size)
        out.append(Profile(id=p.id, name=p.name, tags=p.tags, files=files, metrics=p.metrics, extra=p.extra))
    return out


def write_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> None:
    """Write atomically, with deterministic bytes; paths are made relative to the new file's folder.

    Refuses (NimbuildError) a manifest whose IDs do not match its tags, whose
    names repeat, or whose paths would leave the manifest's folder.
    """
    from nimbuild.fsutil import atomic_write_bytes
    from nimbuild.manifest_verify import verify_manifest

    path = Path(path)
    root = path.parent
    rebased = Manifest(
        profiles=rebase_profiles(manifest, root),
        header=manifest.header,
        root=root,
        source=path,
        selection_criteria=manifest.selection_criteria,
        extra=manifest.extra,
        opaque_ids=manifest.opaque_ids,
        source_format=manifest.source_format,
    )
    problems = verify_manifest(rebased, check_files=False)
    if problems:
        raise NimbuildError(
            f"{path}: refusing to write a manifest with problems: {'; '.join(problems)}",
            hint="fix the profiles (ids are sha256 of their tags; names unique)",
        )
    data = dump_manifest(rebased)
    # What we write must read back, by the reader every manifest goes through (catches non-YAML-safe metrics).
    from nimbuild.manifest_nim import LOCAL_TAGS
    from nimbuild.safeload import MANIFEST_LIMITS, parse_yaml

    parse_manifest(
        parse_yaml(data.decode("utf-8"), str(path), what="manifest", limits=MANIFEST_LIMITS, local_tags=LOCAL_TAGS),
        str(path),
        root=None,
    )
    atomic_write_bytes(path, data)
    manifest.root = root
