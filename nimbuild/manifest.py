"""manifest.yaml: read, write, merge and verify, atomically and path-safely.

The shape is NIM's v2 manifest (``schema_version: 2.0.0``,
``profile_selection_criteria``, ``profiles: [{id, name, tags, workspace: {files:
{relpath: {uri, sha256, size}}}}]``) plus nimbuild's ``metrics`` per profile and
a ``nimbuild:`` header (model, recipe_sha256, version). Every ID is recomputed
from its tags when read; every path is relative to the manifest's folder and may
not leave it (``..``, absolute, or a symlink out). Part of the light runtime:
stdlib, yaml and nimbuild.errors/fsutil/profiles only.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.profiles import profile_id
from nimbuild.safe_text import check_name, path_part_problem

SCHEMA_VERSION = "2.0.0"
SELECTION_CRITERIA = "default"
HEADER_KEY = "nimbuild"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_REMOTE_SCHEMES = ("https", "http", "hf", "ngc", "s3", "gs")
_PROFILE_KEYS = ("id", "name", "tags", "workspace", "metrics")
_TOP_KEYS = ("schema_version", "profile_selection_criteria", HEADER_KEY, "profiles")


@dataclass
class FileEntry:
    """One artifact of a profile: where it comes from and what its bytes must be."""

    uri: str
    sha256: str
    size: int

    def to_dict(self) -> dict:
        return {"uri": self.uri, "sha256": self.sha256, "size": self.size}


@dataclass
class Profile:
    """One runnable artifact set, identified by the hash of its tags."""

    id: str
    name: str
    tags: dict[str, str]
    files: dict[str, FileEntry] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # keys of other v2 writers, kept as they were

    def to_dict(self) -> dict:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "tags": {k: self.tags[k] for k in sorted(self.tags)},
            "workspace": {"files": {k: self.files[k].to_dict() for k in sorted(self.files)}},
        }
        if self.metrics:
            data["metrics"] = _sorted(self.metrics)
        for key in sorted(self.extra):
            data[key] = _sorted(self.extra[key])
        return data


@dataclass
class Manifest:
    """A set of profiles, the folder their paths are relative to, and nimbuild's header."""

    profiles: list[Profile]
    header: dict = field(default_factory=dict)
    root: Path | None = None
    source: Path | None = None  # the file it was read from (for messages)
    selection_criteria: str = SELECTION_CRITERIA
    extra: dict = field(default_factory=dict)

    def by_id(self, pid: str) -> Profile | None:
        return next((p for p in self.profiles if p.id == pid), None)

    def by_name(self, name: str) -> Profile | None:
        return next((p for p in self.profiles if p.name == name), None)

    def to_dict(self) -> dict:
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "profile_selection_criteria": self.selection_criteria,
        }
        if self.header:
            data[HEADER_KEY] = _sorted(self.header)
        for key in sorted(self.extra):
            data[key] = _sorted(self.extra[key])
        data["profiles"] = [p.to_dict() for p in sorted(self.profiles, key=lambda p: p.id)]
        return data


