"""TensorRT engines for one GPU SKU: the plan, the guards, the build cache, the fragment.

`nimbuild engines RECIPE --gpu SKU` turns the precision graphs that `nimbuild
export` left (``OUT/onnx/fp8``, ``OUT/onnx/fp16``: precision lives in the graph)
into one strongly typed engine each, with one optimization profile spanning the
recipe's batch x sequence min/opt/max for every graph input. Everything here
runs without TensorRT and without a GPU: the plan, the Polygraphy ``Profile``
and config arguments, the equivalent ``polygraphy convert`` command line, the
guards, the cache keys, the fragment. The TensorRT calls themselves live behind
one narrow seam, :mod:`nimbuild.builder.trt_seam`, which tests replace by a fake.

Layout (docs/internals.md)::

    OUT/engines/<sku-slug>/timing.cache            persistent tactic timing cache per SKU
    OUT/engines/<sku-slug>/<precision>/model.plan  the engine
    OUT/engines/<sku-slug>/<precision>/reproduce.sh  the same build with `polygraphy convert`
    OUT/engines/<sku-slug>/<precision>/build.json  cache keys, metadata, check result
    OUT/engines/<sku-slug>/fragment.yaml           manifest fragment for `nimbuild manifest merge`
                                                   (paths relative to its folder: fp8/model.plan)
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import atomic_write_text, staging_dir

ENGINE_PRECISIONS = ("fp8", "fp16")  # the order engines are planned, built and listed in
ENGINE_FILE = "model.plan"
REPRODUCE_FILE = "reproduce.sh"
RECORD_FILE = "build.json"
TIMING_CACHE_FILE = "timing.cache"
FRAGMENT_FILE = "fragment.yaml"
# Bump when what a build.json means changes, so that old engines are rebuilt, not trusted.
CACHE_SCHEMA = 1
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default, written out for reproducibility
# Hardware-compatible engines run on every GPU of the same compute capability
# (TensorRT >= 10.9), which is what selection matches them on (DESIGN.md).
HARDWARE_COMPATIBILITY_LEVEL = "same_compute_capability"
# A cross-encoder's usual inputs, shown in a dry run before `nimbuild export` has said which it has.
ASSUMED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SYNTHETIC_QUERIES, SYNTHETIC_PASSAGES = 12, 8  # as `nimbuild export` without a pairs file

TENSORRT_HINT = (
    "run inside NVIDIA's TensorRT or Triton container (nvcr.io/nvidia/tensorrt, "
    "nvcr.io/nvidia/tritonserver) or `pip install --extra-index-url https://pypi.nvidia.com tensorrt`"
)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class InputShape:
    """min/opt/max of one graph input: (batch, sequence) from the recipe's shapes."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def describe(self) -> str:
        def dims(shape: tuple[int, ...]) -> str:
            return "x".join(str(d) for d in shape)

        return f"{self.name}: min {dims(self.min)}, opt {dims(self.opt)}, max {dims(self.max)}"


@dataclass(frozen=True)
class BuildOptions:
    """What changes an engine besides its graph, its shapes, the GPU and TensorRT."""

    builder_optimization_level: int = DEFAULT_OPT_LEVEL
    workspace_bytes: int | None = None
    hardware_compatible: bool = False

    @property
    def hardware_compatibility_level(self) -> str | None:
        return HARDWARE_COMPATIBILITY_LEVEL if self.hardware_compatible else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "builder_optimization_level": self.builder_optimization_level,
            "workspace_bytes": self.workspace_bytes,
            "hardware_compatibility_level": self.hardware_compatibility_level,
            "strongly_typed": True,
        }


