"""The rerank dialects in-process (Starlette TestClient) on the real tiny ONNX model: each answers its
reference's shape, in /v1/ranking's order, with the same limits; errors are JSON in each dialect's shape on
every path; /openapi.json is valid OpenAPI and lists exactly the app's routes."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from serve_support import MAX_SEQ, MODEL, served_export
from starlette.testclient import TestClient

from nimbuild.manifest import load_manifest
from nimbuild.runtime.serve.app import create_app
from nimbuild.runtime.serve.dialects.v1rerank import flavour
from nimbuild.runtime.serve.server import start_profile
from nimbuild.runtime.serve.service import Limits

QUERY = "how do bees make honey"
DOCS = [
    "bees collect nectar from flowers and store it in the hive",
    "the train leaves the station at six",
    "honey is made by bees from nectar",
    "solar panels convert sunlight into electricity",
    "the queen bee lives in the colony",
    "bread needs flour water salt and yeast",
    "bees make honey in summer and eat it in winter",
]
LIMITS = Limits(max_passages=20, max_body_bytes=400_000, max_text_chars=2_000, max_queue_delay_ms=1.0)


@pytest.fixture(scope="module")
def client():
    root = served_export()
    manifest = load_manifest(root / "manifest.yaml")
    cpu = next(p for p in manifest.profiles if p.tags["device"] == "cpu")
    service = start_profile(manifest, cpu, limits=LIMITS)
    with TestClient(create_app(service, max_connections=42), raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/v1/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.02)
        yield c


def nim_logits(client, query=QUERY, docs=DOCS, truncate="END") -> dict[int, float]:
    body = {"model": MODEL, "query": {"text": query}, "passages": [{"text": d} for d in docs], "truncate": truncate}
    r = client.post("/v1/ranking", json=body)
    assert r.status_code == 200, r.text
    return {x["index"]: x["logit"] for x in r.json()["rankings"]}


def nim_order(client, **kw) -> list[int]:
    logits = nim_logits(client, **kw)
    return sorted(logits, key=lambda i: (-logits[i], i))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_the_model_tells_the_documents_apart(client):
    assert len({round(v, 3) for v in nim_logits(client).values()}) > 4


def test_tei_rerank_scores_are_the_sigmoid_in_ranking_order(client):
    logits = nim_logits(client)
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert [x["index"] for x in ranks] == nim_order(client)
    assert all(set(x) == {"index", "score"} for x in ranks)
    for x in ranks:
        assert x["score"] == pytest.approx(sigmoid(logits[x["index"]]), rel=1e-6)
    raw = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True}).json()
    assert [x["index"] for x in raw] == nim_order(client)
    for x in raw:
        assert x["score"] == pytest.approx(logits[x["index"]], abs=1e-6) and x["text"] == DOCS[x["index"]]


@pytest.mark.parametrize("path, version", [("/v1/rerank", "1"), ("/v2/rerank", "2")])
def test_cohere_shape_top_n_and_documents(client, path, version):
    logits = nim_logits(client)
    headers = {"X-Fern-SDK-Name": "cohere"}
    body = {"model": MODEL, "query": QUERY, "documents": DOCS, "top_n": 3}
    out = client.post(path, json=body, headers=headers).json()
    assert {"id", "results", "meta"} <= set(out) and out["meta"]["api_version"]["version"] == version
    assert [x["index"] for x in out["results"]] == nim_order(client)[:3]
    for x in out["results"]:
        assert set(x) == {"index", "relevance_score"}  # return_documents defaults to false for Cohere
        assert x["relevance_score"] == pytest.approx(sigmoid(logits[x["index"]]), rel=1e-6)
    objects = [{"text": d, "id": f"doc-{i}"} for i, d in enumerate(DOCS)]
    asked = {**body, "documents": objects, "return_documents": True, "top_n": 100}  # top_n past the end: all
    out = client.post(path, json=asked, headers=headers).json()
    assert [x["index"] for x in out["results"]] == nim_order(client)
    assert all(x["document"] == objects[x["index"]] for x in out["results"])  # other fields preserved


def test_jina_shape_returns_documents_by_default(client):
    out = client.post("/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": DOCS, "top_n": 2}).json()
    assert out["model"] == MODEL and out["usage"]["total_tokens"] > len(DOCS)
    assert [x["index"] for x in out["results"]] == nim_order(client)[:2]
    assert all(x["document"] == {"text": DOCS[x["index"]]} for x in out["results"])
    out = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": False}).json()
    assert all("document" not in x for x in out["results"]) and len(out["results"]) == len(DOCS)


def test_v1_rerank_flavour_rule():
    assert flavour({"query": "q"}, {}) == "jina"
    assert flavour({"query": "q"}, {"x-fern-sdk-name": "cohere"}) == "cohere"
    assert flavour({"query": "q"}, {"x-fern-sdk-name": "cohere-ai"}) == "cohere"  # the TypeScript SDK
    assert flavour({"query": "q", "rank_fields": ["title"]}, {}) == "cohere"
    assert flavour({"query": "q", "max_tokens_per_doc": None}, {}) == "jina"  # null is absent
    assert flavour([], {}) == "jina"


def test_cohere_rank_fields_rank_the_named_fields(client):
    docs = [{"title": "bees", "body": d} for d in DOCS]
    out = client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["body"]}).json()
    expected = nim_order(client, docs=[f"body: {d}" for d in DOCS])
    assert [x["index"] for x in out["results"]] == expected
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["nothing"]})
    assert r.status_code == 422 and "rank_fields" in r.json()["message"]


def test_a_whole_document_with_truncation_is_answered_and_refused_without(client):
    long_doc = " ".join(["bees collect nectar from flowers"] * 10_000)  # 320,000 characters, past 2,000
    short = ["honey", long_doc]
    truncated = nim_logits(client, docs=short, truncate="END")
    head = nim_logits(client, docs=["honey", " ".join(["bees collect nectar from flowers"] * 100)], truncate="END")
    assert truncated[1] == pytest.approx(head[1], abs=1e-5)  # the cut before tokenizing changed nothing
    for path, body in [
        ("/rerank", {"query": QUERY, "texts": short}),  # TEI's auto_truncate
        ("/v1/rerank", {"query": QUERY, "documents": short}),
        ("/v2/rerank", {"model": MODEL, "query": QUERY, "documents": short}),
    ]:
        r = client.post(path, json=body)
        assert r.status_code == 200, (path, r.text)
    r = client.post("/rerank", json={"query": QUERY, "texts": short, "truncate": False})
    assert r.status_code == 422 and "NIM_MAX_TEXT_CHARS" in r.json()["error"]
    body = {"model": MODEL, "query": {"text": QUERY}, "passages": [{"text": t} for t in short]}
    r = client.post("/v1/ranking", json=body)
    assert r.status_code == 422 and "NIM_MAX_TEXT_CHARS" in r.json()["detail"]
    fits = "bees collect nectar " * 30
    r = client.post("/rerank", json={"query": QUERY, "texts": [fits], "truncate": False})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"
    assert f"max_sequence_length {MAX_SEQ}" in r.json()["error"] and "texts[0]" in r.json()["error"]


def test_tei_left_truncation_keeps_the_end_of_the_text(client):
    filler = " ".join(["the train leaves the station at six"] * 40)
    texts = [filler + " bees make honey from nectar", "bees make honey from nectar " + filler]
    right = client.post("/rerank", json={"query": QUERY, "texts": texts, "raw_scores": True}).json()
    left = client.post(
        "/rerank", json={"query": QUERY, "texts": texts, "raw_scores": True, "truncation_direction": "Left"}
    ).json()
    right, left = ({x["index"]: x["score"] for x in a} for a in (right, left))
    # Right keeps "bees make honey" only in text 1, Left only in text 0: each direction swaps which is better.
    assert (right[1] > right[0]) and (left[0] > left[1])


def test_cohere_max_tokens_per_doc_cuts_the_document(client):
    doc = "bees make honey " + " ".join(["the train leaves the station"] * 10)
    cut = client.post("/v2/rerank", json={"model": MODEL, "query": QUERY, "documents": [doc], "max_tokens_per_doc": 3})
    whole = client.post("/v2/rerank", json={"model": MODEL, "query": QUERY, "documents": [doc]})
    head = client.post("/v2/rerank", json={"model": MODEL, "query": QUERY, "documents": ["bees make honey"]})
    score = lambda r: r.json()["results"][0]["relevance_score"]  # noqa: E731
    assert score(cut) == pytest.approx(score(head), abs=1e-6) and score(cut) != pytest.approx(score(whole), abs=1e-6)


@pytest.mark.parametrize(
    "path, body, status, key, words",
    [
        ("/rerank", {"query": QUERY, "texts": []}, 400, "error", "empty"),
        ("/rerank", {"query": 3, "texts": ["a"]}, 422, "error", "query"),
        ("/rerank", {"query": QUERY, "texts": ["a"], "truncation_direction": ["x"]}, 422, "error", "truncation"),
        ("/rerank", {"query": QUERY, "texts": ["a"], "raw_scores": "yes"}, 422, "error", "raw_scores"),
        ("/rerank", {"query": QUERY, "texts": ["a"] * 21}, 422, "error", "NIM_MAX_PASSAGES"),
        ("/v2/rerank", {"query": QUERY, "documents": ["a"]}, 422, "message", "model"),
        ("/v2/rerank", {"model": "rerank-v3.5", "query": QUERY, "documents": ["a"]}, 404, "message", MODEL),
        ("/v2/rerank", {"model": MODEL, "query": QUERY, "documents": ["a"], "top_n": 0}, 422, "message", "top_n"),
        ("/v2/rerank", {"model": MODEL, "query": QUERY, "documents": [5]}, 422, "message", "documents[0]"),
        ("/v1/rerank", {"query": QUERY, "documents": [{"image": "x.png"}]}, 422, "detail", "image"),
        ("/v1/rerank", {"query": QUERY, "documents": "a"}, 422, "message", "documents"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": True}, 422, "detail", "top_n"),
        ("/v1/ranking", {"model": MODEL, "query": {"text": "q"}, "passages": []}, 422, "detail", "empty"),
    ],
)
def test_bad_requests_are_4xx_in_the_dialects_error_shape(client, path, body, status, key, words):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert words in r.json()[key]
    if path == "/rerank":
        assert set(r.json()) == {"error", "error_type"}
        assert r.json()["error_type"] == ("Empty" if status == 400 else "Validation")
    elif path == "/v2/rerank":
        assert set(r.json()) == {"message"}
    elif path == "/v1/rerank":
        assert set(r.json()) == {"message", "detail"}


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank", "/v1/ranking"])
@pytest.mark.parametrize(
    "raw, status", [(b"{not json", 400), (b"NaN", 400), (b"[1]", 422), (b"{" + b" " * 400_001 + b"}", 413)]
)
def test_malformed_bodies_are_json_errors_on_every_route(client, path, raw, status):
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert any(isinstance(v, str) and v for v in r.json().values()), r.text


@pytest.mark.parametrize(
    "method, path, status, key",
    [
        ("GET", "/nowhere", 404, "message"),
        ("POST", "/v3/rerank", 404, "detail"),
        ("GET", "/rerank", 405, "error"),
        ("DELETE", "/v2/rerank", 405, "message"),
        ("PUT", "/v1/rerank", 405, "detail"),
        ("POST", "/v1/models", 405, "detail"),
        ("POST", "/openapi.json", 405, "message"),
    ],
)
def test_unknown_routes_and_wrong_methods_answer_json(client, method, path, status, key):
    r = client.request(method, path)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()[key]
    if status == 405:
        assert r.headers["allow"]


def test_openapi_document_is_valid_and_lists_every_route(client):
    from openapi_spec_validator import validate

    document = client.get("/openapi.json").json()
    validate(document)
    app_routes = {(route.path, m.lower()) for route in client.app.routes for m in route.methods if m != "HEAD"}
    spec_routes = {(path, m) for path, item in document["paths"].items() for m in item}
    assert app_routes == spec_routes
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert all(path in page.text for path, _ in spec_routes)


def test_answers_match_the_openapi_schemas(client):
    """Each 200 and error answer validates against the schema the document gives for it."""
    from openapi_schema_validator import OAS30Validator

    document = client.get("/openapi.json").json()

    def check(path, method, status, instance):
        op = document["paths"][path][method]
        resp = op["responses"].get(str(status)) or op["responses"]["default"]
        if "$ref" in resp:
            resp = document["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        schema = resp["content"]["application/json"]["schema"]
        OAS30Validator({**schema, "components": document["components"]}).validate(instance)

    cases = [
        ("/rerank", {"query": QUERY, "texts": DOCS, "return_text": True}),
        ("/rerank", {"query": QUERY, "texts": []}),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": 2}),
        ("/v1/rerank", {"query": QUERY}),
        ("/v2/rerank", {"model": MODEL, "query": QUERY, "documents": DOCS, "return_documents": True}),
        ("/v2/rerank", {"model": MODEL, "query": QUERY, "documents": [1]}),
        ("/v1/ranking", {"model": MODEL, "query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS]}),
        ("/v1/ranking", {"model": MODEL, "query": {"text": QUERY}}),
    ]
    for path, body in cases:
        r = client.post(path, json=body)
        check(path, "post", r.status_code, r.json())
    for path in ("/info", "/v1/health/ready", "/v1/health/live"):
        check(path, "get", 200, client.get(path).json())


def test_tei_info_and_health(client):
    info = client.get("/info").json()
    assert info["model_id"] == MODEL and info["max_input_length"] == MAX_SEQ
    assert info["max_client_batch_size"] == LIMITS.max_passages and info["max_concurrent_requests"] == 42
    assert info["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    assert info["auto_truncate"] is True and info["model_dtype"] == "float32"
    assert client.get("/health").status_code == 200


def test_metrics_are_labelled_by_route_and_unknown_paths_share_one_label(client):
    for i in range(5):
        client.get(f"/random-{i}")
    client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    text = client.get("/v1/metrics").text
    assert 'nimbuild_requests_total{code="404",route="unmatched"}' in text
    assert "random-" not in text
    assert 'nimbuild_passages_total{route="/rerank"}' in text
    assert 'nimbuild_request_duration_seconds_count{route="/rerank"}' in text


def test_sigmoid_is_exact_and_overflow_free():
    from nimbuild.runtime.serve.dialects import relevance_scores

    x = np.array([-1000.0, -5.0, 0.0, 5.0, 1000.0], dtype=np.float32)
    s = relevance_scores(x)
    assert s.tolist() == pytest.approx([0.0, sigmoid(-5), 0.5, sigmoid(5), 1.0])
    assert np.all(np.diff(s) >= 0)
