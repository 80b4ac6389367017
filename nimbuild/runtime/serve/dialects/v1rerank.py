"""``POST /v1/rerank``: the path Cohere's v1 API and Jina's API share, answered for both.

Their requests overlap (``model, query, documents, top_n, return_documents``) and their answers differ only in
the envelope: Cohere's ``{id, results, meta}``, Jina's ``{model, usage, results}``, with the same ``results``.
So the answer carries both envelopes (every key either reference requires; clients read theirs and ignore the
rest), and errors carry both error keys (Cohere's ``message``, Jina's ``detail``). The one thing that must be
decided is ``return_documents`` when a request leaves it out (Cohere: false, Jina: true). The rule:

1. a request from Cohere's SDKs (header ``X-Fern-SDK-Name: cohere...``) is Cohere's;
2. a request with a Cohere-only field (``rank_fields``, ``max_chunks_per_doc``, ``max_tokens_per_doc``) is Cohere's;
3. any other is Jina's (returning documents no one asked for costs bytes; leaving out documents a Jina client
   expects breaks it).

``meta.api_version.version`` is "1".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nimbuild.runtime.serve.dialects import Dialect, RankCall, RequestError, cohere, jina, rank_operation, ref

if TYPE_CHECKING:
    from nimbuild.runtime.serve.service import Ranked, RankingService

COHERE_ONLY_FIELDS = ("rank_fields", "max_chunks_per_doc", "max_tokens_per_doc")


def flavour(payload: Any, headers: Mapping[str, str]) -> str:
    """``cohere`` or ``jina``: whose defaults a /v1/rerank request gets (the module's rule)."""
    if headers.get("x-fern-sdk-name", "").lower().startswith("cohere"):
        return "cohere"
    if isinstance(payload, dict) and any(payload.get(name) is not None for name in COHERE_ONLY_FIELDS):
        return "cohere"
    return "jina"


class CohereV1OrJina(Dialect):
    name = "cohere-v1-jina"
    path = "/v1/rerank"

    def parse(self, payload: Any, headers: Mapping[str, str], service: RankingService) -> RankCall:
        who = flavour(payload, headers)
        return cohere.parse_documents_request(
            payload,
            service,
            model_required=False,
            return_documents_default=jina.RETURN_DOCUMENTS_DEFAULT if who == "jina" else False,
        )

    def answer(self, call: RankCall, ranked: Ranked, service: RankingService) -> Any:
        return {**jina.envelope(call, ranked, service), **cohere.envelope(call, ranked, "1")}

    def error_body(self, error: RequestError) -> Any:
        return {**jina.error_body(error), **cohere.error_body(error)}

    openapi = {
        "paths": {
            "/v1/rerank": {
                "post": {
                    **rank_operation(
                        ["Cohere", "Jina"],
                        "Rank documents by relevance to a query (Cohere's v1 and Jina's API): sigmoid scores",
                        "cohere_v1_jina_rerank",
                        "V1RerankRequest",
                        "V1RerankResponse",
                        "The top_n documents, best first, in both envelopes",
                        {
                            "description": "Cohere's and Jina's error shapes in one",
                            "content": {"application/json": {"schema": ref("schemas", "V1RerankError")}},
                        },
                    )["post"],
                    "description": __doc__,
                }
            }
        },
        "schemas": {
            **jina.SCHEMAS,
            "V1RerankRequest": {
                "allOf": [
                    {"$ref": "#/components/schemas/JinaRerankRequest"},
                    {
                        "type": "object",
                        "properties": {
                            "rank_fields": {"type": "array", "items": {"type": "string"}, "nullable": True},
                            "max_chunks_per_doc": {"type": "integer", "minimum": 1, "nullable": True},
                            "max_tokens_per_doc": {"type": "integer", "minimum": 1, "nullable": True},
                        },
                    },
                ]
            },
            "V1RerankResponse": {
                "type": "object",
                "required": ["id", "model", "usage", "results", "meta"],
                "properties": {
                    "id": {"type": "string"},
                    "model": {"type": "string"},
                    "usage": {"$ref": "#/components/schemas/JinaUsage"},
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/RerankResult"}},
                    "meta": {"$ref": "#/components/schemas/CohereMeta"},
                },
            },
            "V1RerankError": {
                "type": "object",
                "required": ["message", "detail"],
                "properties": {"message": {"type": "string"}, "detail": {"type": "string"}},
            },
        },
    }