@dataclass
class PlannedEngine:
    """One engine of the plan: built from ``graph`` into ``engine_dir``, or skipped with a reason."""

    precision: str
    status: str  # "planned" or "skipped"
    reason: str | None
    graph: Path  # OUT/onnx/<precision>/model.onnx
    engine_dir: Path  # OUT/engines/<sku-slug>/<precision>
    shapes: tuple[InputShape, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def engine_path(self) -> Path:
        return self.engine_dir / ENGINE_FILE

    def polygraphy_profile(self):
        """The optimization profile as Polygraphy's own ``Profile`` (no TensorRT needed)."""
        from polygraphy.backend.trt import Profile

        profile = Profile()
        for shape in self.shapes:
            profile.add(shape.name, min=shape.min, opt=shape.opt, max=shape.max)
        return profile


@dataclass
class EnginePlan:
    """Which engines, from which graphs, with which shapes and options, for which SKU."""

    model: str
    recipe_path: Path
    sku: Any  # nimbuild.skus.Sku
    out_dir: Path
    options: BuildOptions
    timing_cache: Path
    engines: list[PlannedEngine]
    inputs: tuple[str, ...]
    inputs_assumed: bool
    batch: tuple[int, int, int]
    sequence: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)

    @property
    def planned(self) -> list[PlannedEngine]:
        return [e for e in self.engines if e.status == "planned"]

    @property
    def skipped(self) -> list[PlannedEngine]:
        return [e for e in self.engines if e.status == "skipped"]

    @property
    def sku_dir(self) -> Path:
        return self.out_dir / "engines" / self.sku.slug

    @property
    def fragment_path(self) -> Path:
        return self.sku_dir / FRAGMENT_FILE

    def create_config_args(self, engine: PlannedEngine) -> dict[str, Any]:
        """Keyword arguments for Polygraphy's ``CreateConfig``, TensorRT enums still as names.

        The seam turns ``memory_pool_limits`` keys and ``hardware_compatibility_level``
        into ``trt.MemoryPoolType`` / ``trt.HardwareCompatibilityLevel`` members; nothing
        else needs TensorRT, so this is what tests check against Polygraphy's CLI.
        """
        args: dict[str, Any] = {
            "profiles": [engine.polygraphy_profile()],
            "builder_optimization_level": self.options.builder_optimization_level,
            "load_timing_cache": str(self.timing_cache),
        }
        if self.options.workspace_bytes is not None:
            args["memory_pool_limits"] = {"workspace": self.options.workspace_bytes}
        if self.options.hardware_compatibility_level:
            args["hardware_compatibility_level"] = self.options.hardware_compatibility_level
        return args

    def polygraphy_argv(self, engine: PlannedEngine, relative_to: Path | None = None) -> list[str]:
        """The ``polygraphy convert`` arguments that build the same engine.

        Paths are relative to ``relative_to`` when given (``reproduce.sh`` runs from the
        engine's folder), else as the plan holds them.
        """

        def path(p: Path) -> str:
            return os.path.relpath(p, relative_to) if relative_to is not None else str(p)

        def shapes(attr: str) -> list[str]:
            return [f"{s.name}:[{','.join(str(d) for d in getattr(s, attr))}]" for s in engine.shapes]

        argv = ["polygraphy", "convert", path(engine.graph), "--convert-to", "trt", "--strongly-typed"]
        argv += ["--trt-min-shapes", *shapes("min")]
        argv += ["--trt-opt-shapes", *shapes("opt")]
        argv += ["--trt-max-shapes", *shapes("max")]
        argv += ["--builder-optimization-level", str(self.options.builder_optimization_level)]
        if self.options.workspace_bytes is not None:
            argv += ["--pool-limit", f"workspace:{self.options.workspace_bytes}"]
        if self.options.hardware_compatibility_level:
            argv += ["--hardware-compatibility-level", self.options.hardware_compatibility_level]
        timing = path(self.timing_cache)
        argv += ["--load-timing-cache", timing, "--save-timing-cache", timing]
        argv += ["-o", path(engine.engine_path)]
        return argv

    def polygraphy_command(self, engine: PlannedEngine, relative_to: Path | None = None) -> str:
        return shlex.join(self.polygraphy_argv(engine, relative_to))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "recipe": str(self.recipe_path),
            "gpu": self.sku.canonical,
            "sku": self.sku.slug,
            "compute_capability": self.sku.compute_capability,
            "out": str(self.out_dir),
            "options": self.options.to_dict(),
            "timing_cache": str(self.timing_cache),
            "fragment": str(self.fragment_path),
            "inputs": list(self.inputs),
            "inputs_assumed": self.inputs_assumed,
            "shapes": {"batch": list(self.batch), "sequence": list(self.sequence)},
            "notes": list(self.notes),
            "engines": [
                {
                    "precision": e.precision,
                    "status": e.status,
                    "reason": e.reason,
                    "graph": str(e.graph),
                    "engine": str(e.engine_path),
                    "shapes": [s.to_dict() for s in e.shapes],
                    "notes": list(e.notes),
                    "polygraphy_command": self.polygraphy_command(e) if e.status == "planned" else None,
                }
                for e in self.engines
            ],
        }


