"""``GET /openapi.json`` (OpenAPI 3.0) and ``GET /docs`` (a self-contained HTML page of it: no CDN script, so
it works in an air-gapped cluster): every route the server answers, built from the dialects' own fragments
plus the NIM's health, model, metadata and metrics routes. ``tests/test_serve_dialects.py`` checks the document
with openapi-spec-validator and that it lists exactly the app's routes.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from nimbuild.runtime.serve.dialects import Dialect

OPENAPI_VERSION = "3.0.3"

_JSON_OBJECT = {"content": {"application/json": {"schema": {"type": "object"}}}}


def _get(
    summary: str, operation_id: str, description: str, *, tag: str = "NIM", ok: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "get": {
            "tags": [tag],
            "summary": summary,
            "operationId": operation_id,
            "responses": {"200": {"description": description, **(ok or _JSON_OBJECT)}},
        }
    }


_HEALTH = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NimHealth"}}},
}

CORE_PATHS: dict[str, Any] = {
    "/v1/health/live": _get("Liveness: the process answers", "nim_health_live", "Service is live.", ok=_HEALTH),
    "/v1/health/ready": {
        "get": {
            "tags": ["NIM"],
            "summary": "Readiness: 200 once the model has answered its warm-up, 503 before and while shutting down",
            "operationId": "nim_health_ready",
            "responses": {
                "200": {"description": "Service is ready.", **_HEALTH},
                "503": {"description": "Not ready yet, or shutting down", **_HEALTH},
            },
        }
    },
    "/v1/models": _get("The served model (the `model` every route expects)", "nim_models", "A list of one model"),
    "/v1/metadata": _get("The profile, backend and request limits", "nim_metadata", "Server metadata"),
    "/v1/metrics": _get(
        "Prometheus metrics (requests by route and status, latency, batch sizes, queue depth)",
        "nim_metrics",
        "Prometheus text exposition",
        ok={"content": {"text/plain": {"schema": {"type": "string"}}}},
    ),
    "/openapi.json": _get("This document", "openapi", "The OpenAPI document", tag="Meta"),
    "/docs": _get(
        "This document as an HTML page",
        "docs",
        "HTML",
        tag="Meta",
        ok={"content": {"text/html": {"schema": {"type": "string"}}}},
    ),
}

CORE_SCHEMAS: dict[str, Any] = {
    "NimHealth": {
        "type": "object",
        "required": ["object", "message"],
        "properties": {"object": {"type": "string"}, "message": {"type": "string"}},
    },
    "NimErrorResponse": {
        "type": "object",
        "required": ["detail", "error"],
        "properties": {
            "detail": {"type": "string"},
            "message": {"type": "string"},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
            },
        },
    },
}

CORE_RESPONSES: dict[str, Any] = {
    "NimError": {
        "description": "A JSON message naming the field or limit; a 4xx for bad input, 5xx only for a failing model",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NimErrorResponse"}}},
    }
}


def build_openapi(dialects: Iterable[Dialect], *, title: str, version: str, model: str) -> dict[str, Any]:
    """The whole document: core routes + each dialect's paths, schemas and responses (names never clash:
    a clash is a bug, caught here)."""
    paths: dict[str, Any] = dict(CORE_PATHS)
    schemas: dict[str, Any] = dict(CORE_SCHEMAS)
    responses: dict[str, Any] = dict(CORE_RESPONSES)
    for dialect in dialects:
        for section, into in (("paths", paths), ("schemas", schemas), ("responses", responses)):
            for name, value in dialect.openapi.get(section, {}).items():
                if name in into and into[name] != value:
                    raise ValueError(f"OpenAPI {section} {name!r} defined twice, differently ({dialect.name})")
                into[name] = value
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": f"Serves {model!r}. The reranking NIM's /v1/ranking (raw logits) and the rerank "
            "dialects of text-embeddings-inference (/rerank), Cohere (/v1/rerank, /v2/rerank) and Jina (/v1/rerank) "
            "over one model, one batcher and one set of limits; their scores are the sigmoid of the logit.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.items())), "responses": dict(sorted(responses.items()))},
    }


def docs_html(document: dict[str, Any]) -> str:
    """A plain page listing every route of ``document`` with its summary, and the document's link."""
    rows = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            tags, summary = html.escape(", ".join(op.get("tags", []))), html.escape(op.get("summary", ""))
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{tags}</td><td>{summary}</td></tr>"
            )
    info = document["info"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(info['title'])}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "td{padding:.2em .8em;border-bottom:1px solid #ddd;vertical-align:top}</style></head><body>"
        f"<h1>{html.escape(info['title'])} {html.escape(info['version'])}</h1><p>{html.escape(info['description'])}</p>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI "
        f"{html.escape(document['openapi'])})</p><table><tr><th>method</th><th>path</th><th>API</th><th>what</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