def _sorted(obj: Any) -> Any:
    """Mappings with sorted keys, all the way down: the same data, the same bytes."""
    if isinstance(obj, dict):
        return {str(k): _sorted(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [_sorted(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- paths


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


def safe_join(root: str | os.PathLike, relpath: str, where: str = "") -> Path:
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
    m = _URI_SCHEME.match(uri)
    return bool(m) and uri.split("://", 1)[0].lower() in _REMOTE_SCHEMES


_is_remote = is_remote_uri


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(root: str | os.PathLike, relpath: str) -> FileEntry:
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

    _cls = None

    @classmethod
    def get(cls):
        if cls._cls is None:
            import yaml

            class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: ~5x faster
                pass

            def construct_mapping(loader, node, deep=False):
                seen = set()
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
    check_name(name, f"{src}: {where}.name")  # it becomes a folder (OUT/triton/<name>/): never a path
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
        if not _is_remote(uri):
            if _URI_SCHEME.match(uri) or uri.lower().startswith("file:"):
                raise _err(
                    src,
                    f"{fwhere}.uri",
                    f"{uri!r} is neither a relative path nor a remote URL",
                    f"use a path relative to the manifest, or one of {', '.join(s + '://' for s in _REMOTE_SCHEMES)}",
                )
            uri = check_relpath(uri, f"{src}: {fwhere}.uri")
            if uri != norm:  # readers open the key, download-to-cache the uri: one file, one path
                raise _err(
                    src,
                    f"{fwhere}.uri",
                    f"local uri {uri!r} differs from the file's path {norm!r}",
                    f"set uri to {norm!r} (or leave it out), or use a remote URL "
                    f"({', '.join(s + '://' for s in _REMOTE_SCHEMES)})",
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


def load_manifest(path: str | os.PathLike, *, check_ids: bool = True) -> Manifest:
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


def _rebase(manifest: Manifest, new_root: Path) -> list[Profile]:
    """The profiles with their local paths re-expressed relative to ``new_root``."""
    old_root = manifest.root
    if old_root is None or Path(os.path.abspath(old_root)) == Path(os.path.abspath(new_root)):
        return manifest.profiles
    out = []
    for p in manifest.profiles:
        files = {}
        for rel, entry in p.files.items():
            new_rel = _relocate(old_root, rel, new_root, p)
            uri = entry.uri if _is_remote(entry.uri) else _relocate(old_root, entry.uri, new_root, p)
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


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> None:
    """Write atomically, with deterministic bytes; paths are made relative to the new file's folder.

    Refuses (NimbuildError) a manifest whose IDs do not match its tags, whose
    names repeat, or whose paths would leave the manifest's folder.
    """
    from nimbuild.fsutil import atomic_write_bytes

    path = Path(path)
    root = path.parent
    rebased = Manifest(
        profiles=_rebase(manifest, root),
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


# --------------------------------------------------------------------------- merging


def _version_key(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.+-]", str(v)))


def _merge_headers(manifests: list[Manifest]) -> dict:
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for m in manifests:
        for key, value in m.header.items():
            if key not in merged:
                merged[key], sources[key] = value, str(m.source)
            elif merged[key] != value:
                if key == "version":  # the newest nimbuild that touched any part
                    merged[key] = max(merged[key], value, key=_version_key)
                    continue
                raise NimbuildError(
                    f"manifests disagree on {HEADER_KEY}.{key}: {merged[key]!r} in {sources[key]} "
                    f"but {value!r} in {m.source}",
                    hint="merge only fragments built from the same model and recipe",
                )
    return merged


def _differences(a: Profile, b: Profile) -> str:
    if a.name != b.name:
        return f"name {a.name!r} vs {b.name!r}"
    if a.files.keys() != b.files.keys():
        return f"files {sorted(a.files)} vs {sorted(b.files)}"
    for rel in sorted(a.files):
        if a.files[rel] != b.files[rel]:
            return f"file {rel}: sha256 {a.files[rel].sha256[:12]}.. size {a.files[rel].size} vs sha256 {b.files[rel].sha256[:12]}.. size {b.files[rel].size}"
    if _sorted(a.extra) != _sorted(b.extra):
        return "other fields differ"
    if _sorted(a.metrics) != _sorted(b.metrics):
        return _METRICS_ONLY
    return ""


_METRICS_ONLY = "metrics differ"


def _metrics_key(p: Profile) -> str:
    import json

    return json.dumps(_sorted(p.metrics), sort_keys=True, default=str)


def merge_manifests(manifests: Iterable[Manifest], root: str | os.PathLike | None = None) -> Manifest:
    """One manifest holding every profile of ``manifests``.

    Order-independent and idempotent: profiles are keyed by ID, and the same ID
    must carry the same name and files (bytes) everywhere (else NimbuildError:
    a conflict is reported, never overwritten). Metrics alone may differ (the same
    artifacts measured twice): one set is kept, chosen independently of order. A name used by two IDs is a
    conflict too. Paths are re-expressed relative to ``root`` (default: the
    deepest folder holding every input's root), so fragments written beside
    their engines merge into the export dir's manifest.
    """
    manifests = list(manifests)
    roots = [os.path.abspath(m.root) for m in manifests if m.root is not None]
    if root is None and roots:
        root = os.path.commonpath(roots)
    new_root = Path(root) if root is not None else None
    by_id: dict[str, tuple[Profile, Manifest]] = {}
    by_name: dict[str, tuple[Profile, Manifest]] = {}
    for m in manifests:
        profiles = _rebase(m, new_root) if new_root is not None else m.profiles
        for p in profiles:
            if p.id in by_id:
                prev, prev_m = by_id[p.id]
                diff = _differences(prev, p)
                if diff == _METRICS_ONLY:
                    # the same artifacts measured twice (a re-run runner, a re-merge): information, not a
                    # conflict; keep one by a rule that does not depend on the order of the inputs
                    if _metrics_key(p) > _metrics_key(prev):
                        by_id[p.id] = (p, m)
                        by_name[p.name] = (p, m)
                    continue
                if diff:
                    raise NimbuildError(
                        f"conflict: profile {p.id} ({p.name}) differs between {prev_m.source} and {m.source}: {diff}",
                        hint="the same ID must have the same artifacts; rebuild one side or drop one fragment",
                    )
                continue
            if p.name in by_name:
                prev, prev_m = by_name[p.name]
                raise NimbuildError(
                    f"conflict: name {p.name!r} is profile {prev.id} in {prev_m.source} and {p.id} in {m.source}",
                    hint="two different profiles cannot share a name; check their tags (trt_version, model_revision)",
                )
            by_id[p.id] = (p, m)
            by_name[p.name] = (p, m)
    criteria = {m.selection_criteria for m in manifests} or {SELECTION_CRITERIA}
    if len(criteria) > 1:
        raise NimbuildError(
            f"manifests disagree on profile_selection_criteria: {sorted(criteria)}",
            hint=f"use {SELECTION_CRITERIA!r} everywhere",
        )
    extra: dict = {}
    for m in manifests:
        for k, v in m.extra.items():
            if k in extra and _sorted(extra[k]) != _sorted(v):
                raise NimbuildError(f"manifests disagree on top-level field {k!r}", hint="remove it from one side")
            extra[k] = v
    profiles = sorted((p for p, _ in by_id.values()), key=lambda p: p.id)
    return Manifest(
        profiles=profiles,
        header=_merge_headers(manifests),
        root=new_root,
        selection_criteria=criteria.pop(),
        extra=extra,
    )


# --------------------------------------------------------------------------- verifying


def verify_profile(
    manifest: Manifest, profile: Profile, check_files: bool = True, _hashes: dict | None = None
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
