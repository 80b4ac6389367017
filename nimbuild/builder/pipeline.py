"""`nimbuild export` end to end: resolve, export, gate, precision graphs, report, swap in.

Everything is written into the output folder's staging area and swapped in entry
by entry (nimbuild.outdir) only when the FP32 graph has passed its gate, so a
failed export changes nothing and a killed one leaves no lying manifest
(docs/internals.md, "Export directory").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import (
    EXPORT_OUTPUTS,
    GATE_INPUTS_FILE,
    GRAPH_FILE,
    graph_dir,
    graph_dir_relpath,
    graph_path,
    graph_relpath,
    tokenizer_dir,
    write_export_report,
)
from nimbuild.output import Output
from nimbuild.thresholds import GateThresholds

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spm.model",
    "added_tokens.json",
)


def as_recipe(recipe_or_model: Any, *, trust_remote_code: bool | None = None, revision: str | None = None):
    """A Recipe from a Recipe, a recipe file (.yaml/.yml) or a model (folder or hub repo id)."""
    from nimbuild.recipe import Recipe, load_recipe, recipe_for_model

    if isinstance(recipe_or_model, Recipe):
        return recipe_or_model
    text = os.fspath(recipe_or_model)
    if text.endswith((".yaml", ".yml")):
        return load_recipe(text)
    return recipe_for_model(text, revision=revision, trust_remote_code=bool(trust_remote_code))


def check_out_dir(out_dir: Path, force: bool, *, into_build: bool = False) -> None:
    """May the export write into ``out_dir``? (NimbuildError naming the folder and the fix when not.)

    ``nimbuild export`` wants an empty or new folder, or ``--force``; inside a build folder
    (``into_build``) the other entries are the build's. Either way, an export entry
    (export_layout.EXPORT_OUTPUTS) that nimbuild did not write is replaced only
    under ``force``, and nothing else in the folder is ever touched (nimbuild.outdir).
    """
    from nimbuild.outdir import OutputFolder

    if out_dir.exists() and not out_dir.is_dir():
        raise NimbuildError(f"output {out_dir} exists and is a file", hint="give a folder path with --out")
    folder = OutputFolder(out_dir)
    if not into_build and not force and folder.has_content():
        raise NimbuildError(
            f"output folder {out_dir} already exists and is not empty",
            hint="choose another --out, or pass --force to replace its export "
            f"({', '.join(EXPORT_OUTPUTS)}; nothing else in it is touched)",
        )
    folder.check_replaceable(EXPORT_OUTPUTS, force=force, action="the export")


def save_tokenizer(model_dir: Path, dest: Path, trust_remote_code: bool) -> Any:
    """The tokenizer files (tokenizer.json and friends) + config.json into ``dest``; returns the tokenizer."""
    from nimbuild.builder.pairs import load_tokenizer

    dest.mkdir(parents=True, exist_ok=True)
    try:
        tok = load_tokenizer(model_dir, trust_remote_code)
    except Exception as exc:
        raise NimbuildError(
            f"model {model_dir}: its tokenizer could not be loaded: {str(exc).splitlines()[0][:300]}",
            hint="the folder needs tokenizer.json (or the files its tokenizer class reads)",
        ) from None
    tok.save_pretrained(str(dest))
    for name in ("config.json",) + tuple(n for n in TOKENIZER_FILES if not (dest / n).exists()):
        src = model_dir / name
        if src.is_file() and not (dest / name).exists():
            shutil.copyfile(src, dest / name)
    if not (dest / "tokenizer.json").exists():
        raise NimbuildError(
            f"model {model_dir}: no fast tokenizer (tokenizer.json) could be written",
            hint="the runtime tokenizes with tokenizer.json; use a model with a fast tokenizer",
        )
    return tok


def _toolchain() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for pkg, dist in (
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("onnx", "onnx"),
        ("onnxruntime", "onnxruntime-gpu"),
        ("nimbuild", "nimbuild"),
    ):
        try:
            versions[pkg] = md.version(dist)
        except md.PackageNotFoundError:
            if pkg == "onnxruntime":
                with contextlib.suppress(md.PackageNotFoundError):
                    versions[pkg] = md.version("onnxruntime")
    return versions


def _fp32_thresholds(recipe_wide: GateThresholds, reference: Sequence[np.ndarray]) -> GateThresholds:
    """FP32 must match PyTorch: the recipe's ranking thresholds plus max |Δlogit| <= 1e-4 * max(1, |logit|)."""
    from nimbuild.builder.export import FP32_TOLERANCE

    scale = max(1.0, max(float(np.max(np.abs(r))) for r in reference))
    return recipe_wide.tightened(max_abs_logit=FP32_TOLERANCE * scale)