def read_export_report(out_dir: Path) -> dict[str, Any] | None:
    """``OUT/export_report.json``, or None before `nimbuild export` has run."""
    path = out_dir / "export_report.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NimbuildError(
            f"{path}: cannot read the export report ({exc})", hint="run `nimbuild export` again to rewrite it"
        ) from None
    if not isinstance(data, dict):
        raise NimbuildError(f"{path}: expected a JSON object", hint="run `nimbuild export` again to rewrite it")
    return data


def graph_inputs(out_dir: Path, report: Mapping[str, Any] | None) -> tuple[tuple[str, ...], bool]:
    """The graph's input names and whether they are assumed (nothing exported yet).

    The export report names them; failing that the FP32 graph itself (read without
    its weights); failing that a cross-encoder's usual three, flagged as assumed.
    """
    if report and isinstance(report.get("inputs"), list) and report["inputs"]:
        return tuple(str(name) for name in report["inputs"]), False
    for precision in ("fp32", *ENGINE_PRECISIONS):
        graph = out_dir / "onnx" / precision / "model.onnx"
        if graph.is_file():
            import onnx

            model = onnx.load(str(graph), load_external_data=False)
            initializers = {init.name for init in model.graph.initializer}
            return tuple(i.name for i in model.graph.input if i.name not in initializers), False
    return ASSUMED_INPUTS, True


def _range(recipe_shapes: Any, axis: str) -> tuple[int, int, int]:
    r = getattr(recipe_shapes, axis)
    return int(r.min), int(r.opt), int(r.max)


def plan_engines(
    recipe: Any, sku: Any, out_dir: Path, options: BuildOptions | None = None, timing_cache: Path | None = None
) -> EnginePlan:
    """The plan for ``sku``: which engines, from which graphs, which shapes; nothing is built.

    FP8 on a GPU below compute capability 8.9 is skipped with the reason, as is a
    precision the recipe does not ask for or that `nimbuild export` rejected.
    """
    options = options or BuildOptions()
    out_dir = Path(out_dir)
    report = read_export_report(out_dir)
    inputs, assumed = graph_inputs(out_dir, report)
    batch, sequence = _range(recipe.shapes, "batch"), _range(recipe.shapes, "sequence")
    shapes = tuple(
        InputShape(name, (batch[0], sequence[0]), (batch[1], sequence[1]), (batch[2], sequence[2])) for name in inputs
    )
    sku_dir = out_dir / "engines" / sku.slug
    plan = EnginePlan(
        model=recipe.name,
        recipe_path=Path(recipe.path),
        sku=sku,
        out_dir=out_dir,
        options=options,
        timing_cache=Path(timing_cache) if timing_cache else sku_dir / TIMING_CACHE_FILE,
        engines=[],
        inputs=inputs,
        inputs_assumed=assumed,
        batch=batch,
        sequence=sequence,
    )
    if assumed:
        plan.notes.append(
            f"nothing exported in {out_dir} yet: input names assumed ({', '.join(inputs)}); "
            f"run `nimbuild export {recipe.path} --out {out_dir}` first"
        )
    wanted = [str(p) for p in recipe.precisions]
    recipe_gpus = [str(g) for g in getattr(recipe, "gpus", []) or []]
    if recipe_gpus and not _sku_listed(sku, recipe_gpus):
        plan.notes.append(f"{sku.slug} is not among the recipe's gpus ({', '.join(recipe_gpus)})")
    precisions_report = (report or {}).get("precisions") or {}
    for precision in ENGINE_PRECISIONS:
        graph = out_dir / "onnx" / precision / "model.onnx"
        engine = PlannedEngine(precision, "planned", None, graph, sku_dir / precision, shapes)
        exported = precisions_report.get(precision) if isinstance(precisions_report, dict) else None
        if precision not in wanted:
            engine.status, engine.reason = (
                "skipped",
                f"{precision} is not in the recipe's precisions ({', '.join(wanted)})",
            )
        elif precision == "fp8" and not sku.fp8:
            engine.status = "skipped"
            engine.reason = f"FP8 needs compute capability >= 8.9; {sku.canonical} has {sku.compute_capability}"
        elif isinstance(exported, dict) and exported.get("status") not in (None, "passed"):
            engine.status = "skipped"
            why = exported.get("reason") or "see export_report.json"
            engine.reason = f"the {precision} graph was {exported.get('status')} by `nimbuild export`: {why}"
        elif not graph.is_file():
            engine.notes.append(f"{graph} does not exist yet: `nimbuild export` writes it")
        plan.engines.append(engine)
    return plan


