"""Writing a repository: render and check its configs, place its files, all atomically.

A repository appears under its final name only complete (a staging folder
renamed into place), and nimbuild never replaces a non-empty folder that it did
not render: a typo in ``--out`` must not wipe data.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import IN_PROGRESS
from nimbuild.runtime.triton_repo.checks import check_configs
from nimbuild.runtime.triton_repo.contexts import render_configs
from nimbuild.runtime.triton_repo.layout import REPOSITORY_INFO


@dataclass
class RenderedRepository:
    """One repository written to disk."""

    path: Path
    profile_ids: list[str]
    name: str
    kind: str
    models: list[str]
    notes: list[str] = field(default_factory=list)
    schema_checked: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "profile_ids": self.profile_ids,
            "name": self.name,
            "kind": self.kind,
            "models": self.models,
            "notes": self.notes,
            "schema_checked": self.schema_checked,
        }


def _template_file(name: str) -> Path:
    from nimbuild.runtime.triton_repo.templating import TEMPLATES_DIR

    return TEMPLATES_DIR / name


def guard_destination(dest: Path) -> None:
    """Refuse to replace a non-empty folder that nimbuild did not render (a typo must not wipe data)."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise NimbuildError(f"{dest}: exists and is not a folder", hint="choose another path")
    ours = (dest / REPOSITORY_INFO).is_file() or (dest / IN_PROGRESS).exists()  # IN_PROGRESS: an interrupted fill
    if dest.is_dir() and any(dest.iterdir()) and not ours:
        raise NimbuildError(
            f"{dest}: a non-empty folder that is not a nimbuild model repository",
            hint="choose an empty or new folder (nimbuild replaces only what it rendered)",
        )


def write_repository(
    info: dict[str, Any],
    dest: Path,
    sources: Path | Callable[[str], Path],
    *,
    mode: str = "link",
    require_schema: bool = True,
) -> RenderedRepository:
    """Render ``info``'s configs, check them, place its files and write it all to ``dest`` atomically.

    ``info['files']`` maps repository paths to ``{"source": manifest relpath, "sha256",
    "size"}`` or ``{"template_file": name}``; ``sources`` is the folder those
    relpaths are under, or a function giving each one's path (cache or manifest folder).
    """
    from nimbuild.fsutil import atomic_write_text, staging_dir, write_json
    from nimbuild.manifest_paths import safe_join
    from nimbuild.runtime.triton_repo.files import check_mode, place_file

    check_mode(mode)
    dest = Path(dest)
    guard_destination(dest)
    if callable(sources):
        locate = sources
    else:
        root = Path(sources)

        def locate(rel: str) -> Path:
            return safe_join(root, rel, f"{info['profile_name']}")

    texts = render_configs(info["models"])
    schema_checked = check_configs(texts, info, require_schema=require_schema)
    # in place where dest cannot be swapped by a rename (the NIM Operator's --model-store /model-store: a mount point)
    with staging_dir(dest, fill_in_place=True) as tmp:
        for name, text in texts.items():
            atomic_write_text(tmp / name / "config.pbtxt", text)
            (tmp / name / "1").mkdir(parents=True, exist_ok=True)
        for repo_rel, spec in sorted(info["files"].items()):
            target = tmp / repo_rel
            if "template_file" in spec:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(_template_file(spec["template_file"]), target)
                continue
            src = locate(spec["source"])
            if not src.is_file():
                raise NimbuildError(
                    f"{src}: missing (needed for {repo_rel} of {info['profile_name']})",
                    hint="restore the artifact or rebuild the manifest",
                )
            place_file(src, target, mode, spec.get("sha256"), spec.get("size"))
        record = dict(info, mode=mode)
        write_json(tmp / REPOSITORY_INFO, record)
    return RenderedRepository(
        path=dest,
        profile_ids=list(info["profile_ids"]),
        name=info["profile_name"],
        kind=info["kind"],
        models=sorted(texts),
        notes=list(info.get("notes", [])),
        schema_checked=schema_checked,
    )
