"""The FP8 graph: explicit FP8 (E4M3) Q/DQ on the MatMul/Gemm projections, calibrated on real pairs, for TensorRT.

Decision (measured, Nov 2026; see benchmarks/RESULTS-precision.md):

- ``nvidia-modelopt`` 0.47 (the quantizer TensorRT's docs recommend) cannot be installed
  beside our pins: its ``[onnx]`` extra requires ``onnx~=1.21.0`` (we pin 1.23),
  ``onnxruntime-gpu~=1.24.2`` (we pin 1.31) and ``cupy-cuda12x``. Checked with
  ``pip download --no-deps nvidia-modelopt`` and its METADATA; not installed.
- ONNX Runtime's ``quantize_static(activation_type=weight_type=QuantType.QFLOAT8E4M3FN)``
  was tried first and is not used as is: it only accepts ``CalibrationMethod.Distribution``,
  whose collector fails on calibration batches of different shapes (ValueError
  "inhomogeneous shape": real queries have different passage counts and lengths), and its
  scales come from the standard deviation (``std / std(E4M3 values)``), which clips the
  activation outliers transformers have, where TensorRT and ModelOpt use ``amax / 448``.
- So: ONNX Runtime's own calibrator (``create_calibrator(..., CalibrationMethod.MinMax)``,
  which reduces each batch on its own and takes any shape) collects the ranges on the
  recipe's tokenized calibration pairs, and this module places the Q/DQ nodes itself the
  way ModelOpt does for TensorRT's strongly typed FP8 builds:

  * every weighted MatMul/Gemm (the Q/K/V, attention-output, FFN and pooler projections)
    gets a QuantizeLinear -> DequantizeLinear pair on its activation input and an FP8
    initializer -> DequantizeLinear on its weight;
  * scales are per tensor, ``amax / 448`` (max calibration: E4M3 keeps the same relative
    precision over its whole range, so clipping outliers, as entropy or percentile
    calibration do for INT8, only adds error); zero points are FP8 zeros; opset >= 19;
  * kept out of FP8, as ModelOpt's ONNX PTQ keeps them out (modelopt/onnx/quantization/
    graph_utils.py): GEMV-shaped MatMul/Gemm (an output dimension of 1: the score head,
    ``find_nodes_from_matmul_to_exclude``), and the attention BMMs (Q.K^T and P.V) unless
    they form TensorRT's FP8 fused-MHA pattern BMM1 -> [Mul|Div] -> [Add] -> Softmax -> BMM2
    (``find_nodes_from_mha_to_exclude``/``match_fp8_mha_pattern``). Exports through
    transformers' SDPA put an IsNaN/Where guard between Softmax and BMM2, so TensorRT would
    not fuse them and they stay in FP32. That BMM placement is ``Fp8Scheme(attention_bmms=True)``;
    the shipped ``DEFAULT_FP8_SCHEME`` keeps every attention BMM high precision, because on the
    real test bed FP8 BMMs cost the default gate (measured; benchmarks/RESULTS-precision.md).

The graph runs in ONNX Runtime on the CPU as simulated quantization (Q/DQ kept unfused,
see common.cpu_session), which is how the accuracy gate judges it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nimbuild.builder.precision.common import (
    EXTERNAL_DATA_BYTES,
    layer_index,
    load_model,
    matmul_class,
    node_output_is_graph_output,
    opset,
    save_model,
    select_nodes,
    weight_bytes,
)

E4M3_MAX = 448.0
QUANTIZED_OPS = ("MatMul", "Gemm")
MIN_OPSET = 19  # QuantizeLinear/DequantizeLinear with float8 types
# ops ModelOpt's FP8 MHA matcher looks through (match_fp8_mha_pattern's wild cards)
_MHA_PASS_THROUGH = ("Reshape", "Transpose", "Flatten", "Cast")


@dataclass(frozen=True)
class Fp8Scheme:
    """Where FP8 Q/DQ goes and how its scales are set; the default is ModelOpt's placement (module docstring).

    ``attention_bmms``: Q.K^T and P.V in FP8 where they form TensorRT's fused FP8 MHA
    pattern (False: every attention BMM stays high precision). ``keep``: projections left
    high precision, by node name, class or ``class:layer`` (common.select_nodes).
    ``per_channel_weights``: one weight scale per output channel (the DequantizeLinear's
    ``axis``), which TensorRT's explicit quantization takes for weights (activations stay per
    tensor: TensorRT's FP8 activations are per tensor or dynamic per block only).
    ``activation_percentile``: activation amax from this percentile of |x| over the
    calibration pairs instead of the max (None: max, ``amax / 448``).
    ``smooth_alpha``: SmoothQuant's migration (int8.smooth) before the Q/DQ: an FP16 Mul by
    1/s on the activation, s into the weight's rows.
    """

    attention_bmms: bool = True
    keep: tuple[str, ...] = ()
    per_channel_weights: bool = False
    activation_percentile: float | None = None
    smooth_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.activation_percentile is not None and not 50.0 < self.activation_percentile <= 100.0:
            raise ValueError(f"activation_percentile {self.activation_percentile}: expected (50, 100] or None")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha {self.smooth_alpha}: expected 0..1 or None")

    def describe(self) -> str:
        parts = ["attention BMMs " + ("FP8 where TensorRT fuses them" if self.attention_bmms else "high precision")]
        parts.append("weights per " + ("output channel" if self.per_channel_weights else "tensor"))
        if self.activation_percentile is not None:
            parts.append(f"activation amax at the {self.activation_percentile:g}th percentile")
        if self.smooth_alpha is not None:
            parts.append(f"SmoothQuant alpha {self.smooth_alpha:g}")
        if self.keep:
            parts.append("high precision: " + ", ".join(self.keep))
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "attention_bmms": self.attention_bmms,
            "keep": list(self.keep),
            "per_channel_weights": self.per_channel_weights,
            "activation_percentile": self.activation_percentile,
            "smooth_alpha": self.smooth_alpha,
        }


# The shipped placement, chosen by measurement on the real test bed (200 held-out queries, default gate;
# benchmarks/RESULTS-precision.md): the projections in FP8 and the attention BMMs high precision passes
# (top-1 0.975, Spearman 0.975, NDCG@10 0.9992); ModelOpt's placement with the fused-MHA BMMs in FP8 too
# fails (top-1 0.945). TensorRT builds either: the BMMs then run in FP16 beside FP8 projections.
DEFAULT_FP8_SCHEME = Fp8Scheme(attention_bmms=False)


class NothingToQuantize(ValueError):
    """The graph has no MatMul/Gemm that FP8 Q/DQ could go on."""


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over per-query feeds."""

    def __init__(self, queries, input_names):
        self._it = iter([{n: np.ascontiguousarray(q[n], dtype=np.int64) for n in input_names} for q in queries])

    def get_next(self):
        return next(self._it, None)


