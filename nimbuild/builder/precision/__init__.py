"""The precision graphs (FP16, FP8 Q/DQ, CPU INT8), each judged by the accuracy gate before it is kept.

TensorRT 10/11 builds strongly typed networks, so a precision is a graph of its own
(docs/design.md, "Precision lives in the graph"). Each is built into a staging folder beside
``onnx/<precision>/``, run in ONNX Runtime on the CPU against the PyTorch FP32 reference
(nimbuild.builder.gate), and renamed into place only if it passes: a rejected or failed
graph never sits where the manifest would look for it.

    fp16.py   FP16 with fragile ops in FP32 (ONNX Runtime's float16 converter)
    fp8.py    FP8 E4M3 Q/DQ for TensorRT (ORT's calibrator, ModelOpt-style placement)
    int8.py   ORT transformer fusions + INT8, one graph per CPU class (nimbuild.cpu_isa)

INT8 is made per CPU instruction-set class (``int8`` expands to one graph per class in
``cpu_isa``: report entries ``int8-<class>``, folders ``onnx/cpu-int8-<class>/``), quantized as
that class needs, and only for the classes this build's CPU has: a graph is judged on the
kernels it will run on, so a class the build CPU lacks is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild import cpu_isa
from nimbuild.builder.precision.common import (
    MIN_CALIBRATION_PAIRS,
    cpu_session,
    n_pairs,
    tool_versions,
)
from nimbuild.errors import NimbuildError
from nimbuild.export_layout import (
    GRAPH_FILE,
    canonical_precision,
    graph_dir,
    graph_dir_relpath,
    graph_relpath,
    int8_key,
    tokenizer_dir,
)
from nimbuild.fsutil import staging_dir
from nimbuild.thresholds import GateThresholds

# The precisions built here, beside fp32 (their folders under OUT/onnx/: nimbuild.export_layout.PRECISION_DIRS;
# int8: one folder per CPU class, export_layout.int8_dir_name)
PRECISIONS = ("fp16", "fp8", "int8")

__all__ = ["PRECISIONS", "build_precisions", "build_fp16", "build_fp8", "build_cpu_int8", "cannot_judge_reason"]


def cannot_judge_reason(cls: cpu_isa.CpuIsa, build_cpu: cpu_isa.HostCpu) -> str:
    """Why this build's CPU does not make a class's graph (it could not judge it on its own kernels)."""
    return (
        f"this build's CPU ({build_cpu.describe()}) lacks {cls.name}, so it cannot judge that class's graph "
        f"({cls.weight_bits}-bit weights) on the kernels it will run on; build it on {cls.needs} "
        "(`nimbuild plan` makes one job per class)"
    )


def build_fp16(fp32_path, out_path, calibration=None) -> dict:
    from nimbuild.builder.precision.fp16 import build_fp16 as build

    return build(fp32_path, out_path, calibration)


def build_fp8(fp32_path, out_path, calibration) -> dict:
    from nimbuild.builder.precision.fp8 import build_fp8 as build

    return build(fp32_path, out_path, calibration)


def build_cpu_int8(fp32_path, out_path, architecture, **options) -> dict:
    """See int8.build_cpu_int8 (``reduce_range``: the CPU class's; ``scheme=Int8Scheme(...)``: the rest)."""
    from nimbuild.builder.precision.int8 import build_cpu_int8 as build

    return build(fp32_path, out_path, architecture, **options)


class _Rejected(Exception):
    """Raised inside the staging folder so that a graph the gate refuses is removed with it."""

    def __init__(self, gate):
        super().__init__("rejected by the gate")
        self.gate = gate


class _Unsupported(Exception):
    """This precision cannot be had for this model or this machine (skipped with the reason)."""


def _check_pairs(name: str, queries, need: int) -> int:
    count = n_pairs(queries or [])
    if count < need:
        raise NimbuildError(
            f"{name} pairs: got {count} (query, passage) pairs, the precision graphs need at least {need}",
            hint='add lines of {"query": ..., "passages": [...]} to the recipe\'s pairs file (field `pairs`), '
            "or pass --pairs FILE.jsonl",
        )
    return count


def _tool(precision: str, info: dict | None = None) -> str:
    v = tool_versions()
    if precision == "fp16":
        return f"onnxruntime.transformers.float16 (onnxruntime {v['onnxruntime']})"
    if precision == "fp8":
        return (
            f"onnxruntime.quantization MinMax calibrator + nimbuild FP8 E4M3 Q/DQ placement "
            f"(onnxruntime {v['onnxruntime']}, onnx {v['onnx']})"
        )
    mode = (info or {}).get("mode", "dynamic")
    return (
        f"onnxruntime.transformers.optimizer + nimbuild SmoothQuant + onnxruntime.quantization.quantize_{mode} "
        f"(onnxruntime {v['onnxruntime']})"
    )


def _build_one(
    precision: str,
    fp32_path: Path,
    out_path: Path,
    *,
    architecture: str,
    calibration,
    config_dirs,
    int8_mode: str,
    cpu_class: cpu_isa.CpuIsa | None = None,
) -> dict:
    if precision == "fp16":
        return build_fp16(fp32_path, out_path, calibration)
    if precision == "fp8":
        from nimbuild.builder.precision.fp8 import NothingToQuantize

        try:
            return build_fp8(fp32_path, out_path, calibration)
        except NothingToQuantize as exc:
            raise _Unsupported(f"fp8 is not available for {architecture}: {exc}") from exc
    from nimbuild.builder.precision.int8 import attention_shape, scheme_for_mode

    assert cpu_class is not None
    heads, hidden = attention_shape(config_dirs)
    info = build_cpu_int8(
        fp32_path,
        out_path,
        architecture,
        calibration=calibration,
        reduce_range=cpu_class.reduce_range,
        scheme=scheme_for_mode(int8_mode),
        num_heads=heads,
        hidden_size=hidden,
    )
    unfused = [n for n in info["notes"] if n.startswith("attention fused in")]
    if unfused:
        info["warn"] = unfused[0]  # a missed fusion costs speed: said out loud, not only in the report
    return info


def _targets(wanted: list[str], classes: list[str] | None) -> list[tuple[str, str, cpu_isa.CpuIsa | None]]:
    """(report key, precision, CPU class) per graph to make: int8 once per class, in cpu_isa's order."""
    chosen = [cpu_isa.lookup(c) for c in (cpu_isa.NAMES if classes is None else classes)]
    out: list[tuple[str, str, cpu_isa.CpuIsa | None]] = []
    for name in wanted:
        if name == "int8":
            out += [(int8_key(c.name), "int8", c) for c in cpu_isa.CLASSES if c in chosen]
        else:
            out.append((name, name, None))
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _readable_like_the_rest(folder: Path) -> None:
    """mkdtemp makes 0700 folders (and ONNX writes .data files 0600): give them the umask's modes, like onnx/fp32."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)


def _remove_stale(final_dir: Path) -> None:
    """A graph from an earlier run must not outlive a rejection now."""
    if final_dir.exists():
        shutil.rmtree(final_dir)


def build_precisions(
    fp32_path: Path,
    export_dir: Path,
    precisions: list[str],
    *,
    architecture: str,
    input_names: list[str],
    calibration: list[dict[str, np.ndarray]],
    evaluation: list[dict[str, np.ndarray]],
    reference: list[np.ndarray],
    thresholds: Mapping[str, GateThresholds],
    out,
    int8_mode: str = "dynamic",
    config_dir: Path | None = None,
    cpu_classes: list[str] | None = None,
    build_cpu: cpu_isa.HostCpu | None = None,
    labels: Sequence[Sequence[int]] | None = None,
) -> dict[str, dict]:
    """Build, gate and keep (or refuse) each requested precision graph; the export_report.json entries.

    ``calibration``/``evaluation``: per query, the encoded feeds for its passages (int64,
    named as the graph inputs); ``reference``: the PyTorch FP32 scores per evaluation query.
    ``thresholds``: {precision: its bars} (the recipe's ``thresholds.by_precision``; ``nimbuild.thresholds.uniform``).
    ``labels`` (optional): per evaluation query, the pairs' relevance labels; each gate then
    also reports label NDCG@10 / MRR@10 and the loss against the reference.
    ``fp32`` in ``precisions`` is ignored (the export writes it). Entries are keyed by the
    recipe's name (``fp16``, ``fp8``); int8 makes one graph per CPU class of ``cpu_classes``
    (None: every class nimbuild knows), keyed ``int8-<class>`` in ``onnx/cpu-int8-<class>/``,
    each for a class ``build_cpu`` (default: this host's, nimbuild.cpu_isa.detect_cpu) has;
    the other classes are skipped with the reason.
    """
    from nimbuild.builder.gate import run_gate

    fp32_path, export_dir = Path(fp32_path), Path(export_dir)
    wanted: list[str] = []
    report: dict[str, dict] = {}
    for raw in precisions:
        name = canonical_precision(raw)
        if name == "fp32" or name in wanted:
            continue
        if name not in PRECISIONS:
            report[raw] = {
                "status": "skipped",
                "reason": f"unknown precision {raw!r}: nimbuild builds fp32, {', '.join(PRECISIONS)}",
                "path": None,
            }
            out.warn(report[raw]["reason"])
            continue
        wanted.append(name)
    if not wanted:
        return report
    _check_pairs("calibration", calibration, MIN_CALIBRATION_PAIRS)
    if not evaluation or n_pairs(evaluation) == 0:
        raise NimbuildError(
            "evaluation pairs: none given, the accuracy gate needs some",
            hint="give the recipe a pairs file (field `pairs`) or pass --pairs FILE.jsonl",
        )
    if len(reference) != len(evaluation):
        raise ValueError(f"{len(reference)} reference score arrays for {len(evaluation)} evaluation queries")
    if labels is not None and len(labels) != len(evaluation):
        raise ValueError(f"{len(labels)} label lists for {len(evaluation)} evaluation queries")
    for feeds in calibration[:1] + evaluation[:1]:
        missing = [n for n in input_names if n not in feeds]
        if missing:
            raise ValueError(f"feeds lack graph inputs {missing}")
    config_dirs = [d for d in (config_dir, tokenizer_dir(export_dir), export_dir, fp32_path.parent) if d is not None]
    targets = _targets(wanted, cpu_classes)
    if build_cpu is None and any(c is not None for _, _, c in targets):
        build_cpu = cpu_isa.detect_cpu()

    with out.progress() as progress:
        task = progress.add_task("precision graphs", total=len(targets))
        for name, precision, cpu_class in targets:
            progress.update(task, description=f"{name}: build + gate")
            class_name = cpu_class.name if cpu_class is not None else None
            final_dir = graph_dir(export_dir, precision, class_name)
            rel = graph_relpath(precision, class_name)
            entry: dict[str, Any] = {"tool": _tool(precision), "path": None}
            if cpu_class is not None:
                entry.update(precision="int8", cpu_isa=cpu_class.name, weight_bits=cpu_class.weight_bits)
                assert build_cpu is not None
                if not build_cpu.has(cpu_class.name):
                    _remove_stale(final_dir)
                    entry.update(status="skipped", reason=cannot_judge_reason(cpu_class, build_cpu), seconds=0.0)
                    report[name] = entry  # the gate table prints the reason
                    progress.advance(task)
                    continue
            start = time.perf_counter()
            try:
                with staging_dir(final_dir) as stage:
                    info = _build_one(
                        precision,
                        fp32_path,
                        stage / GRAPH_FILE,
                        architecture=architecture,
                        calibration=calibration,
                        config_dirs=config_dirs,
                        int8_mode=int8_mode,
                        cpu_class=cpu_class,
                    )
                    entry["tool"] = _tool(precision, info)
                    if info.get("warn"):
                        out.warn(f"{name}: {info['warn']}")
                    entry["notes"] = info.get("notes", [])
                    if cpu_class is not None:
                        assert build_cpu is not None
                        entry["judged_on"] = build_cpu.to_dict()  # the CPU whose kernels the gate ran on
                    folder = graph_dir_relpath(precision, class_name)
                    entry["files"] = [f"{folder}/{f}" for f in info.get("files", [GRAPH_FILE])]
                    try:
                        session = cpu_session(stage / GRAPH_FILE, fp8_qdq=(precision == "fp8"))
                    except Exception as exc:  # e.g. an ONNX Runtime without FP8 Q/DQ kernels
                        raise RuntimeError(
                            f"ONNX Runtime (CPU) cannot run the {name} graph, so it cannot be gated: "
                            f"{str(exc).splitlines()[0][:300]}"
                        ) from exc
                    gate = run_gate(session, evaluation, reference, thresholds[precision], labels=labels)
                    entry["gate"] = gate.to_dict()
                    if not gate.passed:
                        raise _Rejected(gate)
                    _readable_like_the_rest(stage)
                entry.update(status="passed", path=rel)
            except _Rejected as rej:
                _remove_stale(final_dir)
                entry.pop("files", None)
                entry.update(status="rejected", reason="accuracy gate: " + "; ".join(rej.gate.failures))
            except _Unsupported as exc:
                _remove_stale(final_dir)
                entry.pop("files", None)
                entry.update(status="skipped", reason=str(exc))
                out.warn(str(exc))
            except NimbuildError:
                raise
            except Exception as exc:  # one precision failing must not stop the others
                _remove_stale(final_dir)
                entry.pop("files", None)
                entry.update(
                    status="failed",
                    reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:400] if str(exc) else ''}",
                )
                out.warn(f"{name} graph failed: {entry['reason']}")
            entry["seconds"] = round(time.perf_counter() - start, 2)
            report[name] = entry
            progress.advance(task)
    return report
