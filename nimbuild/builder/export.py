"""PyTorch -> ONNX FP32, one graph per model, shaped for every later stage.

The graph: opset 18, int64 inputs named as the model takes them (``input_ids``,
``attention_mask``, and ``token_type_ids`` only where the model has more than
one token type), dynamic ``batch`` and ``sequence`` axes, one output
``logits [batch, num_labels]``, IR version <= 10 (ONNX Runtime 1.31 loads up to
13), external data beside it when the weights pass 2 GB.

Exporter: TorchScript (``dynamo=False``) first. On these encoder architectures it
gives the same logits as the dynamo exporter (both ~1e-5 of PyTorch), 2.6x faster
on a MiniLM-L6-sized model and 15x on the tiny one (benchmarks/RESULTS-export.md);
dynamo is the fallback when tracing fails (``--exporter dynamo`` forces it).
"""

from __future__ import annotations

import errno
import inspect
import os
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import GRAPH_FILE
from nimbuild.fsutil import naming

# a write that failed for want of room or permission: the file's name and the reason, never a retry
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}

# architecture (config.json `architectures[0]`) -> the model_type it comes with
SUPPORTED_ARCHITECTURES = {
    "BertForSequenceClassification": "bert",
    "RobertaForSequenceClassification": "roberta",
    "XLMRobertaForSequenceClassification": "xlm-roberta",
    "DistilBertForSequenceClassification": "distilbert",
    "ElectraForSequenceClassification": "electra",
    "DebertaV2ForSequenceClassification": "deberta-v2",
    "ModernBertForSequenceClassification": "modernbert",
}
DEFAULT_OPSET = 18
MAX_IR_VERSION = 10
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom for the graph
FP32_TOLERANCE = 1e-4  # max |logit(ONNX) - logit(PyTorch)|, relative to max(1, |logit|)


def architecture_of(config: dict) -> str:
    archs = config.get("architectures") or []
    if archs:
        return archs[0]
    return f"<none: config.json has no `architectures` (model_type {config.get('model_type')!r})>"


def check_supported(config: dict, model_dir: Path, trust_remote_code: bool = False) -> str:
    """The architecture name, or NimbuildError naming it and the supported list."""
    arch = architecture_of(config)
    if arch in SUPPORTED_ARCHITECTURES:
        return arch
    if trust_remote_code and config.get("auto_map"):
        # remote code was allowed: the model is exported as its own code defines it (best effort)
        return arch
    raise NimbuildError(
        f"model {model_dir}: architecture {arch} is not supported for export",
        hint=f"nimbuild exports cross-encoders of: {', '.join(SUPPORTED_ARCHITECTURES)}",
    )


def uses_token_type_ids(model: Any) -> bool:
    """token_type_ids is an input only where the model has more than one token type."""
    params = inspect.signature(model.forward).parameters
    return "token_type_ids" in params and int(getattr(model.config, "type_vocab_size", 0) or 0) >= 2


def input_names_for(model: Any) -> list[str]:
    """Graph input names, in the order the model's forward takes them."""
    wanted = {"input_ids", "attention_mask"} | ({"token_type_ids"} if uses_token_type_ids(model) else set())
    order = [n for n in inspect.signature(model.forward).parameters if n in wanted]
    return order


def load_model(model_dir: Path, trust_remote_code: bool = False):
    """The PyTorch model in eval mode, FP32, on the CPU."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # nimbuild shows its own progress
    with warnings.catch_warnings(), _transformers_log() as log_lines:
        warnings.simplefilter("ignore")
        try:
            # eager attention exports as MatMul -> Div -> Add(mask) -> Softmax -> MatMul: the pattern ONNX
            # Runtime fuses into its Attention op and TensorRT into fused MHA. SDPA exports with an IsNaN/Where
            # guard after each Softmax that blocks both (measured: cpu-int8 +20% pairs/s on the MiniLM-sized
            # model, benchmarks/RESULTS-precision.md); the graphs are the same function (parity gate, 1e-4).
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), trust_remote_code=trust_remote_code, dtype=torch.float32, attn_implementation="eager"
            )
        except _load_errors() as exc:
            raise load_error(model_dir, exc, log_lines) from exc
    return model.eval()


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a model folder raises for a problem of its files (not of nimbuild)."""
    import pickle

    errors: list[type[BaseException]] = [OSError, ValueError, RuntimeError, TypeError, KeyError, EOFError]
    errors.append(pickle.UnpicklingError)
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        pass
    return tuple(errors)


