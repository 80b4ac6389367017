"""The FP16 graph: FP16 weights and compute, the numerically fragile ops kept in FP32.

Converter: ONNX Runtime's ``onnxruntime.transformers.float16.convert_float_to_float16``.
Why this one: it ships inside the onnxruntime-gpu we already pin (no new dependency), it is
the converter ORT's own transformer optimizer uses, it is the maintained copy of
onnxconverter-common's float16 code, and it takes per-op and per-node block lists, which is
exactly what "fragile ops stay FP32" needs. ModelOpt's AutoCast would do the same but its
``[onnx]`` extra pins onnx 1.21 / onnxruntime-gpu 1.24 (see fp8.py).

What stays FP32:
- the op types in :data:`FRAGILE_OPS` (normalisations, Softmax, reductions, exp/log/pow) and
  ORT's own default block list;
- every node whose output, on the calibration pairs in FP32, reaches :data:`FP16_SAFE_MAX`
  or more (the attention mask's float32.min fill, large residuals), and the nodes that
  consume such a tensor: an FP16 cast of it would be +-inf.
Inputs stay int64 and ``logits`` stays FP32 (``keep_io_types``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nimbuild.builder.precision.common import activations, load_model, save_model

FRAGILE_OPS = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "RMSNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "BatchNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "Pow",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "CumSum",
    "Range",
    "RandomNormalLike",
    "RandomUniformLike",
)
# A quarter of FP16's largest finite value (65504): headroom for inputs the calibration did not show.
FP16_SAFE_MAX = 16384.0
# How many calibration queries the overflow check runs (every float tensor is kept, so keep it small).
OVERFLOW_CHECK_QUERIES = 8


def overflowing_nodes(
    model, calibration: list[dict[str, np.ndarray]], limit: float = FP16_SAFE_MAX
) -> tuple[list[str], dict[str, float]]:
    """Nodes that must stay FP32 because a tensor they make or read exceeds ``limit`` in the FP32 run.

    Returns (node names, {tensor: max |value|} for the offending tensors).
    """
    import tempfile

    import onnx

    graph = model.graph
    inits = {t.name for t in graph.initializer}
    # every float tensor that some node produces becomes an extra output of a copy of the graph
    # (through files: shape inference and sessions on a >2 GB graph cannot go through one protobuf)
    with tempfile.TemporaryDirectory(prefix="nimbuild-fp16-") as tmp:
        src, inferred_path = Path(tmp) / "model.onnx", Path(tmp) / "inferred.onnx"
        save_model(model, src)
        onnx.shape_inference.infer_shapes_path(os.fspath(src), os.fspath(inferred_path))
        inferred = onnx.load(os.fspath(inferred_path), load_external_data=False)
        types = {
            v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)
        }
        del inferred
        floaty = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
        produced = [o for n in graph.node for o in n.output if o and o not in inits and types.get(o) in floaty]
    amax: dict[str, float] = {}
    for values in activations(model, produced, calibration[:OVERFLOW_CHECK_QUERIES], prefix="nimbuild-fp16-"):
        for name, value in values.items():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size:
                amax[name] = max(amax.get(name, 0.0), float(np.max(np.abs(value))))
    hot = {t: v for t, v in amax.items() if not np.isfinite(v) or v >= limit}
    blocked = [n.name for n in graph.node if set(n.output) & hot.keys() or set(n.input) & hot.keys()]
    return blocked, hot


def _drop_duplicate_nodes(model) -> None:
    """The converter can insert the same Cast twice when a tensor feeds two FP32 nodes; keep one."""
    seen, keep = set(), []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen:
            continue
        seen.add(key)
        keep.append(node)
    if len(keep) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)


def _keep_fp32_between_fp32_nodes(model, blocked_names: set[str], blocked_ops: set[str]) -> int:
    """Drop the FP32 -> FP16 -> FP32 round trips the converter puts between two blocked nodes.

    The converter types every float tensor FP16 and wraps each blocked node in casts, so a
    tensor passed from one FP32 node to the next is still rounded (and overflows) in FP16.
    A Cast-to-FP32 whose input is a Cast-to-FP16 of a blocked node's output becomes an
    Identity of that FP32 output. Returns how many round trips were removed.
    """
    from onnx import TensorProto, helper

    def cast_to(node) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    producers = {o: n for n in model.graph.node for o in n.output}
    fixed = 0
    for node in model.graph.node:
        if cast_to(node) != TensorProto.FLOAT:
            continue
        first = producers.get(node.input[0])
        if first is None or cast_to(first) != TensorProto.FLOAT16:
            continue
        origin = producers.get(first.input[0])
        if origin is None or not (origin.name in blocked_names or origin.op_type in blocked_ops):
            continue
        node.CopyFrom(helper.make_node("Identity", [first.input[0]], list(node.output), name=node.name))
        fixed += 1
    # casts nobody reads any more
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [n for n in model.graph.node if n.op_type != "Cast" or any(o in used for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return fixed


def build_fp16(
    fp32_path: str | os.PathLike, out_path: str | os.PathLike, calibration: list[dict[str, np.ndarray]] | None = None
) -> dict:
    """Write the FP16 graph of ``fp32_path`` to ``out_path``; returns facts for the report."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = load_model(fp32_path)
    # node names are needed for the block list; exporters leave some empty
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    blocked, hot = overflowing_nodes(model, calibration) if calibration else ([], {})
    blocked_ops = set(DEFAULT_OP_BLOCK_LIST) | set(FRAGILE_OPS)
    fp16 = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=sorted(blocked_ops), node_block_list=blocked
    )
    _drop_duplicate_nodes(fp16)
    _keep_fp32_between_fp32_nodes(fp16, set(blocked), blocked_ops)
    files = save_model(fp16, out_path)
    kept = sum(1 for n in fp16.graph.node if n.op_type in FRAGILE_OPS) + len(blocked)
    notes = [f"{kept} nodes kept in FP32 ({len(blocked)} for overflow >= {FP16_SAFE_MAX:g} on the calibration pairs)"]
    if hot:
        worst = sorted(hot.items(), key=lambda kv: -kv[1])[:3]
        notes.append("overflowing in FP16: " + ", ".join(f"{Path(t).name} {v:.3g}" for t, v in worst))
    return {"files": files, "notes": notes, "fp32_nodes": blocked}