def calibrate_amax(model, calibration: list[dict[str, np.ndarray]], op_types=QUANTIZED_OPS) -> dict[str, float]:
    """max |x| of every float input/output of ``op_types`` nodes over the calibration feeds.

    ONNX Runtime's MinMax calibrator does the measuring.
    """
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    input_names = [i.name for i in model.graph.input]
    with tempfile.TemporaryDirectory(prefix="nimbuild-fp8-") as tmp:
        src = Path(tmp) / "model.onnx"
        save_model(model, src)
        calibrator = create_calibrator(
            src,
            list(op_types),
            augmented_model_path=os.fspath(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"symmetric": True},
            use_external_data_format=weight_bytes(model) > EXTERNAL_DATA_BYTES,
        )
        calibrator.collect_data(_Reader(calibration, input_names))
        ranges = calibrator.compute_data()
        del calibrator
    amax = {}
    for name, data in ranges.data.items():
        lo, hi = data.range_value
        amax[name] = float(max(abs(float(np.asarray(lo).max())), abs(float(np.asarray(hi).max()))))
    return amax


def calibrate_percentile(
    model, calibration: list[dict[str, np.ndarray]], tensors: list[str], percentile: float, sample: int = 50_000
) -> dict[str, float]:
    """Per tensor, the ``percentile`` of |x| over the calibration feeds (a fixed-seed sample of each run's values).

    Why a sample: a full histogram of every activation of every calibration batch does not fit
    a build host's memory for long sequences; a seeded uniform sample of each batch keeps the
    estimate reproducible. Each batch's own max is kept in the sample, so 100 is the max.
    """
    from nimbuild.builder.precision.common import activations

    rng = np.random.default_rng(0)
    samples: dict[str, list[np.ndarray]] = {}
    for values in activations(model, tensors, calibration, prefix="nimbuild-fp8-pct-"):
        for name, value in values.items():
            a = np.abs(np.asarray(value, dtype=np.float32).ravel())
            if a.size:
                picked = a[rng.integers(0, a.size, min(sample, a.size))]
                samples.setdefault(name, []).extend([picked, a.max(keepdims=True)])
    return {n: float(np.percentile(np.concatenate(v), percentile)) for n, v in samples.items()}