def load_error(model_dir: Path, exc: BaseException, log_lines: list[str]) -> NimbuildError:
    """One line for a model folder transformers could not load: what is wrong with which file, and the fix."""
    text = " ".join(str(exc).split())
    mismatch = next((" ".join(line.split()) for line in log_lines if "MISMATCH" in line), None)
    if mismatch is not None or "size mismatch" in text or "ignore_mismatched_sizes" in text:
        detail = mismatch or text
        return NimbuildError(
            f"model {model_dir}: config.json does not match the weights ({detail[:300]})",
            hint="restore the config.json the weights were saved with (hidden_size, vocab_size, layers...)",
        )
    if "weights_only" in text or "Weights only load failed" in text:
        blocked = re.search(r"unsupported GLOBAL [^ ]+|Unsupported (?:global|operand)[^.]*", text, re.IGNORECASE)
        return NimbuildError(
            f"model {model_dir}: pytorch_model.bin is a pickle that torch refuses to load safely"
            + (f" ({blocked.group(0)})" if blocked else ""),
            hint="nimbuild never unpickles code; convert the weights to model.safetensors where they come from",
        )
    kind = type(exc).__name__
    return NimbuildError(
        f"model {model_dir} could not be loaded: {kind}: {text[:300]}",
        hint="check that the folder holds config.json and intact weights (model.safetensors); "
        "NIMBUILD_DEBUG=1 shows the traceback",
    )


@contextmanager
def _transformers_log() -> Iterator[list[str]]:
    """transformers' log lines during a load, kept for the error message instead of printed (its load
    report is a 60-line table); NIMBUILD_DEBUG=1 prints them as usual."""
    import logging

    from transformers.utils import logging as hf_logging

    from nimbuild.errors import debug_enabled

    lines: list[str] = []
    if debug_enabled():
        yield lines
        return

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.extend(record.getMessage().splitlines())

    root = hf_logging.get_logger()
    keep = Keep(level=logging.WARNING)
    hf_logging.disable_default_handler()
    root.addHandler(keep)
    try:
        yield lines
    finally:
        root.removeHandler(keep)
        hf_logging.enable_default_handler()


