"""Fuzz the HTTP API (hypothesis, derandomized, bounded to ~20 s): any JSON or bytes into /v1/ranking and every
dialect route gives a 2xx or a 4xx with a JSON message, never a 5xx, and the server keeps serving; raw HTTP
garbage into the real server process gives a JSON 4xx or a close, never a hang."""

from __future__ import annotations

import json
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import MODEL, ServeProcess, served_export
from starlette.testclient import TestClient

from nimbuild.manifest import load_manifest
from nimbuild.runtime.serve.app import create_app
from nimbuild.runtime.serve.server import start_profile
from nimbuild.runtime.serve.service import Limits

FUZZ = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
texts = st.text(max_size=200) | st.sampled_from(["", "bees make honey", "\ud800", "x" * 3000, "a " * 400])

# One valid body per route: the fuzz replaces, drops or adds fields in it.
VALID = {
    "/v1/ranking": {"model": MODEL, "query": {"text": "q"}, "passages": [{"text": "a"}, {"text": "b"}]},
    "/rerank": {"query": "q", "texts": ["a", "b"]},
    "/v1/rerank": {"model": MODEL, "query": "q", "documents": ["a", {"text": "b"}]},
    "/v2/rerank": {"model": MODEL, "query": "q", "documents": ["a", "b"]},
}
FIELDS = sorted(
    {k for body in VALID.values() for k in body}
    | {"truncate", "top_n", "return_documents", "raw_scores", "return_text", "truncation_direction"}
    | {"rank_fields", "max_tokens_per_doc", "max_chunks_per_doc", "priority", "texts", "passages"}
)


@pytest.fixture(scope="module")
def client():
    root = served_export()
    manifest = load_manifest(root / "manifest.yaml")
    cpu = next(p for p in manifest.profiles if p.tags["device"] == "cpu")
    limits = Limits(max_passages=8, max_body_bytes=20_000, max_text_chars=1_000, max_queue_delay_ms=0.5)
    service = start_profile(manifest, cpu, limits=limits)
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/v1/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield c


def _check(response) -> None:
    assert response.status_code < 500, response.text
    body = response.json()  # always JSON
    if response.status_code >= 400:
        values = body.values() if isinstance(body, dict) else []
        assert any(isinstance(v, str) and v for v in values), body  # with a message


@st.composite
def mutated(draw, path: str):
    body = dict(VALID[path])
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["replace", "drop", "text", "list"]))
        if action == "drop":
            body.pop(field, None)
        elif action == "text":
            body[field] = draw(texts)
        elif action == "list":
            body[field] = draw(st.lists(texts | json_values | st.fixed_dictionaries({"text": texts}), max_size=10))
        else:
            body[field] = draw(json_values)
    return body


@pytest.mark.parametrize("path", sorted(VALID))
def test_mutated_bodies_never_get_a_5xx(client, path):
    @FUZZ
    @given(body=mutated(path))
    def check(body):
        _check(client.post(path, content=json.dumps(body), headers={"content-type": "application/json"}))

    check()
    _check(client.post(path, json=VALID[path]))
    assert client.post(path, json=VALID[path]).status_code == 200


@pytest.mark.parametrize("path", sorted(VALID))
def test_any_json_or_bytes_never_get_a_5xx(client, path):
    @FUZZ
    @given(raw=json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=300))
    def check(raw):
        _check(client.post(path, content=raw, headers={"content-type": "application/json"}))

    check()
    assert client.get("/v1/health/ready").status_code == 200


_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"P\x00ST", b"", b"GET GET"])
_PATHS = st.sampled_from(
    [b"/v1/ranking", b"/rerank", b"/v1/rerank", b"/v2/rerank", b"/info", b"/x", b"*", b""]
) | st.binary(max_size=20)
_HEADERS = st.lists(
    st.sampled_from(
        [
            b"Host: x",
            b"Content-Type: application/json",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            b"Expect: 100-continue",
            b"Content-Length: -1",
            b"Content-Length: abc",
            b": empty",
            b"X: \x01\x02",
        ]
    )
    | st.binary(max_size=30),
    max_size=5,
)


@st.composite
def raw_requests(draw) -> bytes:
    body = draw(st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9", b""]))
    line = draw(_METHODS) + b" " + draw(_PATHS) + b" " + version
    headers = draw(_HEADERS) + [b"Content-Length: %d" % len(body), b"Connection: close"]
    return line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def test_raw_http_garbage_gets_a_json_4xx_or_a_close_from_the_real_server():
    env = {"NIM_HTTP_HEADER_TIMEOUT_SECONDS": "1", "NIM_HTTP_BODY_TIMEOUT_SECONDS": "1"}
    with ServeProcess(env) as server:

        @settings(FUZZ, max_examples=30)
        @given(raw=raw_requests())
        def check(raw):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(raw)
                out = b""
                try:
                    while chunk := sock.recv(65536):
                        out += chunk
                except ConnectionResetError:
                    pass
            if not out:
                return  # closed without an answer (a deadline passed on an incomplete request)
            head, _, body = out.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            assert status < 500, out[:300]
            if status >= 400 and body and raw.split(b" ", 1)[0] != b"HEAD":
                assert b"application/json" in head.lower(), out[:300]
                assert json.loads(body.split(b"\r\n0\r\n")[0] if b"chunked" in head.lower() else body)

        check()
        import httpx

        assert httpx.get(f"{server.url}/v1/health/ready", timeout=10).status_code == 200
    assert server.returncode == 0 and "Traceback" not in server.log, server.log
