"""One BERT MatMul, FP32 against ONNX Runtime's INT8 forms, on this CPU: the ceiling of cpu-int8's speed-up.

A cross-encoder's graph is mostly its MatMuls; the rest (LayerNorm, GELU, softmax, the attention
BMMs, tokenization) stays FP32 in every INT8 scheme. So the INT8 graph can gain at most what
ONNX Runtime's integer GEMM gains over its FP32 GEMM on the CPU at hand, diluted by the FP32
part (Amdahl). This times that GEMM alone, at a MiniLM-L6 FFN-down shape by default (rows = 10
passages x 128 tokens, K = 1536, N = 384), every form in turns (``common.time_round_robin``):

- ``MatMul`` FP32 (MLAS SGEMM, weights pre-packed);
- ``quantize_dynamic`` per-channel INT8 (DynamicQuantizeMatMul: one activation scale per batch),
  7-bit weights (``reduce_range``, what AVX2's ``vpmaddubsw`` needs) and full 8-bit;
- nimbuild's per-token INT8 MatMul (nimbuild.builder.precision.per_token), 7-bit weights;
- ``MatMulNBits`` with 8-bit blocks of 32 and ``accuracy_level`` 4 (activations quantized per block
  to INT8 on the fly: ONNX Runtime's weight-only alternative).

    .venv/bin/python benchmarks/bench_gemm.py [--rows 1280 --k 1536 --n 384 --repeats 21]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import machine, time_round_robin  # noqa: E402


def one_matmul(k: int, n: int, seed: int = 0):
    """Y = X @ W, X ``[rows, k]``, opset 17, the weight a constant."""
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(seed).standard_normal((k, n)) * 0.05).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="layer.0/output/dense/MatMul")],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1280, help="activation rows (passages x tokens)")
    ap.add_argument("--k", type=int, default=1536)
    ap.add_argument("--n", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--calls", type=int, default=20, help="GEMM calls per timed round")
    args = ap.parse_args(argv)

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nimbuild.builder.precision.common import cpu_session, library_chatter
    from nimbuild.builder.precision.per_token import quantize_per_token

    fp32 = one_matmul(args.k, args.n)
    graphs = {"fp32 MatMul": fp32}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save(fp32, src)
        for label, reduce_range in (("7-bit", True), ("8-bit", False)):
            dst = Path(tmp) / f"int8-{label}.onnx"
            with library_chatter():
                quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range)
            graphs[f"int8 per batch (DynamicQuantizeMatMul), {label} weights"] = onnx.load(dst)
    tokenwise = onnx.ModelProto()
    tokenwise.CopyFrom(fp32)
    quantize_per_token(tokenwise, ["layer.0/output/dense/MatMul"], reduce_range=True)
    graphs["int8 per token (nimbuild), 7-bit weights"] = tokenwise
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    blocked = onnx.ModelProto()
    blocked.CopyFrom(fp32)
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    with library_chatter():
        quantizer = MatMulNBitsQuantizer(blocked, algo_config=config)
        quantizer.process()
    graphs["MatMulNBits 8-bit, blocks of 32, accuracy_level 4"] = quantizer.model.model

    # GELU-like activations: mostly small, a few large tokens
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal((args.rows, args.k))).astype(np.float32)
    x[:: max(1, args.rows // 16)] *= 20.0
    sessions = {name: cpu_session(g.SerializeToString()) for name, g in graphs.items()}
    exact = x @ np.asarray(onnx.numpy_helper.to_array(fp32.graph.initializer[0]), np.float64)

    def runner(sess):
        return lambda: [sess.run(None, {"x": x}) for _ in range(args.calls)]

    before = machine()
    timings = time_round_robin({name: runner(s) for name, s in sessions.items()}, repeats=args.repeats)
    base = timings["fp32 MatMul"]["median_s"]
    print(f"[{args.rows} x {args.k}] @ [{args.k} x {args.n}], median of {args.repeats} rounds of {args.calls} calls")
    for name, t in timings.items():
        y = sessions[name].run(None, {"x": x})[0]
        err = float(np.abs(y - exact).max() / np.abs(exact).max())
        ms = t["median_s"] / args.calls * 1e3
        print(f"{ms:8.2f} ms  x{base / t['median_s']:.2f} vs fp32  rel err {err:.1e}  {name}")
    print(f"cpu: {before.get('cpu')}; load: {before.get('uptime')} -> {machine().get('uptime')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
