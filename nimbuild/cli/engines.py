"""`nimbuild engines`: TensorRT engines (FP8, FP16) for one GPU SKU, and their manifest fragment."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from nimbuild.builder.engines.build import EnginesResult
    from nimbuild.builder.engines.plan import EnginePlan
    from nimbuild.output import Output

from nimbuild.cli.options import JsonOpt, QuietOpt


def engines(
    recipe: Annotated[Path, typer.Argument(help="The recipe (recipes/*.yaml).", show_default=False)],
    gpu: Annotated[
        str,
        typer.Option(
            "--gpu",
            "-g",
            help="GPU SKU to build for (h100-sxm, an NVML name, a canonical name), or 'auto' for the visible GPU.",
            show_default=False,
        ),
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="The export dir `nimbuild export` wrote (default: out/<recipe name>, as export's)."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan and the equivalent `polygraphy convert` commands; needs no GPU and no TensorRT.",
        ),
    ] = False,
    hardware_compatible: Annotated[
        bool,
        typer.Option(
            "--hardware-compatible",
            help="Build engines that run on every GPU of the SKU's compute capability "
            "(TensorRT >= 10.9; tagged, matched on compute capability).",
        ),
    ] = False,
    opt_level: Annotated[
        int, typer.Option("--builder-optimization-level", help="TensorRT builder optimization level, 0-5.")
    ] = 3,
    workspace_mib: Annotated[
        int | None, typer.Option("--workspace-mib", help="TensorRT workspace memory pool limit, in MiB (>= 1).")
    ] = None,
    timing_cache: Annotated[
        Path | None,
        typer.Option(
            "--timing-cache",
            help="Timing cache file to load and update (default: engines/<sku>/timing.cache "
            "in the export dir; point CI caches here).",
        ),
    ] = None,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild", help="Ignore the build cache: rebuild every engine even when its inputs did not change."
        ),
    ] = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build strongly typed TensorRT engines (FP8, FP16) from the precision graphs, for one GPU SKU.

    Each engine is checked against ONNX Runtime on the recipe's pairs (the same ranking
    gate as the graphs); the passing ones go into engines/<sku>/fragment.yaml for
    `nimbuild manifest merge`. FP8 needs compute capability >= 8.9 and is skipped below.

    Example: nimbuild engines recipes/example-tiny.yaml --gpu h100-sxm --dry-run
    """
    from nimbuild.builder.engines.build import EnginesResult, engines_command
    from nimbuild.builder.engines.plan import BuildOptions, EnginePlan
    from nimbuild.errors import NimbuildError
    from nimbuild.output import Output
    from nimbuild.runtime.settings import check_range

    check_range(opt_level, "--builder-optimization-level", 0, 5)
    if workspace_mib is not None:
        check_range(workspace_mib, "--workspace-mib", 1, 1 << 30)
    out = Output(json_mode=json_mode, quiet=quiet)
    options = BuildOptions(
        builder_optimization_level=opt_level,
        workspace_bytes=workspace_mib * 1024 * 1024 if workspace_mib else None,
        hardware_compatible=hardware_compatible,
    )
    result = engines_command(
        recipe, gpu, out_dir, out, dry_run=dry_run, options=options, timing_cache=timing_cache, force=rebuild
    )
    if isinstance(result, EnginePlan):
        out.emit({"dry_run": True, **result.to_dict()}, functools.partial(_print_plan, plan=result))
        return
    assert isinstance(result, EnginesResult)
    out.emit(result.to_dict(), functools.partial(_print_results, result=result))
    if result.fragment is None:
        raise NimbuildError(
            f"no engine for {result.plan.sku.slug} passed: "
            + "; ".join(f"{r.precision} {r.status}: {r.reason}" for r in result.results),
            hint="see the engine check above; relax the recipe's thresholds only if the ranking change is acceptable",
        )


def _print_plan(o: Output, plan: EnginePlan) -> None:
    sku = plan.sku
    o.line(f"Engine plan for {plan.model} on {sku.canonical} ({sku.slug}, compute capability {sku.compute_capability})")
    opts = plan.options
    described = f"strongly typed, builder optimization level {opts.builder_optimization_level}"
    if opts.workspace_bytes:
        described += f", workspace {opts.workspace_bytes // (1024 * 1024)} MiB"
    if opts.hardware_compatibility_level:
        described += f", hardware compatibility {opts.hardware_compatibility_level}"
    o.line(f"  export dir:   {plan.out_dir}")
    o.line(f"  options:      {described}")
    o.line(f"  timing cache: {plan.timing_cache}")
    o.line(f"  fragment:     {plan.fragment_path}")
    for engine in plan.planned:
        o.line("")
        o.line(f"{engine.precision} engine: {engine.graph} -> {engine.engine_path}")
        o.line("  optimization profile:")
        for shape in engine.shapes:
            o.line(f"    {shape.describe()}")
        for note in engine.notes:
            o.line(f"  note: {note}")
        o.line("  polygraphy:")
        o.line(f"    {plan.polygraphy_command(engine)}")
    if plan.skipped:
        o.line("")
    for engine in plan.skipped:
        o.line(f"{engine.precision} engine skipped: {engine.reason}")
    for note in plan.notes:
        o.line(f"note: {note}")


def _print_results(o: Output, result: EnginesResult) -> None:
    plan = result.plan
    o.line(f"Engines for {plan.model} on {result.gpu.name} [{result.gpu.pci_device_id}], TensorRT {result.trt_version}")
    for r in result.results:
        if r.passed:
            m = r.metrics
            latency = m.get("latency_ms") or {}
            accuracy = (m.get("gate") or {}).get("metrics") or {}
            acc = ", ".join(f"{k} {v:.3f}" for k, v in sorted(accuracy.items()) if isinstance(v, (int, float)))
            o.line(
                f"  {r.status:7} {r.precision:5} {r.engine}  {m.get('size_bytes', 0) / 1e6:.1f} MB, "
                f"built in {m.get('build_seconds')} s, p50 {latency.get('p50')} ms at "
                f"{'x'.join(str(d) for d in latency.get('shape', []))}; {acc}"
            )
        else:
            o.line(f"  {r.status:7} {r.precision:5} {r.reason}")
    if result.fragment:
        o.line(
            f"fragment: {result.fragment} ({sum(r.passed for r in result.results)} profile(s)); "
            f"merge it with `nimbuild manifest merge`"
        )


def register(app: typer.Typer) -> None:
    app.command("engines")(engines)
