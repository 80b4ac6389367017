"""The precision graphs (FP16, FP8 Q/DQ, CPU INT8), each judged by the accuracy gate before it is kept.

TensorRT 10/11 builds strongly typed networks, so a precision is a graph of its own
(DESIGN.md, "Precision lives in the graph"). Each is built into a staging folder beside
``onnx/<precision>/``, run in ONNX Runtime on the CPU against the PyTorch FP32 reference
(nimbuild.builder.gate), and renamed into place only if it passes: a rejected or failed
graph never sits where the manifest would look for it.

    fp16.py   FP16 with fragile ops in FP32 (ONNX Runtime's float16 converter)
    fp8.py    FP8 E4M3 Q/DQ for TensorRT (ORT's calibrator, ModelOpt-style placement)
    int8.py   ORT transformer fusions + INT8 for CPUs with VNNI
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.builder.precision.common import (
    MIN_CALIBRATION_PAIRS,
    cpu_int8_support,
    cpu_session,
    n_pairs,
    tool_versions,
)
from nimbuild.errors import NimbuildError
from nimbuild.fsutil import staging_dir

# recipe precision name -> folder under OUT/onnx/
DIRS = {"fp16": "fp16", "fp8": "fp8", "int8": "cpu-int8"}
ALIASES = {"cpu-int8": "int8", "cpu_int8": "int8"}
PRECISIONS = tuple(DIRS)

__all__ = [
    "DIRS",
    "PRECISIONS",
    "build_precisions",
    "thresholds_for",
    "build_fp16",
    "build_fp8",
    "build_cpu_int8",
    "int8_reduce_range_for",
]


def build_fp16(fp32_path, out_path, calibration=None) -> dict:
    from nimbuild.builder.precision.fp16 import build_fp16 as build

    return build(fp32_path, out_path, calibration)


def build_fp8(fp32_path, out_path, calibration) -> dict:
    from nimbuild.builder.precision.fp8 import build_fp8 as build

    return build(fp32_path, out_path, calibration)


def build_cpu_int8(fp32_path, out_path, architecture, **options) -> dict:
    """See int8.build_cpu_int8 (``scheme=Int8Scheme(...)``: the quantization, explicit)."""
    from nimbuild.builder.precision.int8 import build_cpu_int8 as build

    return build(fp32_path, out_path, architecture, **options)


def int8_reduce_range_for(cpu: dict | None = None) -> bool:
    """7-bit INT8 weights for a CPU (``common.cpu_int8_support()``'s answer; default: this host's).

    The one place where a CPU decides the numerics: full 8-bit weights only where it has VNNI
    (main's cpu_isa classes make this the profile's target CPU class instead of the build host).
    """
    cpu = cpu if cpu is not None else cpu_int8_support()
    return not cpu["vnni"]


class _Rejected(Exception):
    """Raised inside the staging folder so that a graph the gate refuses is removed with it."""

    def __init__(self, gate):
        super().__init__("rejected by the gate")
        self.gate = gate


class _Unsupported(Exception):
    """This precision cannot be had for this model or this machine (skipped with the reason)."""


def thresholds_for(thresholds: Any, precision: str) -> Any:
    """The gate thresholds for one precision: the recipe's ``Thresholds.for_precision``, or a mapping
    whose ``fp16``/``fp8``/``int8`` entries override its metrics for that precision."""
    if hasattr(thresholds, "for_precision"):
        return thresholds.for_precision(precision)
    if isinstance(thresholds, dict):
        merged = {k: v for k, v in thresholds.items() if k not in DIRS}
        merged.update(thresholds.get(precision) or {})
        return merged
    return thresholds


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
    precision: str, fp32_path: Path, out_path: Path, *, architecture: str, calibration, config_dirs, int8_mode: str
) -> dict:
    if precision == "fp16":
        return build_fp16(fp32_path, out_path, calibration)
    if precision == "fp8":
        from nimbuild.builder.precision.fp8 import NothingToQuantize

        try:
            return build_fp8(fp32_path, out_path, calibration)
        except NothingToQuantize as exc:
            raise _Unsupported(f"fp8 is not available for {architecture}: {exc}") from exc
    cpu = cpu_int8_support()
    if not cpu["supported"]:
        raise _Unsupported(
            f"int8 is not available on this CPU ({cpu['machine']}): ONNX Runtime has no INT8 "
            "kernels for it; build cpu-int8 on an x86-64 (AVX2, ideally AVX-512 VNNI) or arm64 host"
        )
    from nimbuild.builder.precision.int8 import attention_shape, scheme_for_mode

    heads, hidden = attention_shape(config_dirs)
    info = build_cpu_int8(
        fp32_path,
        out_path,
        architecture,
        calibration=calibration,
        reduce_range=int8_reduce_range_for(cpu),
        scheme=scheme_for_mode(int8_mode),
        num_heads=heads,
        hidden_size=hidden,
    )
    if not cpu["vnni"]:
        info["notes"].append(
            f"this CPU ({cpu['machine']}, {', '.join(cpu['flags']) or 'no AVX-512/VNNI flags'}) lacks VNNI: "
            "weights use 7-bit range (reduce_range)"
        )
    unfused = [n for n in info["notes"] if n.startswith("attention fused in")]
    if unfused:
        info["warn"] = unfused[0]  # a missed fusion costs speed: said out loud, not only in the report
    return info


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
    thresholds: Any,
    out,
    int8_mode: str = "dynamic",
    config_dir: Path | None = None,
) -> dict[str, dict]:
    """Build, gate and keep (or refuse) each requested precision graph; the export_report.json entries.

    ``calibration``/``evaluation``: per query, the encoded feeds for its passages (int64,
    named as the graph inputs); ``reference``: the PyTorch FP32 scores per evaluation query.
    ``thresholds``: the recipe's (with its per-precision overrides, see ``thresholds_for``).
    ``fp32`` in ``precisions`` is ignored (the export writes it). Entries are keyed by the
    recipe's name (``fp16``, ``fp8``, ``int8``); the int8 graph lives in ``onnx/cpu-int8/``.
    """
    from nimbuild.builder.gate import run_gate

    fp32_path, export_dir = Path(fp32_path), Path(export_dir)
    wanted: list[str] = []
    report: dict[str, dict] = {}
    for raw in precisions:
        name = ALIASES.get(raw.lower(), raw.lower())
        if name == "fp32" or name in wanted:
            continue
        if name not in DIRS:
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
    for feeds in calibration[:1] + evaluation[:1]:
        missing = [n for n in input_names if n not in feeds]
        if missing:
            raise ValueError(f"feeds lack graph inputs {missing}")
    config_dirs = [d for d in (config_dir, export_dir / "tokenizer", export_dir, fp32_path.parent) if d is not None]

    with out.progress() as progress:
        task = progress.add_task("precision graphs", total=len(wanted))
        for name in wanted:
            progress.update(task, description=f"{name}: build + gate")
            final_dir = export_dir / "onnx" / DIRS[name]
            rel = f"onnx/{DIRS[name]}/model.onnx"
            entry: dict[str, Any] = {"tool": _tool(name), "path": None}
            start = time.perf_counter()
            try:
                with staging_dir(final_dir) as stage:
                    info = _build_one(
                        name,
                        fp32_path,
                        stage / "model.onnx",
                        architecture=architecture,
                        calibration=calibration,
                        config_dirs=config_dirs,
                        int8_mode=int8_mode,
                    )
                    entry["tool"] = _tool(name, info)
                    if info.get("warn"):
                        out.warn(f"{name}: {info['warn']}")
                    entry["notes"] = info.get("notes", [])
                    entry["files"] = [f"onnx/{DIRS[name]}/{f}" for f in info.get("files", ["model.onnx"])]
                    try:
                        session = cpu_session(stage / "model.onnx", fp8_qdq=(name == "fp8"))
                    except Exception as exc:  # e.g. an ONNX Runtime without FP8 Q/DQ kernels
                        raise RuntimeError(
                            f"ONNX Runtime (CPU) cannot run the {name} graph, so it cannot be gated: "
                            f"{str(exc).splitlines()[0][:300]}"
                        ) from exc
                    gate = run_gate(session, evaluation, reference, thresholds_for(thresholds, name))
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
