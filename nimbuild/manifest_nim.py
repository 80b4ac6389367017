"""NIM's own manifests, read as nimbuild's: the v1 map keyed by ID, nameless profiles, loose tag values.

nimbuild reads every manifest the NIM Operator's parsers read
(github.com/NVIDIA/k8s-nim-operator ``internal/nimparser/``):

- **v2** (``schema_version: 2.x``): ``profiles: [{id, tags, workspace: {files: {key: {uri}}}}]``. NIM's
  profiles have no ``name`` and their files no ``sha256``/``size``: the key is the file's name in the
  profile's workspace and the ``uri`` is where its bytes are (``ngc://...``, or a path).
- **v1** (no ``schema_version``): a map ``{<id>: {model, release, tags, container_url, workspace:
  !workspace {components: [{dst, src: {repo_id, files: [!name 'f', ...]}}]}}}``, as NIM 1.x containers
  (the reranking NIM among them) ship it. Each file becomes key ``dst/f`` with uri
  ``<repo_id>?file=<f>`` (NIM's own URI form for a file of a remote repository).

Both are handed to :mod:`nimbuild.manifest`'s one profile parser as v2 data. What nimbuild adds for a
profile without a name is a name built from its tags in NIM's style (``tensorrt_llm-L40S-fp16-tp8-throughput``),
made unique with the ID's first characters. Light: stdlib and nimbuild.errors only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from nimbuild.errors import NimbuildError

# NIM v1 manifests tag their workspace and file names; the safe loader reads these as untagged.
LOCAL_TAGS = ("!workspace", "!name")
V1_PROFILE_KEYS = ("model", "release", "tags", "container_url", "workspace")

# An ID nimbuild did not compute: NIM's are sha256 hex or UUIDs. It is printed in logs and used in
# NIM_MODEL_PROFILE, so it keeps to characters that cannot forge a line or a path.
OPAQUE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

# Tags that make up a NIM profile's name, in NIM's order (tensorrt_llm-A100-fp16-tp2-latency).
_NAME_PARTS = ("llm_engine", "backend", "model_type", "gpu", "key", "precision", "tp", "pp", "profile")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def schema_major(version: object) -> str | None:
    """'2' for 2.0.0, 2.1 or "2"; the NIM Operator picks its v2 parser on any 2.x (nimparser/utils)."""
    if isinstance(version, bool) or not isinstance(version, (str, int)):
        return None
    text = str(version).strip()
    return text.split(".", 1)[0] if re.match(r"^[0-9]+(\.[0-9]+){0,2}$", text) else None


def is_v1(data: object) -> bool:
    """A NIM v1 manifest: a non-empty mapping of ID -> {tags, ...}, without schema_version."""
    return (
        isinstance(data, dict)
        and bool(data)
        and "schema_version" not in data
        and all(isinstance(v, dict) and "tags" in v for v in data.values())
    )


def _file_names(files: object, where: str, src: str) -> list[str]:
    """``files: [!name 'a', {b: {...}}]`` -> ['a', 'b'] (the two forms NIM's v1 parser reads)."""
    if files is None:
        return []
    if not isinstance(files, list):
        raise NimbuildError(f"{src}: {where}.files: expected a list of file names", hint="files: [name, ...]")
    names = []
    for item in files:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict):
            names.extend(str(k) for k in item)
        else:
            raise NimbuildError(f"{src}: {where}.files: {item!r} is not a file name", hint="files: [name, ...]")
    return names


