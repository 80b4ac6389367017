"""`nimbuild export` end to end: resolve, export, gate, precision graphs, report, rename.

Everything is written into a staging folder beside OUT and renamed into place
only when the FP32 graph has passed its gate, so a failed export leaves nothing
that looks finished (docs/internals.md, "Export directory").
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import NimbuildError
from nimbuild.output import Output, dumps

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
SYNTH_QUERIES, SYNTH_PASSAGES = 12, 8


def as_recipe(recipe_or_model: Any, *, trust_remote_code: bool | None = None, revision: str | None = None):
    """A Recipe from a Recipe, a recipe file (.yaml/.yml) or a model (folder or hub repo id)."""
    from nimbuild.recipe import Recipe, load_recipe, recipe_for_model

    if isinstance(recipe_or_model, Recipe):
        return recipe_or_model
    text = os.fspath(recipe_or_model)
    if text.endswith((".yaml", ".yml")):
        return load_recipe(text)
    return recipe_for_model(text, revision=revision, trust_remote_code=bool(trust_remote_code))


def check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NimbuildError(f"output {out_dir} exists and is a file", hint="give a folder path with --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise NimbuildError(
            f"output folder {out_dir} already exists and is not empty",
            hint="choose another --out, or pass --force to replace it",
        )


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
                try:
                    versions[pkg] = md.version("onnxruntime")
                except md.PackageNotFoundError:
                    pass
    return versions


def _fp32_thresholds(recipe_thresholds: Any, reference: Sequence[np.ndarray]) -> dict:
    """FP32 must match PyTorch: the recipe's ranking thresholds plus max |Δlogit| <= 1e-4 * max(1, |logit|)."""
    from nimbuild.builder.export import FP32_TOLERANCE
    from nimbuild.builder.gate import thresholds_dict

    th = thresholds_dict(recipe_thresholds)
    scale = max(1.0, max(float(np.max(np.abs(r))) for r in reference))
    limit = FP32_TOLERANCE * scale
    th["max_abs_logit"] = limit if th["max_abs_logit"] is None else min(th["max_abs_logit"], limit)
    return th


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
) -> dict:
    """Export a model (recipe, folder or hub id) into ``out_dir``; returns the export report.

    ``precisions``: None = the recipe's; fp32 is always built. ``pairs``: a JSONL
    overriding the recipe's (none at all: synthetic pairs from the vocabulary).
    """
    from nimbuild.builder import export as exp
    from nimbuild.builder import gate as gate_mod
    from nimbuild.builder import pairs as pairs_mod
    from nimbuild.builder.source import resolve_source
    from nimbuild.fsutil import atomic_write_text, staging_dir

    out = out or Output(quiet=True)
    started = time.perf_counter()
    recipe = as_recipe(recipe_or_model, trust_remote_code=trust_remote_code, revision=revision)
    trust = recipe.trust_remote_code if trust_remote_code is None else trust_remote_code
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force)
    wanted = list(recipe.precisions if precisions is None else precisions)
    wanted = ["fp32"] + [p for p in dict.fromkeys(x.strip().lower() for x in wanted) if p and p != "fp32"]
    pairs_path = Path(pairs) if pairs is not None else (recipe.resolve(recipe.pairs) if recipe.pairs else None)
    groups = pairs_mod.load_pairs(pairs_path) if pairs_path is not None else None  # bad pairs fail before any work
    _check_label_bounds(recipe, groups, pairs_path)

    with out.progress() as progress:
        t = progress.add_task(f"resolve {recipe.source.describe()}", total=1)
        resolved = resolve_source(recipe, trust_remote_code=trust)
        progress.advance(t)
    arch = exp.check_supported(resolved.config, resolved.path, trust)
    out.note(f"model {recipe.name}: {arch} from {resolved.path} (revision {resolved.revision})")

    with staging_dir(out_dir) as stage:
        with out.progress() as progress:
            t = progress.add_task("export fp32 (PyTorch -> ONNX)", total=3)
            tokenizer = save_tokenizer(resolved.path, stage / "tokenizer", trust)
            progress.advance(t)
            model = exp.load_model(resolved.path, trust)
            progress.advance(t)
            fp32_dir = stage / "onnx" / "fp32"
            t0 = time.perf_counter()
            info = exp.export_fp32(
                resolved.path, fp32_dir, recipe.shapes, trust_remote_code=trust, exporter=exporter, model=model
            )
            progress.advance(t)
            fp32_seconds = time.perf_counter() - t0

        names = info["inputs"]
        notes = []
        if groups is None:
            groups = pairs_mod.synthesize_pairs(tokenizer, SYNTH_QUERIES, SYNTH_PASSAGES, seed=0)
            notes.append(
                f"no pairs file: {SYNTH_QUERIES}x{SYNTH_PASSAGES} synthetic pairs from the vocabulary "
                "(parity only; give the recipe real pairs for meaningful ranking metrics)"
            )
        max_len = recipe.shapes.sequence.max
        encoded = pairs_mod.encode(tokenizer, groups, max_len, names)
        labels = [g.labels for g in groups] if groups[0].labels is not None else None

        session = exp.cpu_session(fp32_dir / "model.onnx")
        with out.progress() as progress:
            cases = exp.parity_cases(recipe.shapes, exp._max_positions(model.config))
            t = progress.add_task("validate fp32 (ONNX Runtime vs PyTorch)", total=len(cases) + 1)
            parity = exp.check_parity(model, session, names, recipe.shapes, progress=progress, task=t)
            reference = exp.torch_scores(model, names, encoded)
            gate = gate_mod.run_gate(
                session,
                encoded,
                reference,
                _fp32_thresholds(recipe.thresholds, reference),
                max_batch=recipe.shapes.batch.max,
                notes=notes,
                labels=labels,
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
                "labeled": labels is not None,
                # the PyTorch FP32 reference against the labels (every query)
                "reference": gate.reference,
                "split": _split_summary(len(encoded)),
            },
            "thresholds": gate_mod.thresholds_dict(recipe.thresholds),
            "toolchain": _toolchain(),
            "precisions": {
                "fp32": {
                    "status": "passed",
                    "path": "onnx/fp32/model.onnx",
                    "files": [f"onnx/fp32/{f}" for f in info["files"]],
                    "gate": gate.to_dict(),
                    "parity": parity,
                    "external_data": info["external_data"],
                    "seconds": round(fp32_seconds, 3),
                },
            },
        }

        others = [p for p in wanted if p != "fp32"]
        if others:
            report["precisions"].update(_build_precisions(stage, others, info, encoded, reference, labels, recipe, out))
        report["seconds"] = round(time.perf_counter() - started, 3)
        atomic_write_text(stage / "export_report.json", dumps(report) + "\n")
    print_gate_table(report["precisions"], out)
    return report