def smooth_projections(model, calibration, scheme: Fp8Scheme) -> dict:
    """SmoothQuant on the projections FP8 will quantize (int8.smooth on the unfused graph); facts for the report."""
    from nimbuild.builder.precision.smoothquant import QuantizedMatMul, smooth

    inits = {t.name for t in model.graph.initializer}
    head = node_output_is_graph_output(model)
    entries = [
        (n.name, matmul_class(n.name), layer_index(n.name))
        for n in model.graph.node
        if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits and n.name not in head
    ]
    kept = select_nodes(entries, scheme.keep)
    nodes = {n.name: n for n in model.graph.node}
    items = [
        QuantizedMatMul(name, "MatMul", nodes[name].input[0], nodes[name].input[1], cls, layer)
        for name, cls, layer in entries
        if name not in kept
    ]
    return smooth(model, calibration, items, float(scheme.smooth_alpha or 0.0)) if items else {"smoothed": 0}


def fused_mha_bmms(model) -> set[str]:
    """Names of the attention BMMs TensorRT can fuse into its FP8 MHA kernel (ModelOpt's rule).

    BMM1 -> [Mul|Div] -> [Add] -> Softmax -> BMM2, with only Reshape/Transpose/Flatten/Cast
    in between and the Softmax read by BMM2 alone; every other MatMul of two activations
    (an unfusable BMM) stays out of FP8. ModelOpt also asks for 8 < head size <= 256; not
    checked here (the head size is symbolic in the graph, and every supported encoder meets it).
    """
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    readers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def back(node, wanted):
        for tensor in node.input:
            p = producer.get(tensor)
            while p is not None and p.op_type in _MHA_PASS_THROUGH:
                p = producer.get(p.input[0])
            if p is not None and p.op_type in wanted:
                return p
        return None

    def forward(node):
        n = node
        while True:
            after = readers.get(n.output[0], [])
            if len(after) != 1:
                return None
            n = after[0]
            if n.op_type not in _MHA_PASS_THROUGH:
                return n

    fused: set[str] = set()
    for softmax in (n for n in nodes if n.op_type == "Softmax"):
        bmm2 = forward(softmax)
        p = back(softmax, {"Add", "Mul", "Div", "MatMul"})
        if p is not None and p.op_type == "Add":
            p = back(p, {"Mul", "Div", "MatMul"})
        if p is not None and p.op_type in ("Mul", "Div"):
            p = back(p, {"MatMul"})
        if bmm2 is not None and bmm2.op_type == "MatMul" and p is not None and p.op_type == "MatMul":
            fused |= {p.name, bmm2.name}
    return fused


def _scale(amax: float) -> float:
    return max(float(amax), 1e-12) / E4M3_MAX


