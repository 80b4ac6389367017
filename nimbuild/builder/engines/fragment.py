"""The passing engines of one SKU as a manifest fragment, for `nimbuild manifest build`/`merge`.

One fragment per GPU runner: CI builds each SKU's engines where that GPU is and
merges the fragments afterwards (order-independent). Engines that failed their
check are never in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimbuild.builder.engines.plan import EnginePlan

if TYPE_CHECKING:
    from nimbuild.builder.engines.build import EngineResult


def write_fragment(
    plan: EnginePlan, passed: Sequence[EngineResult], report: Mapping[str, Any], recipe_sha256: str
) -> Path:
    """``OUT/engines/<sku-slug>/fragment.yaml``: the passing engines as profiles.

    A manifest whose paths are relative to its own folder (``fp16/model.plan``);
    `nimbuild manifest build`/`merge` rebase them into the export dir's manifest.
    """
    from nimbuild import __version__, manifest, profiles

    root = plan.sku_dir
    entries = []
    for result in passed:
        if result.engine is None or result.tags is None:
            raise ValueError(f"{result.precision}: a passing engine result without its engine file or tags")
        rel = result.engine.relative_to(root).as_posix()
        entries.append(
            manifest.Profile(
                id=profiles.profile_id(result.tags),
                name=profiles.profile_name(result.tags),
                tags=dict(result.tags),
                files={rel: manifest.file_entry(root, rel)},
                metrics=dict(result.metrics),
            )
        )
    header = {
        "model": plan.model,
        "model_revision": str(report.get("model_revision") or "unknown"),
        "recipe_sha256": str(report.get("recipe_sha256") or recipe_sha256),
        "version": __version__,
    }
    fragment = manifest.Manifest(profiles=entries, header=header, root=root)
    manifest.write_manifest(fragment, plan.fragment_path)
    return plan.fragment_path
