"""The build loop: per planned engine, reuse or build it, check it, measure it; then the fragment.

Guards first (:mod:`.host`): nothing is built on the wrong GPU or without
TensorRT. Each engine is built in a staging folder and renamed into place only
whole (engine, ``build.json``, ``reproduce.sh``), and judged by the ranking gate
its ONNX graph was judged by. The TensorRT calls go through one seam
(:mod:`.trt_seam`), which tests replace by a fake with the same four functions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nimbuild.builder.engines.feeds import QueryFeeds, evaluation_feeds, opt_feed
from nimbuild.builder.engines.fragment import write_fragment
from nimbuild.builder.engines.host import BuildGpu, GpuProbe, check_graphs, check_host, resolve_sku, visible_gpu
from nimbuild.builder.engines.keys import (
    CACHE_SCHEMA,
    build_key,
    check_key,
    graph_digest,
    read_record,
    reusable,
)
from nimbuild.builder.engines.plan import (
    ENGINE_FILE,
    ENGINE_PRECISIONS,
    RECORD_FILE,
    REPRODUCE_FILE,
    BuildOptions,
    EnginePlan,
    PlannedEngine,
    plan_engines,
)
from nimbuild.builder.engines.reproduce import reproduce_script
from nimbuild.errors import NimbuildError
from nimbuild.export_layout import find_export_report, graph_path
from nimbuild.fsutil import json_digest, sha256_file, staging_dir, write_json
from nimbuild.output import Output
from nimbuild.thresholds import GateThresholds

if TYPE_CHECKING:
    from nimbuild.builder.engines.trt_seam import TensorRTInfo
    from nimbuild.recipe import Recipe


class EngineSeam(Protocol):
    """What the build loop needs of TensorRT: :mod:`nimbuild.builder.engines.trt_seam`, or a test's fake."""

    def probe_tensorrt(self) -> tuple[TensorRTInfo | None, str | None]: ...

    def build_engine(self, graph: Path, engine_path: Path, config_args: Mapping[str, Any]) -> None: ...

    def check_engine(
        self, engine_path: Path, reference_onnx: Path, feeds: Sequence[QueryFeeds], thresholds: GateThresholds
    ) -> dict[str, Any]: ...

    def measure_latency(self, engine_path: Path, feed: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclass
class EngineResult:
    """What happened to one planned engine."""

    precision: str
    status: str  # built | reused | failed | skipped
    reason: str | None = None
    engine: Path | None = None
    tags: dict[str, str] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.status in ("built", "reused")

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "status": self.status,
            "reason": self.reason,
            "engine": str(self.engine) if self.engine else None,
            "tags": self.tags,
            "metrics": self.metrics,
            "gate": self.gate,
        }


@dataclass
class EnginesResult:
    """Every engine of one `nimbuild engines` run, on which GPU and TensorRT, and the fragment written."""

    plan: EnginePlan
    gpu: BuildGpu
    trt_version: str
    results: list[EngineResult]
    fragment: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "gpu": self.gpu.to_dict(),
            "trt_version": self.trt_version,
            "engines": [r.to_dict() for r in self.results],
            "fragment": str(self.fragment) if self.fragment else None,
        }


def engine_tags(plan: EnginePlan, trt: TensorRTInfo, model_revision: str, precision: str) -> dict[str, str]:
    from nimbuild import profiles

    return profiles.tensorrt_profile_tags(
        model=plan.model,
        model_revision=model_revision,
        precision=precision,
        sku=plan.sku,
        trt_version=trt.tag_version,
        cuda_major_version=trt.cuda_major_version,
        max_batch_size=plan.batch[2],
        max_sequence_length=plan.sequence[2],
        gpu_count=1,
        hardware_compatible=plan.options.hardware_compatibility_level or False,
    )


@dataclass(frozen=True)
class _CheckInputs:
    """What every engine is checked with: the FP32 reference graph, the pairs' feeds, the thresholds."""

    reference: Path
    feeds: list[QueryFeeds]
    thresholds: GateThresholds
    key: dict[str, Any]