def v1_to_v2(data: Mapping[str, Any], src: str) -> dict[str, Any]:
    """NIM v1's map keyed by ID as v2 data (the v1-only fields kept beside each profile)."""
    profiles = []
    for pid, raw in data.items():
        where = f"profile {pid!r}"
        profile: dict[str, Any] = {"id": pid, "tags": raw.get("tags")}
        for key, value in raw.items():
            if key not in ("tags", "workspace"):
                profile[key] = value
        files: dict[str, dict[str, str]] = {}
        workspace = raw.get("workspace") or {}
        if not isinstance(workspace, dict):
            raise NimbuildError(f"{src}: {where}.workspace: expected a mapping", hint="workspace: {components: [...]}")
        components = workspace.get("components") or []
        if not isinstance(components, list):
            raise NimbuildError(f"{src}: {where}.workspace.components: expected a list", hint="components: [...]")
        for i, comp in enumerate(components):
            cwhere = f"{where}.workspace.components[{i}]"
            if not isinstance(comp, dict):
                raise NimbuildError(f"{src}: {cwhere}: expected a mapping {{dst, src}}", hint="fix the component")
            dst = comp.get("dst") or ""
            source = comp.get("src") or {}
            if not isinstance(dst, str) or not isinstance(source, dict):
                raise NimbuildError(f"{src}: {cwhere}: dst is a string, src a mapping", hint="fix the component")
            repo = source.get("repo_id")
            if repo is not None and not isinstance(repo, str):
                raise NimbuildError(f"{src}: {cwhere}.src.repo_id: expected a string", hint="fix the component")
            for name in _file_names(source.get("files"), f"{cwhere}.src", src):
                key = f"{dst.strip('/')}/{name}" if dst.strip("/") else name
                if repo and "://" in repo:
                    uri = f"{repo}?file={name}"
                elif repo:
                    uri = f"{repo.strip('/')}/{name}"
                else:
                    uri = name
                if key in files:
                    raise NimbuildError(f"{src}: {where}: file {key!r} is listed twice", hint="list each file once")
                files[key] = {"uri": uri}
        profile["workspace"] = {"files": files}
        profiles.append(profile)
    return {"schema_version": "2.0.0", "profile_selection_criteria": "default", "profiles": profiles}


def tag_text(value: object) -> str | None:
    """A tag value as NIM's Go parser reads it into a string (``tp: 8`` -> '8', ``true`` -> 'true'); None
    for a value that is not a scalar."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if value is None:
        return ""
    return None


def derived_name(tags: Mapping[str, str]) -> str:
    """NIM's style of profile name from its tags: engine, GPU, precision, tp<N>, pp<N> (when not 1), profile."""
    parts = []
    seen: set[str] = set()
    for key in _NAME_PARTS:
        value = (tags.get(key) or "").strip()
        if not value or value.lower() in seen:
            continue
        if key in ("tp", "pp"):
            if key == "pp" and value == "1":
                continue
            value = f"{key}{value}"
        seen.add(value.lower())
        parts.append(value)
    if tags.get("feat_lora", "").lower() == "true":
        parts.append("lora")
    name = _NAME_UNSAFE.sub("-", "-".join(parts)).strip("-.")
    return name or "profile"


def name_profiles(profiles: list[dict[str, Any]]) -> None:
    """Give each nameless profile (NIM's) a derived name, unique in the manifest (``-<ID prefix>`` when two agree)."""
    taken = {p["name"] for p in profiles if isinstance(p.get("name"), str)}
    wanted: dict[str, list[dict[str, Any]]] = {}
    for p in profiles:
        if p.get("name") is None and isinstance(p.get("tags"), dict):
            tags = {str(k): tag_text(v) or "" for k, v in p["tags"].items()}
            wanted.setdefault(derived_name(tags), []).append(p)
    for name, group in wanted.items():
        for p in group:
            candidate = name
            if len(group) > 1 or name in taken:
                candidate = f"{name}-{str(p.get('id', ''))[:8]}"
            n = 8
            while candidate in taken:  # IDs that share 8 characters: take more of them
                n += 4
                candidate = f"{name}-{str(p.get('id', ''))[:n]}"
                if n > 128:
                    candidate = f"{candidate}-{len(taken)}"
            taken.add(candidate)
            p["name"] = candidate
