"""`nimbuild build RECIPE --out DIR`: every step this machine can do, each reused when nothing it depends on changed.

export (+ precision graphs) -> engines for the visible GPU (when there is one and
TensorRT imports) -> manifest -> render. Keys and records: nimbuild.builder.cache.
What each step depends on:

- export: the recipe minus ``gpus``/``runners``/``serving``, the model files'
  bytes (or hub repo + pinned revision), the pairs file, the toolchain versions;
- engines: the engines module's own build cache (graph sha256, TensorRT, GPU);
- manifest: the export's outputs and every engine and CPU-class fragment's bytes;
- render: the manifest's bytes, the recipe (serving options), the templates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild import __version__
from nimbuild.builder.cache import StepCache, export_source_digest, toolchain_versions, tree_digest
from nimbuild.errors import NimbuildError
from nimbuild.export_layout import (
    ENGINES_DIR,
    EXPORT_OUTPUTS,
    MANIFEST_FILE,
    REPORT_FILE,
    TRITON_DIR,
    read_export_report,
    report_path,
)
from nimbuild.fsutil import json_digest, json_text
from nimbuild.outdir import OutputFolder, signature
from nimbuild.output import Output

# What a build replaces besides the export (the Triton repositories are checked one by one by render, and
# render checks its own image and deploy files).
BUILD_OUTPUTS = (*EXPORT_OUTPUTS, MANIFEST_FILE)
EXPORT_IRRELEVANT = {"gpus", "runners", "serving"}


@dataclass
class StepResult:
    step: str
    status: str  # "built", "reused", "skipped"
    seconds: float
    note: str = ""

    def to_dict(self) -> dict:
        return {"step": self.step, "status": self.status, "seconds": round(self.seconds, 3), "note": self.note}


@dataclass
class BuildResult:
    out_dir: Path
    manifest: Path | None
    steps: list[StepResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "manifest": str(self.manifest) if self.manifest else None,
            "steps": [s.to_dict() for s in self.steps],
        }


def export_key(recipe: Any, cache: StepCache, cpu_classes: list[str] | None = None) -> str:
    """What an export depends on, including the CPU classes asked for and those this CPU can judge
    (a build folder moved to another machine, or a CI cache, re-exports when they change)."""
    from nimbuild import cpu_isa

    wanted = list(recipe.cpu_isa) if cpu_classes is None else list(cpu_classes)
    here = cpu_isa.detect_cpu()
    recipe_part = {k: v for k, v in recipe.model_dump(mode="json").items() if k not in EXPORT_IRRELEVANT}
    src = recipe.source
    if src.path is not None:
        model_dir = recipe.resolve(src.path)
        if not model_dir.exists():
            raise NimbuildError(
                f"{recipe.path}: source.path: {model_dir} does not exist",
                hint="point source.path at the model folder (relative to the recipe)",
            )
        model = {"files": tree_digest(model_dir, cache.memo)}
    else:
        model = {"repo": src.repo, "revision": src.revision}
    pairs = tree_digest(recipe.resolve(recipe.pairs), cache.memo) if recipe.pairs else None
    return json_digest(
        {
            "step": "export",
            "recipe": recipe_part,
            "model": model,
            "pairs": pairs,
            "toolchain": toolchain_versions(),
            "builder_source": export_source_digest(),
            "cpu_isa": {"wanted": wanted, "made": [c for c in wanted if here.has(c)]},
        }
    )


def _sync_report_recipe(out_dir: Path, recipe: Any) -> None:
    """A reused export keeps describing the recipe it now serves (gpus/serving edits do not re-export)."""
    report = read_export_report(out_dir)
    if report.get("recipe_sha256") != recipe.sha256:
        report["recipe_sha256"] = recipe.sha256
        OutputFolder(out_dir).write_files({REPORT_FILE: (json_text(report) + "\n").encode("utf-8")})


def step_export(
    recipe: Any, out_dir: Path, cache: StepCache, out: Output, force: bool, cpu_classes: list[str] | None = None
) -> StepResult:
    """The export, staged in the build folder and swapped in entry by entry (nimbuild.outdir): the
    engines, fragments, Triton repositories and step cache stay; a failed export changes nothing.

    ``cpu_classes``: ``--cpu-isa`` (each must be this CPU's; [] = none); None: the recipe's, those this CPU has.
    """
    t0 = time.perf_counter()
    if cpu_classes is not None:
        from nimbuild.builder.pipeline import cpu_classes_to_make

        cpu_classes = cpu_classes_to_make(recipe, cpu_classes)  # a class this CPU lacks fails now, reused or not
    key = export_key(recipe, cache, cpu_classes)
    if not force and cache.lookup("export", key):
        _sync_report_recipe(out_dir, recipe)
        cache.store("export", key, [out_dir / p for p in EXPORT_OUTPUTS])
        return StepResult("export", "reused", time.perf_counter() - t0, "recipe, model files and toolchain unchanged")
    from nimbuild.builder.pipeline import run_export  # numpy and more: only when there is work

    cache.forget("export")
    run_export(
        recipe,
        out_dir,
        precisions=list(recipe.precisions),
        pairs=None,
        out=out,
        force=force,
        cpu_isa=cpu_classes,
        into_build=True,
    )
    cache.store("export", key, [out_dir / p for p in EXPORT_OUTPUTS])
    report = read_export_report(out_dir)
    passed = [p for p, e in report.get("precisions", {}).items() if e.get("status") == "passed"]
    return StepResult("export", "built", time.perf_counter() - t0, f"graphs: {', '.join(passed)}")


def _tree_signatures(root: Path, top: str) -> dict[str, list]:
    """Every file under ``root/top`` and what it is (nimbuild.outdir.signature)."""
    folder = root / top
    if not folder.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): signature(p) for p in sorted(folder.rglob("*")) if not p.is_dir()}


def step_engines(recipe: Any, out_dir: Path, out: Output, force: bool) -> StepResult:
    """Engines for the visible GPU, through the engines module (it has its own reuse)."""
    t0 = time.perf_counter()
    try:
        from nimbuild.builder.engines import trt_seam  # the one module that imports tensorrt
        from nimbuild.builder.engines.build import build_engines
        from nimbuild.builder.engines.host import resolve_sku, visible_gpu
        from nimbuild.builder.engines.plan import plan_engines
    except ImportError as exc:
        return StepResult("engines", "skipped", time.perf_counter() - t0, f"engines module unavailable ({exc})")
    gpu, why = visible_gpu()
    if gpu is None:
        return StepResult("engines", "skipped", time.perf_counter() - t0, f"no GPU visible ({why})")
    trt, trt_problem = trt_seam.probe_tensorrt()
    if trt is None:  # not installed, or a broken CUDA install
        return StepResult("engines", "skipped", time.perf_counter() - t0, f"TensorRT not importable ({trt_problem})")
    sku = resolve_sku("auto")
    plan = plan_engines(recipe, sku, out_dir)
    # The manifest lists these engines: withdrawn while they may change, put back if none did.
    # (What engines/<sku>/ may replace is the engines module's own rule: `nimbuild engines` writes there too.)
    folder = OutputFolder(out_dir)
    top = f"{ENGINES_DIR}/{sku.slug}"
    before = _tree_signatures(out_dir, top)
    aside = folder.withdraw(MANIFEST_FILE)
    try:
        result = build_engines(recipe, plan, out, force=force)
    finally:
        if aside is not None and _tree_signatures(out_dir, top) == before:
            folder.restore(aside, MANIFEST_FILE)
        elif aside is not None:
            folder.discard(aside)  # it listed the old engines; the manifest step writes it again
    built = [r for r in result.results if getattr(r, "passed", False)]
    return StepResult(
        "engines",
        "built",
        time.perf_counter() - t0,
        f"{sku.canonical}: {len(built)} engine(s) passed; fragment {result.fragment or '-'}",
    )


def step_manifest(out_dir: Path, cache: StepCache, force: bool) -> tuple[StepResult, Path]:
    from nimbuild.builder.assemble import FRAGMENT_GLOBS, build_manifest

    t0 = time.perf_counter()
    path = out_dir / MANIFEST_FILE
    fragments = {
        p.relative_to(out_dir).as_posix(): cache.memo.sha256(p)
        for pattern in FRAGMENT_GLOBS
        for p in sorted(out_dir.glob(pattern))
    }
    key = json_digest(
        {
            "step": "manifest",
            "report": cache.memo.sha256(report_path(out_dir)),
            "export_outputs": cache.outputs_of([out_dir / p for p in EXPORT_OUTPUTS]),
            "fragments": fragments,
            "nimbuild": __version__,
        }
    )
    if not force and path.exists() and cache.lookup("manifest", key):
        return StepResult("manifest", "reused", time.perf_counter() - t0, "export and fragments unchanged"), path
    cache.forget("manifest")
    folder = OutputFolder(out_dir)
    folder.expect_any(MANIFEST_FILE)  # written by manifest.write_manifest, recorded right after
    m, path = build_manifest(out_dir, out=path)
    folder.record([MANIFEST_FILE])
    cache.store("manifest", key, [path])
    return StepResult("manifest", "built", time.perf_counter() - t0, f"{len(m.profiles)} profiles"), path


def step_render(
    recipe: Any, out_dir: Path, manifest_path: Path, cache: StepCache, out: Output, force: bool
) -> StepResult:
    t0 = time.perf_counter()
    try:
        from nimbuild.render.triton import render_repositories
    except ImportError as exc:
        return StepResult("render", "skipped", time.perf_counter() - t0, f"render module unavailable ({exc})")
    from nimbuild.runtime.triton_repo.templating import TEMPLATES_DIR as templates

    key = json_digest(
        {
            "step": "render",
            "manifest": cache.memo.sha256(manifest_path),
            "recipe": recipe.sha256,
            "templates": tree_digest(templates, cache.memo) if templates.is_dir() else None,
            "nimbuild": __version__,
        }
    )
    triton = out_dir / TRITON_DIR
    if not force and triton.is_dir() and cache.lookup("render", key):
        return StepResult("render", "reused", time.perf_counter() - t0, "manifest, recipe and templates unchanged")
    cache.forget("render")
    repos = render_repositories(manifest_path, out_dir, recipe_path=recipe.path, out=out, force=force)
    cache.store("render", key, [triton])
    return StepResult("render", "built", time.perf_counter() - t0, f"{len(repos)} Triton repositories")


def run_build(
    recipe_path: str | Path,
    out_dir: str | Path | None,
    out: Output,
    *,
    force: bool = False,
    engines: bool = True,
    render: bool = True,
    cpu_isa: list[str] | None = None,
) -> BuildResult:
    """Every step this machine can do, ending in ``out_dir/manifest.yaml`` (default ``out/<name>``).

    ``cpu_isa``: the CPU classes to make int8 graphs for (``--cpu-isa``; ``["none"]``: none, as a CI merge
    job that takes them from the class jobs' fragments); None = the recipe's that this CPU has.
    """
    from nimbuild.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    out_dir = Path(out_dir) if out_dir is not None else recipe.default_out_dir
    folder = OutputFolder(out_dir)
    with folder.locked("nimbuild build"):  # a refusal leaves nothing: a folder the lock made goes again
        folder.check_replaceable(build_outputs(render), force=force, action="nimbuild build")
        return _build_locked(recipe, out_dir, out, force=force, engines=engines, render=render, cpu_isa=cpu_isa)


def build_outputs(render: bool) -> list[str]:
    """What a build may replace at the top of its folder, checked before any step runs: the export's
    entries and the manifest, and with ``render`` the serving images' files and deploy/ (the Triton
    repositories are checked one by one by render, which checks all of these again before it writes)."""
    if not render:
        return list(BUILD_OUTPUTS)
    from nimbuild.render.container import CPU_MANIFEST, IMAGES, WHEELS_README_FILE
    from nimbuild.render.deploy import deploy_outputs

    images = [f for _, name in IMAGES for f in (name, f"{name}.dockerignore")]
    return [*BUILD_OUTPUTS, *images, ".dockerignore", CPU_MANIFEST, WHEELS_README_FILE, *deploy_outputs()]


def _build_locked(
    recipe: Any,
    out_dir: Path,
    out: Output,
    *,
    force: bool,
    engines: bool,
    render: bool,
    cpu_isa: list[str] | None,
) -> BuildResult:
    cache = StepCache(out_dir)
    result = BuildResult(out_dir=out_dir, manifest=None)

    def done(step: StepResult) -> None:
        result.steps.append(step)
        out.note(f"{step.step:9s} {step.status:8s} {step.seconds:7.2f}s  {step.note}")

    try:
        done(step_export(recipe, out_dir, cache, out, force, cpu_isa))
        if engines:
            done(step_engines(recipe, out_dir, out, force))
        else:
            done(StepResult("engines", "skipped", 0.0, "--no-engines"))
        step, manifest_path = step_manifest(out_dir, cache, force)
        done(step)
        result.manifest = manifest_path
        if render:
            done(step_render(recipe, out_dir, manifest_path, cache, out, force))
        else:
            done(StepResult("render", "skipped", 0.0, "--no-render"))
    finally:
        cache.save()
    return result
