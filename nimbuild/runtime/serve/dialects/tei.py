"""Hugging Face text-embeddings-inference (TEI): ``POST /rerank`` and the ``GET /info`` its clients read.

Request ``{query, texts, truncate, truncation_direction, raw_scores, return_text}`` -> ``[{index, score,
text?}]``, highest score first. ``score`` is the sigmoid of the logit (TEI's own rule for a one-label
classifier), the logit itself with ``raw_scores: true``. ``truncate`` absent or null means TEI's
``auto_truncate`` (true, TEI's default since 1.8); ``truncation_direction: left`` keeps a passage's end.
Errors are TEI's ``{"error", "error_type"}`` with TEI's status for each type (Validation 422, Empty 400,
Overloaded 429, Unhealthy 503, Backend 424). Unknown fields are ignored, as TEI's serde does.

Reference: TEI's docs/openapi.json (1.9.x) and router/src/http/server.rs ``rerank``/``get_model_info``
(github.com/huggingface/text-embeddings-inference).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nimbuild.runtime.serve.dialects import (
    Dialect,
    RankCall,
    RequestError,
    boolean,
    json_object,
    passage_list,
    rank_operation,
    ref,
    relevance_scores,
    string,
    text,
)

if TYPE_CHECKING:
    from nimbuild.runtime.serve.service import Ranked, RankingService

AUTO_TRUNCATE = True
_DIRECTIONS = {"Right": "END", "right": "END", "Left": "START", "left": "START"}  # TEI's serde aliases
# TEI's ErrorType and the status TEI answers it with (router/src/http/server.rs: From<&ErrorType> for StatusCode).
_ERROR_TYPES = {
    "empty": ("Empty", 400),
    "too_many_tokens": ("Validation", 422),
    "overloaded": ("Overloaded", 429),
    "unavailable": ("Unhealthy", 503),
    "backend": ("Backend", 424),
}
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp8": "float8", "int8": "int8"}


class Tei(Dialect):
    name = "tei"
    path = "/rerank"
    passages_field = "texts"
    truncate_hint = 'send "truncate": true'

    def parse(self, payload: Any, headers: Mapping[str, str], service: RankingService) -> RankCall:
        payload = json_object(payload)
        truncate_flag = payload.get("truncate")
        if truncate_flag is not None and not isinstance(truncate_flag, bool):
            raise RequestError(422, f"truncate: expected true, false or null, got {type(truncate_flag).__name__}")
        direction = payload.get("truncation_direction", "right")
        if not isinstance(direction, str) or direction not in _DIRECTIONS:
            raise RequestError(422, f"truncation_direction: {direction!r}; expected Right or Left")
        auto = AUTO_TRUNCATE if truncate_flag is None else truncate_flag
        truncate = _DIRECTIONS[direction] if auto else "NONE"
        query = text(string(payload, "query"), "query", service.limits, truncate)
        texts = passage_list(payload, "texts", service.limits, "strings")
        passages = [text(t, f"texts[{i}]", service.limits, truncate) for i, t in enumerate(texts)]
        options = {
            "raw_scores": boolean(payload, "raw_scores", False),
            "return_text": boolean(payload, "return_text", False),
        }
        return RankCall(query=query, passages=passages, truncate=truncate, options=options)

    def answer(self, call: RankCall, ranked: Ranked, service: RankingService) -> Any:
        scores = ranked.logits if call.options["raw_scores"] else relevance_scores(ranked.logits)
        out = []
        for i in ranked.order():
            rank: dict[str, Any] = {"index": int(i), "score": float(scores[i])}
            if call.options["return_text"]:
                rank["text"] = call.passages[i]
            out.append(rank)
        return out

    def status(self, error: RequestError) -> int:
        return _ERROR_TYPES.get(error.kind, ("Validation", error.status))[1]

    def error_body(self, error: RequestError) -> Any:
        return {"error": error.message, "error_type": _ERROR_TYPES.get(error.kind, ("Validation", 0))[0]}

    openapi = {
        "paths": {
            "/rerank": rank_operation(
                ["Text Embeddings Inference"],
                "Rank texts by relevance to a query (TEI's API): sigmoid scores, or logits (raw_scores)",
                "tei_rerank",
                "TeiRerankRequest",
                "TeiRerankResponse",
                "Every text, highest score first",
                ref("responses", "TeiError"),
            ),
            "/info": {
                "get": {
                    "tags": ["Text Embeddings Inference"],
                    "summary": "The served model and its limits, as TEI's clients read them at start-up",
                    "operationId": "tei_info",
                    "responses": {
                        "200": {
                            "description": "Served model info",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TeiInfo"}}},
                        }
                    },
                }
            },
            "/health": {
                "get": {
                    "tags": ["Text Embeddings Inference"],
                    "summary": "TEI's health check: 200 once the model answers, 503 before",
                    "operationId": "tei_health",
                    "responses": {
                        "200": {"description": "Everything is working fine"},
                        "503": {"$ref": "#/components/responses/TeiError"},
                    },
                }
            },
        },
        "schemas": {
            "TeiRerankRequest": {
                "type": "object",
                "required": ["query", "texts"],
                "properties": {
                    "query": {"type": "string"},
                    "texts": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "truncate": {
                        "type": "boolean",
                        "nullable": True,
                        "description": "null or absent: auto_truncate (true); false: refuse over-long input",
                    },
                    "truncation_direction": {
                        "type": "string",
                        "enum": ["Right", "Left", "right", "left"],
                        "default": "right",
                    },
                    "raw_scores": {"type": "boolean", "default": False},
                    "return_text": {"type": "boolean", "default": False},
                },
            },
            "TeiRank": {
                "type": "object",
                "required": ["index", "score"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "score": {"type": "number"},
                    "text": {"type": "string"},
                },
            },
            "TeiRerankResponse": {"type": "array", "items": {"$ref": "#/components/schemas/TeiRank"}},
            "TeiErrorResponse": {
                "type": "object",
                "required": ["error", "error_type"],
                "properties": {
                    "error": {"type": "string"},
                    "error_type": {
                        "type": "string",
                        "enum": ["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"],
                    },
                },
            },
            "TeiInfo": {
                "type": "object",
                "required": [
                    "model_id",
                    "model_dtype",
                    "model_type",
                    "max_concurrent_requests",
                    "max_input_length",
                    "max_batch_tokens",
                    "max_client_batch_size",
                    "auto_truncate",
                    "tokenization_workers",
                    "version",
                ],
                "properties": {
                    "model_id": {"type": "string"},
                    "model_sha": {"type": "string", "nullable": True},
                    "model_dtype": {"type": "string"},
                    "served_model_name": {"type": "string"},
                    "model_type": {"type": "object"},
                    "max_concurrent_requests": {"type": "integer", "minimum": 0},
                    "max_input_length": {"type": "integer", "minimum": 0},
                    "max_batch_tokens": {"type": "integer", "minimum": 0},
                    "max_batch_requests": {"type": "integer", "nullable": True, "minimum": 0},
                    "max_client_batch_size": {"type": "integer", "minimum": 0},
                    "auto_truncate": {"type": "boolean"},
                    "tokenization_workers": {"type": "integer", "minimum": 0},
                    "version": {"type": "string"},
                    "sha": {"type": "string", "nullable": True},
                    "docker_label": {"type": "string", "nullable": True},
                },
            },
        },
        "responses": {
            "TeiError": {
                "description": "TEI's error shape",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TeiErrorResponse"}}},
            }
        },
    }


def info(service: RankingService, max_concurrent_requests: int) -> dict[str, Any]:
    """TEI's ``GET /info`` for the served profile (TEI's Info struct: router/src/lib.rs)."""
    from nimbuild import __version__

    tags = service.profile.get("tags", {})
    max_len = service.tokenizer.max_length
    return {
        "model_id": service.model,
        "model_sha": tags.get("model_revision") or None,
        "model_dtype": _DTYPES.get(tags.get("precision", ""), tags.get("precision", "float32")),
        "served_model_name": service.model,
        # A cross-encoder reranker: one label (TEI's ModelType::Reranker(ClassifierModel)).
        "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
        "max_concurrent_requests": max_concurrent_requests,
        "max_input_length": max_len,
        "max_batch_tokens": service.max_batch_size * max_len,
        "max_batch_requests": service.max_batch_size,
        "max_client_batch_size": service.limits.max_passages,
        "auto_truncate": AUTO_TRUNCATE,
        "tokenization_workers": 1,
        "version": __version__,
        "sha": None,
        "docker_label": None,
    }
