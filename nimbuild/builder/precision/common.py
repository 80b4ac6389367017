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


def activations(
    model, tensors: Iterable[str], calibration: Iterable[dict[str, np.ndarray]], prefix: str = "nimbuild-probe-"
) -> Iterator[dict[str, np.ndarray]]:
    """Per calibration feed, ``{name: value}`` of the graph's intermediate ``tensors`` (an FP32 run on the CPU).

    The one way every calibration reads activations: a copy of ``model`` with the tensors made
    graph outputs, saved to a temporary folder (a graph over 2 GiB needs external data) and run
    once per feed. ``model`` itself is not changed; names the graph does not produce are absent.
    """
    import tempfile

    import onnx

    tensors = list(tensors)
    wanted = set(tensors)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(tensors):  # in the caller's order: the outputs' order is the values' order
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(tmp) / "probe.onnx"
        save_model(probe, path)
        del probe
        sess = cpu_session(path)
        names = [o.name for o in sess.get_outputs() if o.name in wanted]
        for feeds in feeds_for(sess, calibration):
            yield dict(zip(names, sess.run(names, feeds), strict=True))
        del sess


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


# The classes of a BERT-style encoder's projections, as exported names say them (the exporters keep
# PyTorch's module paths in node names: ".../layer.3/attention/output/dense/MatMul").
MATMUL_CLASSES = ("attention_qkv", "attention_out", "ffn_up", "ffn_down", "pooler", "other")


def matmul_class(name: str) -> str:
    """Which projection a MatMul/Gemm is, from its node or weight name (see MATMUL_CLASSES)."""
    key = name.lower()
    if any(f"{part}/" in key or f"{part}." in key for part in ("query", "key", "value", "qkv", "in_proj")):
        return "attention_qkv"
    if "pooler" in key:
        return "pooler"
    if "attention" in key and "output" in key or "out_proj" in key:
        return "attention_out"
    if "intermediate" in key:
        return "ffn_up"
    if "output" in key:
        return "ffn_down"
    return "other"


def layer_index(name: str) -> int | None:
    """The encoder layer a node belongs to, from ``layer.N`` / ``layer_N`` / ``layers.N`` in its name."""
    import re

    m = re.search(r"layers?[._/](\d+)(?:[._/]|$)", name)
    return int(m.group(1)) if m else None


def select_nodes(entries: Iterable[tuple[str, str, int | None]], patterns: Iterable[str]) -> set[str]:
    """Node names among ``(name, class, layer)`` entries that match any pattern.

    A pattern is a node name, a class of MATMUL_CLASSES, or ``class:layer`` (``ffn_down:5``).
    """
    entries = list(entries)
    chosen: set[str] = set()
    for p in patterns:
        cls, _, layer = p.partition(":")
        for name, c, lay in entries:
            if p == name or (cls == c and (not layer or str(lay) == layer)):
                chosen.add(name)
    return chosen


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


class LibraryChatter:
    """What ONNX Runtime's Python tools logged below ERROR while nimbuild ran them: for the report.

    ``messages()`` gives each distinct message once, with how many times it came
    ("... (x6)"), so that a report says what a terminal would have repeated.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, message: str) -> None:
        self.counts[message] = self.counts.get(message, 0) + 1

    def messages(self) -> list[str]:
        return [m if n == 1 else f"{m} (x{n})" for m, n in self.counts.items()]


@contextlib.contextmanager
def library_chatter() -> Iterator[LibraryChatter]:
    """Keep ONNX Runtime's Python-side log records off the user's terminal; collect them instead.

    ONNX Runtime's quantization and transformer-optimizer modules log on the root logger
    (``logging.warning(...)``) and on loggers named after their modules (``fusion_attention``,
    ``onnx_model``: the optimizer imports them as top-level modules), which Python prints on
    stderr through its last-resort handler, even with --quiet. While this runs, their records
    below ERROR go to the returned collector (the caller puts them in the export report);
    errors still reach the terminal, and nimbuild's own records are untouched.
    """
    import logging

    chatter = LibraryChatter()

    def is_chatter(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR and not record.name.startswith("nimbuild")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if is_chatter(record) and record.levelno >= logging.WARNING:
                with contextlib.suppress(Exception):  # a malformed record must not break a build
                    chatter.add(record.getMessage().strip().splitlines()[0][:300])

    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not is_chatter(record)

    root = logging.getLogger()
    collect, drop = Collect(level=logging.WARNING), Drop()
    others = list(root.handlers)
    for handler in others:  # e.g. a handler an application configured: it does not get them either
        handler.addFilter(drop)
    # with a handler on the root, Python's last-resort stderr handler stays silent, and the
    # module-level logging.warning() calls do not basicConfig() a permanent stderr handler
    root.addHandler(collect)
    try:
        yield chatter
    finally:
        root.removeHandler(collect)
        for handler in others:
            handler.removeFilter(drop)