def _wrapper(model: Any, names: list[str]):
    """A module whose forward takes exactly the graph inputs, by name, and returns logits."""
    import torch

    class Scores(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    if "token_type_ids" in names:

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
    else:

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    Scores.forward = forward
    return Scores(model).eval()


def example_inputs(names: list[str], vocab_size: int, batch: int, seq: int, seed: int = 0, pad_rows: bool = True):
    """Random int64 feeds (ids past the first specials; later rows padded) as torch tensors, in ``names`` order."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lo = min(5, vocab_size - 1)
    ids = torch.randint(lo, vocab_size, (batch, seq), generator=g, dtype=torch.long)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_rows and seq > 2:
        for b in range(1, batch):
            keep = max(1, seq - (b * seq) // (batch + 1))
            mask[b, keep:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        tt = torch.zeros(batch, seq, dtype=torch.long)
        tt[:, seq // 2 :] = 1
        feeds["token_type_ids"] = tt
    return tuple(feeds[n] for n in names)


def _export_legacy(wrapper, args, names, path: Path, opset: int) -> None:
    import torch

    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    torch.onnx.export(
        wrapper,
        args,
        str(path),
        input_names=names,
        output_names=["logits"],
        dynamic_axes=axes,
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )


def _export_dynamo(wrapper, args, names, path: Path, opset: int, max_batch: int, max_seq: int) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    seq = torch.export.Dim("sequence", min=1, max=max(2, max_seq))
    program = torch.onnx.export(
        wrapper,
        args,
        None,
        input_names=names,
        output_names=["logits"],
        dynamic_shapes=tuple({0: batch, 1: seq} for _ in names),
        opset_version=opset,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)


def _finalise(path: Path, names: list[str], num_labels: int, weight_bytes: int) -> dict:
    """Pin names/dims/IR version, check the graph, and store >2 GB weights as external data."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    graph_inputs = [i.name for i in model.graph.input]
    if graph_inputs != names:
        raise RuntimeError(f"exported graph inputs {graph_inputs} differ from {names}")
    for inp in model.graph.input:
        inp.type.tensor_type.elem_type = onnx.TensorProto.INT64
        dims = inp.type.tensor_type.shape.dim
        dims[0].dim_param, dims[1].dim_param = "batch", "sequence"
    if len(model.graph.output) != 1:
        raise RuntimeError(f"exported graph has {len(model.graph.output)} outputs, expected 1 (logits)")
    out = model.graph.output[0]
    if out.name != "logits":
        raise RuntimeError(f"exported graph output is {out.name!r}, expected 'logits'")
    dims = out.type.tensor_type.shape.dim
    if len(dims) == 2:
        dims[0].dim_param = "batch"
        dims[1].ClearField("dim_param")
        dims[1].dim_value = num_labels
    for stale in path.parent.iterdir():
        if stale.name != path.name:
            stale.unlink()
    external = weight_bytes > EXTERNAL_DATA_BYTES or model.ByteSize() > EXTERNAL_DATA_BYTES
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
        onnx.checker.check_model(str(path))
    else:
        onnx.save_model(model, str(path))
        onnx.checker.check_model(model)
    files = sorted(p.name for p in path.parent.iterdir())
    return {"external_data": external, "files": files, "ir_version": model.ir_version}


def export_fp32(
    model_dir: str | Path,
    out_dir: str | Path,
    shapes: Any,
    trust_remote_code: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    model: Any = None,
) -> dict:
    """Export ``model_dir`` to ``out_dir/model.onnx``; returns the report part (architecture, inputs, ...).

    ``shapes``: the recipe's Shapes (or a dict of the same form); ``exporter``:
    ``auto`` (TorchScript, then dynamo), ``legacy`` or ``dynamo``.
    """
    from nimbuild.builder.source import read_config

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = read_config(model_dir)
    arch = check_supported(config, model_dir, trust_remote_code)
    if opset < 17:
        raise NimbuildError(f"opset {opset} is too old", hint="use opset 17 or newer (LayerNormalization)")
    model = model if model is not None else load_model(model_dir, trust_remote_code)
    names = input_names_for(model)
    num_labels = int(model.config.num_labels)
    max_batch, max_seq = _limits(shapes)
    max_pos = _max_positions(model.config)
    if max_pos is not None and max_seq > max_pos:
        raise NimbuildError(
            f"shapes.sequence.max {max_seq} exceeds what model {model_dir} supports ({max_pos} positions)",
            hint=f"set shapes.sequence.max <= {max_pos} in the recipe",
        )
    wrapper = _wrapper(model, names)
    args = example_inputs(names, int(model.config.vocab_size), batch=2, seq=min(16, max(2, max_seq)))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / GRAPH_FILE
    order = {"auto": ["legacy", "dynamo"], "legacy": ["legacy"], "dynamo": ["dynamo"]}[exporter]
    errors = []
    start = time.perf_counter()
    used = None
    for kind in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "legacy":
                    _export_legacy(wrapper, args, names, path, opset)
                else:
                    _export_dynamo(wrapper, args, names, path, opset, max_batch, max_seq)
            used = kind
            break
        except OSError as exc:
            if exc.errno in _DISK_ERRNOS:  # a full disk is not a reason to try another exporter: say so
                raise naming(exc, path) from exc
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            for p in out_dir.iterdir():
                p.unlink()
        except Exception as exc:  # try the next exporter; report all if none works
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            for p in out_dir.iterdir():
                p.unlink()
    if used is None:
        raise NimbuildError(
            f"model {model_dir} ({arch}) could not be exported to ONNX: {' | '.join(errors)}",
            hint="NIMBUILD_DEBUG=1 shows the trace; check that transformers supports this model's export",
        )
    try:
        info = _finalise(path, names, num_labels, weight_bytes)
    except OSError as exc:  # onnx.save's write names no file
        raise naming(exc, path) from exc
    return {
        "architecture": arch,
        "model_type": config.get("model_type"),
        "inputs": names,
        "outputs": ["logits"],
        "num_labels": num_labels,
        "opset": opset,
        "exporter": used,
        "exporter_errors": errors,
        "external_data": info["external_data"],
        "files": info["files"],
        "ir_version": info["ir_version"],
        "weight_bytes": int(weight_bytes),
        "export_seconds": round(time.perf_counter() - start, 3),
    }


def _limits(shapes: Any) -> tuple[int, int]:
    if hasattr(shapes, "model_dump"):
        shapes = shapes.model_dump()
    return int(shapes["batch"]["max"]), int(shapes["sequence"]["max"])


def _max_positions(config: Any) -> int | None:
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        return int(n) - 2  # positions start after the padding index
    if getattr(config, "model_type", "") == "deberta-v2" and not getattr(config, "position_biased_input", True):
        return None  # relative positions only: no absolute table to run past
    return int(n)


def cpu_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime session that really runs on the CPU (onnxruntime-gpu lists CUDA even without a GPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    if session.get_providers()[0] != "CPUExecutionProvider":  # pragma: no cover - defensive
        raise RuntimeError(f"expected the CPU provider, got {session.get_providers()}")
    return session


def parity_cases(shapes: Any, max_positions: int | None = None) -> list[tuple[int, int]]:
    """(batch, sequence) sizes to check: 1 and a few up to the recipe's limits (batch capped at 8)."""
    max_batch, max_seq = _limits(shapes)
    if hasattr(shapes, "model_dump"):
        shapes = shapes.model_dump()
    opt_seq = int(shapes["sequence"]["opt"])
    if max_positions:
        max_seq = min(max_seq, max_positions)
    b_hi = min(8, max_batch)
    cases = [
        (1, 1),
        (min(2, b_hi), min(7, max_seq)),
        (b_hi, min(opt_seq, max_seq)),
        (min(3, b_hi), max_seq),
        (1, max_seq),
    ]
    seen, out = set(), []
    for c in cases:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def check_parity(
    model: Any,
    session: Any,
    names: list[str],
    shapes: Any,
    *,
    tolerance: float = FP32_TOLERANCE,
    progress=None,
    task=None,
) -> dict:
    """ONNX Runtime vs PyTorch on random inputs at several (batch, sequence): max |Δlogit| per case."""
    import torch

    wrapper = _wrapper(model, names)
    cases = []
    worst_excess = 0.0
    for i, (b, s) in enumerate(parity_cases(shapes, _max_positions(model.config))):
        args = example_inputs(names, int(model.config.vocab_size), batch=b, seq=s, seed=100 + i)
        with torch.no_grad():
            ref = wrapper(*args).numpy().astype(np.float64)
        got = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0].astype(np.float64)
        diff = float(np.max(np.abs(ref - got)))
        limit = tolerance * max(1.0, float(np.max(np.abs(ref))))
        cases.append({"batch": b, "sequence": s, "max_abs_logit": diff, "limit": limit, "passed": diff <= limit})
        worst_excess = max(worst_excess, diff / limit)
        if progress is not None and task is not None:
            progress.advance(task)
    return {
        "passed": all(c["passed"] for c in cases),
        "tolerance": tolerance,
        "cases": cases,
        "max_abs_logit": max(c["max_abs_logit"] for c in cases),
    }


def torch_scores(model: Any, names: list[str], encoded: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The PyTorch FP32 reference score per passage, per query."""
    import torch

    from nimbuild.builder.gate import scores_from_logits

    wrapper = _wrapper(model, names)
    out = []
    with torch.no_grad():
        for feeds in encoded:
            logits = wrapper(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names)).numpy()
            out.append(scores_from_logits(logits))
    return out
