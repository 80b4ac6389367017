"""`nimbuild serve`'s connections: every phase has a deadline, open connections have a ceiling under the
open-file limit, the log stays small, and a shutdown past its grace period answers 503 JSON.

Real server processes on 127.0.0.1, bounded: a few hundred sockets and seconds-long timeouts.
"""

from __future__ import annotations

import json
import logging
import resource
import selectors
import socket
import threading
import time

import httpx
import pytest
from serve_support import MODEL, ServeProcess

from nimbuild.errors import NimbuildError
from nimbuild.runtime.serve.connections import HttpLimits, OncePer, connection_ceiling

# A slow, shared CI machine: what "promptly" may take on top of a deadline.
SLACK_S = 6.0
RANKING = {"model": MODEL, "query": {"text": "how do bees make honey"}, "passages": [{"text": "bees make honey"}]}


def _connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server writes until it closes the connection (AssertionError past ``timeout``)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk
    except ConnectionResetError:
        return out
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {timeout} s; got {out[:200]!r}") from None


def _json_answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), raw[:300]
    return status, json.loads(body)


@pytest.fixture(scope="module")
def server():
    """One server with short deadlines and a ceiling of 6 connections."""
    env = {
        "NIM_HTTP_HEADER_TIMEOUT_SECONDS": "1.5",
        "NIM_HTTP_BODY_TIMEOUT_SECONDS": "1.5",
        "NIM_HTTP_KEEP_ALIVE_SECONDS": "1.5",
        "NIM_HTTP_MAX_CONNECTIONS": "6",
    }
    with ServeProcess(env) as s:
        yield s
    assert s.returncode == 0, s.log
    assert "Traceback" not in s.log


def test_half_sent_headers_get_a_json_408_and_silent_connections_are_closed(server):
    started = time.monotonic()
    half = _connect(server.port, b"POST /v1/ranking HTTP/1.1\r\nHost: x\r\n")
    silent = _connect(server.port)
    status, body = _json_answer(_read_until_closed(half, 1.5 + SLACK_S))
    assert status == 408 and "NIM_HTTP_HEADER_TIMEOUT_SECONDS" in body["message"] and body["detail"]
    assert _read_until_closed(silent, 1.5 + SLACK_S) == b""
    assert time.monotonic() - started >= 1.4  # not before the deadline either


def test_a_body_that_stops_coming_gets_a_json_408_in_the_routes_dialect(server):
    head = b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    sock = _connect(server.port, head + b'{"query": "q", "texts": ["a')
    status, body = _json_answer(_read_until_closed(sock, 1.5 + SLACK_S))
    assert status == 408 and body["error_type"] and "NIM_HTTP_BODY_TIMEOUT_SECONDS" in body["error"]  # TEI's shape


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(server):
    started = time.monotonic()
    sock = _connect(server.port, b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = _read_until_closed(sock, 1.5 + SLACK_S)
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b'Service is live."}')  # answered, then closed
    assert time.monotonic() - started >= 1.4


def test_invalid_http_is_a_json_400(server):
    sock = _connect(server.port, b"THIS IS NOT HTTP\r\n\r\n")
    status, body = _json_answer(_read_until_closed(sock, SLACK_S))
    assert status == 400 and "invalid HTTP" in body["message"]


