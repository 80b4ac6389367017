"""A quantized graph's integer arithmetic done exactly, on any CPU: its "exact twin".

ONNX Runtime's u8s8 GEMM saturates on AVX2 (vpmaddubsw adds two u8*s8 products into an int16), so
what a full-range INT8 graph computes depends on the CPU (nimbuild.cpu_isa). Its twin stores every
int8 GEMM weight ``q`` as uint8 ``q + 128`` with zero point ``zp + 128``: the same integers
``q - zp``, but MLAS runs a uint8 weight with its U8U8 kernel, which widens both sides to 16 bits
(vpmaddwd) and cannot saturate. So the twin gives, on this CPU, what a VNNI or arm64 CPU computes
from the original graph (up to the float epilogue's rounding), and a graph whose kernel here did not
saturate gives the same logits as its twin. Used by benchmarks/bench_cpu_isa.py and the tests; never
shipped (the twin is slower: 16-bit lanes).
"""

from __future__ import annotations

import os

import numpy as np

# op type -> (input index of the int8 weight, input index of its zero point)
GEMM_WEIGHT_INPUTS = {"MatMulInteger": (1, 3), "QAttention": (1, 7), "DynamicQuantizeMatMul": (1, 3)}


def exact_twin(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Write ``src``'s twin to ``dst``; returns how many int8 initializers were re-expressed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(src))
    inits = {i.name: i for i in model.graph.initializer}
    changed: set[str] = set()

    def shift(name: str) -> None:
        if name not in changed:
            value = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.uint8), name))
            changed.add(name)

    for node in model.graph.node:
        spec = GEMM_WEIGHT_INPUTS.get(node.op_type)
        if spec is None or len(node.input) <= spec[0]:
            continue
        weight = node.input[spec[0]]
        if weight not in inits or inits[weight].data_type != onnx.TensorProto.INT8:
            continue
        shift(weight)
        zero_point = node.input[spec[1]] if len(node.input) > spec[1] else ""
        if zero_point and zero_point in inits:
            shift(zero_point)
            continue
        new = f"{weight}_twin_zero_point"  # an absent zero point is 0: 128 in the twin
        if new not in inits:
            inits[new] = numpy_helper.from_array(np.array(128, dtype=np.uint8), new)
            model.graph.initializer.append(inits[new])
        while len(node.input) <= spec[1]:
            node.input.append("")
        node.input[spec[1]] = new
    onnx.save(model, os.fspath(dst))
    return len(changed)
