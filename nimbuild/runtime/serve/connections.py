"""HTTP connections: a deadline on every phase, a ceiling on how many are open, a log that stays small.

What uvicorn (0.3x-0.5x, the h11 protocol) does by itself, read from its source: ``timeout_keep_alive`` times
only the idle wait *after* a response; a connection that sends nothing, half a request line, or its headers and
then a body byte a minute is held forever. ``limit_concurrency`` counts idle connections as busy and answers
its 503 in plain text; ``backlog`` only sizes the kernel's queue; ``h11_max_incomplete_event_size`` caps the
header size (16 KiB) and uvicorn answers its 400 in plain text. At EMFILE, asyncio stops accepting for a second
and logs a traceback each time. So :class:`GuardedH11Protocol` (uvicorn's ``H11Protocol`` plus):

- **headers**: from a connection's start, or from the first byte of a keep-alive connection's next request, to
  the end of the request headers: ``NIM_HTTP_HEADER_TIMEOUT_SECONDS`` (10). Past it: ``408`` with a JSON body
  when part of a request came, a plain close when nothing did.
- **body**: from the end of the headers to the end of the body: ``NIM_HTTP_BODY_TIMEOUT_SECONDS`` (60). Past it:
  ``408`` JSON in the route's dialect shape, and the request is abandoned.
- **response**: a response the client stops reading (the socket's send buffer full) for longer than the body
  deadline: the connection is closed, so a slow reader cannot hold a request slot forever.
- **keep-alive**: idle between requests: ``NIM_HTTP_KEEP_ALIVE_SECONDS`` (30; uvicorn's own timer).
- **ceiling**: ``NIM_HTTP_MAX_CONNECTIONS`` open connections (default ``min(2048, open-file limit - reserve -
  32)``: ``max(64, limit / 8)`` descriptors kept for the model, the log and the tokenizer, and 32 for connections
  accepted but not yet seen: asyncio accepts 8 per wake-up here, not uvicorn's 2048, and a connection closed
  frees its descriptor a wake-up later; the kernel's listen queue stays 2048 deep). At the ceiling a new
  connection makes room by closing the connection that has waited longest with no request in progress (as
  nginx reuses keep-alive connections); when every one has a request in progress, the new one is answered
  ``503`` JSON (within 2 s, when its request line comes) and closed; past 16 such at once, closed at once.
  So idle or half-sent connections can never lock a health check out, and ``accept`` never runs out of
  descriptors because of them.
- **log**: repeated lines of one kind (invalid HTTP, accept failures, timeouts) are written at most once per
  10 s, with the count of those left out; ``socket.accept() out of system resource`` is one line, not a
  traceback.

Errors the connection layer writes itself (408, 503, and the 400 for invalid HTTP) are JSON, in the dialect
shape of the request's path when the request line came (``app.ErrorShapes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from nimbuild.errors import NimbuildError
from nimbuild.runtime.settings import Settings, read_settings

log = logging.getLogger("nimbuild.serve")

_REPEAT_SECONDS = 10.0
_REFUSED_SLOTS = 16  # connections over the ceiling that may wait (2 s at most) for their 503; beyond, closed at once
_REFUSED_WAIT_S = 2.0


@dataclass(frozen=True)
class HttpLimits:
    """The connection settings: the NIM_HTTP_* variables (read and checked by :mod:`nimbuild.runtime.settings`)
    and the connection ceiling, checked here against this process's open-file limit (``from_settings``)."""

    header_timeout_s: float = 10.0  # NIM_HTTP_HEADER_TIMEOUT_SECONDS
    body_timeout_s: float = 60.0  # NIM_HTTP_BODY_TIMEOUT_SECONDS
    keep_alive_s: float = 30.0  # NIM_HTTP_KEEP_ALIVE_SECONDS
    max_connections: int = 2048  # NIM_HTTP_MAX_CONNECTIONS (default: from the open-file limit)

    @classmethod
    def from_settings(cls, settings: Settings, open_files: int | None = None) -> HttpLimits:
        """The limits of ``settings``; ``open_files``: the soft RLIMIT_NOFILE (read from the process when None).

        More connections than the open-file limit allows is one NimbuildError naming the variable and the fix.
        """
        ceiling = connection_ceiling(open_files if open_files is not None else soft_open_files())
        count = settings.http_max_connections
        if count is not None and count > ceiling:
            var = "NIM_HTTP_MAX_CONNECTIONS"
            raise NimbuildError(
                f"{var}={str(count)!r} is out of range: this process may open {ceiling} connections "
                "(its open-file limit, less what the model and the log need)",
                hint=f"set {var} to 1..{ceiling}, or raise the open-file limit (ulimit -n)",
            )
        return cls(
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            keep_alive_s=settings.http_keep_alive_s,
            max_connections=ceiling if count is None else count,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str], open_files: int | None = None) -> HttpLimits:
        """:meth:`from_settings` of ``env``: each bad value is one NimbuildError naming the variable."""
        return cls.from_settings(read_settings(env), open_files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "header_timeout_s": self.header_timeout_s,
            "body_timeout_s": self.body_timeout_s,
            "keep_alive_s": self.keep_alive_s,
            "max_connections": self.max_connections,
        }