def print_gate_table(precisions: dict[str, dict], out: Output) -> None:
    """Every graph's gate figures in one table, then where each graph is or why it is not there."""

    def fmt(value, spec=".4f"):
        return "-" if value is None else format(value, spec)

    labeled = any("label_ndcg10" in ((e.get("gate") or {}).get("metrics") or {}) for e in precisions.values())
    rows = []
    for name, entry in precisions.items():
        m = (entry.get("gate") or {}).get("metrics") or {}
        row = [
            name,
            entry.get("status"),
            entry.get("path") or "-",
            fmt(m.get("top1"), ".3f"),
            fmt(m.get("spearman")),
            fmt(m.get("ndcg10")),
            fmt(m.get("max_abs_logit"), ".2e"),
        ]
        if labeled:
            ref = (entry.get("gate") or {}).get("reference") or {}
            row += [fmt(m.get("label_ndcg10")), fmt(ref.get("label_ndcg10")), fmt(m.get("label_ndcg10_drop"), "+.4f")]
        rows.append(row + [fmt(entry.get("seconds"), ".2f")])
    headers = ["precision", "status", "path", "top1", "spearman", "ndcg@10", "max|Δlogit|"]
    if labeled:
        headers += ["label ndcg@10", "(fp32 ref)", "loss"]
    out.table(
        headers + ["s"],
        rows,
        title="accuracy gate (ONNX Runtime CPU vs the PyTorch FP32 reference"
        + ("; label ndcg@10 against the pairs' labels, on the same queries)" if labeled else ")"),
    )
    for name, entry in precisions.items():
        if entry.get("reason"):
            out.line(f"{name}: {entry['status']}: {entry['reason']}")


