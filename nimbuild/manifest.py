"""manifest.yaml: read, write, merge and verify, atomically and path-safely.

The shape is NIM's v2 manifest (``schema_version: 2.0.0``,
``profile_selection_criteria``, ``profiles: [{id, name, tags, workspace: {files:
{relpath: {uri, sha256, size}}}}]``) plus nimbuild's ``metrics`` per profile and
a ``nimbuild:`` header (model, recipe_sha256, version). Every ID is recomputed
from its tags when read; every path is relative to the manifest's folder and may
not leave it (``..``, absolute, or a symlink out: :mod:`nimbuild.manifest_paths`).
Merging fragments is :mod:`nimbuild.manifest_merge`. Part of the light runtime:
stdlib, yaml and nimbuild.errors/fsutil/profiles/manifest_paths only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import sha256_file
from nimbuild.manifest_paths import REMOTE_SCHEMES, URI_SCHEME, check_relpath, is_remote_uri, safe_join
from nimbuild.profiles import profile_id

SCHEMA_VERSION = "2.0.0"
SELECTION_CRITERIA = "default"
HEADER_KEY = "nimbuild"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PROFILE_KEYS = ("id", "name", "tags", "workspace", "metrics")
_TOP_KEYS = ("schema_version", "profile_selection_criteria", HEADER_KEY, "profiles")


@dataclass
class FileEntry:
    """One artifact of a profile: where it comes from and what its bytes must be."""

    uri: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "sha256": self.sha256, "size": self.size}


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


# --------------------------------------------------------------------------- reading


class _UniqueKeyLoader:
    """A yaml SafeLoader that rejects a key given twice in one mapping (yaml keeps the last silently)."""

    _cls: type | None = None

    @classmethod
    def get(cls) -> type:
        if cls._cls is None:
            import yaml

            base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~5x faster

            class Loader(base):  # type: ignore[misc]  # a SafeLoader, chosen at run time
                pass

            def construct_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
                seen: set[object] = set()
                for key_node, _ in node.value:
                    key = loader.construct_object(key_node, deep=deep)
                    if isinstance(key, (str, int, float, bool)) and key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r}", key_node.start_mark
                        )
                    seen.add(key)
                return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

            Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
            cls._cls = Loader
        return cls._cls


def _err(src: str, where: str, message: str, hint: str) -> NimbuildError:
    return NimbuildError(f"{src}: {where}: {message}" if where else f"{src}: {message}", hint=hint)


def _parse_profile(raw: object, index: int, src: str) -> Profile:
    where = f"profiles[{index}]"
    if not isinstance(raw, dict):
        raise _err(
            src, where, f"expected a mapping, got {type(raw).__name__}", "each profile is {id, name, tags, workspace}"
        )
    label = raw.get("name") if isinstance(raw.get("name"), str) else None
    if label:
        where = f"profile {label!r} ({where})"
    pid = raw.get("id")
    if not isinstance(pid, str) or not _HEX64.match(pid):
        raise _err(
            src,
            f"{where}.id",
            f"expected 64 lower-case hex characters (a sha256), got {pid!r}",
            "the id is sha256 of the profile's canonical JSON tags",
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
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise _err(
                src,
                f"{where}.tags.{key}",
                f"every tag value must be a string, got {type(value).__name__} {value!r}",
                f'quote it in the YAML: {key}: "{value}"',
            )
    workspace = raw.get("workspace", {})
    if workspace is None:
        workspace = {}
    if not isinstance(workspace, dict):
        raise _err(
            src,
            f"{where}.workspace",
            f"expected a mapping, got {type(workspace).__name__}",
            "workspace: {files: {relpath: {uri, sha256, size}}}",
        )
    raw_files = workspace.get("files", {}) or {}
    if not isinstance(raw_files, dict):
        raise _err(
            src,
            f"{where}.workspace.files",
            f"expected a mapping of path -> entry, got {type(raw_files).__name__}",
            "files: {relpath: {uri, sha256, size}}",
        )
    files: dict[str, FileEntry] = {}
    for rel, entry in raw_files.items():
        fwhere = f"{where}.workspace.files[{rel!r}]"
        norm = check_relpath(rel, f"{src}: {fwhere}")
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
            if uri != norm:  # readers open the key, download-to-cache the uri: one file, one path
                raise _err(
                    src,
                    f"{fwhere}.uri",
                    f"local uri {uri!r} differs from the file's path {norm!r}",
                    f"set uri to {norm!r} (or leave it out), or use a remote URL "
                    f"({', '.join(s + '://' for s in REMOTE_SCHEMES)})",
                )
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise _err(
                src,
                f"{fwhere}.sha256",
                f"expected 64 lower-case hex characters, got {sha!r}",
                "run `nimbuild manifest build` to fill in checksums",
            )
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
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
    return Profile(id=pid, name=name, tags=dict(tags), files=files, metrics=dict(metrics), extra=extra)


def parse_manifest(
    data: object, src: str = "<manifest>", root: Path | None = None, *, check_ids: bool = True
) -> Manifest:
    """A Manifest from already-loaded YAML/JSON data; the checks of :func:`load_manifest`."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise NimbuildError(
            f"{src}: the manifest is {kind}, not a mapping",
            hint="a manifest is a mapping with schema_version, profile_selection_criteria and profiles",
        )
    version = data.get("schema_version")
    if str(version) != SCHEMA_VERSION or not isinstance(version, str):
        raise NimbuildError(
            f"{src}: schema_version: unknown version {version!r}",
            hint=f"this nimbuild reads schema_version: {SCHEMA_VERSION} (quoted or not)",
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
    raw_profiles = data.get("profiles")
    if raw_profiles is None:
        raw_profiles = []
    if not isinstance(raw_profiles, list):
        raise NimbuildError(
            f"{src}: profiles: expected a list, got {type(raw_profiles).__name__}",
            hint="profiles: [{id, name, tags, workspace}, ...]",
        )
    profiles = [_parse_profile(raw, i, src) for i, raw in enumerate(raw_profiles)]

    seen_ids: dict[str, int] = {}
    seen_names: dict[str, int] = {}
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
        if check_ids:
            expected = profile_id(p.tags)
            if expected != p.id:
                raise NimbuildError(
                    f"{src}: profile {p.name!r} (profiles[{i}]).id: {p.id} does not match its tags "
                    f"(sha256 of their canonical JSON is {expected})",
                    hint="the tags or the id were edited; rebuild the manifest with `nimbuild manifest build`",
                )
        if root is not None:
            for rel in p.files:
                safe_join(root, rel, f"{src}: profile {p.name!r}.workspace.files")
    extra = {k: v for k, v in data.items() if k not in _TOP_KEYS}
    return Manifest(
        profiles=profiles,
        header=dict(header),
        root=root,
        source=Path(src) if src else None,
        selection_criteria=criteria,
        extra=extra,
    )


def load_manifest(path: str | os.PathLike[str], *, check_ids: bool = True) -> Manifest:
    """Read and check a manifest: safe YAML, its shape, every ID, every path.

    Any problem is a NimbuildError naming the file, the profile and the field.
    ``check_ids=False`` leaves wrong IDs to :func:`verify_manifest` (which lists them all).
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NimbuildError(
            f"{path}: no such manifest", hint="build one with `nimbuild manifest build` or `nimbuild build`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NimbuildError(f"{path}: cannot read the manifest: {exc}", hint="check the file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader.get())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise NimbuildError(
            f"{path}: not valid YAML: {' '.join(str(exc).split())}", hint="fix the YAML syntax at the line shown"
        ) from None
    return parse_manifest(data, str(path), root=path.parent, check_ids=check_ids)


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
            new_rel = _relocate(old_root, rel, new_root, p)
            uri = entry.uri if is_remote_uri(entry.uri) else _relocate(old_root, entry.uri, new_root, p)
            files[new_rel] = FileEntry(uri=uri, sha256=entry.sha256, size=entry.size)
        out.append(Profile(id=p.id, name=p.name, tags=p.tags, files=files, metrics=p.metrics, extra=p.extra))
    return out


def _relocate(old_root: Path, rel: str, new_root: Path, p: Profile) -> str:
    target = os.path.abspath(os.path.join(old_root, rel))
    new_rel = os.path.relpath(target, os.path.abspath(new_root)).replace(os.sep, "/")
    if new_rel.startswith("../") or new_rel == ".." or os.path.isabs(new_rel):
        raise NimbuildError(
            f"profile {p.name!r}: file {target} is outside {os.path.abspath(new_root)}",
            hint="write the manifest in a folder that contains every artifact (e.g. the export dir)",
        )
    return new_rel


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
    )
    problems = verify_manifest(rebased, check_files=False)
    if problems:
        raise NimbuildError(
            f"{path}: refusing to write a manifest with problems: {'; '.join(problems)}",
            hint="fix the profiles (ids are sha256 of their tags; names unique)",
        )
    data = dump_manifest(rebased)
    # What we write must read back identically (catches non-YAML-safe metrics early).
    import yaml

    parse_manifest(yaml.safe_load(data), str(path), root=None)
    atomic_write_bytes(path, data)
    manifest.root = root
