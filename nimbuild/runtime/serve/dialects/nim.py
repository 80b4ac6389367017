"""The reranking NIM's ``POST /v1/ranking``: ``{model, query: {text}, passages: [{text}], truncate}`` ->
``{"rankings": [{index, logit}]}``, highest logit first, the raw logits unchanged (no sigmoid, no top_n: NVIDIA's
clients cut client-side).

Reference: docs/design.md "HTTP API", the NIM for text reranking API reference (``truncate``: ``NONE`` (default)
refuses an over-long pair with 400, ``END`` cuts the passage first).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nimbuild.runtime.serve.dialects import (
    Dialect,
    RankCall,
    RequestError,
    json_object,
    passage_list,
    rank_operation,
    ref,
    served_model,
    text,
)

if TYPE_CHECKING:
    from nimbuild.runtime.serve.service import Ranked, RankingService

TRUNCATE = ("NONE", "END")


def _text_object(value: Any, where: str, service: RankingService, truncate: str) -> str:
    if not isinstance(value, dict):
        raise RequestError(422, f'{where}: expected an object {{"text": "..."}}, got {type(value).__name__}')
    if not isinstance(value.get("text"), str):
        got = "nothing" if "text" not in value else type(value["text"]).__name__
        raise RequestError(422, f"{where}.text: expected a string, got {got}")
    return text(value["text"], f"{where}.text", service.limits, truncate)


class Nim(Dialect):
    name = "nim"
    path = "/v1/ranking"
    passages_field = "passages"
    truncate_hint = 'send "truncate": "END"'

    def parse(self, payload: Any, headers: Mapping[str, str], service: RankingService) -> RankCall:
        payload = json_object(payload)
        served_model(payload, service, required=True)
        truncate = payload.get("truncate", "NONE")
        if truncate not in TRUNCATE:
            raise RequestError(422, f"truncate: {truncate!r}; expected one of {', '.join(TRUNCATE)}")
        if "query" not in payload:
            raise RequestError(422, 'query: missing; expected {"text": "..."}')
        query = _text_object(payload["query"], "query", service, truncate)
        passages = passage_list(payload, "passages", service.limits, '{"text": "..."}')
        texts = [_text_object(p, f"passages[{i}]", service, truncate) for i, p in enumerate(passages)]
        return RankCall(query=query, passages=texts, truncate=truncate)

    def answer(self, call: RankCall, ranked: Ranked, service: RankingService) -> Any:
        logits = ranked.logits
        return {"rankings": [{"index": int(i), "logit": float(logits[i])} for i in ranked.order()]}

    openapi = {
        "paths": {
            "/v1/ranking": rank_operation(
                ["NIM"],
                "Rank passages by relevance to a query (the reranking NIM's API): raw logits",
                "nim_ranking",
                "NimRankingRequest",
                "NimRankingResponse",
                "Every passage, highest logit first",
                ref("responses", "NimError"),
            )
        },
        "schemas": {
            "NimText": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
            "NimRankingRequest": {
                "type": "object",
                "required": ["model", "query", "passages"],
                "properties": {
                    "model": {"type": "string", "description": "The served model (GET /v1/models)"},
                    "query": {"$ref": "#/components/schemas/NimText"},
                    "passages": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/NimText"}},
                    "truncate": {
                        "type": "string",
                        "enum": list(TRUNCATE),
                        "default": "NONE",
                        "description": "END cuts the passage (then the query) to max_sequence_length; NONE refuses "
                        "an over-long pair with 400 and texts over NIM_MAX_TEXT_CHARS with 422",
                    },
                },
            },
            "NimRankingResponse": {
                "type": "object",
                "required": ["rankings"],
                "properties": {
                    "rankings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["index", "logit"],
                            "properties": {"index": {"type": "integer", "minimum": 0}, "logit": {"type": "number"}},
                        },
                    }
                },
            },
        },
    }