def build_engines(
    recipe: Recipe,
    plan: EnginePlan,
    output: Output,
    seam: EngineSeam | None = None,
    gpu_probe: GpuProbe = visible_gpu,
    force: bool = False,
) -> EnginesResult:
    """Guards, then per planned engine: reuse or build, check, measure; then the fragment.

    ``seam`` is :mod:`nimbuild.builder.engines.trt_seam` unless a test passes a fake with the
    same functions (``probe_tensorrt``, ``build_engine``, ``check_engine``, ``measure_latency``).
    """
    if seam is None:
        from nimbuild.builder.engines import trt_seam

        seam = trt_seam

    found_gpu, gpu_problem = gpu_probe()
    found_trt, trt_problem = seam.probe_tensorrt()
    gpu, trt = check_host(plan, found_gpu, gpu_problem, found_trt, trt_problem)
    if not plan.planned:
        raise NimbuildError(
            f"no engine to build for {plan.sku.slug}: " + "; ".join(f"{e.precision}: {e.reason}" for e in plan.skipped),
            hint="add fp16 (or fp8 on compute capability >= 8.9) to the recipe's precisions and run `nimbuild export`",
        )
    check_graphs(plan)
    for note in plan.notes:
        output.warn(note)

    report = find_export_report(plan.out_dir) or {}
    model_revision = str(report.get("model_revision") or "unknown")
    reference = graph_path(plan.out_dir, "fp32")
    feeds, pairs_sha = evaluation_feeds(recipe, plan)
    reference_digest = graph_digest(reference)

    def checking_for(precision: str) -> _CheckInputs:  # its ONNX graph's bars: the recipe may judge fp8 by its own
        thresholds = recipe.thresholds.for_precision(precision)
        return _CheckInputs(reference, feeds, thresholds, check_key(reference_digest, pairs_sha, thresholds.to_dict()))

    plan.timing_cache.parent.mkdir(parents=True, exist_ok=True)

    results: list[EngineResult] = [EngineResult(e.precision, "skipped", e.reason) for e in plan.skipped]
    with output.progress() as progress:
        task = progress.add_task(f"engines for {plan.sku.slug}", total=len(plan.planned))
        for engine in plan.planned:
            progress.update(task, description=f"{engine.precision} engine for {plan.sku.slug}")
            results.append(
                _one_engine(plan, engine, seam, trt, gpu, model_revision, checking_for(engine.precision), force, output)
            )
            progress.advance(task)

    results.sort(key=lambda r: ENGINE_PRECISIONS.index(r.precision))
    passed = [r for r in results if r.passed]
    if passed:
        fragment: Path | None = write_fragment(plan, passed, report, recipe.sha256)
    else:
        fragment = None
        plan.fragment_path.unlink(missing_ok=True)  # never leave a stale fragment to be merged
    return EnginesResult(plan, gpu, trt.version, results, fragment)


def _check(
    seam: EngineSeam, engine_file: Path, plan: EnginePlan, checking: _CheckInputs
) -> tuple[dict[str, Any], dict[str, Any]]:
    check = seam.check_engine(engine_file, checking.reference, checking.feeds, checking.thresholds)
    latency = seam.measure_latency(engine_file, opt_feed(plan, checking.feeds[0][0]["feed"]))
    return check, latency


