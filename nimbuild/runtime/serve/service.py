"""The served model: tokenizer + backend + batcher behind one ``rank()`` call, and the limits it enforces."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nimbuild.profiles import numeric_tag
from nimbuild.runtime.serve.backends import Backend
from nimbuild.runtime.serve.batching import DynamicBatcher, ShuttingDown
from nimbuild.runtime.serve.metrics import ServeMetrics
from nimbuild.runtime.serve.tokenize import PairTokenizer
from nimbuild.runtime.settings import Settings, read_settings

log = logging.getLogger("nimbuild.serve")

_INLINE_CHARS = 50_000  # up to this many characters a request is tokenized on the event loop (< ~1 ms)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each beyond-limit answer names the setting that sets it
    (defaults and ranges: :mod:`nimbuild.runtime.settings`)."""

    max_passages: int = 1000  # NIM_MAX_PASSAGES
    max_body_bytes: int = 8 * 1024**2  # NIM_MAX_REQUEST_BYTES
    max_text_chars: int = 65536  # NIM_MAX_TEXT_CHARS (query and each passage)
    max_queued_passages: int = 100_000  # NIM_MAX_QUEUED_PASSAGES (then 429)
    max_queue_delay_ms: float = 2.0  # NIM_MAX_QUEUE_DELAY_MS (dynamic batching wait)
    max_batch_size: int | None = None  # NIM_MAX_BATCH_SIZE (<= the profile's max_batch_size)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits the settings give (the reranking NIM's NIM_TRITON_* names apply to the embedded batcher too)."""
        delay = settings.max_queue_delay_ms
        return cls(
            max_passages=settings.max_passages,
            max_body_bytes=settings.max_request_bytes,
            max_text_chars=settings.max_text_chars,
            max_queued_passages=settings.max_queued_passages,
            max_queue_delay_ms=cls.max_queue_delay_ms if delay is None else delay,
            max_batch_size=settings.max_batch_size,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Limits:
        return cls.from_settings(read_settings(env))

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
        profile_max = numeric_tag(self.profile.get("tags", {}), "max_batch_size")
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
