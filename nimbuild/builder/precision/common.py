"""What the three precision builders share: loading/saving graphs, ONNX Runtime sessions, feeds.

Kept apart so that fp16.py, fp8.py and int8.py each hold only their own recipe.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

# ONNX Runtime 1.2x-1.31 loads IR <= 13 only; onnx >= 1.19 writes IR 14 by default. FP8 Q/DQ needs IR >= 9.
IR_VERSION = 10
# Over this many bytes of weights a graph is saved with its weights in model.onnx.data (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1_800_000_000
MIN_CALIBRATION_PAIRS = 32


def n_pairs(queries: Iterable[dict[str, np.ndarray]]) -> int:
    """Number of (query, passage) pairs in per-query feeds (the batch dimension of each)."""
    total = 0
    for feeds in queries:
        first = next(iter(feeds.values()), None)
        total += 0 if first is None else int(first.shape[0])
    return total


def feeds_for(session, queries: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Per-query feeds restricted to the inputs this session has (a fused graph may drop one), int64."""
    names = [i.name for i in session.get_inputs()]
    for feeds in queries:
        missing = [n for n in names if n not in feeds]
        if missing:
            raise KeyError(f"feeds lack graph inputs {missing} (have {sorted(feeds)})")
        yield {n: np.ascontiguousarray(feeds[n], dtype=np.int64) for n in names}


def cpu_session(model: str | os.PathLike | bytes, *, fp8_qdq: bool = False, threads: int | None = None):
    """An ONNX Runtime session on the CPU EP only (onnxruntime-gpu lists CUDA/TensorRT even without a GPU).

    ``fp8_qdq``: keep Q/DQ nodes as they are. The CPU EP's QDQ fusions would turn an FP8
    DequantizeLinear->MatMul into QLinearMatMul, which has no FP8 kernel; unfused, the Q/DQ
    pairs run as simulated quantization (round to E4M3, scale back), which is what the gate wants.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if fp8_qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    src = model if isinstance(model, bytes) else os.fspath(model)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    if sess.get_providers() != ["CPUExecutionProvider"]:  # pragma: no cover - defensive
        raise RuntimeError(f"expected the CPU EP only, got {sess.get_providers()}")
    return sess


def load_model(path: str | os.PathLike):
    """Load a graph with its external weights (model.onnx.data) if it has them."""
    import onnx

    return onnx.load(os.fspath(path), load_external_data=True)


def weight_bytes(model) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_model(model, path: str | os.PathLike) -> list[str]:
    """Save ``model`` at ``path`` loadable by ONNX Runtime (IR pinned); weights beside it when large.

    Returns the files written, relative to the folder (``model.onnx`` [+ ``model.onnx.data``]).
    Callers write into a staging folder, so the files appear under their final names only together.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not 9 <= model.ir_version <= 13:
        model.ir_version = IR_VERSION
    if weight_bytes(model) > EXTERNAL_DATA_BYTES:
        data = path.name + ".data"
        copy = onnx.ModelProto()  # saving with external data empties the tensors of the proto it is given
        copy.CopyFrom(model)
        onnx.save_model(
            copy,
            os.fspath(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data,
            size_threshold=1024,
        )
        return [path.name, data]
    onnx.save_model(model, os.fspath(path))
    return [path.name]


def opset(model, domain: str = "") -> int:
    for op in model.opset_import:
        if op.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(op.version)
    return 0


def node_output_is_graph_output(model) -> set[str]:
    """Names of nodes whose output is a graph output (directly): the score head."""
    outs = {o.name for o in model.graph.output}
    return {n.name for n in model.graph.node if any(o in outs for o in n.output)}


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


@contextlib.contextmanager
def quiet_ort_quantization():
    """ONNX Runtime's quantization tools warn on the *root* logger (e.g. "Please consider to run
    pre-processing before quantization"), which reaches the user's terminal even with --quiet.
    Drop their INFO/WARNING records while they run; errors still show."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        from_ort = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return not (from_ort and record.levelno < logging.ERROR)

    root = logging.getLogger()  # they call logging.warning(): the root logger's own filters see it
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
