"""Cohere's rerank API: ``POST /v2/rerank`` here, and the v1 shape that ``POST /v1/rerank`` answers for Cohere's
clients (see ``v1rerank.py``).

Request ``{model, query, documents, top_n, max_tokens_per_doc}`` (v2; ``model`` required), and v1's
``{model?, query, documents, top_n, rank_fields, return_documents, max_chunks_per_doc}``; both accept documents as
strings or ``{"text": ...}`` objects (v2 did until late 2024, and clients still send them). Answer
``{id, results: [{index, relevance_score, document?}], meta}``, best first, cut to ``top_n``. ``relevance_score`` is
the sigmoid of the logit. Long documents are always truncated (Cohere's rule: to ``max_tokens_per_doc``, default
4096, and here never beyond the model's ``max_sequence_length``); ``max_chunks_per_doc`` is checked but not
applied (a long document is truncated, not chunked). ``priority`` is checked (0..999) and not applied. Errors are
Cohere's ``{"message": ...}``.

Reference: cohere-openapi.yaml (github.com/cohere-ai/cohere-developer-experience): paths /v1/rerank and
/v2/rerank, components RerankDocument, ApiMeta, responses BadRequest...; the Python SDK ``cohere`` 5.x.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nimbuild.runtime.serve.dialects import (
    Dialect,
    RankCall,
    RequestError,
    boolean,
    document_texts,
    integer,
    json_object,
    passage_list,
    rank_operation,
    ref,
    scored_results,
    served_model,
    string,
    text,
)

if TYPE_CHECKING:
    from nimbuild.runtime.serve.service import Ranked, RankingService


def parse_documents_request(
    payload: Any,
    service: RankingService,
    *,
    model_required: bool,
    return_documents_default: bool,
    max_tokens_per_doc_default: int | None = None,
) -> RankCall:
    """The request shape Cohere (v1, v2) and Jina share: ``model, query, documents, top_n, return_documents``,
    plus Cohere's ``rank_fields``, ``max_tokens_per_doc``, ``max_chunks_per_doc`` and ``priority``."""
    payload = json_object(payload)
    served_model(payload, service, required=model_required)
    truncate = "END"  # these APIs truncate long documents themselves, never refuse them
    query = text(string(payload, "query"), "query", service.limits, truncate)
    documents = passage_list(payload, "documents", service.limits, 'strings or {"text": ...} objects')
    rank_fields = payload.get("rank_fields")
    if rank_fields is not None and (
        not isinstance(rank_fields, list) or not all(isinstance(f, str) for f in rank_fields)
    ):
        raise RequestError(422, "rank_fields: expected a list of field names (strings)")
    passages = document_texts(documents, "documents", service.limits, truncate, rank_fields or None)
    top_n = integer(payload, "top_n", minimum=1)
    return_documents = boolean(payload, "return_documents", return_documents_default)
    max_tokens = integer(payload, "max_tokens_per_doc", minimum=1) or max_tokens_per_doc_default
    integer(payload, "max_chunks_per_doc", minimum=1)
    integer(payload, "priority", minimum=0, maximum=999)
    return RankCall(
        query=query,
        passages=passages,
        truncate=truncate,
        max_passage_tokens=max_tokens,
        top_n=top_n,
        documents=documents if return_documents else None,
    )


def envelope(call: RankCall, ranked: Ranked, version: str) -> dict[str, Any]:
    """Cohere's answer: ``{id, results, meta}`` (meta.billed_units.search_units: one per 100 documents)."""
    return {
        "id": str(uuid.uuid4()),
        "results": scored_results(call, ranked),
        "meta": {
            "api_version": {"version": version},
            "billed_units": {"search_units": max(1, math.ceil(len(call.passages) / 100))},
        },
    }


def error_body(error: RequestError) -> dict[str, Any]:
    return {"message": error.message}


class CohereV2(Dialect):
    name = "cohere-v2"
    path = "/v2/rerank"

    def parse(self, payload: Any, headers: Mapping[str, str], service: RankingService) -> RankCall:
        return parse_documents_request(
            payload, service, model_required=True, return_documents_default=False, max_tokens_per_doc_default=4096
        )

    def answer(self, call: RankCall, ranked: Ranked, service: RankingService) -> Any:
        return envelope(call, ranked, "2")

    def error_body(self, error: RequestError) -> Any:
        return error_body(error)

    openapi = {
        "paths": {
            "/v2/rerank": rank_operation(
                ["Cohere"],
                "Rank documents by relevance to a query (Cohere's v2 API): sigmoid scores",
                "cohere_rerank_v2",
                "CohereV2RerankRequest",
                "CohereRerankResponse",
                "The top_n documents, best first",
                ref("responses", "CohereError"),
            )
        },
        "schemas": {
            "CohereDocument": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "required": ["text"],
                        "properties": {"text": {"type": "string"}},
                        "additionalProperties": True,
                    },
                ]
            },
            "CohereV2RerankRequest": {
                "type": "object",
                "required": ["model", "query", "documents"],
                "properties": {
                    "model": {"type": "string", "description": "The served model (GET /v1/models)"},
                    "query": {"type": "string"},
                    "documents": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/components/schemas/CohereDocument"},
                    },
                    "top_n": {"type": "integer", "minimum": 1, "nullable": True},
                    "max_tokens_per_doc": {"type": "integer", "minimum": 1, "nullable": True, "default": 4096},
                    "priority": {"type": "integer", "minimum": 0, "maximum": 999, "default": 0},
                    "return_documents": {"type": "boolean", "default": False},
                    "rank_fields": {"type": "array", "items": {"type": "string"}, "nullable": True},
                },
            },
            "RerankResult": {
                "type": "object",
                "required": ["index", "relevance_score"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "relevance_score": {"type": "number", "minimum": 0, "maximum": 1},
                    "document": {"type": "object", "additionalProperties": True},
                },
            },
            "CohereMeta": {
                "type": "object",
                "properties": {
                    "api_version": {
                        "type": "object",
                        "required": ["version"],
                        "properties": {"version": {"type": "string"}},
                    },
                    "billed_units": {"type": "object", "properties": {"search_units": {"type": "number"}}},
                },
            },
            "CohereRerankResponse": {
                "type": "object",
                "required": ["id", "results", "meta"],
                "properties": {
                    "id": {"type": "string"},
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/RerankResult"}},
                    "meta": {"$ref": "#/components/schemas/CohereMeta"},
                },
            },
            "CohereErrorResponse": {
                "type": "object",
                "required": ["message"],
                "properties": {"message": {"type": "string"}},
            },
        },
        "responses": {
            "CohereError": {
                "description": "Cohere's error shape",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CohereErrorResponse"}}},
            }
        },
    }
