"""Merging manifests: per-runner fragments into one manifest, order-independent and idempotent.

Profiles are keyed by ID; the same ID must carry the same name and bytes
everywhere, so a conflict is reported, never silently overwritten.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.manifest import HEADER_KEY, SELECTION_CRITERIA, Manifest, Profile, rebase_profiles, sorted_data


def _version_key(v: str) -> tuple[int | str, ...]:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.+-]", str(v)))


def _merge_headers(manifests: list[Manifest]) -> dict[str, Any]:
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
            x, y = a.files[rel], b.files[rel]
            return (
                f"file {rel}: uri {x.uri} sha256 {(x.sha256 or '-')[:12]}.. size {x.size} "
                f"vs uri {y.uri} sha256 {(y.sha256 or '-')[:12]}.. size {y.size}"
            )
    if sorted_data(a.extra) != sorted_data(b.extra):
        return "other fields differ"
    if sorted_data(a.metrics) != sorted_data(b.metrics):
        return _METRICS_ONLY
    return ""


_METRICS_ONLY = "metrics differ"


def _metrics_key(p: Profile) -> str:
    return json.dumps(sorted_data(p.metrics), sort_keys=True, default=str)


def merge_manifests(manifests: Iterable[Manifest], root: str | os.PathLike[str] | None = None) -> Manifest:
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
    kinds = {m.opaque_ids for m in manifests}
    if len(kinds) > 1:
        theirs = ", ".join(str(m.source) for m in manifests if m.opaque_ids)
        raise NimbuildError(
            f"cannot merge manifests nimbuild wrote with manifests it did not write ({theirs}): "
            "their IDs are opaque, nimbuild's are sha256 of the tags",
            hint="merge each kind on its own",
        )
    roots = [os.path.abspath(m.root) for m in manifests if m.root is not None]
    if root is None and roots:
        root = os.path.commonpath(roots)
    new_root = Path(root) if root is not None else None
    by_id: dict[str, tuple[Profile, Manifest]] = {}
    by_name: dict[str, tuple[Profile, Manifest]] = {}
    for m in manifests:
        profiles = rebase_profiles(m, new_root) if new_root is not None else m.profiles
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
    extra: dict[str, Any] = {}
    for m in manifests:
        for k, v in m.extra.items():
            if k in extra and sorted_data(extra[k]) != sorted_data(v):
                raise NimbuildError(f"manifests disagree on top-level field {k!r}", hint="remove it from one side")
            extra[k] = v
    profiles = sorted((p for p, _ in by_id.values()), key=lambda p: p.id)
    return Manifest(
        profiles=profiles,
        header=_merge_headers(manifests),
        root=new_root,
        selection_criteria=criteria.pop(),
        extra=extra,
        opaque_ids=kinds == {True},
        source_format=manifests[0].source_format if len({m.source_format for m in manifests}) == 1 else "nim-v2",
    )
