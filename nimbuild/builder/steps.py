"""`nimbuild build RECIPE --out DIR`: every step this machine can do, each reused when nothing it depends on changed.

export (+ precision graphs) -> engines for the visible GPU (when there is one and
TensorRT imports) -> manifest -> render. Keys and records: nimbuild.builder.cache.
What each step depends on:

- export: the recipe minus ``gpus``/``runners``/``serving``, the model files'
  bytes (or hub repo + pinned revision), the pairs file, the toolchain versions;
- engines: the engines module's own build cache (graph sha256, TensorRT, GPU);
- manifest: the export's outputs and every engine fragment's bytes;
- render: the manifest's bytes, the recipe (serving options), the templates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild import __version__
from nimbuild.builder.cache import StepCache, digest, toolchain_versions, tree_digest
from nimbuild.errors import NimbuildError
from nimbuild.outdir import OutputFolder, signature
from nimbuild.output import Output

EXPORT_OUTPUTS = ("export_report.json", "tokenizer", "onnx")
# What a build replaces besides the export (the Triton repositories are checked one by one by render).
BUILD_OUTPUTS = (*EXPORT_OUTPUTS, "manifest.yaml", "Dockerfile", "Dockerfile.dockerignore", ".dockerignore")
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


def export_key(recipe: Any, cache: StepCache) -> str:
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
    return digest(
        {"step": "export", "recipe": recipe_part, "model": model, "pairs": pairs, "toolchain": toolchain_versions()}
    )


def _sync_report_recipe(out_dir: Path, recipe: Any) -> None:
    """A reused export keeps describing the recipe it now serves (gpus/serving edits do not re-export)."""
    path = out_dir / "export_report.json"
    report = json.loads(path.read_text())
    if report.get("recipe_sha256") != recipe.sha256:
        report["recipe_sha256"] = recipe.sha256
        text = json.dumps(report, indent=2, sort_keys=True) + "\n"
        OutputFolder(out_dir).write_files({"export_report.json": text.encode("utf-8")})


def step_export(recipe: Any, out_dir: Path, cache: StepCache, out: Output, force: bool) -> StepResult:
    """The export, staged in the build folder and swapped in entry by entry (nimbuild.outdir): the
    engines, fragments, Triton repositories and step cache stay; a failed export changes nothing."""
    t0 = time.perf_counter()
    key = export_key(recipe, cache)
    if not force and cache.lookup("export", key):
        _sync_report_recipe(out_dir, recipe)
        cache.store("export", key, [out_dir / p for p in EXPORT_OUTPUTS])
        return StepResult("export", "reused", time.perf_counter() - t0, "recipe, model files and toolchain unchanged")
    from nimbuild.builder.pipeline import run_export  # numpy and more: only when there is work

    cache.forget("export")
    run_export(recipe, out_dir, precisions=list(recipe.precisions), pairs=None, out=out, force=force, into_build=True)
    cache.store("export", key, [out_dir / p for p in EXPORT_OUTPUTS])
    report = json.loads((out_dir / "export_report.json").read_text())
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
        from nimbuild.builder import engines
    except ImportError as exc:
        return StepResult("engines", "skipped", time.perf_counter() - t0, f"engines module unavailable ({exc})")
    gpu, why = engines.visible_gpu()
    if gpu is None:
        return StepResult("engines", "skipped", time.perf_counter() - t0, f"no GPU visible ({why})")
    from nimbuild.builder import trt_seam  # the one module that imports tensorrt

    trt, trt_problem = trt_seam.probe_tensorrt()
    if trt is None:  # not installed, or a broken CUDA install
        return StepResult("engines", "skipped", time.perf_counter() - t0, f"TensorRT not importable ({trt_problem})")
    sku = engines.resolve_sku("auto")
    plan = engines.plan_engines(recipe, sku, out_dir)
    # The manifest lists these engines: withdrawn while they may change, put back if none did.
    # (What engines/<sku>/ may replace is the engines module's own rule: `nimbuild engines` writes there too.)
    folder = OutputFolder(out_dir)
    top = f"engines/{sku.slug}"
    before = _tree_signatures(out_dir, top)
    aside = folder.withdraw("manifest.yaml")
    try:
        result = engines.build_engines(recipe, plan, out, force=force)
    finally:
        if aside is not None and _tree_signatures(out_dir, top) == before:
            folder.restore(aside, "manifest.yaml")
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
    from nimbuild.builder.assemble import FRAGMENT_GLOB, build_manifest

    t0 = time.perf_counter()
    path = out_dir / "manifest.yaml"
    fragments = {p.relative_to(out_dir).as_posix(): cache.memo.sha256(p) for p in sorted(out_dir.glob(FRAGMENT_GLOB))}
    key = digest(
        {
            "step": "manifest",
            "report": cache.memo.sha256(out_dir / "export_report.json"),
            "export_outputs": cache.outputs_of([out_dir / p for p in EXPORT_OUTPUTS]),
            "fragments": fragments,
            "nimbuild": __version__,
        }
    )
    if not force and path.exists() and cache.lookup("manifest", key):
        return StepResult("manifest", "reused", time.perf_counter() - t0, "export and fragments unchanged"), path
    cache.forget("manifest")
    folder = OutputFolder(out_dir)
    folder.expect_any("manifest.yaml")  # written by manifest.write_manifest, recorded right after
    m, path = build_manifest(out_dir, out=path)
    folder.record(["manifest.yaml"])
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
    templates = Path(__file__).resolve().parents[1] / "templates"
    key = digest(
        {
            "step": "render",
            "manifest": cache.memo.sha256(manifest_path),
            "recipe": recipe.sha256,
            "templates": tree_digest(templates, cache.memo) if templates.is_dir() else None,
            "nimbuild": __version__,
        }
    )
    triton = out_dir / "triton"
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
) -> BuildResult:
    """Every step this machine can do, ending in ``out_dir/manifest.yaml`` (default ``out/<name>``)."""
    from nimbuild.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    out_dir = Path(out_dir) if out_dir is not None else recipe.default_out_dir
    folder = OutputFolder(out_dir)
    with folder.locked("nimbuild build"):  # a refusal leaves nothing: a folder the lock made goes again
        folder.check_replaceable(BUILD_OUTPUTS, force=force, action="nimbuild build")
        return _build_locked(recipe, out_dir, out, force=force, engines=engines, render=render)


def _build_locked(recipe: Any, out_dir: Path, out: Output, *, force: bool, engines: bool, render: bool) -> BuildResult:
    cache = StepCache(out_dir)
    result = BuildResult(out_dir=out_dir, manifest=None)

    def done(step: StepResult) -> None:
        result.steps.append(step)
        out.note(f"{step.step:9s} {step.status:8s} {step.seconds:7.2f}s  {step.note}")

    try:
        done(step_export(recipe, out_dir, cache, out, force))
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
