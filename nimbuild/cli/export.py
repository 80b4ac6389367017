"""`nimbuild export`: a model to ONNX FP32 + the recipe's precision graphs, each through the accuracy gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nimbuild.cli.options import JsonOpt, QuietOpt


def export(
    source: Annotated[
        str, typer.Argument(help="A recipe (.yaml), a local model folder, or a hub repo id.", show_default=False)
    ],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: out/<name>).")] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision", "-p", help="Comma list among fp16,fp8,int8 (default: the recipe's; fp32 is always built)."
        ),
    ] = None,
    pairs: Annotated[
        Path | None,
        typer.Option("--pairs", help="Pairs JSONL ({query, passages} per line) for the gate and calibration."),
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Hub commit (for a bare repo id; recipes pin their own).")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow the model repo's own Python code to run.")
    ] = False,
    exporter: Annotated[
        str, typer.Option("--exporter", help="auto (TorchScript, then dynamo), legacy or dynamo.")
    ] = "auto",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Export into a folder that has content, replacing its onnx/, tokenizer/ and export_report.json "
            "even where nimbuild did not write them (nothing else in it is touched).",
        ),
    ] = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a cross-encoder to ONNX (FP32 + precision graphs), each judged against PyTorch on the CPU.

    Writes OUT/onnx/<precision>/model.onnx, OUT/tokenizer/ and OUT/export_report.json;
    nothing is left under OUT if the FP32 graph fails its gate.

    Example: nimbuild export recipes/example-tiny.yaml --out out/example-tiny --precision fp16,int8
    """
    from nimbuild.builder.pipeline import as_recipe, run_export
    from nimbuild.errors import NimbuildError
    from nimbuild.output import Output

    out = Output(json_mode=json_mode, quiet=quiet)
    if exporter not in ("auto", "legacy", "dynamo"):
        raise NimbuildError(f"--exporter {exporter!r} is not known", hint="use auto, legacy or dynamo")
    precisions = None
    if precision is not None:
        precisions = [p.strip().lower() for p in precision.split(",") if p.strip()]
        unknown = [p for p in precisions if p not in ("fp32", "fp16", "fp8", "int8", "cpu-int8")]
        if unknown:
            raise NimbuildError(
                f"--precision: unknown {', '.join(unknown)}", hint="use a comma list of fp16, fp8, int8"
            )
        precisions = ["int8" if p == "cpu-int8" else p for p in precisions]
    recipe = as_recipe(source, trust_remote_code=trust_remote_code or None, revision=revision)
    target = out_dir or recipe.default_out_dir
    report = run_export(
        recipe,
        target,
        precisions,
        pairs,
        out,
        force=force,
        trust_remote_code=True if trust_remote_code else None,
        exporter=exporter,
    )

    def human(o: Output) -> None:
        o.line(
            f"exported {report['model']} ({report['architecture']}, revision {report['model_revision']}) to {target}"
        )
        o.line(f"report: {target / 'export_report.json'}")

    out.emit({"out": str(target), "report": report}, human)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
