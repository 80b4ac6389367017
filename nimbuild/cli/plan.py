"""`nimbuild plan RECIPE --format github|gitlab|k8s`: the export, the per-GPU and per-CPU-class jobs, the release."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nimbuild.cli.options import JsonOpt


def plan(
    recipe: Annotated[Path, typer.Argument(help="The recipe (recipes/*.yaml).", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f", help="github, gitlab or k8s.")] = "github",
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write the plan here [default: stdout].")] = None,
    builder_image: Annotated[
        str | None,
        typer.Option(
            "--builder-image",
            help="Image of the build jobs [default: NVIDIA's TensorRT container of the recipe's Triton release].",
        ),
    ] = None,
    image_name: Annotated[
        str | None, typer.Option("--image", help="Name of the serving image [default: nimbuild/<model>].")
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            help="k8s: the run's name suffix and folder runs/<run id>/ [default: UTC time + 6 random hex].",
            show_default=False,
        ),
    ] = None,
    json_mode: JsonOpt = False,
) -> None:
    """One export job (CPU), then one engine job per GPU SKU and one int8 job per CPU class on its graphs, each
    on a runner that has it, then one release job (merge, render, images) when all of them passed.

    Runner labels come from the recipe's `runners` (SKUs and CPU classes alike); a SKU without one gets
    [self-hosted, linux, gpu-<slug>], a CPU class [self-hosted, linux, x64|arm64, cpu-<class>], and a
    warning. The export job makes no int8 graph (--cpu-isa none); each CPU job makes its class's from
    the export (export --from-export). Run it from the repository root.

    Example: nimbuild plan recipes/example-tiny.yaml --format github --out .github/workflows/nimbuild.yml
    """
    from nimbuild.output import Output
    from nimbuild.render.plan import write_plan

    out = Output(json_mode=json_mode)
    result = write_plan(recipe, fmt, out_file, builder_image=builder_image, image_name=image_name, run_id=run_id)
    for warning in result.warnings:
        out.warn(warning)
    if out_file is not None:
        out.emit(
            {**result.to_dict(), "out": str(out_file)},
            f"wrote {out_file}: 1 export job, {len(result.jobs)} engine job(s) "
            f"({', '.join(j['slug'] for j in result.jobs)}), {len(result.cpu_jobs)} CPU job(s) "
            f"({', '.join(j['cpu_isa'] for j in result.cpu_jobs)}) + 1 merge (release) job",
        )
    else:
        out.emit(result.to_dict(), result.text)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