def run_export(
    recipe_or_model: Any,
    out_dir: str | Path,
    precisions: Sequence[str] | None = None,
    pairs: str | Path | None = None,
    out: Output | None = None,
    *,
    force: bool = False,
    trust_remote_code: bool | None = None,
    revision: str | None = None,
    exporter: str = "auto",
    cpu_isa: Sequence[str] | None = None,
    into_build: bool = False,
) -> dict:
    """Export a model (recipe, folder or hub id) into ``out_dir``; returns the export report.

    ``precisions``: None = the recipe's; fp32 is always built. ``pairs``: a JSONL
    overriding the recipe's (none at all: synthetic pairs from the vocabulary).
    ``cpu_isa``: the CPU classes to make int8 graphs for, each one this CPU must have (an error
    before any work otherwise; ``[]``: none); None = the recipe's, made where this CPU has them.
    Everything is made in the folder's staging area (nimbuild.outdir) and swapped in
    only when the FP32 graph has passed its gate: a failed export changes nothing,
    and a manifest.yaml there is withdrawn during the swap (it listed the old graphs).
    ``into_build``: ``out_dir`` is a build folder (check_out_dir).
    """
    from nimbuild.outdir import OutputFolder

    recipe = as_recipe(recipe_or_model, trust_remote_code=trust_remote_code, revision=revision)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NimbuildError(f"output {out_dir} exists and is a file", hint="give a folder path with --out")
    cpu_classes = cpu_classes_to_make(recipe, cpu_isa)  # a class this CPU lacks fails now, before any work
    folder = OutputFolder(out_dir)
    with folder.locked("nimbuild export"):  # a refusal leaves nothing: a folder the lock made goes again
        check_out_dir(out_dir, force, into_build=into_build)
        return _export_locked(
            recipe,
            folder,
            precisions,
            pairs,
            out or Output(quiet=True),
            trust_remote_code=trust_remote_code,
            exporter=exporter,
            into_build=into_build,
            cpu_classes=cpu_classes,
        )


