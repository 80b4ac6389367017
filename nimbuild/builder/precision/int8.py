"""The CPU INT8 graph: ONNX Runtime's transformer fusions, then INT8 that survives real BERT weights.

1. ``onnxruntime.transformers.optimizer.optimize_model`` with the architecture's model type
   fuses embeddings+LayerNorm, attention, bias+GELU and skip+LayerNorm into ORT's contrib ops.
   Attention fuses only when the head count and hidden size are known: ORT cannot read them
   from our exports (their Reshape is ``[batch, seq, -1, head_size]``) and then skips the
   fusion with a warning, so they come from the model's config.json, else from the graph
   itself (:func:`attention_shape_of_graph`), and the report counts the fused layers.
2. The quantization scheme (:class:`Int8Scheme`) is explicit: nothing in it is read from the
   build host (the caller chooses ``reduce_range`` for the CPU class the graph is made for).
   Real BERT-class weights have outlier channels that random weights lack (a few hidden
   dimensions of the LayerNorm outputs and of the FFN are 10-50x the others). Measured on
   real weights (benchmarks/RESULTS-precision.md), the default scheme is:

   * ``per_channel``: one weight scale per output column (MatMulInteger / QAttention take
     per-column scales), so the outlier-producing columns do not flatten the others;
   * ``smooth_alpha`` (SmoothQuant, Xiao et al. 2023): per input channel j of a quantized
     MatMul, ``s_j = max|X_j|^a / max|W_j|^(1-a)`` from calibration; the activation is divided
     by s (an explicit Mul: in a post-LayerNorm BERT the LayerNorm output is also the
     residual, so it cannot be folded into gamma) and W's row j multiplied by it. The
     per-tensor activation scale then no longer serves a few outlier channels only;
   * ``per_token``: MatMul classes whose activations are quantized per token, asymmetric,
     on the fly (:mod:`nimbuild.builder.precision.per_token`). The FFN-down input (the GELU
     output) has *token* outliers that SmoothQuant's channel migration cannot remove and one
     scale per batch cannot serve; per-token scales keep its INT8 speed where keeping it
     FP32 would spend it;
   * ``keep_fp32``: MatMuls that stay FP32 (by measured sensitivity); none by default
     (per-token FFN-down passes without; the pooler and the score head are Gemms, which
     ``quantize_dynamic`` here leaves FP32 anyway);
   * embeddings are not quantized (``EmbedLayerNormalization``/``Gather`` stay FP32: a
     per-tensor UINT8 embedding table is the cheapest accuracy to lose and buys no speed).

   ``quantize_dynamic`` (activations quantized per batch on the fly: DynamicQuantizeMatMul,
   QAttention) is the default mode; ``quantize_static`` (QDQ, MinMax) is the alternative.
   ``reduce_range`` (7-bit weights): the u8s8 kernels of AVX2 (``vpmaddubsw``) saturate int16
   with full 8-bit weights; with 7-bit weights they cannot, on any x86-64 CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from nimbuild.builder.precision.common import (
    EXTERNAL_DATA_BYTES,
    cpu_session,
    feeds_for,
    library_chatter,
    load_model,
    save_model,
    weight_bytes,
)
from nimbuild.builder.precision.smoothquant import QUANTIZED_OPS, matmul_classes, selected, smooth

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


@dataclass(frozen=True)
class Int8Scheme:
    """How the fused FP32 graph becomes INT8; every choice explicit (none read from the build host).

    The weight range is not here: it belongs to the CPU class the graph is made for
    (``build_cpu_int8(reduce_range=...)``), so one scheme serves every class.
    ``keep_fp32``: names of fused-graph MatMul/Attention nodes left in FP32, or layer classes
    (see :func:`matmul_classes`): ``"ffn_down"``, ``"ffn_up"``, ``"attention_out"``,
    ``"attention_qkv"``, ``"pooler"``, optionally with a layer index: ``"ffn_down:5"``.
    ``per_token``: the same kind of names, for MatMuls whose activations are quantized per
    token (dynamic mode only; a fused Attention is not a MatMul and stays per batch).
    ``smooth_alpha`` applies to the per-batch quantized MatMuls (per-token ones need no
    channel migration: measured, RESULTS-precision.md).
    """

    mode: str = DEFAULT_MODE
    per_channel: bool = True
    smooth_alpha: float | None = 0.5
    keep_fp32: tuple[str, ...] = ()
    per_token: tuple[str, ...] = ("ffn_down",)
    quantize_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"int8 mode {self.mode!r}: expected one of {MODES}")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha {self.smooth_alpha}: expected 0..1 or None")
        if self.per_token and self.mode != "dynamic":
            raise ValueError(
                f"per_token {list(self.per_token)}: per-token activations are dynamic INT8 only (static: per_token=())"
            )

    def describe(self, reduce_range: bool | None = None) -> str:
        parts = [
            f"{self.mode} INT8",
            f"weights int8 per {'channel' if self.per_channel else 'tensor'}"
            + {True: " (7-bit range)", False: " (full 8-bit range)", None: ""}[reduce_range],
        ]
        if self.smooth_alpha is not None:
            parts.append(f"SmoothQuant alpha {self.smooth_alpha:g}")
        if self.per_token:
            parts.append("per-token activations: " + ", ".join(self.per_token))
        if self.keep_fp32:
            parts.append("FP32: " + ", ".join(self.keep_fp32))
        if not self.quantize_embeddings:
            parts.append("embeddings FP32")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keep_fp32"] = list(self.keep_fp32)
        d["per_token"] = list(self.per_token)
        return d


DEFAULT_SCHEME = Int8Scheme()


def scheme_for_mode(mode: str) -> Int8Scheme:
    """The shipped scheme in ``mode``: static QDQ has no per-token activations (they are dynamic by nature)."""
    return DEFAULT_SCHEME if mode == DEFAULT_MODE else replace(DEFAULT_SCHEME, mode=mode, per_token=())


def ort_model_type(architecture: str) -> str | None:
    """ORT optimizer model_type for ``BertForSequenceClassification`` etc.; None: no fusions known."""
    base = architecture.split("For", 1)[0]
    return _MODEL_TYPES.get(base)


def attention_shape(config_dirs: list[Path]) -> tuple[int, int]:
    """(num_heads, hidden_size) from the first config.json found, (0, 0) (= not known) otherwise."""
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


def _constant(model, name: str, producers: dict, inits: dict):
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def attention_shape_of_graph(model) -> tuple[int, int]:
    """(num_heads, hidden_size) read from an exported graph's attention Reshapes; (0, 0) if none found.

    The projections' outputs are reshaped to ``[batch, seq, heads or -1, head_size]`` by a
    Reshape whose shape is a Concat ending in two constants; the Add before it holds the
    bias of width hidden_size. ORT's own detection stops at the ``-1``.
    """
    from collections import Counter

    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    seen: Counter = Counter()
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        concat, source = producers.get(node.input[1]), producers.get(node.input[0])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4 or source is None:
            continue
        values = [_constant(model, t, producers, inits) for t in concat.input[2:]]
        if any(v is None or v.size != 1 for v in values):
            continue
        heads, head_size = (int(v.reshape(-1)[0]) for v in values)
        if head_size <= 0:
            continue
        if source.op_type != "Add":
            continue
        bias = next((inits[t] for t in source.input if t in inits and len(inits[t].dims) == 1), None)
        if bias is None:
            continue
        hidden = int(bias.dims[0])
        n_heads = heads if heads > 0 else hidden // head_size
        if n_heads * head_size == hidden:
            seen[(n_heads, hidden)] += 1
    return seen.most_common(1)[0][0] if seen else (0, 0)


# ----------------------------------------------------------------------------- fusion

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
    with tempfile.TemporaryDirectory(prefix="nimbuild-fuse-") as tmp:
        save_model(b_model, Path(tmp) / "fused.onnx")
        return _compare(cpu_session(a_path), cpu_session(Path(tmp) / "fused.onnx"), feeds)


def _compare(a, b, feeds) -> tuple[float, float]:
    diff, scale = 0.0, 0.0
    for fa, fb in zip(feeds_for(a, feeds), feeds_for(b, feeds), strict=True):
        ya, yb = a.run(None, fa)[0], b.run(None, fb)[0]
        diff = max(diff, float(np.max(np.abs(ya - yb))))
        scale = max(scale, float(np.max(np.abs(ya))))
    return diff, scale


def _attention_layers(model) -> int:
    """Attention layers of an unfused graph: one Softmax each."""
    return sum(1 for n in model.graph.node if n.op_type == "Softmax")


def fuse(
    fp32_path: str | os.PathLike,
    architecture: str,
    num_heads: int = 0,
    hidden_size: int = 0,
    check_feeds: list[dict[str, np.ndarray]] | None = None,
):
    """The FP32 graph with ORT's transformer fusions (a ModelProto), the fused-op counts, and notes.

    ``num_heads``/``hidden_size`` 0: read from the graph (:func:`attention_shape_of_graph`).
    With ``check_feeds``, a fusion level that changes the FP32 scores is refused (see _FUSION_LEVELS).
    The notes say how many attention layers fused, and what ORT's optimizer logged.
    """
    import onnx

    model_type = ort_model_type(architecture)
    original = load_model(fp32_path)
    if model_type is None:
        return original, {}, [f"no ONNX Runtime transformer fusions known for {architecture}"]
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    notes: list[str] = []
    if not (num_heads > 0 and hidden_size > 0):
        num_heads, hidden_size = attention_shape_of_graph(original)
        if num_heads:
            notes.append(f"attention shape read from the graph: {num_heads} heads, hidden size {hidden_size}")
    layers = _attention_layers(original)
    del original
    for level, switches in _FUSION_LEVELS:
        options = FusionOptions(model_type)
        for key, value in switches.items():
            setattr(options, key, value)
        with library_chatter() as chatter:
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
        level_notes = [f"onnxruntime optimizer: {m}" for m in chatter.messages()]
        fused_attention = stats.get("Attention", 0) + stats.get("MultiHeadAttention", 0)
        if switches.get("enable_attention", True) and layers and fused_attention < layers:
            level_notes.append(
                f"attention fused in {fused_attention} of {layers} layers"
                + ("" if num_heads else " (head count and hidden size unknown: no config.json, not in the graph)")
            )
        if check_feeds:
            diff, scale = _max_abs_diff(fp32_path, model, check_feeds)
            if diff > FUSION_TOLERANCE * max(scale, 1.0):
                notes.append(
                    f"fusion level '{level}' refused: it changed the FP32 logits by up to {diff:.3g} "
                    "(ORT's pattern did not fit this export)"
                )
                continue
        return model, stats, notes + level_notes
    return load_model(fp32_path), {}, notes + ["no fusions kept"]


def _padded(calibration, limit: int = 8):
    """Calibration batches for the fusion check, padded ones first (that is where masks matter)."""
    if not calibration:
        return None
    ranked = sorted(calibration, key=lambda f: -int((np.asarray(f.get("attention_mask", 1)) == 0).sum()))
    return ranked[:limit]


# ----------------------------------------------------------------------------- the graph


def build_cpu_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    architecture: str,
    *,
    calibration: list[dict[str, np.ndarray]] | None = None,
    reduce_range: bool,
    scheme: Int8Scheme = DEFAULT_SCHEME,
    num_heads: int = 0,
    hidden_size: int = 0,
) -> dict:
    """Write the fused INT8 CPU graph of ``fp32_path`` to ``out_path``; returns facts for the report.

    ``reduce_range``: 7-bit weights (exact on every x86-64 CPU: AVX2's u8s8 pair sums cannot
    saturate int16); False = full 8-bit weights, for CPUs whose integer dot products cannot
    saturate (VNNI, arm64): the CPU class's, never the build host's. ``scheme``: the rest.
    SmoothQuant and static mode need ``calibration`` (per-query feeds).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if (scheme.smooth_alpha is not None or scheme.mode == "static") and not calibration:
        raise ValueError(f"{scheme.describe(reduce_range)}: needs calibration pairs")
    if not (num_heads > 0 and hidden_size > 0):
        num_heads, hidden_size = attention_shape([Path(fp32_path).parent, Path(fp32_path).parent.parent / "tokenizer"])
    fused, stats, notes = fuse(fp32_path, architecture, num_heads, hidden_size, check_feeds=_padded(calibration))
    if stats:
        notes.append("fused: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    else:
        notes.append(f"no ONNX Runtime transformer fusions kept for {architecture}: quantized unfused")
    for i, node in enumerate(fused.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    items = matmul_classes(fused)
    kept = selected(items, scheme.keep_fp32)
    tokenwise = {i.node for i in items if i.op_type == "MatMul"} & (selected(items, scheme.per_token) - kept)
    per_batch = [i for i in items if i.node not in kept and i.node not in tokenwise]
    facts: dict = {
        "quantized_matmuls": len(items) - len(kept),
        "per_token_matmuls": len(tokenwise),
        "fp32_matmuls": sorted(kept),
    }
    if scheme.smooth_alpha is not None and per_batch:
        facts["smoothquant"] = smooth(fused, calibration, per_batch, scheme.smooth_alpha)
    if tokenwise:
        from nimbuild.builder.precision.per_token import quantize_per_token

        quantize_per_token(fused, tokenwise, reduce_range=reduce_range, per_channel=scheme.per_channel)
    op_types = list(QUANTIZED_OPS) + (["Gather", "EmbedLayerNormalization"] if scheme.quantize_embeddings else [])
    with tempfile.TemporaryDirectory(prefix="nimbuild-int8-") as tmp:
        fused_path = Path(tmp) / "fused.onnx"
        if stats:  # plain ONNX shape inference does not know ORT's contrib ops; the quantizer needs the types
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            # the dynamic quantizer copes without; the static one will say what it lacks
            with contextlib.suppress(Exception):
                fused = SymbolicShapeInference.infer_shapes(fused, auto_merge=True)
        save_model(fused, fused_path)
        q_path = Path(tmp) / "int8.onnx"
        large = weight_bytes(fused) > EXTERNAL_DATA_BYTES
        extra = {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}
        with library_chatter() as chatter:
            if scheme.mode == "dynamic":
                quantize_dynamic(
                    fused_path,
                    q_path,
                    op_types_to_quantize=op_types,
                    weight_type=QuantType.QInt8,
                    per_channel=scheme.per_channel,
                    use_external_data_format=large,
                    reduce_range=reduce_range,
                    nodes_to_exclude=sorted(kept | tokenwise),
                    extra_options=extra,
                )
            else:
                from nimbuild.builder.precision.fp8 import _Reader

                names = [i.name for i in fused.graph.input]
                quantize_static(
                    fused_path,
                    q_path,
                    _Reader(calibration, names),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=scheme.per_channel,
                    reduce_range=reduce_range,
                    calibrate_method=CalibrationMethod.MinMax,
                    use_external_data_format=large,
                    # MatMul only: quantizing every op also quantizes the attention mask's
                    # float32.min fill, whose range then wipes out the scores (measured: top-1 0)
                    op_types_to_quantize=["MatMul", "Gemm"],
                    nodes_to_exclude=sorted(kept),
                    extra_options=extra,
                )
        notes += [f"onnxruntime quantizer: {m}" for m in chatter.messages()]
        files = save_model(load_model(q_path), out_path)
    notes.insert(0, scheme.describe(reduce_range) + " on the fused graph")
    if facts.get("smoothquant", {}).get("smoothed"):
        sq = facts["smoothquant"]
        notes.append(
            f"SmoothQuant on {sq['smoothed']} activations: worst channel outlier ratio (max/median amax) "
            f"{sq['outlier_ratio_before']} -> {sq['outlier_ratio_after']}"
        )
    notes = [n for i, n in enumerate(notes) if n not in notes[:i]]
    return {
        "files": files,
        "notes": notes,
        "mode": scheme.mode,
        "scheme": scheme.to_dict(),
        "reduce_range": reduce_range,
        "fusions": stats,
        **facts,
    }
