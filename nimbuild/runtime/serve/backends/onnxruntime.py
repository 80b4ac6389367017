"""Embedded ONNX Runtime: CPU profiles, and GPU ONNX profiles through the CUDA execution provider.

onnxruntime-gpu falls back to the CPU without an error when CUDA cannot start,
so the providers a session *really* got are read back and logged; a GPU
profile that only got the CPU is a failed start, not a slow server.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.export_layout import INPUT_NAMES
from nimbuild.runtime.serve.backends import Backend, BackendStartError, logits_column

log = logging.getLogger("nimbuild.serve")

_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OnnxRuntimeBackend(Backend):
    kind = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        cpu_arena: bool = True,
    ):
        self.model_path = Path(model_path)
        self.device = device
        self.intra_op_threads = intra_op_threads  # None: ONNX Runtime's own default (NIM_ORT_INTRA_OP_THREADS)
        self.cpu_arena = cpu_arena  # NIM_ORT_CPU_ARENA
        self.session: Any = None  # an onnxruntime.InferenceSession once started and checked
        self.providers: list[str] = []
        self._inputs: list[tuple[str, Any]] = []
        self._output: str | None = None

    def start(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendStartError(f"onnxruntime is not installed ({exc}); install nimbuild[runtime]") from exc
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device == "gpu" else ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.intra_op_threads:
            opts.intra_op_num_threads = self.intra_op_threads
        if not self.cpu_arena:
            opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3  # the provider check below says what matters, without ORT's warnings
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=wanted)
        except Exception as exc:  # ORT raises its own exception types
            raise BackendStartError(f"ONNX Runtime could not load {self.model_path}: {exc}") from exc
        self.providers = list(session.get_providers())
        log.info(
            "ONNX Runtime session on %s: providers %s (asked for %s)",
            self.model_path.name,
            ", ".join(self.providers),
            ", ".join(wanted),
        )
        if self.device == "gpu" and "CUDAExecutionProvider" not in self.providers:
            raise BackendStartError(
                "GPU profile, but ONNX Runtime only got "
                + ", ".join(self.providers)
                + " (CUDA execution provider did not start: no GPU, or CUDA/cuDNN libraries missing)"
            )
        names = {i.name: i for i in session.get_inputs()}
        inputs = [(name, _DTYPES.get(names[name].type, np.int64)) for name in INPUT_NAMES if name in names]
        unknown = set(names) - {n for n, _ in inputs}
        if unknown or "input_ids" not in names:
            raise BackendStartError(
                f"{self.model_path}: inputs {sorted(names)}; expected input_ids, attention_mask[, token_type_ids]"
            )
        self._inputs, self._output = inputs, session.get_outputs()[0].name
        self.session = session  # only a session that passed every check is kept

    def infer(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        if self.session is None or self._output is None:
            raise BackendStartError("the ONNX Runtime backend is not started (or was stopped)")
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {name: arrays[name].astype(dtype, copy=False) for name, dtype in self._inputs}
        (out,) = self.session.run([self._output], feed)
        return logits_column(out)

    def stop(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": self.device, "providers": self.providers, "model": self.model_path.name}
