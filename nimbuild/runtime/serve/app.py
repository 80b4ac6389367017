"""The HTTP API as an ASGI (Starlette) app: every rerank dialect over one model, one batcher, one set of limits.

Routes: the dialects' rank routes (``dialects/``: NIM ``/v1/ranking``, TEI ``/rerank``, Cohere/Jina
``/v1/rerank``, Cohere ``/v2/rerank``), NIM health/models/metadata/metrics, TEI ``/info`` and ``/health``,
``/openapi.json`` and ``/docs``. Every rank route runs the same steps here (ready? body within
NIM_MAX_REQUEST_BYTES, JSON, the dialect's parse, ``service.rank``, the dialect's answer) so limits, metrics and
errors are shared; only the shapes are the dialect's. Every error on every path, including unknown routes
(404), wrong methods (405) and a shutdown past its grace period (503), is JSON with a message, in the
dialect's error shape on its own path. Bad input is a 4xx; only a failing model is a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from nimbuild.runtime.serve.batching import QueueFull, ShuttingDown
from nimbuild.runtime.serve.dialects import Dialect, RequestError, check_finite, generic_error_body
from nimbuild.runtime.serve.dialects.cohere import CohereV2
from nimbuild.runtime.serve.dialects.nim import Nim
from nimbuild.runtime.serve.dialects.tei import Tei
from nimbuild.runtime.serve.dialects.tei import info as tei_info
from nimbuild.runtime.serve.dialects.v1rerank import CohereV1OrJina
from nimbuild.runtime.serve.openapi import build_openapi, docs_html
from nimbuild.runtime.serve.service import RankingService
from nimbuild.runtime.serve.tokenize import TooManyTokens

log = logging.getLogger("nimbuild.serve")

UNMATCHED = "unmatched"  # the metrics label of every path no route serves


def dialects() -> list[Dialect]:
    """The rank routes, one per dialect."""
    return [Nim(), Tei(), CohereV1OrJina(), CohereV2()]


async def read_body(request: Request, limit: int) -> bytes:
    too_big = RequestError(
        413, f"request body is larger than the limit of {limit} bytes (NIM_MAX_REQUEST_BYTES)", "too_large"
    )
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


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise RequestError(400, "request body is not valid JSON: nested too deeply", "invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None


class ErrorShapes:
    """Which error shape a path answers in: its dialect's, or the NIM's (``generic_error_body``)."""

    def __init__(self, rank_dialects: list[Dialect]):
        self.by_path = {d.path: d for d in rank_dialects}

    def response(self, path: str, error: RequestError, headers: Mapping[str, str] | None = None) -> JSONResponse:
        dialect = self.by_path.get(path)
        if dialect is None:
            return JSONResponse(generic_error_body(error), status_code=error.status, headers=headers)
        return JSONResponse(dialect.error_body(error), status_code=dialect.status(error), headers=headers)

    def body_for(self, path: str, status: int, message: str, kind: str) -> tuple[int, bytes]:
        """(status, JSON bytes) for a path: what the connection layer writes itself (timeouts, the ceiling)."""
        response = self.response(path, RequestError(status, message, kind))
        return response.status_code, bytes(response.body)


def create_app(service: RankingService, *, max_connections: int | None = None) -> CancelledAsUnavailable:
    """The ASGI app for one started :class:`RankingService` (its batcher starts with the app).

    ``max_connections``: the connection ceiling (``NIM_HTTP_MAX_CONNECTIONS``), reported by TEI's /info as
    ``max_concurrent_requests``.
    """
    metrics = service.metrics
    rank_dialects = dialects()
    shapes = ErrorShapes(rank_dialects)
    state = {"shutting_down": False}
    from nimbuild import __version__

    document = build_openapi(rank_dialects, title="nimbuild serve", version=__version__, model=service.model)
    page = docs_html(document)

    def count(route: str, response: Response) -> Response:
        metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    def rank_endpoint(dialect: Dialect) -> Callable[[Request], Awaitable[Response]]:
        route = dialect.path

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if not service.ready:
                    raise RequestError(503, "the model is not ready yet; poll GET /v1/health/ready", "unavailable")
                payload = parse_json(await read_body(request, service.limits.max_body_bytes))
                call = dialect.parse(payload, request.headers, service)
                try:
                    ranked = await service.rank(call.query, call.passages, call.truncate, call.max_passage_tokens)
                except TooManyTokens as exc:
                    raise RequestError(
                        400,
                        f"{dialect.passages_field}[{exc.index}]: query + passage are {exc.tokens} tokens, more than "
                        f"the model's max_sequence_length {exc.limit}; shorten the input or {dialect.truncate_hint}",
                        "too_many_tokens",
                    ) from None
                except QueueFull as exc:
                    raise RequestError(429, f"server busy: {exc}; retry later", "overloaded") from None
                except ShuttingDown as exc:
                    raise RequestError(503, str(exc), "unavailable") from None
                check_finite(ranked.logits)
                content = dialect.answer(call, ranked, service)
            except RequestError as exc:
                if exc.status >= 500:
                    log.error("%s failed: %s", route, exc.message)
                return count(route, shapes.response(route, exc))
            except ClientDisconnect:
                return count(route, shapes.response(route, RequestError(499, "client disconnected", "disconnected")))
            except Exception as exc:  # a model failure: the only 5xx
                log.exception("ranking failed")
                failure = RequestError(500, f"inference failed: {type(exc).__name__}: {exc}", "backend")
                return count(route, shapes.response(route, failure))
            metrics.passages.labels(route).inc(len(call.passages))
            metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
            return count(route, JSONResponse(content))

        return endpoint

    def health(live: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            route = "/v1/health/live" if live else "/v1/health/ready"
            if live or (service.ready and not state["shutting_down"]):
                message = "Service is live." if live else "Service is ready."
                return count(route, JSONResponse({"object": "health.response", "message": message}))
            message = (
                "Service is shutting down."
                if state["shutting_down"]
                else "Service is not ready: model warm-up pending."
            )
            return count(route, JSONResponse({"object": "health.response", "message": message}, status_code=503))

        return endpoint

    async def tei_health(request: Request) -> Response:
        if service.ready and not state["shutting_down"]:
            return count("/health", Response(status_code=200))
        unhealthy = RequestError(503, "unhealthy: the model is not ready or the server is shutting down", "unavailable")
        return count("/health", shapes.response("/rerank", unhealthy))

    async def tei_info_endpoint(request: Request) -> Response:
        return count("/info", JSONResponse(tei_info(service, max_connections or 0)))

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

    async def openapi(request: Request) -> Response:
        return count("/openapi.json", JSONResponse(document))

    async def docs(request: Request) -> Response:
        return count("/docs", HTMLResponse(page))

    routes = [Route(d.path, rank_endpoint(d), methods=["POST"]) for d in rank_dialects] + [
        Route("/v1/health/live", health(live=True), methods=["GET"]),
        Route("/v1/health/ready", health(live=False), methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/metadata", metadata, methods=["GET"]),
        Route("/v1/metrics", prometheus, methods=["GET"]),
        Route("/health", tei_health, methods=["GET"]),
        Route("/info", tei_info_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
    known = {r.path for r in routes}

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = request.url.path
        if exc.status_code == 404:
            error = RequestError(404, f"no route {path!r}; GET /openapi.json lists every route", "not_found")
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            error = RequestError(
                405,
                f"{request.method} is not allowed on {path}; use {allowed or 'another method'}",
                "method_not_allowed",
            )
        else:
            error = RequestError(exc.status_code, exc.detail or "request refused", "validation")
        return count(path if path in known else UNMATCHED, shapes.response(path, error, headers=exc.headers))

    async def server_error(request: Request, exc: Exception) -> Response:
        path = request.url.path
        failure = RequestError(500, f"internal error: {type(exc).__name__}: {exc}", "backend")
        return count(path if path in known else UNMATCHED, shapes.response(path, failure))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        warm = asyncio.create_task(_warm_up(service))
        try:
            yield
        finally:
            state["shutting_down"] = True
            warm.cancel()
            log.info("Shutting down: in-flight requests done, stopping the %s backend", service.backend.kind)
            await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    return CancelledAsUnavailable(app, shapes)


class CancelledAsUnavailable:
    """The outermost layer: a request still running when uvicorn cancels it (a shutdown past
    NIM_GRACEFUL_SHUTDOWN_SECONDS) is answered 503 with a JSON body in its dialect's shape, not uvicorn's
    plain-text 500."""

    def __init__(self, app: Starlette, shapes: ErrorShapes):
        self.app, self.shapes = app, shapes  # shapes: for the connection layer's own errors (connections.py)

    @property
    def routes(self) -> list[BaseRoute]:
        return self.app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if started:
                raise
            error = RequestError(
                503,
                "the server shut down before this request was answered "
                "(NIM_GRACEFUL_SHUTDOWN_SECONDS passed); retry on another replica",
                "unavailable",
            )
            response = self.shapes.response(scope.get("path", ""), error, headers={"connection": "close"})
            await response(scope, receive, send)


async def _warm_up(service: RankingService) -> None:
    try:
        await service.warm_up()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("warm-up failed: the server stays not ready")
