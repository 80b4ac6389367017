"""Jina AI's rerank API: the Jina shape of ``POST /v1/rerank`` (the path Cohere v1 shares: ``v1rerank.py``).

Request ``{model, query, documents, top_n, return_documents}`` (documents as strings or ``{"text": ...}``;
``{"image": ...}`` documents are refused: the served model reads text) -> ``{model, usage: {total_tokens},
results: [{index, relevance_score, document?}]}``, best first, cut to ``top_n``. ``return_documents`` defaults to
true, as in Jina's API. Long documents are truncated, never refused. Errors are FastAPI's ``{"detail": ...}``,
which Jina's API answers and its clients read (Haystack's JinaRanker raises ``resp["detail"]``).

Reference: Jina's reranker API (api.jina.ai/v1/rerank: RerankRequest, RerankResponse); the clients
jina-haystack ``JinaRanker`` and LangChain's ``JinaRerank``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nimbuild.runtime.serve.dialects import RankCall, RequestError, scored_results

if TYPE_CHECKING:
    from nimbuild.runtime.serve.service import Ranked, RankingService

RETURN_DOCUMENTS_DEFAULT = True


def envelope(call: RankCall, ranked: Ranked, service: RankingService) -> dict[str, Any]:
    return {"model": service.model, "usage": {"total_tokens": ranked.tokens}, "results": scored_results(call, ranked)}


def error_body(error: RequestError) -> dict[str, Any]:
    return {"detail": error.message}


SCHEMAS = {
    "JinaRerankRequest": {
        "type": "object",
        "required": ["query", "documents"],
        "properties": {
            "model": {"type": "string", "description": "The served model (GET /v1/models)"},
            "query": {"type": "string"},
            "documents": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/CohereDocument"}},
            "top_n": {"type": "integer", "minimum": 1, "nullable": True},
            "return_documents": {
                "type": "boolean",
                "description": "default: true for Jina's clients, false for Cohere's",
            },
        },
    },
    "JinaUsage": {
        "type": "object",
        "required": ["total_tokens"],
        "properties": {"total_tokens": {"type": "integer", "minimum": 0}},
    },
}
