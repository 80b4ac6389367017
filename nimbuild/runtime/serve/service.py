"""The served model: tokenizer + backend + batcher behind one ``rank()`` call, and the limits it enforces."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nimbuild.runtime.serve.backends import Backend
from nimbuild.runtime.serve.batching import DynamicBatcher, ShuttingDown
from nimbuild.runtime.serve.metrics import ServeMetrics
from nimbuild.runtime.serve.tokenize import PairTokenizer

log = logging.getLogger("nimbuild.serve")

_INLINE_CHARS = 50_000  # up to this many characters a request is tokenized on the event loop (< ~1 ms)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each beyond-limit answer names the setting that sets it."""

    max_passages: int = 1000  # NIM_MAX_PASSAGES
    max_body_bytes: int = 8 * 1024**2  # NIM_MAX_REQUEST_BYTES
    max_text_chars: int = 65536  # NIM_MAX_TEXT_CHARS (query and each passage)
    max_queued_passages: int = 100_000  # NIM_MAX_QUEUED_PASSAGES (then 429)
    max_queue_delay_ms: float = 2.0  # NIM_MAX_QUEUE_DELAY_MS (dynamic batching wait)
    max_batch_size: int | None = None  # NIM_MAX_BATCH_SIZE (<= the profile's max_batch_size)

    # attribute -> the variables that set it, first found wins: (name, factor to the attribute's unit).
    # The NIM_TRITON_* names are the reranking NIM's own; they apply to the embedded batcher too.
    ENV = {
        "max_passages": (("NIM_MAX_PASSAGES", 1),),
        "max_body_bytes": (("NIM_MAX_REQUEST_BYTES", 1),),
        "max_text_chars": (("NIM_MAX_TEXT_CHARS", 1),),
        "max_queued_passages": (("NIM_MAX_QUEUED_PASSAGES", 1),),
        "max_queue_delay_ms": (
            ("NIM_MAX_QUEUE_DELAY_MS", 1.0),
            ("NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS", 0.001),
        ),
        "max_batch_size": (("NIM_MAX_BATCH_SIZE", 1), ("NIM_TRITON_MAX_BATCH_SIZE", 1)),
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Limits:
        from nimbuild.errors import NimbuildError

        values: dict[str, Any] = {}
        for attr, variables in cls.ENV.items():
            for var, factor in variables:
                raw = env.get(var, "").strip()
                if not raw:
                    continue
                try:
                    value = float(raw) * factor if attr == "max_queue_delay_ms" else int(raw)
                except ValueError:
                    raise NimbuildError(
                        f"{var}={raw!r} is not a number", hint=f"set {var} to a positive number"
                    ) from None
                if value < 0 or (value == 0 and attr != "max_queue_delay_ms"):
                    raise NimbuildError(f"{var}={raw!r} is out of range", hint=f"set {var} to a positive number")
                values[attr] = value
                break
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Ranked:
    """One request's answer from the model: a logit per passage (request order) and what it read."""

    logits: np.ndarray  # float32 [n]
    tokens: int  # tokens the model read for this request, special tokens included (dialects' usage fields)

    def order(self) -> np.ndarray:
        """Passage indexes, highest logit first; ties keep request order (the order /v1/ranking answers in)."""
        return np.argsort(-self.logits, kind="stable")


@dataclass
class RankingService:
    """One selected profile, started: what the HTTP app calls."""

    model: str
    profile: dict[str, Any]  # {"id", "name", "tags"}
    tokenizer: PairTokenizer
    backend: Backend
    limits: Limits = field(default_factory=Limits)
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    ready: bool = False
    batcher: DynamicBatcher | None = None

    @property
    def max_batch_size(self) -> int:
        profile_max = int(self.profile.get("tags", {}).get("max_batch_size", 64))
        return min(profile_max, self.limits.max_batch_size or profile_max, self.backend.max_batch_size or profile_max)

    def start(self) -> None:
        """Start the batching worker (the backend is already started)."""
        self.batcher = DynamicBatcher(
            self.backend.infer,
            max_batch_size=self.max_batch_size,
            pad_id=self.tokenizer.pad_id,
            max_queue_delay_s=self.limits.max_queue_delay_ms / 1000.0,
            max_pending_rows=self.limits.max_queued_passages,
            metrics=self.metrics,
        )
        self.batcher.start()

    async def warm_up(self) -> None:
        """One request through the whole path; only then is the server ready."""
        ranked = await self.rank("warm-up query", ["a short warm-up passage", "another passage"], "END")
        if not np.all(np.isfinite(ranked.logits)):
            raise RuntimeError(f"warm-up gave non-finite logits {ranked.logits.tolist()}")
        self.ready = True
        self.metrics.ready.set(1)
        log.info("Model %s answered its warm-up: ready", self.model)

    async def rank(
        self, query: str, passages: Sequence[str], truncate: str, max_passage_tokens: int | None = None
    ) -> Ranked:
        """The logits of (query, passage) pairs, through the shared batcher: what every API route calls."""
        if len(query) + sum(map(len, passages)) > _INLINE_CHARS:
            # A big request is tokenized in a thread (the Rust tokenizer releases the GIL),
            # so health checks and small requests are not held behind it.
            rows = await asyncio.to_thread(self.tokenizer.encode, query, passages, truncate, max_passage_tokens)
        else:
            rows = self.tokenizer.encode(query, passages, truncate, max_passage_tokens)
        batcher = self.batcher
        if batcher is None:
            raise ShuttingDown("the server is shutting down")
        logits = await batcher.submit(rows)
        return Ranked(logits=logits, tokens=sum(len(r) for r in rows))

    def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.stop()
            self.batcher = None
        self.backend.stop()

    def metadata(self) -> dict[str, Any]:
        from nimbuild import __version__

        return {
            "nimbuildVersion": __version__,
            "model": self.model,
            "modelInfo": [
                {"shortName": f"{self.model}:{self.profile.get('tags', {}).get('model_revision', '')}", "modelUrl": ""}
            ],
            "profile": self.profile,
            "backend": self.backend.describe(),
            "limits": {
                **self.limits.to_dict(),
                "max_batch_size": self.max_batch_size,
                "max_sequence_length": self.tokenizer.max_length,
            },
        }