def _sku_listed(sku: Any, names: Sequence[str]) -> bool:
    from nimbuild import skus

    for name in names:
        try:
            if skus.lookup(name).canonical == sku.canonical:
                return True
        except NimbuildError:
            continue
    return False


# --------------------------------------------------------------------------- guards


@dataclass(frozen=True)
class BuildGpu:
    """The GPU TensorRT would build on (CUDA device 0 of those visible)."""

    name: str
    pci_device_id: str
    compute_capability: str
    index: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pci_device_id": self.pci_device_id,
            "compute_capability": self.compute_capability,
            "index": self.index,
        }


def visible_gpu(env: Mapping[str, str] = os.environ) -> tuple[BuildGpu | None, str | None]:
    """The GPU a build would use, through NVML, or None and why there is none.

    NVML numbers every GPU of the host; CUDA (and so TensorRT) builds on the first
    one ``CUDA_VISIBLE_DEVICES`` lets it see, given by index or UUID.
    """
    from nimbuild.runtime.hardware import detect_host

    host = detect_host({})  # NIM_CPU_ONLY is for serving, not for building
    if not host.gpus:
        return None, host.cpu_only_reason or "NVML found no GPU"
    chosen = host.gpus[0]
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        first = visible.split(",")[0].strip()
        if first == "" or first.startswith("-"):
            return None, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
        if first.isdigit():
            matches = [g for g in host.gpus if g.index == int(first)]
        else:
            matches = [g for g in host.gpus if g.uuid and g.uuid.startswith(first)]
        if not matches:
            return None, f"CUDA_VISIBLE_DEVICES={visible!r} names no GPU that NVML sees"
        chosen = matches[0]
    return BuildGpu(chosen.name, chosen.pci_device_id, chosen.compute_capability, chosen.index), None


def resolve_sku(gpu: str, probe: Callable[[], tuple[BuildGpu | None, str | None]] = visible_gpu):
    """``--gpu SKU`` through the catalog, or ``--gpu auto``: the SKU of the visible GPU."""
    from nimbuild import skus

    if gpu.strip().lower() != "auto":
        return skus.lookup(gpu)
    found, why = probe()
    if found is None:
        raise NimbuildError(
            f"--gpu auto: no GPU visible ({why})",
            hint=f"run it on the GPU host, or name the SKU: --gpu <{skus.catalog()[0].slug}|...>",
        )
    sku = skus.by_pci_device_id(found.pci_device_id) or skus.by_nvml_name(found.name)
    if sku is None:
        raise NimbuildError(
            f"--gpu auto: the visible GPU {found.name} [{found.pci_device_id}] is not in nimbuild's SKU catalog",
            hint=f"add it to {skus.CATALOG_PATH}, or name a SKU with --gpu",
        )
    return sku


