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
bombs, size, depth, tags), its shape checked by :mod:`nimbuild.manifest_parse`.
Merging fragments is :mod:`nimbuild.manifest_merge`, verifying
:mod:`nimbuild.manifest_verify`. Part of the light runtime: stdlib, yaml and
nimbuild.errors/fsutil/profiles/safeload/manifest_paths/manifest_nim/manifest_parse only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import sha256_file
from nimbuild.manifest_paths import (
    check_relpath,
    is_remote_uri,
    relocate,
    remote_cache_relpath,
    safe_join,
)

SCHEMA_VERSION = "2.0.0"
SELECTION_CRITERIA = "default"
HEADER_KEY = "nimbuild"
PROFILE_KEYS = ("id", "name", "tags", "workspace", "metrics")  # a profile's own keys; other writers' are kept in extra
TOP_KEYS = ("schema_version", "profile_selection_criteria", HEADER_KEY, "profiles")
SCHEMA_RESOURCE = "data/manifest.schema.json"  # the manifest's JSON Schema, shipped inside the package


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (``nimbuild/data/manifest.schema.json``), for editors and other tools."""
    from importlib.resources import files

    schema: dict[str, Any] = json.loads(files("nimbuild").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8"))
    return schema


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


def load_manifest(path: str | os.PathLike[str], *, check_ids: bool = True) -> Manifest:
    """Read and check a manifest: safe bounded YAML (:mod:`nimbuild.safeload`), its shape, every ID, every path.

    Any problem is a NimbuildError naming the file, the profile and the field.
    ``check_ids=False`` leaves wrong IDs to :func:`nimbuild.manifest_verify.verify_manifest` (which lists them all).
    Paths are relative to the manifest's real folder: a symlinked manifest
    (``/opt/nim/etc/default/model_manifest.yaml`` -> the image's own) reads its files beside its target.
    """
    from nimbuild.manifest_nim import LOCAL_TAGS
    from nimbuild.manifest_parse import parse_manifest
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
    from nimbuild.manifest_parse import parse_manifest
    from nimbuild.safeload import MANIFEST_LIMITS, parse_yaml

    parse_manifest(
        parse_yaml(data.decode("utf-8"), str(path), what="manifest", limits=MANIFEST_LIMITS, local_tags=LOCAL_TAGS),
        str(path),
        root=None,
    )
    atomic_write_bytes(path, data)
    manifest.root = root
