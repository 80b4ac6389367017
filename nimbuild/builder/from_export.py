"""`nimbuild export --from-export`: more precision graphs for an export made earlier, without PyTorch.

The graphs are made from the export's ``onnx/fp32`` graph and judged against the
PyTorch reference the export saved (``gate_inputs.npz``), on this machine's CPU,
by the recipe's thresholds: what `nimbuild plan`'s CPU-class jobs run on the
export job's artifact (each class's int8 graph judged on that class's kernels).
Like the export itself, the output folder is locked, everything is made in its
staging area and swapped in entry by entry (nimbuild.outdir): a failed run
changes nothing, and an entry nimbuild did not write is replaced only under
``force``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nimbuild.builder.pipeline import (
    _build_precisions,
    _toolchain,
    as_recipe,
    check_out_dir,
    cpu_classes_to_make,
    print_gate_table,
)
from nimbuild.errors import NimbuildError
from nimbuild.export_layout import (
    EXPORT_OUTPUTS,
    PRECISION_DIRS,
    REPORT_FILE,
    canonical_precision,
    graph_dir_relpath,
    int8_key,
    read_export_report,
    tokenizer_dir,
    write_export_report,
)
from nimbuild.output import Output


def export_files(export_dir: Path, report: dict) -> list[str]:
    """The files an export made, relative to it: the report, the gate inputs, the tokenizer and each passed graph
    (not engines/ or cpu/: other steps write those)."""
    from nimbuild.manifest_paths import check_relpath

    rels = [REPORT_FILE]
    if report.get("gate_inputs"):
        rels.append(check_relpath(report["gate_inputs"]["path"]))
    folder = tokenizer_dir(export_dir)
    if folder.is_dir():
        rels += sorted(p.relative_to(export_dir).as_posix() for p in folder.rglob("*") if p.is_file())
    for entry in report["precisions"].values():
        if entry.get("status") == "passed":
            rels += [check_relpath(r) for r in entry.get("files") or [entry["path"]]]
    return list(dict.fromkeys(rels))


def graph_folders(wanted: Sequence[str], cpu_classes: Sequence[str]) -> dict[str, str]:
    """{report key: graph folder} of what adding ``wanted`` writes (or removes: a rejected graph's old folder)."""
    folders: dict[str, str] = {}
    for name in wanted:
        if name == "int8":
            folders.update({int8_key(c): graph_dir_relpath("int8", c) for c in cpu_classes})
        elif name in PRECISION_DIRS and name != "fp32":
            folders[name] = graph_dir_relpath(name)
    return folders


def run_from_export(
    recipe_or_model: Any,
    source_dir: str | Path,
    out_dir: str | Path | None = None,
    precisions: Sequence[str] | None = None,
    out: Output | None = None,
    *,
    force: bool = False,
    cpu_isa: Sequence[str] | None = None,
) -> dict:
    """Add precision graphs to an export made earlier, from its FP32 graph and saved gate inputs; the new report.

    ``out_dir`` None or ``source_dir``: in place (the new graph folders and the report are swapped in,
    a manifest.yaml there is withdrawn: it may list an old graph); another folder gets the export's own
    files first (hard links where it can; an empty or new folder, or ``force``), ``source_dir`` is only read.
    """
    from nimbuild.outdir import OutputFolder

    out = out or Output(quiet=True)
    started = time.perf_counter()
    recipe = as_recipe(recipe_or_model)
    source_dir = Path(source_dir)
    target = Path(out_dir) if out_dir is not None else source_dir
    in_place = target.resolve() == source_dir.resolve()
    report = read_export_report(source_dir)
    if report["model"] != recipe.name:
        raise NimbuildError(
            f"{source_dir / REPORT_FILE}: an export of {report['model']!r}, not of {recipe.name!r} ({recipe.path})",
            hint="pass the recipe that export was made with",
        )
    cpu_classes = cpu_classes_to_make(recipe, cpu_isa)  # a class this CPU lacks fails now, before any work
    asked = precisions or recipe.precisions
    wanted = [p for p in dict.fromkeys(canonical_precision(x) for x in asked) if p and p != "fp32"]
    if not wanted:
        raise NimbuildError("--from-export: no precision to add (fp32 is the export's)", hint="pass --precision int8")
    saved = report.get("gate_inputs") or {}
    if not saved.get("path"):
        raise NimbuildError(
            f"{source_dir / REPORT_FILE}: no saved gate inputs, so its graphs cannot be judged without PyTorch",
            hint="re-run `nimbuild export` with this nimbuild (it saves them), or export without --from-export",
        )
    folders = graph_folders(wanted, cpu_classes)
    folder = OutputFolder(target)
    with folder.locked("nimbuild export --from-export"):
        if in_place:
            folder.check_replaceable([REPORT_FILE, *folders.values()], force=force, action="export --from-export")
        else:
            check_out_dir(target, force)
        added, withdrawn = _add_locked(
            folder, source_dir, report, saved, wanted, recipe, out, cpu_classes, folders, in_place, started
        )
    if withdrawn:
        out.note(
            f"{target / withdrawn[0]} listed the previous graphs and was removed; "
            f"write it again with `nimbuild manifest build --export-dir {target}`"
        )
    print_gate_table(added, out)
    return report


def _add_locked(
    folder: Any,
    source_dir: Path,
    report: dict,
    saved: dict,
    wanted: list[str],
    recipe: Any,
    out: Output,
    cpu_classes: list[str],
    folders: dict[str, str],
    in_place: bool,
    started: float,
) -> tuple[dict[str, dict], list[str]]:
    """The graphs made in the folder's staging area, judged, then swapped in with the updated report."""
    from nimbuild.builder import gate as gate_mod
    from nimbuild.fsutil import link_or_copy
    from nimbuild.manifest_paths import safe_join

    encoded, reference = gate_mod.load_inputs(
        safe_join(source_dir, saved["path"]), report["inputs"], saved.get("sha256")
    )
    with folder.staging("from-export") as stage:
        if not in_place:
            for rel in export_files(source_dir, report):
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(safe_join(source_dir, rel), stage / rel)
        info = {"architecture": report["architecture"], "inputs": report["inputs"]}
        added = _build_precisions(stage, wanted, info, encoded, reference, recipe, out, cpu_classes, source=source_dir)
        report["precisions"].update(added)
        report.setdefault("additions", []).append(
            {"precisions": list(added), "toolchain": _toolchain(), "seconds": round(time.perf_counter() - started, 3)}
        )
        write_export_report(stage, report)
        names = list(EXPORT_OUTPUTS) if not in_place else [REPORT_FILE, *(folders[k] for k in added if k in folders)]
        withdrawn = folder.swap_in(stage, names)
    return added, withdrawn
