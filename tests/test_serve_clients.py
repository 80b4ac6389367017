"""Third-party clients, unchanged, against a real `nimbuild serve` on 127.0.0.1: each must put the documents in
the order /v1/ranking gives. The clients come with the `dev` extra; one that is not installed is skipped."""

from __future__ import annotations

import os

import httpx
import pytest
from serve_support import MODEL, ServeProcess

QUERY = "what causes the tides"
DOCS = [
    "the moon's gravity pulls on the oceans and causes the tides",
    "a recipe for apple pie",
    "tides rise and fall twice a day",
    "the football match ended in a draw",
    "the sun also pulls on the sea, making spring tides",
    "how to repair a bicycle tyre",
    "ocean water moves toward the moon",
    "the library closes at eight",
]

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # Haystack would post usage data (no network here)


@pytest.fixture(scope="module")
def server():
    with ServeProcess() as s:
        yield s
    assert s.returncode == 0, s.log


@pytest.fixture(scope="module")
def nim_order(server) -> list[int]:
    body = {"model": MODEL, "query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS], "truncate": "END"}
    rankings = httpx.post(f"{server.url}/v1/ranking", json=body, timeout=60).json()["rankings"]
    logits = [x["logit"] for x in rankings]
    assert len(set(round(v, 4) for v in logits)) == len(DOCS)  # no ties: one right order
    return [x["index"] for x in rankings]


def test_cohere_sdk_v2_client(server, nim_order):
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key="unused", base_url=server.url)
    response = client.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=5)
    assert [r.index for r in response.results] == nim_order[:5]
    assert all(0 < r.relevance_score < 1 for r in response.results)


def test_cohere_sdk_v1_client(server, nim_order):
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(api_key="unused", base_url=server.url)
    response = client.rerank(model=MODEL, query=QUERY, documents=DOCS, return_documents=True)
    assert [r.index for r in response.results] == nim_order
    assert [r.document.text for r in response.results] == [DOCS[i] for i in nim_order]


def test_cohere_sdk_sees_an_error_as_its_api_error(server):
    cohere = pytest.importorskip("cohere")
    from cohere.core.api_error import ApiError

    client = cohere.ClientV2(api_key="unused", base_url=server.url)
    with pytest.raises(ApiError) as info:
        client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)
    assert info.value.status_code == 404 and MODEL in info.value.body["message"]


def test_langchain_cohere_rerank(server, nim_order):
    pytest.importorskip("langchain_cohere")
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(model=MODEL, cohere_api_key="unused", base_url=server.url, top_n=4)
    compressed = reranker.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    assert [d.page_content for d in compressed] == [DOCS[i] for i in nim_order[:4]]
    assert all("relevance_score" in d.metadata for d in compressed)


def test_haystack_tei_ranker(server, nim_order):
    pytest.importorskip("haystack_integrations.components.rankers.huggingface_api")
    from haystack import Document
    from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker, TruncationDirection

    ranker = HuggingFaceTEIRanker(url=server.url, top_k=len(DOCS))
    out = ranker.run(query=QUERY, documents=[Document(content=d) for d in DOCS])
    assert [d.content for d in out["documents"]] == [DOCS[i] for i in nim_order]
    long = [Document(content=d + " " + "filler words " * 2000) for d in DOCS]
    out = ranker.run(query=QUERY, documents=long, truncation_direction=TruncationDirection.RIGHT)
    assert len(out["documents"]) == len(DOCS)


def test_haystack_jina_ranker(server, nim_order):
    pytest.importorskip("haystack_integrations.components.rankers.jina")
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker

    ranker = JinaRanker(api_key=Secret.from_token("unused"), model=MODEL, base_url=f"{server.url}/v1/rerank")
    out = ranker.run(query=QUERY, documents=[Document(content=d) for d in DOCS], top_k=3)
    assert [d.content for d in out["documents"]] == [DOCS[i] for i in nim_order[:3]]
    assert out["meta"]["model"] == MODEL and out["meta"]["usage"]["total_tokens"] > 0