def insert_fp8_qdq(model, amax: dict[str, float], scheme: Fp8Scheme = DEFAULT_FP8_SCHEME) -> dict:
    """Rewrite ``model`` in place with FP8 Q/DQ on MatMul/Gemm inputs; returns counts for the report."""
    import ml_dtypes
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    head = node_output_is_graph_output(model)
    fused_bmms = fused_mha_bmms(model) if scheme.attention_bmms else set()
    kept = select_nodes(
        ((n.name, matmul_class(n.name), layer_index(n.name)) for n in graph.node if n.op_type in QUANTIZED_OPS),
        scheme.keep,
    )
    done: dict[str, str] = {}  # original tensor -> its dequantized name (one Q/DQ per tensor, shared)
    new_inits: list = []
    new_nodes: dict[int, list] = {}  # insert before node index
    counts = {
        "activations": 0,
        "weights": 0,
        "nodes": 0,
        "skipped": [],
        "score_head": 0,
        "unfused_bmms": 0,
        "kept": 0,
    }
    zp_name = "nimbuild_fp8_zero_point"
    new_inits.append(helper.make_tensor(zp_name, TensorProto.FLOAT8E4M3FN, [], [0.0]))

    for idx, node in enumerate(graph.node):
        if node.op_type not in QUANTIZED_OPS:
            continue
        if node.name in head:  # GEMV (N = labels): no tensor-core gain, all of the error
            counts["score_head"] += 1
            continue
        if node.name in kept:
            counts["kept"] += 1
            continue
        # Gemm: only A and B (alpha, beta, transA/B and the bias C act outside the quantized product)
        operands = list(node.input[:2])
        if not any(t in inits for t in operands) and node.name not in fused_bmms:
            counts["unfused_bmms"] += 1
            continue
        missing = [t for t in operands if t not in inits and amax.get(t, 0.0) <= 0.0]
        if missing:
            counts["skipped"].append(f"{node.name or node.op_type}: no calibration range for {missing}")
            continue
        for pos, tensor in enumerate(operands):
            if tensor in done:
                node.input[pos] = done[tensor]
                continue
            scale_name, dq_name = f"{tensor}_fp8_scale", f"{tensor}_fp8_dq"
            if tensor in inits:
                w = numpy_helper.to_array(inits[tensor]).astype(np.float32)
                # the output-channel axis of B: 1 for MatMul and Gemm, 0 for Gemm with transB
                axis = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
                if scheme.per_channel_weights and w.ndim == 2 and pos == 1:
                    s = np.maximum(np.abs(w).max(axis=1 - axis), 1e-12) / E4M3_MAX
                    q = w / (s[None, :] if axis == 1 else s[:, None])
                    zero = helper.make_tensor(
                        f"{tensor}_fp8_zero_point", TensorProto.FLOAT8E4M3FN, [s.size], [0.0] * s.size
                    )
                    new_inits.append(zero)
                    dq_args, dq_attrs = [f"{tensor}_fp8", scale_name, zero.name], {"axis": axis}
                else:
                    s = np.array(_scale(float(np.max(np.abs(w))) if w.size else 1.0))
                    q = w / s
                    dq_args, dq_attrs = [f"{tensor}_fp8", scale_name, zp_name], {}
                q = np.clip(q, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
                q_init = TensorProto(
                    name=f"{tensor}_fp8", data_type=TensorProto.FLOAT8E4M3FN, dims=list(w.shape), raw_data=q.tobytes()
                )
                new_inits += [q_init, numpy_helper.from_array(np.asarray(s, dtype=np.float32), scale_name)]
                new_nodes.setdefault(idx, []).append(
                    helper.make_node(
                        "DequantizeLinear", dq_args, [dq_name], name=f"{tensor}_DequantizeLinear", **dq_attrs
                    )
                )
                counts["weights"] += 1
            else:
                s = _scale(amax[tensor])
                q_name = f"{tensor}_fp8_q"
                new_inits.append(numpy_helper.from_array(np.array(s, dtype=np.float32), scale_name))
                new_nodes.setdefault(idx, []).extend(
                    [
                        helper.make_node(
                            "QuantizeLinear", [tensor, scale_name, zp_name], [q_name], name=f"{tensor}_QuantizeLinear"
                        ),
                        helper.make_node(
                            "DequantizeLinear",
                            [q_name, scale_name, zp_name],
                            [dq_name],
                            name=f"{tensor}_DequantizeLinear",
                        ),
                    ]
                )
                counts["activations"] += 1
            done[tensor] = dq_name
            node.input[pos] = dq_name
        counts["nodes"] += 1

    # rebuild the node list in order (each Q/DQ right before its first consumer keeps it topological)
    nodes = []
    for idx, node in enumerate(graph.node):
        nodes.extend(new_nodes.get(idx, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    # drop the FP32 weights nothing reads any more
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    if weight_bytes(model) < EXTERNAL_DATA_BYTES:
        onnx.checker.check_model(model)
    return counts


def _ensure_opset(model):
    import onnx
    from onnx import version_converter

    current = opset(model)
    if current >= MIN_OPSET:
        return model
    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception:  # the converter has no adapter for some op: opsets 18->19 only widened types
        converted = onnx.ModelProto()
        converted.CopyFrom(model)
        for op in converted.opset_import:
            if op.domain in ("", "ai.onnx"):
                op.version = MIN_OPSET
    converted.ir_version = model.ir_version
    return converted


def build_fp8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: list[dict[str, np.ndarray]],
    scheme: Fp8Scheme = DEFAULT_FP8_SCHEME,
) -> dict:
    """Write the FP8 Q/DQ graph of ``fp32_path`` to ``out_path``; returns facts for the report."""
    model = _ensure_opset(load_model(fp32_path))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    smoothing = smooth_projections(model, calibration, scheme) if scheme.smooth_alpha is not None else None
    amax = calibrate_amax(model, calibration)
    if scheme.activation_percentile is not None and scheme.activation_percentile < 100.0:
        inits = {t.name for t in model.graph.initializer}
        activations = sorted(
            {t for n in model.graph.node if n.op_type in QUANTIZED_OPS for t in n.input[:2] if t and t not in inits}
        )
        amax.update(calibrate_percentile(model, calibration, activations, scheme.activation_percentile))
    counts = insert_fp8_qdq(model, amax, scheme)
    if counts["nodes"] == 0:
        raise NothingToQuantize(
            "no MatMul/Gemm node could be quantized"
            + (": " + "; ".join(counts["skipped"][:3]) if counts["skipped"] else "")
        )
    files = save_model(model, out_path)
    notes = [
        f"{counts['nodes']} MatMul/Gemm in FP8 ({counts['activations']} activation Q/DQ, "
        f"{counts['weights']} FP8 weights): {scheme.describe()}; scales amax/448; "
        "gated in ONNX Runtime CPU as simulated FP8",
        f"kept in FP32: the score head (GEMV, {counts['score_head']}, as ModelOpt keeps it) and "
        + (
            f"{counts['unfused_bmms']} attention BMMs outside TensorRT's FP8 fused-MHA pattern "
            "(BMM1 -> [Mul|Div] -> [Add] -> Softmax -> BMM2)"
            if scheme.attention_bmms
            else f"{counts['unfused_bmms']} attention BMMs (the scheme keeps every attention BMM high precision: "
            "FP8 BMMs cost the gate on the real test bed)"
        ),
    ]
    if smoothing and smoothing.get("smoothed"):
        notes.append(
            f"SmoothQuant on {smoothing['smoothed']} activations: worst channel outlier ratio (max/median amax) "
            f"{smoothing['outlier_ratio_before']} -> {smoothing['outlier_ratio_after']}"
        )
    if counts["kept"]:
        notes.append(f"{counts['kept']} projections kept high precision by the scheme: {', '.join(scheme.keep)}")
    if counts["skipped"]:
        notes.append(f"{len(counts['skipped'])} left unquantized: " + "; ".join(counts["skipped"][:3]))
    return {
        "files": files,
        "notes": notes,
        "scheme": scheme.to_dict(),
        "counts": {k: v for k, v in counts.items() if k != "skipped"},
    }
