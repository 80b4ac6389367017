"""The HTTP API in-process (Starlette TestClient) on a real tiny ONNX model, and the profile start-up path."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from serve_support import MAX_SEQ, MODEL, ort_scores, served_export
from starlette.testclient import TestClient

from nimbuild.errors import NimbuildError
from nimbuild.manifest import load_manifest
from nimbuild.runtime.serve.app import create_app
from nimbuild.runtime.serve.backends import BackendStartError
from nimbuild.runtime.serve.server import start_profile
from nimbuild.runtime.serve.service import Limits

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
    assert logits == sorted(logits, reverse=True)  # highest first
    for x in rankings:  # each logit belongs to its index
        assert x["logit"] == pytest.approx(float(ref[x["index"]]), abs=1e-4)
    assert [x["index"] for x in rankings] == list(np.argsort(-ref, kind="stable"))
    assert len(set(np.round(ref, 3))) > 3  # the model does tell them apart


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


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b'{"model": "serve-tiny", "query": ', 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (json.dumps({"model": MODEL, "passages": [{"text": "a"}]}).encode(), 422, "query"),
        (json.dumps({"model": MODEL, "query": {"text": 3}, "passages": [{"text": "a"}]}).encode(), 422, "query.text"),
        (json.dumps({"model": MODEL, "query": {"text": "q"}}).encode(), 422, "passages"),
        (json.dumps({"model": MODEL, "query": {"text": "q"}, "passages": []}).encode(), 422, "empty"),
        (json.dumps({"model": MODEL, "query": {"text": "q"}, "passages": ["a"]}).encode(), 422, "passages[0]"),
        (
            json.dumps({"model": MODEL, "query": {"text": "q"}, "passages": [{"text": "a"}] * 21}).encode(),
            422,
            "NIM_MAX_PASSAGES",
        ),
        (
            json.dumps({"model": MODEL, "query": {"text": "q" * 2001}, "passages": [{"text": "a"}]}).encode(),
            422,
            "NIM_MAX_TEXT_CHARS",
        ),
        (
            json.dumps(
                {"model": MODEL, "query": {"text": "q"}, "passages": [{"text": "a"}], "truncate": "START"}
            ).encode(),
            422,
            "truncate",
        ),
        (json.dumps({"query": {"text": "q"}, "passages": [{"text": "a"}]}).encode(), 422, "model"),
        (
            json.dumps({"model": "other", "query": {"text": "q"}, "passages": [{"text": "a"}]}).encode(),
            404,
            "serve-tiny",
        ),
        (b"{" + b" " * 25_000 + b"}", 413, "NIM_MAX_REQUEST_BYTES"),
        (b"[" * 15_000, 400, "nested too deeply"),
        (
            b'{"model": "serve-tiny", "query": {"text": "q"}, "passages": [{"text": "a\\ud800b"}]}',
            422,
            "not valid Unicode",
        ),
    ],
)
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
    for name in (
        "nimbuild_requests_total",
        "nimbuild_request_duration_seconds_bucket",
        "nimbuild_batch_size_bucket",
        "nimbuild_queue_depth",
        "nimbuild_ready 1.0",
    ):
        assert name in text
    assert 'nimbuild_requests_total{code="200",route="/v1/ranking"}' in text


def test_gpu_profile_that_only_gets_the_cpu_is_a_failed_start():
    """onnxruntime-gpu falls back to the CPU silently (or plain onnxruntime has no CUDA at all): refused."""
    from nimbuild.runtime.serve.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(served_export() / "onnx/fp32/model.onnx", device="gpu")
    try:
        backend.start()
    except BackendStartError as exc:
        assert "only got CPUExecutionProvider" in str(exc)
        assert backend.session is None
        return
    assert backend.providers[0] == "CUDAExecutionProvider"  # a host where CUDA really started
    backend.stop()


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


def test_triton_backend_renders_the_profile_as_a_model_store(tmp_path):
    """The store tritonserver would be started on (render's materialize_profile), without starting it."""
    from nimbuild.runtime.serve.backends.triton import TritonBackend

    manifest = load_manifest(served_export() / "manifest.yaml")
    backend = TritonBackend(manifest, _cpu(manifest))
    store, model = backend._materialize(tmp_path / "store")
    config = (store / model / "config.pbtxt").read_text()
    assert f'name: "{model}"' in config and "onnxruntime" in config
    assert backend.max_batch_size == int(_cpu(manifest).tags["max_batch_size"])


@pytest.mark.gpu
def test_triton_backend_serves_like_onnxruntime(tmp_path):
    """A real tritonserver child on the GPU ONNX profile: same logits as ONNX Runtime, stopped cleanly."""
    if shutil.which("tritonserver") is None:
        pytest.skip("tritonserver is not on PATH (run inside a Triton image)")
    from nimbuild.runtime.serve.backends.triton import TritonBackend
    from nimbuild.runtime.serve.tokenize import PairTokenizer, pad_rows

    root = served_export()
    manifest = load_manifest(root / "manifest.yaml")
    gpu = next(p for p in manifest.profiles if p.tags["device"] == "gpu")
    backend = TritonBackend(manifest, gpu, workdir=tmp_path)
    backend.start()
    try:
        tok = PairTokenizer.from_files(root / "tokenizer/tokenizer.json", MAX_SEQ)
        got = backend.infer(*pad_rows(tok.encode(QUERY, PASSAGES, "END"), tok.pad_id))
    finally:
        backend.stop()
    assert backend.proc is None
    ref = ort_scores(root / "onnx/fp32/model.onnx", root / "hf", QUERY, PASSAGES)
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_a_profile_that_cannot_start_falls_back_to_the_next_runnable(caplog):
    """Assume an H100: the GPU ONNX profile ranks first, cannot get CUDA here, and the CPU one is served."""
    import logging

    from nimbuild.runtime.serve.server import start_service

    logger = logging.getLogger("nimbuild.serve")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        service = start_service(served_export() / "manifest.yaml", env={}, assume_gpu=["NVIDIA H100 80GB HBM3"])
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
    service.stop()
    text = caplog.text
    assert "Selected profile:" in text and "onnx-fp32-triton-onnxruntime" in text
    if service.profile["tags"]["device"] == "gpu":  # a host where CUDA really starts
        assert service.backend.describe()["providers"][0] == "CUDAExecutionProvider"
        return
    assert "could not start: GPU profile, but ONNX Runtime only got CPUExecutionProvider" in text
    assert service.profile["name"] == "cpu-fp32-onnxruntime"


def test_limits_from_the_environment():
    from nimbuild.errors import NimbuildError

    limits = Limits.from_env({"NIM_MAX_PASSAGES": "12", "NIM_MAX_QUEUE_DELAY_MS": "0.5", "NIM_MAX_BATCH_SIZE": "4"})
    assert (limits.max_passages, limits.max_queue_delay_ms, limits.max_batch_size) == (12, 0.5, 4)
    assert Limits.from_env({}) == Limits()
    with pytest.raises(NimbuildError, match="NIM_MAX_PASSAGES='many'"):
        Limits.from_env({"NIM_MAX_PASSAGES": "many"})
    with pytest.raises(NimbuildError, match="NIM_MAX_REQUEST_BYTES"):
        Limits.from_env({"NIM_MAX_REQUEST_BYTES": "0"})


def test_big_requests_are_tokenized_off_the_event_loop_with_the_same_result(client, monkeypatch):
    import threading

    from nimbuild.runtime.serve import service as service_module
    from nimbuild.runtime.serve.tokenize import PairTokenizer

    threads = []
    original = PairTokenizer.encode

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PairTokenizer, "encode", spy)
    inline = rank(client)  # small: tokenized on the event loop's thread
    monkeypatch.setattr(service_module, "_INLINE_CHARS", 10)
    offloaded = rank(client)  # "big": tokenized in a worker thread
    assert inline.status_code == offloaded.status_code == 200
    assert offloaded.json() == inline.json()
    assert len(threads) == 2 and threads[0] is not threads[1]


def test_files_in_nim_cache_path_are_served_when_the_manifest_folder_has_none(tmp_path):
    """The NIM layout: the manifest ships in the image, the files sit in NIM_CACHE_PATH
    (`download-to-cache`). Selection counts them as present; serve verifies and loads them there."""
    from nimbuild.runtime.hardware import detect_host
    from nimbuild.runtime.selection import select
    from nimbuild.runtime.serve.server import start_service

    only_manifest = tmp_path / "image"
    only_manifest.mkdir()
    shutil.copy(served_export() / "manifest.yaml", only_manifest / "manifest.yaml")
    env = {"NIM_CPU_ONLY": "1", "NIM_CACHE_PATH": str(served_export())}
    manifest = load_manifest(only_manifest / "manifest.yaml")
    assert select(manifest, detect_host(env), env).selected is not None
    service = start_service(only_manifest / "manifest.yaml", env=env)
    try:
        assert service.profile["name"] == "cpu-fp32-onnxruntime"
    finally:
        service.stop()
    # without the cache nothing is runnable: the files are nowhere
    with pytest.raises(NimbuildError, match="no profile is runnable"):
        start_service(only_manifest / "manifest.yaml", env={"NIM_CPU_ONLY": "1"})