def test_at_the_ceiling_an_idle_connection_makes_room_and_busy_ones_mean_a_json_503(server):
    # Six idle connections fill the ceiling: a new request still gets in, the oldest idle one is closed.
    idle = [_connect(server.port) for _ in range(6)]
    time.sleep(0.3)
    assert httpx.post(f"{server.url}/v1/ranking", json=RANKING, timeout=30).status_code == 200
    assert _read_until_closed(idle[0], SLACK_S) == b""
    for sock in idle:
        sock.close()
    # Six connections in the middle of a request (headers sent, body pending): a seventh is refused, as JSON.
    head = b"POST /v1/ranking HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n{"
    busy = [_connect(server.port, head) for _ in range(6)]
    time.sleep(0.3)
    refused = _connect(server.port, b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    status, body = _json_answer(_read_until_closed(refused, SLACK_S))
    assert status == 503 and "NIM_HTTP_MAX_CONNECTIONS" in body["message"] and set(body) == {"message"}  # Cohere's
    for sock in busy:
        sock.close()
    deadline = time.monotonic() + SLACK_S
    while httpx.get(f"{server.url}/v1/health/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    metrics = httpx.get(f"{server.url}/v1/metrics", timeout=10).text
    assert 'nimbuild_http_connections_closed_total{reason="evicted"}' in metrics
    assert "nimbuild_http_connections_refused_total 1.0" in metrics


def _no_files_beyond(n: int):
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return limit


def test_500_idle_and_half_sent_connections_under_ulimit_256():
    """The issue's case: the server neither spins, nor floods its log, nor stops answering; every idle or
    half-sent connection is closed within its deadline; a new health check and ranking answer promptly."""
    timeout = 2.0
    env = {
        "NIM_HTTP_HEADER_TIMEOUT_SECONDS": str(timeout),
        "NIM_HTTP_BODY_TIMEOUT_SECONDS": str(timeout),
        "NIM_HTTP_KEEP_ALIVE_SECONDS": str(timeout),
    }
    kinds = [
        b"",  # connects, sends nothing
        b"POST /v1/rank",  # half a request line
        b"POST /v1/ranking HTTP/1.1\r\nHost: x\r\n",  # headers without their end
        b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{",  # a body that stops
        b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n",  # a whole request, then idle (keep-alive)
    ]
    with ServeProcess(env, preexec_fn=_no_files_beyond(256)) as server:
        log_before = len(server.read_log().splitlines())
        assert f"at most {connection_ceiling(256)} connections" in server.read_log()
        sel = selectors.DefaultSelector()
        opened = {}
        for i in range(500):
            sock = _connect(server.port, kinds[i % len(kinds)])
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
            opened[sock] = time.monotonic()
        started = time.monotonic()
        ready = httpx.get(f"{server.url}/v1/health/ready", timeout=timeout + SLACK_S)
        ranking = httpx.post(f"{server.url}/v1/ranking", json=RANKING, timeout=timeout + SLACK_S)
        answered_in = time.monotonic() - started
        assert ready.status_code == 200 and ranking.status_code == 200, (ready.text, ranking.text)
        assert answered_in < timeout + SLACK_S

        # Every connection closed by the server within its deadline (+ slack), answers JSON where it answers.
        received: dict[socket.socket, bytes] = {s: b"" for s in opened}
        lasted: dict[socket.socket, float] = {}
        deadline = time.monotonic() + timeout + 2 * SLACK_S
        while len(lasted) < len(opened) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    chunk = b""
                if chunk:
                    received[sock] += chunk
                    continue
                lasted[sock] = time.monotonic() - opened[sock]
                sel.unregister(sock)
                sock.close()
        still_open = len(opened) - len(lasted)
        for sock in list(opened):
            if sock not in lasted:
                sock.close()
        assert still_open == 0, f"{still_open} of 500 connections still open after {timeout + 2 * SLACK_S} s"
        assert max(lasted.values()) < timeout + 2 * SLACK_S
        for raw in received.values():
            for answer in raw.split(b"HTTP/1.1 ")[1:]:
                status = int(answer[:3])
                if status != 200:  # the keep-alive kind's own answer
                    _json_answer(b"HTTP/1.1 " + answer)
        # Still serving, and the log stayed small (no line per connection, no traceback).
        assert httpx.get(f"{server.url}/v1/health/ready", timeout=10).status_code == 200
        log = server.read_log()
        assert len(log.splitlines()) - log_before < 40, log
        assert "Traceback" not in log
    assert server.returncode == 0, server.log


def test_a_request_still_running_past_the_grace_period_gets_a_json_503():
    # A lone passage waits 10 s (NIM_MAX_QUEUE_DELAY_MS's ceiling) for batch company; the shutdown grace period is 1 s.
    env = {"NIM_GRACEFUL_SHUTDOWN_SECONDS": "1", "NIM_MAX_QUEUE_DELAY_MS": "10000"}
    result: dict = {}
    with ServeProcess(env) as server:

        def in_flight():
            result["response"] = httpx.post(f"{server.url}/v2/rerank", json={**_cohere_body()}, timeout=60)

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(1.0)
        started = time.monotonic()
        server.stop()
        thread.join(60)
    response = result["response"]
    assert response.status_code == 503, response.text
    assert "NIM_GRACEFUL_SHUTDOWN_SECONDS" in response.json()["message"]  # Cohere's shape on /v2/rerank
    assert time.monotonic() - started < 1 + SLACK_S + 10  # answered at the grace period, not after the batch wait
    assert server.returncode == 0, server.log
    assert "Traceback" not in server.log


def _cohere_body() -> dict:
    return {"model": MODEL, "query": "how do bees make honey", "documents": ["bees make honey"]}


@pytest.mark.parametrize(
    "var, value, words",
    [
        ("NIM_HTTP_HEADER_TIMEOUT_SECONDS", "nan", "not finite"),
        ("NIM_HTTP_BODY_TIMEOUT_SECONDS", "inf", "not finite"),
        ("NIM_HTTP_KEEP_ALIVE_SECONDS", "-1", "out of range"),
        ("NIM_HTTP_HEADER_TIMEOUT_SECONDS", "0", "out of range"),
        ("NIM_HTTP_BODY_TIMEOUT_SECONDS", "1e308", "out of range"),
        ("NIM_HTTP_KEEP_ALIVE_SECONDS", "soon", "not a number"),
        ("NIM_HTTP_MAX_CONNECTIONS", "0", "out of range"),
        ("NIM_HTTP_MAX_CONNECTIONS", "2.5", "not an integer"),
        ("NIM_HTTP_MAX_CONNECTIONS", "100000", "open-file limit"),
    ],
)
def test_bad_connection_settings_are_one_error_naming_the_variable(var, value, words):
    with pytest.raises(NimbuildError) as info:
        HttpLimits.from_env({var: value}, open_files=1024)
    assert f"{var}={value!r}" in str(info.value) and words in str(info.value)
    assert var in info.value.hint


def test_connection_settings_defaults_follow_the_open_file_limit():
    assert HttpLimits.from_env({}, open_files=1024) == HttpLimits(max_connections=connection_ceiling(1024))
    assert connection_ceiling(256) == 256 - 64 - 32
    assert connection_ceiling(1 << 20) == 2048
    assert connection_ceiling(resource.RLIM_INFINITY) == 2048
    assert connection_ceiling(64) == 1  # never 0
    limits = HttpLimits.from_env(
        {"NIM_HTTP_HEADER_TIMEOUT_SECONDS": " 2.5 ", "NIM_HTTP_MAX_CONNECTIONS": "10"}, open_files=256
    )
    assert (limits.header_timeout_s, limits.max_connections, limits.body_timeout_s) == (2.5, 10, 60.0)


def test_serve_refuses_a_bad_connection_setting_before_starting(tmp_path):
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "nimbuild", "serve", "--manifest", str(tmp_path / "nope.yaml"), "--host", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NIM_CPU_ONLY": "1", "NIM_HTTP_BODY_TIMEOUT_SECONDS": "nan"},
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    assert "NIM_HTTP_BODY_TIMEOUT_SECONDS='nan'" in proc.stderr and "nope.yaml" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_repeated_log_lines_pass_once_per_interval_with_a_count():
    now = [0.0]
    limiter = OncePer(10.0, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, None, None)

    assert limiter.filter(record("Invalid HTTP request received."))
    assert not any(limiter.filter(record("Invalid HTTP request received.")) for _ in range(500))
    assert limiter.filter(record("another kind"))
    now[0] = 10.5
    passed = record("Invalid HTTP request received.")
    assert limiter.filter(passed) and "500 more like this" in passed.getMessage()