# With at least this many queries, calibration and evaluation use disjoint queries.
MIN_SPLIT_QUERIES = 8


def _split(items: Sequence[Any]) -> tuple[list, list]:
    """(calibration, evaluation): the even-numbered and the odd-numbered queries, disjoint.

    A graph calibrated on the queries it is judged on could pass by remembering their
    ranges; so from MIN_SPLIT_QUERIES queries on the two halves never overlap. Fewer
    queries serve both (the report's ``pairs.split`` says so).
    """
    items = list(items)
    if len(items) >= MIN_SPLIT_QUERIES:
        return items[::2], items[1::2]
    return items, items


def _split_summary(n_queries: int) -> dict[str, Any]:
    calibration, evaluation = _split(range(n_queries))
    disjoint = n_queries >= MIN_SPLIT_QUERIES
    return {
        "calibration_queries": len(calibration),
        "evaluation_queries": len(evaluation),
        "disjoint": disjoint,
        "rule": "even-numbered lines calibrate, odd-numbered lines judge the precision graphs"
        if disjoint
        else f"fewer than {MIN_SPLIT_QUERIES} queries: the same queries calibrate and judge (add queries to split)",
    }


def _check_label_bounds(recipe: Any, groups: list | None, pairs_path: Path | None) -> None:
    """A bound on the label NDCG@10 loss needs labeled pairs: say so before any work."""
    th = recipe.thresholds
    bounded = [
        where
        for where, value in [("thresholds.label_ndcg10_drop", getattr(th, "label_ndcg10_drop", None))]
        + [
            (f"thresholds.{p}.label_ndcg10_drop", getattr(getattr(th, p, None), "label_ndcg10_drop", None))
            for p in ("fp16", "fp8", "int8")
        ]
        if value is not None
    ]
    if bounded and (groups is None or groups[0].labels is None):
        what = f"pairs file {pairs_path} has no `labels`" if groups is not None else "no pairs file"
        raise NimbuildError(
            f"recipe {recipe.path or recipe.name}: {bounded[0]} bounds the loss of label NDCG@10, but {what}",
            hint='give each line of the pairs file "labels": [1, 0, ...] (one per passage), or remove the bound',
        )


def _build_precisions(
    stage: Path,
    precisions: list[str],
    info: dict,
    encoded: list,
    reference: list,
    labels: list | None,
    recipe,
    out: Output,
) -> dict[str, dict]:
    from nimbuild.builder.precision import build_precisions

    calibration, evaluation = _split(encoded)
    _, ref = _split(reference)
    return build_precisions(
        stage / "onnx" / "fp32" / "model.onnx",
        stage,
        precisions,
        architecture=info["architecture"],
        input_names=info["inputs"],
        calibration=calibration,
        evaluation=evaluation,
        reference=ref,
        thresholds=recipe.thresholds,
        out=out,
        config_dir=stage / "tokenizer",
        labels=_split(labels)[1] if labels is not None else None,
    )


def load_report(export_dir: str | Path) -> dict:
    """export_report.json of an export folder (NimbuildError when it is not one)."""
    p = Path(export_dir) / "export_report.json"
    if not p.is_file():
        raise NimbuildError(
            f"{export_dir} is not an export folder (no export_report.json)",
            hint="run `nimbuild export RECIPE --out DIR` first",
        )
    return json.loads(p.read_text(encoding="utf-8"))
