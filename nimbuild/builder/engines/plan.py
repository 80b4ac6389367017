"""The engine plan: which engines, from which graphs, with which shapes and options, for which SKU.

Nothing here needs TensorRT or a GPU: the plan, Polygraphy's ``Profile``, the
``CreateConfig`` arguments and the equivalent ``polygraphy convert`` command line
are all built from the recipe and the export folder, so ``--dry-run`` works anywhere.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import ENGINES_DIR, INPUT_NAMES, find_export_report, graph_path
from nimbuild.skus import Sku

if TYPE_CHECKING:
    from polygraphy.backend.trt import Profile as PolygraphyProfile

    from nimbuild.recipe import Recipe

ENGINE_PRECISIONS = ("fp8", "fp16")  # the order engines are planned, built and listed in
ENGINE_FILE = "model.plan"
REPRODUCE_FILE = "reproduce.sh"
RECORD_FILE = "build.json"
TIMING_CACHE_FILE = "timing.cache"
FRAGMENT_FILE = "fragment.yaml"
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default, written out for reproducibility
# Hardware-compatible engines run on every GPU of the same compute capability
# (TensorRT >= 10.9), which is what selection matches them on (docs/design.md).
HARDWARE_COMPATIBILITY_LEVEL = "same_compute_capability"
# A cross-encoder's usual inputs, shown in a dry run before `nimbuild export` has said which it has.
ASSUMED_INPUTS = INPUT_NAMES


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

    def polygraphy_profile(self) -> PolygraphyProfile:
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
    sku: Sku
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
        return self.out_dir / ENGINES_DIR / self.sku.slug

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


def graph_inputs(out_dir: Path, report: Mapping[str, Any] | None) -> tuple[tuple[str, ...], bool]:
    """The graph's input names and whether they are assumed (nothing exported yet).

    The export report names them; failing that the FP32 graph itself (read without
    its weights); failing that a cross-encoder's usual three, flagged as assumed.
    """
    if report and isinstance(report.get("inputs"), list) and report["inputs"]:
        return tuple(str(name) for name in report["inputs"]), False
    for precision in ("fp32", *ENGINE_PRECISIONS):
        graph = graph_path(out_dir, precision)
        if graph.is_file():
            import onnx

            model = onnx.load(str(graph), load_external_data=False)
            initializers = {init.name for init in model.graph.initializer}
            return tuple(i.name for i in model.graph.input if i.name not in initializers), False
    return ASSUMED_INPUTS, True


def _range(recipe: Recipe, axis: str) -> tuple[int, int, int]:
    r = getattr(recipe.shapes, axis)
    return int(r.min), int(r.opt), int(r.max)


def plan_engines(
    recipe: Recipe, sku: Sku, out_dir: Path, options: BuildOptions | None = None, timing_cache: Path | None = None
) -> EnginePlan:
    """The plan for ``sku``: which engines, from which graphs, which shapes; nothing is built.

    FP8 on a GPU below compute capability 8.9 is skipped with the reason, as is a
    precision the recipe does not ask for or that `nimbuild export` rejected.
    """
    options = options or BuildOptions()
    out_dir = Path(out_dir)
    report = find_export_report(out_dir)
    inputs, assumed = graph_inputs(out_dir, report)
    batch, sequence = _range(recipe, "batch"), _range(recipe, "sequence")
    shapes = tuple(
        InputShape(name, (batch[0], sequence[0]), (batch[1], sequence[1]), (batch[2], sequence[2])) for name in inputs
    )
    sku_dir = out_dir / ENGINES_DIR / sku.slug
    plan = EnginePlan(
        model=recipe.name,
        recipe_path=Path(recipe.path) if recipe.path is not None else Path(recipe.name),
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
    recipe_gpus = [str(g) for g in recipe.gpus]
    if recipe_gpus and not _sku_listed(sku, recipe_gpus):
        plan.notes.append(f"{sku.slug} is not among the recipe's gpus ({', '.join(recipe_gpus)})")
    precisions_report = report["precisions"] if report else {}
    for precision in ENGINE_PRECISIONS:
        graph = graph_path(out_dir, precision)
        engine = PlannedEngine(precision, "planned", None, graph, sku_dir / precision, shapes)
        exported = precisions_report.get(precision)
        if precision not in wanted:
            engine.status = "skipped"
            engine.reason = f"{precision} is not in the recipe's precisions ({', '.join(wanted)})"
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


def _sku_listed(sku: Sku, names: Sequence[str]) -> bool:
    from nimbuild import skus

    for name in names:
        try:
            if skus.lookup(name).canonical == sku.canonical:
                return True
        except NimbuildError:
            continue
    return False