def _export_locked(
    recipe: Any,
    folder: Any,
    precisions: Sequence[str] | None,
    pairs: str | Path | None,
    out: Output,
    *,
    trust_remote_code: bool | None,
    exporter: str,
    into_build: bool,
    cpu_classes: list[str],
) -> dict:
    """run_export's work, with the output folder locked: stage everything, then swap it in."""
    from nimbuild.builder import export as exp
    from nimbuild.builder import gate as gate_mod
    from nimbuild.builder import pairs as pairs_mod
    from nimbuild.builder.source import resolve_source
    from nimbuild.fsutil import crash_point

    started = time.perf_counter()
    trust = recipe.trust_remote_code if trust_remote_code is None else trust_remote_code
    wanted = list(recipe.precisions if precisions is None else precisions)
    wanted = ["fp32"] + [p for p in dict.fromkeys(x.strip().lower() for x in wanted) if p and p != "fp32"]
    pairs_path = Path(pairs) if pairs is not None else (recipe.resolve(recipe.pairs) if recipe.pairs else None)
    groups = pairs_mod.load_pairs(pairs_path) if pairs_path is not None else None  # bad pairs fail before any work

    with out.progress() as progress:
        t = progress.add_task(f"resolve {recipe.source.describe()}", total=1)
        resolved = resolve_source(recipe, trust_remote_code=trust)
        progress.advance(t)
    arch = exp.check_supported(resolved.config, resolved.path, trust)
    out.note(f"model {recipe.name}: {arch} from {resolved.path} (revision {resolved.revision})")

    with folder.staging("export") as stage:
        with out.progress() as progress:
            t = progress.add_task("export fp32 (PyTorch -> ONNX)", total=3)
            tokenizer = save_tokenizer(resolved.path, tokenizer_dir(stage), trust)
            progress.advance(t)
            model = exp.load_model(resolved.path, trust)
            progress.advance(t)
            fp32_dir = graph_dir(stage, "fp32")
            t0 = time.perf_counter()
            info = exp.export_fp32(
                resolved.path, fp32_dir, recipe.shapes, trust_remote_code=trust, exporter=exporter, model=model
            )
            progress.advance(t)
            fp32_seconds = time.perf_counter() - t0

        names = info["inputs"]
        notes = []
        if groups is None:
            groups = pairs_mod.default_synthetic_pairs(tokenizer)
            notes.append(
                f"no pairs file: {pairs_mod.SYNTHETIC_QUERIES}x{pairs_mod.SYNTHETIC_PASSAGES} synthetic pairs "
                "from the vocabulary "
                "(parity only; give the recipe real pairs for meaningful ranking metrics)"
            )
        max_len = recipe.shapes.sequence.max
        encoded = pairs_mod.encode(tokenizer, groups, max_len, names)

        session = exp.cpu_session(fp32_dir / GRAPH_FILE)
        with out.progress() as progress:
            cases = exp.parity_cases(recipe.shapes, exp._max_positions(model.config))
            t = progress.add_task("validate fp32 (ONNX Runtime vs PyTorch)", total=len(cases) + 1)
            parity = exp.check_parity(model, session, names, recipe.shapes, progress=progress, task=t)
            reference = exp.torch_scores(model, names, encoded)
            gate = gate_mod.run_gate(
                session,
                encoded,
                reference,
                _fp32_thresholds(recipe.thresholds.for_precision("fp32"), reference),
                max_batch=recipe.shapes.batch.max,
                notes=notes,
            )
            progress.advance(t)
        if not parity["passed"] or not gate.passed:
            bad = [
                f"batch {c['batch']} x seq {c['sequence']}: |Δlogit| {c['max_abs_logit']:.2e} > {c['limit']:.1e}"
                for c in parity["cases"]
                if not c["passed"]
            ]
            raise NimbuildError(
                f"fp32 graph of {recipe.name} does not match PyTorch: " + "; ".join(bad + gate.failures),
                hint="nothing was written; NIMBUILD_DEBUG=1 for details, or try --exporter dynamo",
            )

        report: dict[str, Any] = {
            "model": recipe.name,
            "model_revision": resolved.revision,
            "source": {**recipe.source.model_dump(exclude_none=True), **resolved.to_dict()},
            "architecture": info["architecture"],
            "model_type": info["model_type"],
            "inputs": names,
            "outputs": info["outputs"],
            "num_labels": info["num_labels"],
            "opset": info["opset"],
            "exporter": info["exporter"],
            "max_batch_size": recipe.shapes.batch.max,
            "max_sequence_length": recipe.shapes.sequence.max,
            "shapes": recipe.shapes.model_dump(),
            "recipe": str(recipe.path) if recipe.path else None,
            "recipe_sha256": recipe.sha256,
            "trust_remote_code": trust,
            "pairs": {
                "file": str(pairs_path) if pairs_path else None,
                "queries": len(groups),
                "pairs": int(sum(len(g.passages) for g in groups)),
                "synthetic": pairs_path is None,
            },
            "thresholds": recipe.thresholds.recipe_wide.to_dict(),
            "toolchain": _toolchain(),
            # the encoded pairs and the PyTorch reference: what `export --from-export` judges more graphs by
            "gate_inputs": gate_mod.save_inputs(stage / GATE_INPUTS_FILE, encoded, reference),
            "precisions": {
                "fp32": {
                    "status": "passed",
                    "path": graph_relpath("fp32"),
                    "files": [f"{graph_dir_relpath('fp32')}/{f}" for f in info["files"]],
                    "gate": gate.to_dict(),
                    "parity": parity,
                    "external_data": info["external_data"],
                    "seconds": round(fp32_seconds, 3),
                },
            },
        }

        others = [p for p in wanted if p != "fp32"]
        if others:
            report["precisions"].update(
                _build_precisions(stage, others, info, encoded, reference, recipe, out, cpu_classes)
            )
        report["seconds"] = round(time.perf_counter() - started, 3)
        write_export_report(stage, report)
        crash_point("export:staged")
        withdrawn = folder.swap_in(stage, EXPORT_OUTPUTS)
    if withdrawn and not into_build:
        out.note(
            f"{folder.path / withdrawn[0]} listed the previous graphs and was removed; "
            f"write it again with `nimbuild manifest build --export-dir {folder.path}` (or `nimbuild build`)"
        )
    print_gate_table(report["precisions"], out)
    return report