def check_host(
    plan: EnginePlan, gpu: BuildGpu | None, gpu_problem: str | None, trt: Any, trt_problem: str | None
) -> None:
    """Before any work: a GPU, TensorRT, and the GPU is the plan's SKU. One error naming all that is missing."""
    missing = []
    if gpu is None:
        missing.append(f"no NVIDIA GPU is visible ({gpu_problem})")
    if trt is None:
        missing.append(f"TensorRT is not installed ({trt_problem})")
    if missing:
        hints = []
        if gpu is None:
            hints.append(f"run on a host with the {plan.sku.canonical} GPU")
        if trt is None:
            hints.append(TENSORRT_HINT)
        hints.append("`--dry-run` prints the plan without either")
        raise NimbuildError(
            f"cannot build TensorRT engines for {plan.sku.slug}: {' and '.join(missing)}", hint="; ".join(hints)
        )
    sku = plan.sku
    if plan.options.hardware_compatible:
        if gpu.compute_capability != sku.compute_capability:
            raise NimbuildError(
                f"--hardware-compatible build for {sku.canonical} (compute capability {sku.compute_capability}) "
                f"needs a GPU of that compute capability; the visible one is {gpu.name} [{gpu.pci_device_id}] "
                f"with {gpu.compute_capability}",
                hint="build on a GPU of the same compute capability, or pick the SKU that is here (--gpu auto)",
            )
        level = plan.options.hardware_compatibility_level
        if level not in trt.hardware_compatibility_levels:
            raise NimbuildError(
                f"TensorRT {trt.version} cannot build {level} hardware-compatible engines",
                hint="use TensorRT >= 10.9 (a newer NVIDIA container), or build without --hardware-compatible",
            )
    elif gpu.pci_device_id not in sku.pci_device_ids:
        raise NimbuildError(
            f"--gpu {sku.slug} asks for {sku.canonical} [{', '.join(sku.pci_device_ids)}], but the visible GPU is "
            f"{gpu.name} [{gpu.pci_device_id}]",
            hint="run on a host with that GPU, use --gpu auto for this one, or --hardware-compatible "
            "to build for every GPU of the same compute capability",
        )


def check_graphs(plan: EnginePlan) -> None:
    """Every planned graph, the FP32 reference and the tokenizer exist (nothing exported -> say so)."""
    needed = [e.graph for e in plan.planned] + [
        plan.out_dir / "onnx" / "fp32" / "model.onnx",
        plan.out_dir / "tokenizer",
    ]
    absent = [p for p in needed if not p.exists()]
    if absent:
        raise NimbuildError(
            f"{absent[0]} not found (needed to build and check the engines)",
            hint=f"run `nimbuild export {plan.recipe_path} --out {plan.out_dir}` first",
        )


# --------------------------------------------------------------------------- cache


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_digest(graph: Path) -> str:
    """sha256 of the graph and of its external-data file, if it has one."""
    digest = sha256_file(graph)
    data = graph.with_name(graph.name + ".data")
    if data.is_file():
        digest = hashlib.sha256(f"{digest}:{sha256_file(data)}".encode()).hexdigest()
    return digest


