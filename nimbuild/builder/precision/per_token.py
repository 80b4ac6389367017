"""Per-token dynamic INT8 activations for the MatMuls whose activations defeat one scale per batch.

Why: ``quantize_dynamic`` gives a MatMul's activation one UINT8 scale and zero point per run,
that is per *batch*: every token of every pair shares the range of the widest one. In a
real BERT-class encoder the FFN-down input (the GELU output, 4x hidden wide) has a few tokens
whose values are 10-50x the rest; with one scale per batch those tokens set the step and the
others keep a handful of levels. On the real test bed that one class costs more ranking
agreement than any other (benchmarks/RESULTS-precision.md: per-class sensitivity), and
neither SmoothQuant (it moves *channel* outliers; these are *token* outliers) nor per-channel
weights remove it. Keeping the class FP32 fixes accuracy but spends its speed.

What: each selected MatMul ``Y = X @ W`` (W a constant, X ``[..., K]``) becomes

* activations quantized per token (per row of the last axis), asymmetric UINT8 computed on
  the fly: ``s = (max(x, 0) - min(x, 0)) / 255``, ``q = clip(round(x / s) - round(min / s), 0, 255)``,
  so a token's own range sets its step and one outlier token costs nothing to the others.
  The rows' scales and zero points come from two reductions; ``q`` itself is one per-axis
  ``QuantizeLinear`` over the rows (``saturate(round(x / s) + zp)``: the same integers), one
  pass over the activation where Div, Round, Sub, Clip and Cast made five (measured on the
  real test bed: those five were 10 % of the INT8 graph's time, benchmarks/RESULTS-precision.md);
* weights INT8 per output column (or per tensor), symmetric, range 63 (``reduce_range``:
  AVX2's u8s8 kernel adds two u8*s8 products in int16 — 2*255*63 fits, 2*255*127 need not)
  or 127 (CPU classes whose integer dot products cannot saturate);
* ``MatMulInteger`` (MLAS's integer GEMM: the speed of INT8), then the exact float epilogue
  ``Y = s * ws * (q @ Wq + round(min / s) * colsum(Wq))``.

Plain ONNX ops only (MatMulInteger is opset 10, per-axis QuantizeLinear 13; ReduceMax/ReduceMin
take their axes the way the graph's opset says: an attribute before 18, an input from 18 on), so any runtime that
runs MatMulInteger runs it, and the graph's opset is not changed; the exact twin
(nimbuild.builder.precision.exact) re-expresses its weights for the non-saturating kernel
like any other MatMulInteger's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

PREFIX = "nimbuild_per_token"
EPSILON = 1e-8  # a row of zeros gets this range: q = 0, Y = 0 exactly


def _shared_constants(graph: Any) -> dict[str, str]:
    """The scalars every per-token MatMul uses, added once; returns their names by role."""
    from onnx import numpy_helper

    values = {
        "axes": np.array([-1], np.int64),
        "eps": np.array(EPSILON, np.float32),
        "zero": np.array(0.0, np.float32),
        "inv_top": np.array(1.0 / 255.0, np.float32),
        "flat": np.array([-1], np.int64),  # a [..., 1] per-row tensor as the 1-D per-axis input
    }
    have = {t.name for t in graph.initializer}
    names = {}
    for role, value in values.items():
        name = f"{PREFIX}_{role}"
        if name not in have:
            graph.initializer.append(numpy_helper.from_array(value, name))
        names[role] = name
    return names


def weight_int8(weight: np.ndarray, *, reduce_range: bool, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scale per output column) of a ``[K, N]`` weight, symmetric."""
    qmax = 63 if reduce_range else 127
    w = np.asarray(weight, dtype=np.float32)
    peak = np.abs(w).max(axis=0) if per_channel else np.full(w.shape[1], np.abs(w).max(), np.float32)
    scale = (np.maximum(peak, 1e-12) / qmax).astype(np.float32)
    return np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8), scale


