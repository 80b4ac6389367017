"""Render-side costs, each side by side with the obvious alternative, as a ratio.

1. Reading a graph's inputs/outputs (for config.pbtxt): nimbuild's light mmap wire reader
   (what create-model-store uses in a serving image) vs ``onnx.load(load_external_data=False)``,
   on a graph whose weights are stored inside the .onnx file (the common case under 2 GB).
2. Copying a profile file into a model store with its sha256 checked: hashing while copying
   (``nimbuild.runtime.triton_repo.files.copy_verified``: the bytes hashed are the bytes written) vs
   ``shutil.copyfile`` (sendfile) + fsync, then ``sha256_file`` of the copy. Both hash once.

    .venv/bin/python benchmarks/bench_render.py --mib 256 --runs 5 --write benchmarks/RESULTS-render.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _graph_with_weights(path: Path, mib: int) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = mib * (1 << 20) // 4
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal(n, dtype=np.float32), "w")
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f"], ["s"], keepdims=1),
        helper.make_node("ReduceSum", ["w"], ["ws"], keepdims=1),
        helper.make_node("Mul", ["s", "ws"], ["logits"]),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    graph = helper.make_graph(
        nodes, "bench", inputs, [helper.make_tensor_value_info("logits", 1, ["batch", 1])], initializer=[weight]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save_model(model, str(path))
    return path


def _time(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="size of the weights / of the copied file")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write", type=Path, help="write the results as Markdown here")
    args = ap.parse_args(argv)

    from nimbuild.fsutil import sha256_file
    from nimbuild.runtime.triton_repo.files import copy_verified
    from nimbuild.runtime.triton_repo.onnx_io import read_graph_io

    rows = []
    with tempfile.TemporaryDirectory(prefix="nimbuild-bench-render-") as tmp:
        tmp = Path(tmp)
        graph = _graph_with_weights(tmp / "model.onnx", args.mib)
        size_mib = graph.stat().st_size / (1 << 20)
        assert read_graph_io(graph, use_onnx=False) == read_graph_io(graph, use_onnx=True)
        light, heavy = [], []
        for _ in range(args.runs):  # interleaved, so that both see the same page cache and load
            light += _time(lambda: read_graph_io(graph, use_onnx=False), 1)
            heavy += _time(lambda: read_graph_io(graph, use_onnx=True), 1)
        rows.append(
            (
                f"graph inputs/outputs of a {size_mib:.0f} MiB .onnx",
                "light mmap reader",
                "onnx.load(load_external_data=False)",
                statistics.median(light),
                statistics.median(heavy),
            )
        )

        src = graph
        digest = sha256_file(src)
        dst = tmp / "store" / "model.onnx"
        one, two = [], []

        def one_pass():
            copy_verified(src, dst, digest, src.stat().st_size)

        def two_passes():  # as durable as copy_verified: fsync before it counts
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            fd = os.open(dst, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            assert sha256_file(dst) == digest

        for _ in range(args.runs):
            for fn, acc in ((one_pass, one), (two_passes, two)):
                dst.unlink(missing_ok=True)
                acc += _time(fn, 1)
        rows.append(
            (
                f"copy {size_mib:.0f} MiB into a store, sha256 checked",
                "hash while copying",
                "copyfile (sendfile) + fsync, then sha256 of the copy",
                statistics.median(one),
                statistics.median(two),
            )
        )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Render: graph inputs for config.pbtxt, verified copies into a model store",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_render.py --mib {args.mib} --runs {args.runs}"
        f"{' --write ' + str(args.write) if args.write else ''}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average at end {load:.2f} (shared cores). Median of {args.runs} interleaved runs, warm page cache.",
        "",
        "| task | nimbuild | s | alternative | s | alternative / nimbuild |",
        "|---|---|---|---|---|---|",
    ]
    for task, ours, theirs, a, b in rows:
        lines.append(f"| {task} | {ours} | {a:.4f} | {theirs} | {b:.4f} | {b / a:.1f}x |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
