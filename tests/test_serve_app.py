"""The HTTP API in-process (Starlette TestClient) on a real tiny ONNX model, and the profile start-up path."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from nimbuild.manifest import load_manifest
from nimbuild.runtime.serve.app import create_app
from nimbuild.runtime.serve.backends import BackendStartError
from nimbuild.runtime.serve.server import start_profile
from nimbuild.runtime.serve.service import Limits
from test_serve_support import MAX_SEQ, MODEL, ort_scores, served_export

QUERY = "how do bees make honey"
PASSAGES = [
    "bees collect nectar from flowers and store it in the hive",
    "the train leaves the station at six",
    "honey is made by bees from nectar",
    "solar panels convert sunlight into electricity",
    "a dog is a good animal",
    "the queen bee lives in the colony",
    "bread needs flour water salt and yeast",
    "what is the weather today",
    "bees make honey in summer and eat it in winter",
    "the museum opens at ten",
    "pollination by bees helps plants grow",
]

LIMITS = Limits(max_passages=20, max_body_bytes=20_000, max_text_chars=2_000, max_queue_delay_ms=1.0)


def _cpu(manifest):
    return next(p for p in manifest.profiles if p.tags["device"] == "cpu")


@pytest.fixture(scope="module")
def client():
    root = served_export()
    manifest = load_manifest(root / "manifest.yaml")
    service = start_profile(manifest, _cpu(manifest), limits=LIMITS)
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/v1/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.02)
        yield c


def rank(client, query=QUERY, passages=PASSAGES, **extra):
    body = {"model": MODEL, "query": {"text": query}, "passages": [{"text": p} for p in passages], **extra}
    return client.post("/v1/ranking", json=body)


def test_ranking_matches_direct_onnxruntime_scores(client):
    root = served_export()
    r = rank(client)
    assert r.status_code == 200, r.text
    rankings = r.json()["rankings"]
    ref = ort_scores(root / "onnx/fp32/model.onnx", root / "hf", QUERY, PASSAGES)
    assert sorted(x["index"] for x in rankings) == list(range(len(PASSAGES)))
    logits = [x["logit"] for x in rankings]
    assert logits == sorted(logits, reverse=True)                       # highest first
    for x in rankings:                                                  # each logit belongs to its index
        assert x["logit"] == pytest.approx(float(ref[x["index"]]), abs=1e-4)
    assert [x["index"] for x in rankings] == list(np.argsort(-ref, kind="stable"))
    assert len(set(np.round(ref, 3))) > 3                               # the model does tell them apart


def test_truncate_end_and_none(client):
    root = served_export()
    long_passage = " ".join(["bees collect nectar from flowers"] * 30)
    passages = ["honey", long_passage]
    r = rank(client, passages=passages, truncate="NONE")
    assert r.status_code == 400
    assert "passages[1]" in r.json()["detail"] and f"max_sequence_length {MAX_SEQ}" in r.json()["detail"]
    r = rank(client, passages=passages, truncate="END")
    assert r.status_code == 200
    ref = ort_scores(root / "onnx/fp32/model.onnx", root / "hf", QUERY, passages)
    got = {x["index"]: x["logit"] for x in r.json()["rankings"]}
    assert got[1] == pytest.approx(float(ref[1]), abs=1e-4)


@pytest.mark.parametrize("body, status, words", [
    (b'{"model": "serve-tiny", "query": ', 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (json.dumps({"model": MODEL, "passages": [{"text": "a"}]}).encode(), 422, "query"),
    (json.dumps({"model": MODEL, "query": {"text": 3}, "passages": [{"text": "a"}]}).encode(), 422, "query.text"),
    (json.dumps({"model": MODEL, "query": {"text": "q"}}).encode(), 422, "passages"),
    (json.dumps({"model": MODEL, "query": {"text": "q"}, "passages": []}).encode(), 422, "empty"),
    (json.dumps({"model": MODEL, "query": {"text": "q"}, "passages": ["a"]}).encode(), 422, "passages[0]"),
    (json.dumps({"model": MODEL, "query": {"text": "q"}, "passages": [{"text": "a"}] * 21}).encode(), 422, "NIM_MAX_PASSAGES"),
    (json.dumps({"model": MODEL, "query": {"text": "q" * 2001}, "passages": [{"text": "a"}]}).encode(), 422, "NIM_MAX_TEXT_CHARS"),
    (json.dumps({"model": MODEL, "query": {"text": "q"}, "passages": [{"text": "a"}], "truncate": "START"}).encode(), 422, "truncate"),
    (json.dumps({"query": {"text": "q"}, "passages": [{"text": "a"}]}).encode(), 422, "model"),
    (json.dumps({"model": "other", "query": {"text": "q"}, "passages": [{"text": "a"}]}).encode(), 404, "serve-tiny"),
    (b"{" + b" " * 25_000 + b"}", 413, "NIM_MAX_REQUEST_BYTES"),
])
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(client, body, status, words):
    r = client.post("/v1/ranking", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert rank(client).status_code == 200


def test_oversized_body_without_content_length_is_refused(client):
    def chunks():
        for _ in range(30):
            yield b" " * 1000

    r = client.post("/v1/ranking", content=chunks())
    assert r.status_code == 413


def test_wrong_method_and_unknown_route(client):
    assert client.get("/v1/ranking").status_code == 405
    assert client.get("/v1/nothing").status_code == 404


def test_health_models_metadata_metrics(client):
    assert client.get("/v1/health/live").status_code == 200
    assert client.get("/v1/health/ready").status_code == 200
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    meta = client.get("/v1/metadata").json()
    manifest = load_manifest(served_export() / "manifest.yaml")
    cpu = _cpu(manifest)
    assert meta["profile"]["id"] == cpu.id and meta["profile"]["name"] == cpu.name
    assert meta["profile"]["tags"] == cpu.tags
    from nimbuild import __version__

    assert meta["nimbuildVersion"] == __version__
    assert meta["backend"]["providers"] == ["CPUExecutionProvider"]
    rank(client)
    text = client.get("/v1/metrics").text
    for name in ("nimbuild_requests_total", "nimbuild_request_duration_seconds_bucket",
                 "nimbuild_batch_size_bucket", "nimbuild_queue_depth", "nimbuild_ready 1.0"):
        assert name in text
    assert 'nimbuild_requests_total{code="200",route="/v1/ranking"}' in text


def test_gpu_profile_that_only_gets_the_cpu_is_a_failed_start():
    from nimbuild.runtime.serve.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(served_export() / "onnx/fp32/model.onnx", device="gpu")
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            backend.start()   # either CUDA really started (a GPU host) or this raises below
            assert backend.providers[0] == "CUDAExecutionProvider"
            pytest.skip("a GPU is present: CUDA really started")
    except BackendStartError as exc:
        assert "only got CPUExecutionProvider" in str(exc)
        return
    pytest.fail("the GPU profile started without CUDA")


def test_altered_file_fails_verification(tmp_path):
    root = tmp_path / "export"
    shutil.copytree(served_export(), root)
    tok = root / "tokenizer/tokenizer.json"
    data = tok.read_bytes()
    tok.write_bytes(data.replace(b'"[UNK]"', b'"[UNX]"', 1))
    assert tok.stat().st_size == len(data)
    manifest = load_manifest(root / "manifest.yaml")
    with pytest.raises(BackendStartError, match="sha256"):
        start_profile(manifest, _cpu(manifest), limits=LIMITS)


def test_triton_backend_without_tritonserver_is_a_failed_start(monkeypatch):
    from nimbuild.runtime.serve.backends.triton import TritonBackend

    manifest = load_manifest(served_export() / "manifest.yaml")
    backend = TritonBackend(manifest, _cpu(manifest), binary="tritonserver-that-is-not-here")
    with pytest.raises(BackendStartError, match="not found on PATH"):
        backend.start()
