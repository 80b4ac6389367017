"""The weighted MatMuls of a fused INT8 graph, their classes, their activations' statistics, and SmoothQuant.

Shared by int8.py (which quantizes them) and fp8.py (SmoothQuant before FP8 Q/DQ). SmoothQuant
(Xiao et al. 2023): per input channel j of a quantized MatMul, ``s_j = max|X_j|^a / max|W_j|^(1-a)``
from calibration; the activation is divided by s (an explicit Mul: in a post-LayerNorm BERT the
LayerNorm output is also the residual, so it cannot be folded into gamma) and W's row j multiplied
by it, so that one activation scale no longer serves a few outlier channels only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nimbuild.builder.precision.common import activations, layer_index, matmul_class, select_nodes

# ops whose weights INT8 quantizes: the projections (MatMul) and ORT's fused Attention (its QKV projection)
QUANTIZED_OPS = ("MatMul", "Attention")


@dataclass
class QuantizedMatMul:
    """One weighted MatMul (or fused Attention) of the fused graph, with the class it belongs to."""

    node: str
    op_type: str
    activation: str
    weight: str
    cls: str  # attention_qkv, attention_out, ffn_up, ffn_down, pooler, other
    layer: int | None = None
    extra: dict = field(default_factory=dict)


def matmul_classes(model) -> list[QuantizedMatMul]:
    """The fused graph's weighted MatMul/Attention nodes (not the score head), with their class.

    Classes (common.matmul_class) come from the node names, which keep PyTorch's module paths;
    a fused Attention (named ``Attention_<n>``, one per layer in graph order) is ``attention_qkv``.
    """
    inits = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    found = []
    attention_layers = 0
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or len(node.input) < 2:
            continue
        if node.input[1] not in inits or set(node.output) & outputs:
            continue
        if node.op_type == "Attention":
            cls, layer = "attention_qkv", attention_layers
            attention_layers += 1
        else:
            cls, layer = matmul_class(node.name + " " + node.input[1]), layer_index(node.name)
        found.append(QuantizedMatMul(node.name, node.op_type, node.input[0], node.input[1], cls, layer))
    return found


def selected(items: list[QuantizedMatMul], patterns: tuple[str, ...]) -> set[str]:
    return select_nodes(((i.node, i.cls, i.layer) for i in items), patterns)


def channel_amax(model, calibration: list[dict[str, np.ndarray]], tensors: list[str]) -> dict[str, np.ndarray]:
    """Per last-axis channel, max |x| of each of ``tensors`` over the calibration feeds (FP32 run)."""
    amax: dict[str, np.ndarray] = {}
    for values in activations(model, tensors, calibration, prefix="nimbuild-int8-stats-"):
        for name, value in values.items():
            v = np.abs(np.asarray(value, dtype=np.float32))
            m = v.reshape(-1, v.shape[-1]).max(axis=0)
            amax[name] = m if name not in amax else np.maximum(amax[name], m)
    return amax


def smooth(model, calibration, items: list[QuantizedMatMul], alpha: float) -> dict:
    """SmoothQuant in place: X/s before each quantized MatMul, s into the weight's rows (see module doc).

    MatMuls that read the same activation share one Mul and one s (the max of their weight
    rows). Returns facts for the report: how many activations were smoothed and the largest
    outlier ratio (max channel amax / median channel amax) before and after.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    by_activation: dict[str, list[QuantizedMatMul]] = {}
    for item in items:  # a weight behind a Transpose is left alone
        if item.weight in inits:
            by_activation.setdefault(item.activation, []).append(item)
    if not by_activation:
        return {"smoothed": 0}
    amax = channel_amax(model, calibration, list(by_activation))
    nodes = {n.name: n for n in model.graph.node}
    positions = {n.name: i for i, n in enumerate(model.graph.node)}
    inserts: list[tuple[int, object]] = []
    before, after = [], []
    for activation, group in by_activation.items():
        a = amax.get(activation)
        if a is None or a.ndim != 1:
            continue
        weights = [numpy_helper.to_array(inits[item.weight]).astype(np.float32) for item in group]
        if any(w.ndim != 2 or w.shape[0] != a.shape[0] for w in weights):
            continue
        w_row = np.max(np.stack([np.abs(w).max(axis=1) for w in weights]), axis=0)
        a_safe, w_safe = np.maximum(a, 1e-5), np.maximum(w_row, 1e-5)
        s = np.clip(a_safe**alpha / w_safe ** (1.0 - alpha), 1e-4, 1e4).astype(np.float32)
        before.append(float(a_safe.max() / np.median(a_safe)))
        after.append(float((a_safe / s).max() / np.median(a_safe / s)))
        for item, w in zip(group, weights, strict=True):
            inits[item.weight].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), item.weight))
        inv_name, out_name = f"{activation}_smooth_inv", f"{activation}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv_name))
        mul = helper.make_node("Mul", [activation, inv_name], [out_name], name=f"{activation}_SmoothQuant")
        first = min(positions[item.node] for item in group)
        inserts.append((first, mul))
        for item in group:
            node = nodes[item.node]
            node.input[0] = out_name
            item.activation = out_name
    # each Mul right before its first consumer keeps the node list topologically sorted
    ordered = list(model.graph.node)
    for index, mul in sorted(inserts, key=lambda p: -p[0]):
        ordered.insert(index, mul)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return {
        "smoothed": len(inserts),
        "outlier_ratio_before": round(max(before), 1) if before else None,
        "outlier_ratio_after": round(max(after), 1) if after else None,
    }
