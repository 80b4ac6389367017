"""`nimbuild plan RECIPE --format github|gitlab|k8s`: the per-GPU build jobs and the merge."""

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
    json_mode: JsonOpt = False,
) -> None:
    """One engine build job per GPU SKU, on a runner that has it, then one merge + render + image job.

    Runner labels come from the recipe's `runners`; a SKU without one gets
    [self-hosted, linux, gpu-<slug>] and a warning. Run it from the repository root.

    Example: nimbuild plan recipes/example-tiny.yaml --format github --out .github/workflows/nimbuild.yml
    """
    from nimbuild.output import Output
    from nimbuild.render.plan import write_plan

    out = Output(json_mode=json_mode)
    result = write_plan(recipe, fmt, out_file, builder_image=builder_image, image_name=image_name)
    for warning in result.warnings:
        out.warn(warning)
    if out_file is not None:
        out.emit(
            {**result.to_dict(), "out": str(out_file)},
            f"wrote {out_file}: {len(result.jobs)} build job(s) "
            f"({', '.join(j['slug'] for j in result.jobs)}) + 1 merge",
        )
    else:
        out.emit(result.to_dict(), result.text)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