def _one_engine(
    plan: EnginePlan,
    engine: PlannedEngine,
    seam: EngineSeam,
    trt: TensorRTInfo,
    gpu: BuildGpu,
    model_revision: str,
    checking: _CheckInputs,
    force: bool,
    output: Output,
) -> EngineResult:
    """Reuse (re-checking if the check's inputs changed) or build one engine; never half-written."""
    ckey = checking.key
    bkey = build_key(plan, engine, graph_digest(engine.graph), trt.version, gpu)
    record = None if force else read_record(engine)
    tags = engine_tags(plan, trt, model_revision, engine.precision)
    if record is not None and reusable(record, engine, bkey):
        status = "reused"
        if record.get("check_key") == json_digest(ckey) and record.get("gate") is not None:
            output.note(f"{engine.precision}: reusing {engine.engine_path} (inputs unchanged)")
            return _result_from_record(engine, record, status, tags)
        output.note(f"{engine.precision}: reusing {engine.engine_path}; re-checking it (pairs or thresholds changed)")
        build_seconds = record.get("metrics", {}).get("build_seconds")
        check, latency = _check(seam, engine.engine_path, plan, checking)
        record = _record(engine, bkey, ckey, tags, gpu, trt, build_seconds, check, latency)
        write_json(engine.engine_dir / RECORD_FILE, record)
        return _result_from_record(engine, record, status, tags)

    output.note(f"{engine.precision}: building {engine.engine_path} from {engine.graph}")
    try:
        with staging_dir(engine.engine_dir) as staged:
            staged_engine = staged / ENGINE_FILE
            started = time.perf_counter()
            seam.build_engine(engine.graph, staged_engine, plan.create_config_args(engine))
            build_seconds = round(time.perf_counter() - started, 3)
            check, latency = _check(seam, staged_engine, plan, checking)
            record = _record(engine, bkey, ckey, tags, gpu, trt, build_seconds, check, latency, staged_engine)
            write_json(staged / RECORD_FILE, record)
            script = staged / REPRODUCE_FILE
            script.write_text(reproduce_script(plan, engine, trt, gpu), encoding="utf-8")
            script.chmod(0o755)
    except NimbuildError as exc:
        output.warn(f"{engine.precision}: engine not built: {exc}")
        return EngineResult(engine.precision, "failed", str(exc), tags=tags)
    return _result_from_record(engine, record, "built", tags)


def _record(
    engine: PlannedEngine,
    bkey: dict[str, Any],
    ckey: dict[str, Any],
    tags: dict[str, str],
    gpu: BuildGpu,
    trt: TensorRTInfo,
    build_seconds: float | None,
    check: Mapping[str, Any],
    latency: dict[str, Any],
    engine_file: Path | None = None,
) -> dict[str, Any]:
    engine_file = engine_file or engine.engine_path
    gate = check["gate"]
    metrics = {  # the same names as the ONNX profiles' (size_bytes, build_seconds, gate)
        "size_bytes": engine_file.stat().st_size,
        "build_seconds": build_seconds,
        "gate": gate,
        "latency_ms": latency,
        "gpu_name": gpu.name,
        "trt_version_full": trt.version,
    }
    return {
        "schema": CACHE_SCHEMA,
        "precision": engine.precision,
        "build_key": json_digest(bkey),
        "build_inputs": bkey,
        "check_key": json_digest(ckey),
        "engine_sha256": sha256_file(engine_file),
        "tags": tags,
        "metrics": metrics,
        "gate": gate,
        "comparator": check.get("comparator"),
    }


def _result_from_record(
    engine: PlannedEngine, record: Mapping[str, Any], status: str, tags: dict[str, str]
) -> EngineResult:
    gate = record.get("gate") or {}
    metrics = dict(record.get("metrics") or {})
    if not gate.get("passed"):
        failures = "; ".join(gate.get("failures") or []) or "engine check failed"
        reason = f"engine check against ONNX Runtime FP32 failed: {failures}"
        return EngineResult(engine.precision, "failed", reason, engine.engine_path, tags, metrics, gate)
    return EngineResult(engine.precision, status, None, engine.engine_path, tags, metrics, gate)


def engines_command(
    recipe_path: Path,
    gpu: str,
    out_dir: Path | None,
    output: Output,
    *,
    dry_run: bool = False,
    options: BuildOptions | None = None,
    timing_cache: Path | None = None,
    force: bool = False,
    seam: EngineSeam | None = None,
    gpu_probe: GpuProbe = visible_gpu,
) -> EnginePlan | EnginesResult:
    """What `nimbuild engines` does: the plan (``dry_run``), or the engines and their fragment."""
    from nimbuild.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    sku = resolve_sku(gpu, gpu_probe)
    plan = plan_engines(recipe, sku, Path(out_dir) if out_dir else recipe.default_out_dir, options, timing_cache)
    if dry_run:
        return plan
    return build_engines(recipe, plan, output, seam=seam, gpu_probe=gpu_probe, force=force)
