"""The CPU INT8 graph: ONNX Runtime's transformer fusions, then INT8 for one CPU class.

1. ``onnxruntime.transformers.optimizer.optimize_model`` with the architecture's model type
   fuses embeddings+LayerNorm, attention, bias+GELU and skip+LayerNorm into ORT's contrib ops
   (attention fuses only when the head count and hidden size are known: from the model's
   config.json beside the export, else the graph).
2. ``quantize_dynamic`` (INT8 weights per tensor, activations quantized on the fly per
   batch: MatMulInteger / DynamicQuantizeMatMul / QAttention, which use VNNI's 8-bit dot
   products) is the default. ``quantize_static`` (QDQ, UINT8 activations from MinMax
   calibration, INT8 weights) is the alternative. Measured on the MiniLM-L6-sized model
   (benchmarks/bench_precision.py, RESULTS-precision.md): dynamic ranks better (higher top-1
   against the FP32 reference) at similar or better speed, so it is the default.
   ``reduce_range`` (7-bit weights) is the caller's: a function of the CPU class the graph is
   made for (nimbuild.cpu_isa: 7-bit for ``avx2``, whose u8s8 kernel would saturate full-range
   weights), never of the machine that happens to build it, so one class gives the same bytes
   on every runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from nimbuild.builder.precision.common import (
    EXTERNAL_DATA_BYTES,
    load_model,
    quiet_ort_quantization,
    save_model,
    weight_bytes,
)

# transformers architecture prefix -> ORT optimizer model_type (encoder families with BERT-like graphs)
_MODEL_TYPES = {
    "Bert": "bert",
    "Roberta": "bert",
    "XLMRoberta": "bert",
    "Camembert": "bert",
    "Electra": "bert",
    "DistilBert": "bert",
    "MPNet": "bert",
    "Ernie": "bert",
}
MODES = ("dynamic", "static")
DEFAULT_MODE = "dynamic"


def ort_model_type(architecture: str) -> str | None:
    """ORT optimizer model_type for ``BertForSequenceClassification`` etc.; None: no fusions known."""
    base = architecture.split("For", 1)[0]
    return _MODEL_TYPES.get(base)


def attention_shape(config_dirs: list[Path]) -> tuple[int, int]:
    """(num_heads, hidden_size) from the first config.json found, (0, 0) (= let ORT guess) otherwise."""
    for d in config_dirs:
        p = Path(d) / "config.json"
        if p.is_file():
            try:
                cfg = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            heads = cfg.get("num_attention_heads") or cfg.get("n_heads") or 0
            hidden = cfg.get("hidden_size") or cfg.get("dim") or 0
            return int(heads), int(hidden)
    return 0, 0


# Fusion levels tried in turn: ORT's fusions match subgraph patterns, and a pattern that
# matches an export it was not written for can drop the attention mask (seen with
# transformers 5's mask: fused Attention with a dummy mask index). Each level is checked
# against the unfused FP32 graph on padded calibration batches; the first that agrees is kept.
_FUSION_LEVELS = (
    ("all", {}),
    ("no attention", {"enable_attention": False, "enable_embed_layer_norm": False}),
)
FUSION_TOLERANCE = 1e-3  # max |delta logit| relative to the logits' range


def _max_abs_diff(a_path, b_model, feeds) -> tuple[float, float]:
    from nimbuild.builder.precision.common import cpu_session

    with tempfile.TemporaryDirectory(prefix="nimbuild-fuse-") as tmp:
        save_model(b_model, Path(tmp) / "fused.onnx")
        return _compare(cpu_session(a_path), cpu_session(Path(tmp) / "fused.onnx"), feeds)


def _compare(a, b, feeds) -> tuple[float, float]:
    from nimbuild.builder.precision.common import feeds_for

    diff, scale = 0.0, 0.0
    for fa, fb in zip(feeds_for(a, feeds), feeds_for(b, feeds), strict=True):
        ya, yb = a.run(None, fa)[0], b.run(None, fb)[0]
        diff = max(diff, float(np.max(np.abs(ya - yb))))
        scale = max(scale, float(np.max(np.abs(ya))))
    return diff, scale


def fuse(
    fp32_path: str | os.PathLike,
    architecture: str,
    num_heads: int = 0,
    hidden_size: int = 0,
    check_feeds: list[dict[str, np.ndarray]] | None = None,
):
    """The FP32 graph with ORT's transformer fusions (a ModelProto), the fused-op counts, and notes.

    With ``check_feeds``, a fusion level that changes the FP32 scores is refused (see _FUSION_LEVELS).
    """
    import logging

    import onnx

    model_type = ort_model_type(architecture)
    if model_type is None:
        return load_model(fp32_path), {}, [f"no ONNX Runtime transformer fusions known for {architecture}"]
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # the fusion logger is chatty about what it did not find; the counts below say what it did
    for name in ("onnxruntime.transformers", "fusion", "onnx_model", "onnx_model_bert"):
        logging.getLogger(name).setLevel(logging.ERROR)
    notes: list[str] = []
    for level, switches in _FUSION_LEVELS:
        options = FusionOptions(model_type)
        for key, value in switches.items():
            setattr(options, key, value)
        optimized = optimize_model(
            os.fspath(fp32_path),
            model_type=model_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=0,
        )
        model = optimized.model
        domains = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
        have = {op.domain for op in model.opset_import}
        for domain in sorted(domains - have):  # the fused contrib ops need their opset declared
            model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
        stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        if not check_feeds:
            return model, stats, notes
        diff, scale = _max_abs_diff(fp32_path, model, check_feeds)
        if diff <= FUSION_TOLERANCE * max(scale, 1.0):
            return model, stats, notes
        notes.append(
            f"fusion level '{level}' refused: it changed the FP32 logits by up to {diff:.3g} "
            "(ORT's pattern did not fit this export)"
        )
    return load_model(fp32_path), {}, notes + ["no fusions kept"]


def _padded(calibration, limit: int = 8):
    """Calibration batches for the fusion check, padded ones first (that is where masks matter)."""
    if not calibration:
        return None
    ranked = sorted(calibration, key=lambda f: -int((np.asarray(f.get("attention_mask", 1)) == 0).sum()))
    return ranked[:limit]


def build_cpu_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    architecture: str,
    *,
    calibration: list[dict[str, np.ndarray]] | None = None,
    reduce_range: bool,
    mode: str = DEFAULT_MODE,
    num_heads: int = 0,
    hidden_size: int = 0,
) -> dict:
    """Write the fused INT8 CPU graph of ``fp32_path`` to ``out_path``; returns facts for the report.

    ``reduce_range``: 7-bit weights (``CpuIsa.reduce_range`` of the class it is made for).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in MODES:
        raise ValueError(f"int8 mode {mode!r}: expected one of {MODES}")
    notes: list[str] = []
    fused, stats, fuse_notes = fuse(fp32_path, architecture, num_heads, hidden_size, check_feeds=_padded(calibration))
    notes += fuse_notes
    if stats:
        notes.append("fused: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    else:
        notes.append(f"no ONNX Runtime transformer fusions kept for {architecture}: quantized unfused")
    notes = [n for i, n in enumerate(notes) if n not in notes[:i]]
    with tempfile.TemporaryDirectory(prefix="nimbuild-int8-") as tmp:
        fused_path = Path(tmp) / "fused.onnx"
        if stats:  # plain ONNX shape inference does not know ORT's contrib ops; the quantizer needs the types
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            with contextlib.suppress(
                Exception
            ):  # the dynamic quantizer copes without; the static one says what it lacks
                fused = SymbolicShapeInference.infer_shapes(fused, auto_merge=True)
        save_model(fused, fused_path)
        q_path = Path(tmp) / "int8.onnx"
        large = weight_bytes(fused) > EXTERNAL_DATA_BYTES
        if mode == "dynamic":
            with quiet_ort_quantization():
                quantize_dynamic(
                    fused_path,
                    q_path,
                    weight_type=QuantType.QInt8,
                    per_channel=False,
                    use_external_data_format=large,
                    reduce_range=reduce_range,
                    extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
                )
        else:
            if not calibration:
                raise ValueError("static INT8 needs calibration pairs")
            from nimbuild.builder.precision.fp8 import _Reader

            names = [i.name for i in fused.graph.input]
            with quiet_ort_quantization():
                quantize_static(
                    fused_path,
                    q_path,
                    _Reader(calibration, names),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=False,
                    reduce_range=reduce_range,
                    calibrate_method=CalibrationMethod.MinMax,
                    use_external_data_format=large,
                    # MatMul/Gemm only: quantizing every op also quantizes the attention mask's
                    # float32.min fill, whose range then wipes out the scores (measured: top-1 0)
                    op_types_to_quantize=["MatMul", "Gemm"],
                    extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
                )
        files = save_model(load_model(q_path), out_path)
    notes.insert(0, f"{mode} INT8 (weights int8 per tensor{', 7-bit' if reduce_range else ''}) on the fused graph")
    return {"files": files, "notes": notes, "mode": mode, "fusions": stats, "reduce_range": reduce_range}