def _key(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def build_key(
    plan: EnginePlan, engine: PlannedEngine, graph_sha256: str, trt_version: str, gpu: BuildGpu
) -> dict[str, Any]:
    """Everything an engine's bytes depend on; the same key means the engine can be reused."""
    return {
        "schema": CACHE_SCHEMA,
        "graph_sha256": graph_sha256,
        "trt_version": trt_version,
        "sku": plan.sku.canonical,
        # a hardware-compatible engine depends on the compute capability, a plain one on the exact GPU
        "target": gpu.compute_capability if plan.options.hardware_compatible else gpu.pci_device_id,
        "shapes": [s.to_dict() for s in engine.shapes],
        "options": plan.options.to_dict(),
    }


def check_key(reference_sha256: str, pairs_sha256: str, thresholds: Mapping[str, Any]) -> dict[str, Any]:
    """What the engine check depends on besides the engine: a change re-runs the check, not the build."""
    return {
        "schema": CACHE_SCHEMA,
        "reference_sha256": reference_sha256,
        "pairs_sha256": pairs_sha256,
        "thresholds": dict(thresholds),
    }


def read_record(engine: PlannedEngine) -> dict[str, Any] | None:
    path = engine.engine_dir / RECORD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def reusable(record: Mapping[str, Any] | None, engine: PlannedEngine, key: Mapping[str, Any]) -> bool:
    """The recorded engine was built from the same inputs and its bytes are the ones recorded."""
    if not record or record.get("build_key") != _key(key) or not engine.engine_path.is_file():
        return False
    return record.get("engine_sha256") == sha256_file(engine.engine_path)


# --------------------------------------------------------------------------- build


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


def reproduce_script(plan: EnginePlan, engine: PlannedEngine, trt: Any, gpu: BuildGpu) -> str:
    """``reproduce.sh``: the same engine with ``polygraphy convert``, run from the engine's folder."""
    from nimbuild import __version__

    argv = plan.polygraphy_argv(engine, relative_to=engine.engine_dir)
    lines = [" ".join(shlex.quote(a) for a in argv[:5])]
    rest = argv[5:]
    # one flag (and its values) per line, for a readable script
    i = 0
    while i < len(rest):
        j = i + 1
        while j < len(rest) and not rest[j].startswith("-"):
            j += 1
        lines.append(" ".join(shlex.quote(a) for a in rest[i:j]))
        i = j
    command = " \\\n    ".join(lines)
    return (
        "#!/bin/sh\n"
        f"# Rebuilds {ENGINE_FILE} ({engine.precision}, {plan.model}) with the TensorRT calls nimbuild made,\n"
        f"# through Polygraphy's CLI. Built by nimbuild {__version__} with TensorRT {trt.version}\n"
        f"# (CUDA {trt.cuda_major_version}) on {gpu.name} [{gpu.pci_device_id}], compute capability "
        f"{gpu.compute_capability}.\n"
        "# An engine only runs with the TensorRT version that built it.\n"
        "set -eu\n"
        'cd "$(dirname "$0")"\n'
        f"{command}\n"
    )


def evaluation_feeds(recipe: Any, plan: EnginePlan) -> tuple[list[list[dict]], str]:
    """The recipe's evaluation pairs as engine feeds: per query, batches within the profile.

    Returns (per query a list of ``{"feed", "rows"}`` chunks, sha256 of the pairs):
    a query with more passages than the profile's max batch is split, a chunk below
    its min batch is padded with copies of its last row (``rows`` says how many are
    real), so that the gate judges each query's full ranking. Without a pairs file,
    the same synthetic pairs as `nimbuild export` (parity only).
    """
    import numpy as np

    from nimbuild.builder import pairs as pairs_mod

    tokenizer = pairs_mod.load_tokenizer(
        plan.out_dir / "tokenizer", trust_remote_code=bool(getattr(recipe, "trust_remote_code", False))
    )
    if recipe.pairs:
        pairs_path = recipe.resolve(recipe.pairs)
        groups = pairs_mod.load_pairs(pairs_path)
        pairs_sha = sha256_file(pairs_path)
    else:
        groups = pairs_mod.synthesize_pairs(tokenizer, SYNTHETIC_QUERIES, SYNTHETIC_PASSAGES, seed=0)
        pairs_sha = _key({"synthetic": [[g.query, list(g.passages)] for g in groups]})
    encoded = pairs_mod.encode(tokenizer, groups, plan.sequence[2], list(plan.inputs))
    bmin, _, bmax = plan.batch
    feeds: list[list[dict]] = []
    for query in encoded:
        arrays = {name: np.ascontiguousarray(query[name], dtype=np.int64) for name in plan.inputs}
        n = next(iter(arrays.values())).shape[0]
        chunks = []
        for start in range(0, n, bmax):
            chunk = {k: v[start : start + bmax] for k, v in arrays.items()}
            rows = next(iter(chunk.values())).shape[0]
            if rows < bmin:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], bmin - rows, axis=0)]) for k, v in chunk.items()}
            chunk = {k: _fit_sequence(v, plan.sequence[0]) for k, v in chunk.items()}
            chunks.append({"feed": chunk, "rows": rows})
        feeds.append(chunks)
    return feeds, pairs_sha


def _fit_sequence(array, min_len: int):
    import numpy as np

    if array.shape[1] >= min_len:
        return array
    return np.pad(array, ((0, 0), (0, min_len - array.shape[1])))


