"""Inference backends: embedded ONNX Runtime, or a Triton server run as a child process.

A backend turns padded token arrays into one logit per row. Starting one can
fail for reasons only the host knows (no CUDA, no ``tritonserver``, a TensorRT
of another version): that is a :class:`BackendStartError`, and ``serve`` moves
on to the next runnable profile.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class BackendStartError(RuntimeError):
    """This backend cannot run this profile on this host (the reason is logged, the next profile tried)."""


class Backend:
    """What the batcher needs from a backend."""

    kind = "abstract"
    max_batch_size: int | None = None  # a backend's own ceiling (Triton's config), when lower than the profile's

    def start(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def infer(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        """float32 logits [B] for int64 arrays [B, L]."""
        raise NotImplementedError  # pragma: no cover - interface

    def stop(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


def logits_column(out: np.ndarray) -> np.ndarray:
    """The relevance logit per row from a model output of shape [B], [B, 1] or [B, num_labels].

    A cross-encoder reranker has one label; with several, the last one is taken as "relevant".
    """
    out = np.asarray(out)
    if out.ndim == 1:
        return out.astype(np.float32, copy=False)
    return out.reshape(out.shape[0], -1)[:, -1].astype(np.float32, copy=False)