def print_gate_table(precisions: dict[str, dict], out: Output) -> None:
    """Every graph's gate figures in one table, then where each graph is or why it is not there."""

    def fmt(value, spec=".4f"):
        return "-" if value is None else format(value, spec)

    rows = []
    for name, entry in precisions.items():
        m = (entry.get("gate") or {}).get("metrics") or {}
        rows.append(
            [
                name,
                entry.get("status"),
                entry.get("path") or "-",
                fmt(m.get("top1"), ".3f"),
                fmt(m.get("spearman")),
                fmt(m.get("ndcg10")),
                fmt(m.get("max_abs_logit"), ".2e"),
                fmt(entry.get("seconds"), ".2f"),
            ]
        )
    out.table(
        ["precision", "status", "path", "top1", "spearman", "ndcg@10", "max|Δlogit|", "s"],
        rows,
        title="accuracy gate (ONNX Runtime CPU vs the PyTorch FP32 reference)",
    )
    for name, entry in precisions.items():
        if entry.get("reason"):
            out.line(f"{name}: {entry['status']}: {entry['reason']}")


def _split(encoded: list, reference: list) -> tuple[list, list, list]:
    """Calibration and evaluation sets: all queries for both when few, else calibrate on the even ones."""
    if len(encoded) >= 8:
        return encoded[::2], encoded, reference
    return encoded, encoded, reference


def cpu_classes_to_make(recipe: Any, explicit: Sequence[str] | None) -> list[str]:
    """The CPU classes whose int8 graphs an export asks for.

    ``explicit`` (``--cpu-isa``, a CI job for one class): each must be one this CPU has, else a
    NimbuildError now, before any work (a class job on the wrong runner must fail, not skip).
    None: the recipe's ``cpu_isa``; those this CPU lacks are skipped later with the reason.
    """
    from nimbuild import cpu_isa as isa
    from nimbuild.builder.precision import cannot_judge_reason

    if explicit is None:
        return list(getattr(recipe, "cpu_isa", None) or isa.NAMES)
    names = [n.strip() for n in explicit if n.strip()]
    if [n.lower() for n in names] == [isa.NONE]:
        return []
    classes = [isa.lookup(n, "--cpu-isa") for n in names]
    here = isa.detect_cpu()
    for cls in classes:
        if not here.has(cls.name):
            raise NimbuildError(f"--cpu-isa {cls.name}: {cannot_judge_reason(cls, here)}", hint="run it there")
    return [c.name for c in isa.CLASSES if c in classes]


def _build_precisions(
    stage: Path,
    precisions: list[str],
    info: dict,
    encoded: list,
    reference: list,
    recipe,
    out: Output,
    cpu_classes: list[str] | None = None,
    *,
    source: Path | None = None,
) -> dict[str, dict]:
    """The precision graphs into ``stage``, made from the FP32 graph of ``source`` (default: ``stage``)."""
    from nimbuild.builder.precision import build_precisions

    source = stage if source is None else source
    calibration, evaluation, ref = _split(encoded, reference)
    return build_precisions(
        graph_path(source, "fp32"),
        stage,
        precisions,
        architecture=info["architecture"],
        input_names=info["inputs"],
        calibration=calibration,
        evaluation=evaluation,
        reference=ref,
        thresholds=recipe.thresholds.by_precision,
        out=out,
        config_dir=tokenizer_dir(source),
        cpu_classes=cpu_classes,
    )
