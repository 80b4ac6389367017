"""The precision graphs of an export: which queries calibrate and which judge, the label bounds, the gate table.

Shared by `nimbuild export` (nimbuild.builder.pipeline) and `nimbuild export --from-export`
(nimbuild.builder.from_export), so that a graph added later is calibrated, judged and shown
exactly as the export's own: the same query split, the same labels, the same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import graph_path, tokenizer_dir
from nimbuild.output import Output

# With at least this many queries, calibration and evaluation use disjoint queries.
MIN_SPLIT_QUERIES = 8


def split_queries(items: Sequence[Any]) -> tuple[list, list]:
    """(calibration, evaluation): the even-numbered and the odd-numbered queries, disjoint.

    A graph calibrated on the queries it is judged on could pass by remembering their
    ranges; so from MIN_SPLIT_QUERIES queries on the two halves never overlap. Fewer
    queries serve both (the report's ``pairs.split`` says so).
    """
    items = list(items)
    if len(items) >= MIN_SPLIT_QUERIES:
        return items[::2], items[1::2]
    return items, items


def split_summary(n_queries: int) -> dict[str, Any]:
    """The report's ``pairs.split``: how many queries calibrate, how many judge, and whether they overlap."""
    calibration, evaluation = split_queries(range(n_queries))
    disjoint = n_queries >= MIN_SPLIT_QUERIES
    return {
        "calibration_queries": len(calibration),
        "evaluation_queries": len(evaluation),
        "disjoint": disjoint,
        "rule": "even-numbered lines calibrate, odd-numbered lines judge the precision graphs"
        if disjoint
        else f"fewer than {MIN_SPLIT_QUERIES} queries: the same queries calibrate and judge (add queries to split)",
    }


def check_label_bounds(recipe: Any, labeled: bool, lacking: str) -> None:
    """A bound on the label NDCG@10 loss needs labeled pairs: say so before any work.

    ``labeled``: whether the pairs (or the saved gate inputs) carry labels; ``lacking``: what has
    none, for the message (``pairs file X has no `labels```, ``no pairs file``, ...).
    """
    if labeled:
        return
    by_precision = recipe.thresholds.by_precision  # fp32's bars are the recipe-wide ones
    bounded = [f"thresholds.{name}" for name in by_precision["fp32"].label_bounds()] + [
        f"thresholds.{precision}.{name}"
        for precision, bars in by_precision.items()
        if precision != "fp32"
        for name in bars.label_bounds()
    ]
    if bounded:
        raise NimbuildError(
            f"recipe {recipe.path or recipe.name}: {bounded[0]} bounds the loss of label NDCG@10, but {lacking}",
            hint='give each line of the pairs file "labels": [1, 0, ...] (one per passage), or remove the bound',
        )


def build_export_precisions(
    stage: Path,
    precisions: list[str],
    info: dict,
    encoded: list,
    reference: list,
    labels: list | None,
    recipe: Any,
    out: Output,
    cpu_classes: list[str] | None = None,
    *,
    source: Path | None = None,
) -> dict[str, dict]:
    """The precision graphs into ``stage``, made from the FP32 graph of ``source`` (default: ``stage``).

    ``encoded``/``reference``/``labels``: every query of the pairs; split here (:func:`split_queries`)
    into the calibration half and the evaluation half the gates judge (with their labels).
    """
    from nimbuild.builder.precision import build_precisions

    source = stage if source is None else source
    calibration, evaluation = split_queries(encoded)
    _, ref = split_queries(reference)
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
        labels=split_queries(labels)[1] if labels is not None else None,
    )


def print_gate_table(precisions: dict[str, dict], out: Output) -> None:
    """Every graph's gate figures in one table (with label NDCG@10 when the pairs carry labels), then where
    each graph is or why it is not there."""

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
            fmt((entry.get("gate") or {}).get("n_queries"), "d"),
            fmt(m.get("top1"), ".3f"),
            fmt(m.get("spearman")),
            fmt(m.get("ndcg10")),
            fmt(m.get("max_abs_logit"), ".2e"),
        ]
        if labeled:
            ref = (entry.get("gate") or {}).get("reference") or {}
            row += [fmt(m.get("label_ndcg10")), fmt(ref.get("label_ndcg10")), fmt(m.get("label_ndcg10_drop"), "+.4f")]
        rows.append(row + [fmt(entry.get("seconds"), ".2f")])
    # queries: how many each row is judged on (fp32: every query; a calibrated graph: those it was not calibrated on)
    headers = ["precision", "status", "path", "queries", "top1", "spearman", "ndcg@10", "max|Δlogit|"]
    if labeled:
        headers += ["label ndcg@10", "(fp32 ref)", "loss"]
    out.table(
        headers + ["s"],
        rows,
        title="accuracy gate (ONNX Runtime CPU vs the PyTorch FP32 reference"
        + ("; label ndcg@10 against the pairs' labels, and the reference's, on the row's queries)" if labeled else ")"),
    )
    for name, entry in precisions.items():
        if entry.get("reason"):
            out.line(f"{name}: {entry['status']}: {entry['reason']}")
