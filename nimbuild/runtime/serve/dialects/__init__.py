"""The rerank APIs the server speaks, each a thin adapter from its request shape to one ``RankingService.rank``
call and back; limits, batching, metrics and error handling are shared (``nimbuild.runtime.serve.app``).

    nim.py       POST /v1/ranking     the reranking NIM's: raw logits, highest first
    tei.py       POST /rerank         Hugging Face text-embeddings-inference (+ GET /info)
    cohere.py    POST /v2/rerank      Cohere v2, and the Cohere v1 shape of POST /v1/rerank
    jina.py                           the Jina shape of POST /v1/rerank
    v1rerank.py  POST /v1/rerank      Cohere v1 and Jina share the path: the rule that tells them apart

A dialect has a ``path``, ``parse(payload, headers, service) -> RankCall`` (a :class:`RequestError` naming the
field for bad input), ``answer(call, ranked, service) -> JSON`` and ``error_body(error) -> JSON`` (its own error
shape; ``status(error)`` may move a status where the reference uses another), and ``openapi`` (its path item
and schemas for ``GET /openapi.json``). The field readers below are the one place a field's type, range and
limit are checked, so every dialect words its errors the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nimbuild.runtime.serve.service import Limits, Ranked, RankingService


class RequestError(Exception):
    """A request that cannot be answered: ``status`` and a ``message`` naming the field or limit and the fix.

    ``kind`` says what went wrong in words every dialect maps to its own error type:
    ``invalid_json``, ``validation``, ``empty``, ``too_large``, ``too_many_tokens``, ``model_not_found``,
    ``overloaded``, ``unavailable``, ``backend``, ``not_found``, ``method_not_allowed``, ``timeout``,
    ``disconnected``.
    """

    def __init__(self, status: int, message: str, kind: str = "validation"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass(frozen=True)
class RankCall:
    """What a dialect asks of the model, and what it needs back to shape its answer."""

    query: str
    passages: list[str]
    truncate: str = "NONE"  # NONE | END | START (tokenize.TRUNCATE_MODES)
    max_passage_tokens: int | None = None
    top_n: int | None = None  # None: every passage
    documents: list[Any] | None = None  # per passage, what to echo back when the client asked for it
    options: Mapping[str, Any] = field(default_factory=dict)  # the dialect's own (raw_scores, flavour, ...)


class Dialect:
    """One API's shape over the shared model call (see the module docstring)."""

    name = "abstract"  # the log name
    path = ""  # the route (also its metrics label)
    openapi: Mapping[str, Any] = {}  # {"paths": {...}, "schemas": {...}, "responses": {...}}
    passages_field = "documents"  # how an over-long pair is named: f"{passages_field}[i]"
    truncate_hint = "let the server truncate it"  # the fix an over-long pair's error suggests

    def parse(self, payload: Any, headers: Mapping[str, str], service: RankingService) -> RankCall:
        raise NotImplementedError  # pragma: no cover - interface

    def answer(self, call: RankCall, ranked: Ranked, service: RankingService) -> Any:
        raise NotImplementedError  # pragma: no cover - interface

    def status(self, error: RequestError) -> int:
        return error.status

    def error_body(self, error: RequestError) -> Any:
        return generic_error_body(error)


def generic_error_body(error: RequestError) -> dict[str, Any]:
    """The NIM's error shape, plus ``message`` (what Cohere-style clients read): for /v1/ranking, health,
    unknown routes and connection-level errors."""
    return {
        "detail": error.message,
        "message": error.message,
        "error": {"code": error.status, "message": error.message},
    }


