"""`nimbuild export`: a model to ONNX FP32 + the recipe's precision graphs, each through the accuracy gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nimbuild.cli.options import CpuIsaOpt, JsonOpt, QuietOpt, split_cpu_isa


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
    cpu_isa: CpuIsaOpt = None,
    from_export: Annotated[
        Path | None,
        typer.Option(
            "--from-export",
            help="Add the precision graphs to the export in this folder, from its FP32 graph and saved gate inputs: "
            "no PyTorch, no model download (a CI job per CPU class on the export's artifact). "
            "--out defaults to this folder (in place).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Export into a folder that has content, replacing its onnx/, tokenizer/, export_report.json and "
            "gate_inputs.npz even where nimbuild did not write them (nothing else in it is touched).",
        ),
    ] = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a cross-encoder to ONNX (FP32 + precision graphs), each judged against PyTorch on the CPU.

    Writes OUT/onnx/<precision>/model.onnx (int8: OUT/onnx/cpu-int8-<cpu class>/, one per CPU class this
    CPU has), OUT/tokenizer/, OUT/gate_inputs.npz (the encoded pairs and the PyTorch reference) and
    OUT/export_report.json; nothing is left under OUT if the FP32 graph fails its gate. With --from-export
    DIR, only the requested graphs are made, from DIR's FP32 graph, judged against DIR's saved reference.

    Example: nimbuild export recipes/example-tiny.yaml --out out/example-tiny --precision fp16,int8

    Example: nimbuild export recipes/example-tiny.yaml --from-export out/example-tiny --precision int8 --cpu-isa avx2
    """
    from nimbuild.builder.from_export import run_from_export
    from nimbuild.builder.pipeline import as_recipe, run_export
    from nimbuild.errors import NimbuildError
    from nimbuild.export_layout import report_path
    from nimbuild.output import Output

    out = Output(json_mode=json_mode, quiet=quiet)
    if exporter not in ("auto", "legacy", "dynamo"):
        raise NimbuildError(f"--exporter {exporter!r} is not known", hint="use auto, legacy or dynamo")
    precisions = None
    if precision is not None:
        from nimbuild.export_layout import PRECISION_DIRS, canonical_precision

        precisions = [canonical_precision(p) for p in precision.split(",") if p.strip()]
        unknown = [p for p in precisions if p not in PRECISION_DIRS]
        if unknown:
            raise NimbuildError(
                f"--precision: unknown {', '.join(unknown)}", hint="use a comma list of fp16, fp8, int8"
            )
    recipe = as_recipe(source, trust_remote_code=trust_remote_code or None, revision=revision)
    if from_export is not None:
        if pairs is not None:
            raise NimbuildError(
                "--pairs with --from-export: the graphs are judged on the pairs that export saved",
                hint="drop --pairs, or export again with them",
            )
        target = out_dir or from_export
        report = run_from_export(
            recipe, from_export, target, precisions, out, force=force, cpu_isa=split_cpu_isa(cpu_isa)
        )
        added = report["additions"][-1]["precisions"]
        statuses = ", ".join(f"{k} {report['precisions'][k]['status']}" for k in added) or "nothing to add"
        out.emit({"out": str(target), "report": report}, f"{target}: {statuses}")
        return
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
        cpu_isa=split_cpu_isa(cpu_isa),
    )

    def human(o: Output) -> None:
        o.line(
            f"exported {report['model']} ({report['architecture']}, revision {report['model_revision']}) to {target}"
        )
        o.line(f"report: {report_path(target)}")

    out.emit({"out": str(target), "report": report}, human)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
