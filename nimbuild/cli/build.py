"""`nimbuild build RECIPE --out DIR`: every step this machine can do, reusing what has not changed."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from nimbuild.builder.steps import BuildResult
    from nimbuild.output import Output

from nimbuild.cli.options import CpuIsaOpt, JsonOpt, QuietOpt, split_cpu_isa


def build(
    recipe: Annotated[Path, typer.Argument(help="The recipe (recipes/*.yaml).", show_default=False)],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder; ends with OUT/manifest.yaml (default: out/<recipe name>)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Rebuild every step, ignoring the cache; replace output entries nimbuild did not write."
        ),
    ] = False,
    no_engines: Annotated[bool, typer.Option("--no-engines", help="Skip TensorRT engines even on a GPU host.")] = False,
    no_render: Annotated[bool, typer.Option("--no-render", help="Skip the Triton model repositories.")] = False,
    cpu_isa: CpuIsaOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export, precision graphs, engines for the visible GPU (if any), manifest, render.

    CPU int8 graphs are made for the recipe's cpu_isa classes that this CPU has (each is judged on
    the kernels it will run on); engine and CPU-class fragments under OUT/engines/ and OUT/cpu/ merge in.

    A second run with nothing changed reuses every step (content-addressed on the
    recipe, the model files and the toolchain versions).

    Example: nimbuild build recipes/example-tiny.yaml --out out/example-tiny
    """
    from nimbuild.builder.steps import run_build
    from nimbuild.output import Output

    out = Output(json_mode=json_mode, quiet=quiet)
    result = run_build(
        recipe,
        out_dir,
        out,
        force=force,
        engines=not no_engines,
        render=not no_render,
        cpu_isa=split_cpu_isa(cpu_isa),
    )
    out.emit(result.to_dict(), functools.partial(_print_steps, result=result))


def _print_steps(o: Output, result: BuildResult) -> None:
    o.table(
        ["step", "status", "seconds", "note"],
        [(s.step, s.status, f"{s.seconds:.2f}", s.note) for s in result.steps],
    )
    o.line(f"wrote {result.manifest}")


def register(app: typer.Typer) -> None:
    app.command("build")(build)