def rank_operation(
    tags: list[str], summary: str, operation_id: str, request: str, response: str, answer: str, error: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAPI path item of a rank route: POST a JSON ``request`` schema, 200 a ``response`` schema
    (component names), any other status the ``error`` response object."""
    return {
        "post": {
            "tags": tags,
            "summary": summary,
            "operationId": operation_id,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}},
            },
            "responses": {
                "200": {
                    "description": answer,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}},
                },
                "default": error,
            },
        }
    }


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


# -- field readers -------------------------------------------------------------------------------------------


def json_object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise RequestError(422, f"request body: expected a JSON object, got {_json_type(payload)}")
    return payload


def string(payload: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RequestError(422, f"{name}: expected a string, got {_got(payload, name)}")
    return value


def boolean(payload: Mapping[str, Any], name: str, default: bool) -> bool:
    value = payload.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(422, f"{name}: expected true or false, got {_got(payload, name)}")
    return value


def integer(payload: Mapping[str, Any], name: str, *, minimum: int = 1, maximum: int | None = None) -> int | None:
    """An optional whole number in [minimum, maximum]; None when absent or null."""
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(422, f"{name}: expected a whole number, got {_got(payload, name)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"{minimum} or more"
        raise RequestError(422, f"{name}: {value} is out of range; expected {bound}")
    return value


def served_model(payload: Mapping[str, Any], service: RankingService, *, required: bool) -> None:
    """``model`` must name the served model (when given, or always where the reference requires it)."""
    if payload.get("model") is None and not required:
        return
    model = payload.get("model")
    if not isinstance(model, str):
        raise RequestError(
            422, f"model: expected a string naming the model (see GET /v1/models), got {_got(payload, 'model')}"
        )
    if model != service.model:
        raise RequestError(
            404, f"model {model!r} is not served here; this server serves {service.model!r}", "model_not_found"
        )


def text(value: Any, where: str, limits: Limits, truncate: str) -> str:
    """A query or passage: a string of valid Unicode; under ``NONE`` at most NIM_MAX_TEXT_CHARS characters (a
    truncating request may send any length: the tokenizer cuts it before reading it)."""
    if not isinstance(value, str):
        raise RequestError(422, f"{where}: expected a string, got {_json_type(value)}")
    if truncate == "NONE" and len(value) > limits.max_text_chars:
        raise RequestError(
            422,
            f"{where}: {len(value)} characters, more than the limit of {limits.max_text_chars} (NIM_MAX_TEXT_CHARS) "
            "without truncation; shorten it or let the server truncate it",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (\ud800) sent as a JSON escape
        raise RequestError(422, f"{where}: not valid Unicode ({exc.reason} at {exc.start})") from None
    return value


def passage_list(payload: Mapping[str, Any], name: str, limits: Limits, item: str) -> list[Any]:
    """The list of passages/documents/texts: present, a list, not empty, at most NIM_MAX_PASSAGES."""
    values = payload.get(name)
    if not isinstance(values, list):
        raise RequestError(422, f"{name}: expected a list of {item}, got {_got(payload, name)}")
    if not values:
        raise RequestError(422, f"{name}: empty; send at least one", "empty")
    if len(values) > limits.max_passages:
        raise RequestError(
            422,
            f"{name}: {len(values)} items, more than the limit of {limits.max_passages} per request (NIM_MAX_PASSAGES)",
        )
    return values


def document_texts(
    documents: Sequence[Any], name: str, limits: Limits, truncate: str, rank_fields: Sequence[str] | None = None
) -> list[str]:
    """Cohere's and Jina's ``documents``: strings, or objects with a ``text`` string (or, with Cohere v1's
    ``rank_fields``, the named fields, read as ``field: value`` lines in that order)."""
    texts = []
    for i, doc in enumerate(documents):
        where = f"{name}[{i}]"
        if isinstance(doc, str):
            texts.append(text(doc, where, limits, truncate))
            continue
        if not isinstance(doc, dict):
            raise RequestError(422, f'{where}: expected a string or an object {{"text": "..."}}, got {_json_type(doc)}')
        if rank_fields:
            present = [f for f in rank_fields if f in doc]
            if not present:
                raise RequestError(422, f"{where}: has none of rank_fields {list(rank_fields)}")
            lines = [f"{f}: {_field_text(doc[f], f'{where}.{f}')}" for f in present]
            texts.append(text("\n".join(lines), where, limits, truncate))
            continue
        if "text" not in doc and "image" in doc:
            raise RequestError(422, f"{where}: an image; this model ranks text only")
        texts.append(text(doc.get("text"), f"{where}.text", limits, truncate))
    return texts


def _field_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float) or value is None:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    raise RequestError(422, f"{where}: a rank field must be a string or a number, got {_json_type(value)}")


def echo_document(doc: Any) -> dict[str, Any]:
    """A document as Cohere and Jina return it: ``{"text": ...}`` for a string, the object itself otherwise."""
    return {"text": doc} if isinstance(doc, str) else doc


# -- scores ---------------------------------------------------------------------------------------------------


def relevance_scores(logits: np.ndarray) -> np.ndarray:
    """A cross-encoder's logit as a relevance score in [0, 1]: the sigmoid, as TEI and the cross-encoder
    servers compute it (monotonic, so the order is the logits' order). float64, overflow-free."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def top(order: np.ndarray, top_n: int | None) -> list[int]:
    """The first ``top_n`` indexes of ``order`` (all of them when None or larger)."""
    return [int(i) for i in (order if top_n is None else order[:top_n])]


def scored_results(call: RankCall, ranked: Ranked) -> list[dict[str, Any]]:
    """``[{index, relevance_score, document?}]``, best first, cut to ``top_n``: the results of Cohere (v1, v2)
    and Jina alike; ``document`` when the request asked for documents back (``call.documents``)."""
    scores = relevance_scores(ranked.logits)
    results = []
    for i in top(ranked.order(), call.top_n):
        result: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if call.documents is not None:
            result["document"] = echo_document(call.documents[i])
        results.append(result)
    return results


def check_finite(logits: np.ndarray) -> None:
    """JSON has no NaN or infinity: a model that gave one is a model failure, said as such."""
    bad = np.flatnonzero(~np.isfinite(logits))
    if bad.size:
        raise RequestError(
            500, f"inference failed: the model returned {logits[bad[0]]} for passage {int(bad[0])}", "backend"
        )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _got(payload: Mapping[str, Any], name: str) -> str:
    return "nothing" if name not in payload else _json_type(payload[name])