def quantize_per_token(model: Any, node_names: Iterable[str], *, reduce_range: bool, per_channel: bool = True) -> int:
    """Rewrite the named MatMul nodes of ``model`` (in place) as per-token INT8 (see the module doc).

    A named node that is not a MatMul with a constant 2-D weight is left as it is (the caller
    quantizes it the ordinary way). Returns how many MatMuls were rewritten.
    """
    from onnx import TensorProto, helper, numpy_helper

    wanted = set(node_names)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = _shared_constants(graph) if wanted else {}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise ValueError(
            f"per-token INT8 needs ONNX opset 13 or later (Clip with inputs, Round); the graph has {opset}"
        )
    # ReduceMax/ReduceMin: axes an attribute before opset 18, an input from 18 on
    reduce_in, reduce_attrs = (
        ([consts["axes"]], {"keepdims": 1}) if opset >= 18 else ([], {"keepdims": 1, "axes": [-1]})
    )
    rewritten: dict[str, list] = {}
    for node in graph.node:
        if node.name not in wanted or node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2:
            continue
        wq, ws = weight_int8(weight, reduce_range=reduce_range, per_channel=per_channel)
        p = f"{PREFIX}_{node.name}".replace("/", "_")
        graph.initializer.extend(
            [
                numpy_helper.from_array(wq, f"{p}_weight"),
                numpy_helper.from_array(ws, f"{p}_weight_scale"),
                numpy_helper.from_array(wq.astype(np.float32).sum(axis=0), f"{p}_weight_colsum"),
                numpy_helper.from_array(np.array([-1, weight.shape[0]], np.int64), f"{p}_rows_shape"),
            ]
        )
        x, y = node.input[0], node.output[0]
        steps = [
            ("ReduceMax", [x, *reduce_in], "row_max", reduce_attrs),
            ("ReduceMin", [x, *reduce_in], "row_min", reduce_attrs),
            ("Max", ["row_max", consts["zero"]], "hi", {}),  # the range holds 0: zero is exact
            ("Min", ["row_min", consts["zero"]], "lo", {}),
            ("Sub", ["hi", "lo"], "span", {}),
            ("Max", ["span", consts["eps"]], "span_safe", {}),
            ("Mul", ["span_safe", consts["inv_top"]], "scale", {}),
            ("Div", ["lo", "scale"], "lo_steps", {}),
            ("Round", ["lo_steps"], "neg_zero_point", {}),  # -zero point, in [-255, 0]
            ("Neg", ["neg_zero_point"], "zero_point_f", {}),
            ("Cast", ["zero_point_f"], "zero_point", {"to": TensorProto.UINT8}),
            # q = saturate(round(x / s) + zp), row by row: x as [rows, K], its scales and zero points 1-D
            ("Reshape", [x, f"{p}_rows_shape"], "x_rows", {}),
            ("Reshape", ["scale", consts["flat"]], "scale_rows", {}),
            ("Reshape", ["zero_point", consts["flat"]], "zero_point_rows", {}),
            ("QuantizeLinear", ["x_rows", "scale_rows", "zero_point_rows"], "x_u8_rows", {"axis": 0}),
            ("Shape", [x], "x_shape", {}),
            ("Reshape", ["x_u8_rows", "x_shape"], "x_u8", {}),
            ("MatMulInteger", ["x_u8", f"{p}_weight"], "acc", {}),
            ("Cast", ["acc"], "acc_f", {"to": TensorProto.FLOAT}),
            ("Mul", ["neg_zero_point", f"{p}_weight_colsum"], "zero_point_term", {}),
            ("Add", ["acc_f", "zero_point_term"], "dot", {}),
            ("Mul", ["dot", "scale"], "dot_scaled", {}),
            ("Mul", ["dot_scaled", f"{p}_weight_scale"], None, {}),
        ]
        local = {name for _, _, name, _ in steps if name}
        new = []
        for k, (op, inputs, output, attrs) in enumerate(steps):
            ins = [f"{p}_{i}" if i in local else i for i in inputs]
            new.append(helper.make_node(op, ins, [f"{p}_{output}" if output else y], name=f"{p}_{k}", **attrs))
        rewritten[node.name] = new
    if not rewritten:
        return 0
    ordered = []
    for node in graph.node:
        ordered.extend(rewritten.get(node.name, [node]))
    del graph.node[:]
    graph.node.extend(ordered)
    used = {i for n in graph.node for i in n.input}
    live = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return len(rewritten)