def soft_open_files() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft


LISTEN_QUEUE = 2048  # the kernel's queue of connections not yet accepted (uvicorn's default backlog)


ACCEPT_BATCH = 8  # connections asyncio accepts per wake-up (its `backlog` argument; uvicorn's default is 2048)
_ACCEPT_HEADROOM = 4 * ACCEPT_BATCH  # descriptors of accepted connections not yet seen (a few wake-ups' worth)


def connection_ceiling(open_files: int) -> int:
    """How many connections fit under an open-file limit (the module docstring's rule), at least 1."""
    if open_files == resource.RLIM_INFINITY or open_files < 0:
        return 2048
    return max(1, min(2048, open_files - max(64, open_files // 8) - _ACCEPT_HEADROOM))


class OncePer(logging.Filter):
    """Lets a log line of one kind (logger, level, message template) through at most once per ``seconds``;
    the next one that passes says how many were left out."""

    def __init__(self, seconds: float = _REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.seconds, self.clock = seconds, clock
        self.last: dict[tuple[str, int, str], float] = {}
        self.dropped: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        last = self.last.get(key)
        if last is not None and now - last < self.seconds:
            self.dropped[key] = self.dropped.get(key, 0) + 1
            return False
        self.last[key] = now
        dropped = self.dropped.pop(key, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like this in the last {self.seconds:.0f} s)"
        return True


REQUEST_LOG = logging.getLogger("nimbuild.serve.requests")  # per-request lines: rate-limited by install_log_limits


def install_log_limits() -> None:
    """Rate-limit the loggers a hostile client can make write per request or per connection (idempotent)."""
    for name in ("uvicorn.error", "asyncio", REQUEST_LOG.name):
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePer) for f in logger.filters):
            logger.addFilter(OncePer())


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's handler, but ``accept()`` out of descriptors is one (rate-limited) line, not a traceback."""
    if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
        exc = context.get("exception")
        REQUEST_LOG.warning(
            "accept() failed: %s; new connections wait in the listen queue, accepted again in 1 s "
            "(raise the open-file limit or lower NIM_HTTP_MAX_CONNECTIONS)",
            exc,
        )
        return
    loop.default_exception_handler(context)


Shapes = Callable[[str, int, str, str], tuple[int, bytes]]  # (path, status, message, kind) -> (status, JSON)


def make_protocol(limits: HttpLimits, error_json: Shapes, metrics: Any = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the deadlines and the ceiling of ``limits``; ``error_json`` words the
    errors this layer writes in the path's dialect shape (``app.ErrorShapes.body``)."""

    class Guarded(GuardedH11Protocol):
        pass

    Guarded.limits = limits
    Guarded.error_json = staticmethod(error_json)
    Guarded.metrics = metrics
    return Guarded


class GuardedH11Protocol(H11Protocol):
    """See the module docstring; one instance per connection. Class attributes set by :func:`make_protocol`."""

    limits: HttpLimits = HttpLimits()
    error_json: Shapes
    metrics: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._timed_cycle: Any = None
        self._idle_since = time.monotonic()
        self._write_timer: asyncio.TimerHandle | None = None
        self._pending = b""  # the start of a request whose headers are not complete yet (its first line)
        self._refused = False

    # -- connection lifecycle --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._gauge()
        if self._open_count() > self.limits.max_connections and not self._make_room():
            # Every connection has a request in progress: this one is answered 503 when its request line
            # comes (within 2 s), or closed at once when many already wait for theirs.
            self._refused = True
            if sum(1 for c in self._live() if getattr(c, "_refused", False)) > _REFUSED_SLOTS:
                if self.metrics is not None:
                    self.metrics.connections_refused.inc()
                self._close("refused")
                return
            self._start_header_timer(min(self.limits.header_timeout_s, _REFUSED_WAIT_S))
            return
        self._start_header_timer(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)
        self._gauge()

    def _live(self) -> list[Any]:
        """The open connections, less those already closing (their descriptor is freed a wake-up later)."""
        return [c for c in self.connections if c.transport is not None and not c.transport.is_closing()]

    def _open_count(self) -> int:
        return len(self._live())

    def _make_room(self) -> bool:
        """Close the connection idle longest (no request in progress); False when every one is busy."""
        idle = [
            c
            for c in self._live()
            if c is not self and isinstance(c, GuardedH11Protocol) and not c._refused and c.idle()
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c._idle_since)
        victim._close("evicted")
        return True

    def idle(self) -> bool:
        """No request in progress: before the first request, between requests, or with headers half-sent."""
        return self.cycle is None or self.cycle.response_complete

    # -- reading -----------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._pending = (self._pending + data)[:2048]
            if b"\n" in self._pending or len(self._pending) >= 2048:
                message = "the server is at its connection limit (NIM_HTTP_MAX_CONNECTIONS); retry shortly"
            self._answer(503, self._path(), message, "unavailable", "refused")
            return
        if self.idle():
            if self._header_timer is None:  # the first byte of a keep-alive connection's next request
                self._start_header_timer(self.limits.header_timeout_s)
            if len(self._pending) < 2048:
                self._pending = (self._pending + data)[:2048]
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts uvicorn's keep-alive timer, runs pipelined requests
        if self.idle():
            self._idle_since = time.monotonic()
            self._cancel(body=True)
        self._track()

    def _track(self) -> None:
        """After h11's events: a new request's headers are complete -> body deadline; its body is complete -> none."""
        cycle = self.cycle
        if cycle is not None and cycle is not self._timed_cycle:
            self._timed_cycle = cycle
            self._pending = b""
            self._cancel(header=True)
            if cycle.more_body:
                self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
        if self._body_timer is not None and (cycle is None or not cycle.more_body):
            self._cancel(body=True)

    # -- deadlines ---------------------------------------------------------------------------------------------
    def _start_header_timer(self, seconds: float) -> None:
        self._cancel(header=True)
        self._header_timer = self.loop.call_later(seconds, self._header_timeout)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self.idle():
            return
        if self._pending and not self._refused:
            seconds = self.limits.header_timeout_s
            self._answer(
                408,
                self._path(),
                f"the request headers did not arrive within {seconds:g} s (NIM_HTTP_HEADER_TIMEOUT_SECONDS)",
                "timeout",
                "header_timeout",
            )
        else:
            self._close("refused" if self._refused else "header_timeout")

    def _body_timeout(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        REQUEST_LOG.warning("closing a connection whose request body did not arrive in time")
        started = cycle.response_started
        cycle.disconnected = True  # the app's receive() gets http.disconnect, its sends are dropped
        cycle.message_event.set()
        if started:
            self._close("body_timeout")
            return
        seconds = self.limits.body_timeout_s
        message = f"the request body did not arrive within {seconds:g} s (NIM_HTTP_BODY_TIMEOUT_SECONDS)"
        self._answer(408, cycle.scope.get("path", ""), message, "timeout", "body_timeout")

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.body_timeout_s, self._write_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timeout(self) -> None:
        self._write_timer = None
        REQUEST_LOG.warning("closing a connection whose client stopped reading its response")
        self._close("write_timeout")
        self.transport.abort()  # close() would wait for the unread buffer to drain

    # -- answers this layer writes itself ------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes h11 cannot parse, as JSON (and its log line rate-limited by OncePer)."""
        self._answer(400, self._path(), f"invalid HTTP request: {msg}", "validation", "invalid_http")

    def _answer(self, status: int, path: str, message: str, kind: str, reason: str) -> None:
        if self.transport.is_closing():
            return
        code, body = self.error_json(path, status, message, kind)
        phrase = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}.get(code, b"Error")
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (code, phrase, len(body))
        )
        self.transport.write(head + body)
        if reason == "refused" and self.metrics is not None:
            self.metrics.connections_refused.inc()
        self._close(reason)

    def _close(self, reason: str) -> None:
        self._cancel_timers()
        if self.transport.is_closing():
            return
        if self.metrics is not None and reason != "refused":
            self.metrics.connections_closed.labels(reason).inc()
        if reason in ("header_timeout", "body_timeout", "evicted"):
            REQUEST_LOG.info("closing an HTTP connection: %s", reason.replace("_", " "))
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def _path(self) -> str:
        """The path of the request line seen so far ('' before one came)."""
        line = self._pending.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) >= 2:
            return parts[1].split(b"?", 1)[0].decode("latin-1")
        return ""

    def _cancel(self, *, header: bool = False, body: bool = False) -> None:
        if header and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if body and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel(header=True, body=True)
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.connections.set(len(self.connections))


class GuardedServer(uvicorn.Server):
    """uvicorn's server with accept failures logged as one rate-limited line, and the per-connection loggers
    rate-limited (:func:`install_log_limits`)."""

    async def startup(self, sockets: list[Any] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(loop_exception_handler)
        install_log_limits()
        await super().startup(sockets=sockets)
        # asyncio listened with `backlog` = ACCEPT_BATCH (it accepts that many per wake-up); the kernel's queue
        # may be deeper, so that a burst of connections waits there rather than being dropped.
        for sock in sockets or ():
            sock.listen(LISTEN_QUEUE)
