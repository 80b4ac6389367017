"""The reranking NIM's HTTP API as an ASGI (Starlette) app.

``POST /v1/ranking`` plus health, models, metadata and Prometheus metrics. Bad
input of any kind is a 4xx whose message names the field or the limit; only a
failing model is a 5xx. Readiness waits for a warm-up request to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nimbuild.runtime.serve.batching import QueueFull, ShuttingDown
from nimbuild.runtime.serve.service import RankingService
from nimbuild.runtime.serve.tokenize import TRUNCATE_MODES, TooManyTokens

log = logging.getLogger("nimbuild.serve")


class RequestError(Exception):
    """A client mistake: answered with ``status`` and ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message, "error": {"code": status, "message": message}}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = RequestError(413, f"request body is larger than the limit of {limit} bytes (NIM_MAX_REQUEST_BYTES)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _text(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, dict):
        raise RequestError(422, f'{where}: expected an object {{"text": "..."}}, got {type(value).__name__}')
    text = value.get("text")
    if not isinstance(text, str):
        got = "nothing" if "text" not in value else type(text).__name__
        raise RequestError(422, f"{where}.text: expected a string, got {got}")
    if len(text) > limit:
        raise RequestError(
            422, f"{where}.text: {len(text)} characters, more than the limit of {limit} (NIM_MAX_TEXT_CHARS)"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (\ud800) sent as a JSON escape
        raise RequestError(422, f"{where}.text: not valid Unicode ({exc.reason} at {exc.start})") from None
    return text


def parse_ranking_request(payload: Any, service: RankingService) -> tuple[str, list[str], str]:
    """(query, passages, truncate) from a decoded /v1/ranking body, or a RequestError naming the field."""
    limits = service.limits
    if not isinstance(payload, dict):
        raise RequestError(422, f"request body: expected a JSON object, got {type(payload).__name__}")
    model = payload.get("model")
    if not isinstance(model, str):
        raise RequestError(422, "model: expected a string naming the model (see GET /v1/models)")
    if model != service.model:
        raise RequestError(404, f"model {model!r} is not served here; this server serves {service.model!r}")
    if "query" not in payload:
        raise RequestError(422, 'query: missing; expected {"text": "..."}')
    query = _text(payload["query"], "query", limits.max_text_chars)
    passages = payload.get("passages")
    if not isinstance(passages, list):
        got = "nothing" if "passages" not in payload else type(passages).__name__
        raise RequestError(422, f'passages: expected a list of {{"text": "..."}}, got {got}')
    if not passages:
        raise RequestError(422, "passages: empty; send at least one passage")
    if len(passages) > limits.max_passages:
        raise RequestError(
            422,
            f"passages: {len(passages)} passages, more than the limit of "
            f"{limits.max_passages} per request (NIM_MAX_PASSAGES)",
        )
    texts = [_text(p, f"passages[{i}]", limits.max_text_chars) for i, p in enumerate(passages)]
    truncate = payload.get("truncate", "NONE")
    if truncate not in TRUNCATE_MODES:
        raise RequestError(422, f"truncate: {truncate!r}; expected one of {', '.join(TRUNCATE_MODES)}")
    return query, texts, truncate


def create_app(service: RankingService) -> Starlette:
    """The ASGI app for one started :class:`RankingService` (its batcher starts with the app)."""
    metrics = service.metrics
    shutting_down = False

    def count(route: str, response: Response) -> Response:
        metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    async def ranking(request: Request) -> Response:
        started = time.perf_counter()
        try:
            if not service.ready:
                raise RequestError(503, "the model is not ready yet; poll GET /v1/health/ready")
            body = await _read_body(request, service.limits.max_body_bytes)
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(400, f"request body is not valid JSON: {exc}") from None
            except RecursionError:
                raise RequestError(400, "request body is not valid JSON: nested too deeply") from None
            query, passages, truncate = parse_ranking_request(payload, service)
            try:
                logits = await service.rank(query, passages, truncate)
            except TooManyTokens as exc:
                raise RequestError(400, str(exc)) from None
            except QueueFull as exc:
                raise RequestError(429, f"server busy: {exc}; retry later") from None
            except ShuttingDown as exc:
                raise RequestError(503, str(exc)) from None
        except RequestError as exc:
            return count("/v1/ranking", _error(exc.status, exc.message))
        except ClientDisconnect:
            return count("/v1/ranking", _error(499, "client disconnected"))
        except Exception as exc:  # a model failure: the only 5xx
            log.exception("ranking failed")
            return count("/v1/ranking", _error(500, f"inference failed: {type(exc).__name__}: {exc}"))
        order = np.argsort(-logits, kind="stable")
        rankings = [{"index": int(i), "logit": float(logits[i])} for i in order]
        metrics.passages.inc(len(passages))
        metrics.request_seconds.observe(time.perf_counter() - started)
        return count("/v1/ranking", JSONResponse({"rankings": rankings}))

    async def live(request: Request) -> Response:
        return count("/v1/health/live", JSONResponse({"object": "health.response", "message": "Service is live."}))

    async def ready(request: Request) -> Response:
        if service.ready and not shutting_down:
            return count(
                "/v1/health/ready", JSONResponse({"object": "health.response", "message": "Service is ready."})
            )
        message = "Service is shutting down." if shutting_down else "Service is not ready: model warm-up pending."
        return count(
            "/v1/health/ready", JSONResponse({"object": "health.response", "message": message}, status_code=503)
        )

    async def models(request: Request) -> Response:
        data = [
            {
                "id": service.model,
                "object": "model",
                "owned_by": "nimbuild",
                "root": service.model,
                "profile": service.profile.get("id"),
            }
        ]
        return count("/v1/models", JSONResponse({"object": "list", "data": data}))

    async def metadata(request: Request) -> Response:
        return count("/v1/metadata", JSONResponse(service.metadata()))

    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal shutting_down
        service.start()
        warm = asyncio.create_task(_warm_up(service))
        try:
            yield
        finally:
            shutting_down = True
            warm.cancel()
            log.info("Shutting down: in-flight requests done, stopping the %s backend", service.backend.kind)
            await asyncio.get_running_loop().run_in_executor(None, service.stop)

    routes = [
        Route("/v1/ranking", ranking, methods=["POST"]),
        Route("/v1/health/live", live, methods=["GET"]),
        Route("/v1/health/ready", ready, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/metadata", metadata, methods=["GET"]),
        Route("/v1/metrics", prometheus, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _warm_up(service: RankingService) -> None:
    try:
        await service.warm_up()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("warm-up failed: the server stays not ready")
