"""``nimbuild render``: a Triton model repository for every profile of a manifest, and the serving Dockerfile.

The repository itself (contexts, record, checks, writing, serve-time overrides)
is :mod:`nimbuild.runtime.triton_repo`, shared with the runtime's
``create-model-store``; this module walks a manifest with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import TRITON_DIR
from nimbuild.output import Output
from nimbuild.runtime.triton_repo.cc_groups import multi_cc_groups, multi_cc_info
from nimbuild.runtime.triton_repo.contexts import ServingOptions
from nimbuild.runtime.triton_repo.record import profile_info
from nimbuild.runtime.triton_repo.writing import RenderedRepository, guard_destination, write_repository
from nimbuild.safe_text import child

if TYPE_CHECKING:
    from nimbuild.manifest import Manifest
    from nimbuild.outdir import OutputFolder

# --------------------------------------------------------------------------- the command


@dataclass
class RenderResult:
    repositories: list[RenderedRepository]
    container: Any = None  # nimbuild.render.container.ContainerFiles
    deploy: list[Path] = field(default_factory=list)  # OUT/deploy/*.yaml (nimbuild.render.deploy)
    skipped: list[str] = field(default_factory=list)  # profiles with no Triton model, and why

    def to_dict(self) -> dict:
        return {
            "repositories": [r.to_dict() for r in self.repositories],
            "skipped": self.skipped,
            "container": self.container.to_dict() if self.container is not None else None,
            "deploy": [str(p) for p in self.deploy],
        }


def render_all(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    mode: str = "link",
    serving: ServingOptions | None = None,
    recipe_path: str | os.PathLike | None = None,
    out=None,
    dockerfile: bool = True,
    images: dict | None = None,
    deploy: dict | None = None,
    force: bool = False,
) -> RenderResult:
    """``nimbuild render``: ``out_dir/triton/<profile name>/`` for every profile of a verified manifest,
    one repository per set of engines spanning several compute capabilities, and
    ``out_dir/Dockerfile`` (+ its dockerignore) for the serving image.

    Refuses a manifest that fails :func:`nimbuild.manifest_verify.verify_manifest`
    (wrong IDs, missing or altered files): nothing is rendered from it. ``images``: keyword
    arguments of :func:`nimbuild.render.container.render_container` (``targets``, ``wheelhouses``,
    ``nimbuild_wheel``). ``deploy``: keyword arguments of :func:`nimbuild.render.deploy.render_deploy`
    (``image``, ``cpu_image``, ``namespace``); its Kubernetes resources are written with the Dockerfiles.
    Replaces only what nimbuild wrote (nimbuild.outdir: a user's own Dockerfile, deploy/ file or files
    in a repository folder need ``force``), with ``out_dir`` locked against a second writer; every
    destination is checked before anything is written.
    """
    from nimbuild.outdir import OutputFolder
    from nimbuild.runtime.triton_repo.files import check_mode

    check_mode(mode)
    folder = OutputFolder(out_dir)
    with folder.locked("nimbuild render"):
        return _render_locked(
            folder,
            manifest_path,
            mode=mode,
            serving=serving,
            recipe_path=recipe_path,
            out=out,
            dockerfile=dockerfile,
            images=images,
            deploy=deploy,
            force=force,
        )


def _render_locked(
    folder: OutputFolder,
    manifest_path: str | os.PathLike,
    *,
    mode: str,
    serving: ServingOptions | None,
    recipe_path: str | os.PathLike | None,
    out: Output | None,
    dockerfile: bool,
    images: dict | None,
    deploy: dict | None,
    force: bool,
) -> RenderResult:
    from nimbuild.manifest import load_manifest
    from nimbuild.manifest_verify import verify_manifest

    out_dir = folder.path
    manifest = load_manifest(manifest_path)
    recipe = None
    if recipe_path is not None:
        from nimbuild.recipe import load_recipe

        recipe = load_recipe(recipe_path)
    if serving is None:
        serving = ServingOptions.from_recipe(recipe) if recipe is not None else ServingOptions()
    problems = verify_manifest(manifest, check_files=True)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise NimbuildError(
            f"{manifest_path}: the manifest does not verify, nothing rendered: {shown}",
            hint="run `nimbuild manifest verify` and rebuild what it names",
        )
    triton_dir = Path(out_dir) / TRITON_DIR
    servable = [p for p in manifest.profiles if p.tags.get("backend") in ("tensorrt", "onnx")]
    skipped = [
        f"{p.name}: backend {p.tags.get('backend')!r} has no Triton model; not rendered"
        for p in manifest.profiles
        if p not in servable
    ]
    out = out or Output(quiet=True)
    for note in skipped:
        out.note(note)
    jobs = [(p.name, lambda p=p: profile_info(manifest, p, serving)) for p in servable]
    jobs += [
        (name, lambda name=name, ps=ps: multi_cc_info(manifest, name, ps, serving))
        for name, ps in multi_cc_groups(manifest)
    ]
    # every destination checked and every graph read before anything is written; a name from the
    # manifest (or a tag in a multi-GPU repository's name) is a folder under triton/, never a path
    infos = [(child(triton_dir, name, f"{manifest_path}: repository {name!r}"), make()) for name, make in jobs]
    for dest, _ in infos:  # a folder that is no repository at all is never replaced, --force or not
        guard_destination(dest)
    tops = [dest.relative_to(out_dir).as_posix() for dest, _ in infos]
    tops_checked = list(tops)
    if dockerfile:
        from nimbuild.render.container import check_context_outputs, container_outputs
        from nimbuild.render.deploy import deploy_outputs

        wheelhouses = (images or {}).get("wheelhouses", ())
        tops_checked += [*container_outputs(manifest, manifest_path, out_dir), *deploy_outputs()]
        check_context_outputs(manifest, manifest_path, wheelhouses, force=force)  # the manifest's folder's
    folder.check_replaceable(tops_checked, force=force, action="render")
    rendered = []
    for top in tops:
        folder.expect_any(top)  # write_repository reports no bytes: the ledger takes what it leaves
    try:
        with out.progress() as progress:
            task = progress.add_task("rendering Triton repositories", total=len(infos))
            for dest, info in infos:
                rendered.append(write_repository(info, dest, _locator(manifest, info), mode=mode))
                progress.advance(task)
    finally:
        folder.record(tops)
    container, resources = None, []
    if dockerfile:
        from nimbuild.render.container import render_container
        from nimbuild.render.deploy import render_deploy

        container = render_container(
            manifest_path, out_dir, recipe=recipe, triton_dir=triton_dir, out=out, force=force, **(images or {})
        )
        resources = render_deploy(manifest_path, out_dir, force=force, **(deploy or {}))
    return RenderResult(repositories=rendered, container=container, skipped=skipped, deploy=resources)


def _locator(manifest: Manifest, info: dict[str, Any]) -> Callable[[str], Path]:
    """Where a repository's source file (a workspace key of its profiles) has its bytes: at the file's uri."""
    from nimbuild.manifest_paths import safe_join

    ids = set(info["profile_ids"])
    paths = {rel: e.bytes_path for p in manifest.profiles if p.id in ids for rel, e in p.files.items()}
    folder = manifest.folder

    def locate(rel: str) -> Path:
        return safe_join(folder, paths.get(rel, rel), info["profile_name"])

    return locate


def render_repositories(
    manifest_path: str | os.PathLike, out_dir: str | os.PathLike, **options
) -> list[RenderedRepository]:
    """:func:`render_all` (repositories and Dockerfile), returning the repositories (``nimbuild build``'s step)."""
    return render_all(manifest_path, out_dir, **options).repositories