def opt_feed(plan: EnginePlan, sample: Mapping[str, Any]) -> dict:
    """A feed at the profile's opt shape, made of real tokens, for the latency measurement."""
    import numpy as np

    batch, seq = plan.batch[1], plan.sequence[1]
    feed = {}
    for name, array in sample.items():
        row = np.resize(np.asarray(array[0], dtype=np.int64), seq)
        feed[name] = np.ascontiguousarray(np.tile(row, (batch, 1)))
    return feed


def engine_tags(plan: EnginePlan, trt: Any, model_revision: str, precision: str) -> dict[str, str]:
    from nimbuild import profiles

    level = plan.options.hardware_compatibility_level
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
        hardware_compatible=level or False,
    )


def _thresholds_dict(thresholds: Any, precision: str) -> dict[str, Any]:
    """The thresholds that judge ``precision``'s engine: the same as its ONNX graph's, agreement only.

    A bound on the label NDCG@10 loss (``label_ndcg10_drop``) judges the ONNX graph at export,
    where the labels are; an engine is judged by its agreement with the FP32 graph.
    """
    from nimbuild.builder.gate import thresholds_dict
    from nimbuild.builder.precision import thresholds_for

    return {**thresholds_dict(thresholds_for(thresholds, precision)), "label_ndcg10_drop": None}


def build_engines(
    recipe: Any,
    plan: EnginePlan,
    output: Any,
    seam: Any = None,
    gpu_probe: Callable[[], tuple[BuildGpu | None, str | None]] = visible_gpu,
    force: bool = False,
) -> EnginesResult:
    """Guards, then per planned engine: reuse or build, check, measure; then the fragment.

    ``seam`` is :mod:`nimbuild.builder.trt_seam` unless a test passes a fake with the
    same functions (``probe_tensorrt``, ``build_engine``, ``check_engine``,
    ``measure_latency``).
    """
    if seam is None:
        from nimbuild.builder import trt_seam as seam

    gpu, gpu_problem = gpu_probe()
    trt, trt_problem = seam.probe_tensorrt()
    check_host(plan, gpu, gpu_problem, trt, trt_problem)
    if not plan.planned:
        raise NimbuildError(
            f"no engine to build for {plan.sku.slug}: " + "; ".join(f"{e.precision}: {e.reason}" for e in plan.skipped),
            hint="add fp16 (or fp8 on compute capability >= 8.9) to the recipe's precisions and run `nimbuild export`",
        )
    check_graphs(plan)
    for note in plan.notes:
        output.warn(note)

    report = read_export_report(plan.out_dir) or {}
    model_revision = str(report.get("model_revision") or "unknown")
    reference = plan.out_dir / "onnx" / "fp32" / "model.onnx"
    feeds, pairs_sha = evaluation_feeds(recipe, plan)
    reference_digest = graph_digest(reference)

    def checking_for(precision: str) -> _CheckInputs:  # per precision: the recipe may judge fp8 by its own thresholds
        thresholds = _thresholds_dict(recipe.thresholds, precision)
        return _CheckInputs(reference, feeds, thresholds, check_key(reference_digest, pairs_sha, thresholds))

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
        fragment = write_fragment(plan, passed, report, recipe.sha256)
    else:
        fragment = None
        plan.fragment_path.unlink(missing_ok=True)  # never leave a stale fragment to be merged
    return EnginesResult(plan, gpu, trt.version, results, fragment)


@dataclass(frozen=True)
class _CheckInputs:
    """What every engine is checked with: the FP32 reference graph, the pairs' feeds, the thresholds."""

    reference: Path
    feeds: list
    thresholds: dict
    key: dict


def _check(seam: Any, engine_file: Path, plan: EnginePlan, checking: _CheckInputs) -> tuple[dict, dict]:
    check = seam.check_engine(engine_file, checking.reference, checking.feeds, checking.thresholds)
    latency = seam.measure_latency(engine_file, opt_feed(plan, checking.feeds[0][0]["feed"]))
    return check, latency


def _one_engine(
    plan: EnginePlan,
    engine: PlannedEngine,
    seam: Any,
    trt: Any,
    gpu: BuildGpu,
    model_revision: str,
    checking: _CheckInputs,
    force: bool,
    output: Any,
) -> EngineResult:
    """Reuse (re-checking if the check's inputs changed) or build one engine; never half-written."""
    ckey = checking.key
    bkey = build_key(plan, engine, graph_digest(engine.graph), trt.version, gpu)
    record = None if force else read_record(engine)
    tags = engine_tags(plan, trt, model_revision, engine.precision)
    if reusable(record, engine, bkey):
        status = "reused"
        if record.get("check_key") == _key(ckey) and record.get("gate") is not None:
            output.note(f"{engine.precision}: reusing {engine.engine_path} (inputs unchanged)")
            return _result_from_record(engine, record, status, tags)
        output.note(f"{engine.precision}: reusing {engine.engine_path}; re-checking it (pairs or thresholds changed)")
        build_seconds = record.get("metrics", {}).get("build_seconds")
        check, latency = _check(seam, engine.engine_path, plan, checking)
        record = _record(plan, engine, bkey, ckey, tags, gpu, trt, build_seconds, check, latency)
        atomic_write_text(engine.engine_dir / RECORD_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return _result_from_record(engine, record, status, tags)

    output.note(f"{engine.precision}: building {engine.engine_path} from {engine.graph}")
    try:
        with staging_dir(engine.engine_dir) as staged:
            staged_engine = staged / ENGINE_FILE
            started = time.perf_counter()
            seam.build_engine(engine.graph, staged_engine, plan.create_config_args(engine))
            build_seconds = round(time.perf_counter() - started, 3)
            check, latency = _check(seam, staged_engine, plan, checking)
            record = _record(
                plan, engine, bkey, ckey, tags, gpu, trt, build_seconds, check, latency, engine_file=staged_engine
            )
            (staged / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            script = staged / REPRODUCE_FILE
            script.write_text(reproduce_script(plan, engine, trt, gpu), encoding="utf-8")
            script.chmod(0o755)
    except NimbuildError as exc:
        output.warn(f"{engine.precision}: engine not built: {exc}")
        return EngineResult(engine.precision, "failed", str(exc), tags=tags)
    return _result_from_record(engine, record, "built", tags)


def _record(
    plan, engine, bkey, ckey, tags, gpu, trt, build_seconds, check, latency, engine_file: Path | None = None
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
        "build_key": _key(bkey),
        "build_inputs": bkey,
        "check_key": _key(ckey),
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
    if not gate.get("passed"):
        failures = "; ".join(gate.get("failures") or []) or "engine check failed"
        return EngineResult(
            engine.precision,
            "failed",
            f"engine check against ONNX Runtime FP32 failed: {failures}",
            engine.engine_path,
            tags,
            dict(record.get("metrics") or {}),
            gate,
        )
    return EngineResult(
        engine.precision, status, None, engine.engine_path, tags, dict(record.get("metrics") or {}), gate
    )


# --------------------------------------------------------------------------- fragment


def write_fragment(
    plan: EnginePlan, passed: Sequence[EngineResult], report: Mapping[str, Any], recipe_sha256: str
) -> Path:
    """``OUT/engines/<sku-slug>/fragment.yaml``: the passing engines as profiles.

    A manifest whose paths are relative to its own folder (``fp16/model.plan``);
    `nimbuild manifest build`/`merge` rebase them into the export dir's manifest.
    Engines that failed their check are not in it.
    """
    from nimbuild import __version__, manifest, profiles

    root = plan.sku_dir
    entries = []
    for result in passed:
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


# --------------------------------------------------------------------------- entry point


def engines_command(
    recipe_path: Path,
    gpu: str,
    out_dir: Path | None,
    output: Any,
    *,
    dry_run: bool = False,
    options: BuildOptions | None = None,
    timing_cache: Path | None = None,
    force: bool = False,
    seam: Any = None,
    gpu_probe: Callable[[], tuple[BuildGpu | None, str | None]] = visible_gpu,
):
    """What `nimbuild engines` does: the plan (``dry_run``), or the engines and their fragment."""
    from nimbuild.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    sku = resolve_sku(gpu, gpu_probe)
    plan = plan_engines(recipe, sku, Path(out_dir) if out_dir else recipe.default_out_dir, options, timing_cache)
    if dry_run:
        return plan
    return build_engines(recipe, plan, output, seam=seam, gpu_probe=gpu_probe, force=force)
